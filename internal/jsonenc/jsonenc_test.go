package jsonenc

import (
	"bytes"
	"encoding/json"
	"testing"
)

// AppendString writes what encoding/json writes, with and without HTML
// escaping.
func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "plain", `quote " and \ back`, "<b>&amp;</b>", "tab\tnl\ncr\r\x00\x1f\x7f",
		"ünïcødé ✓", "line\u2028para\u2029", "bad \xff utf8 \xc3", "\b\f"} {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(s)
		if got := AppendString(nil, s, false); string(got) != string(bytes.TrimSuffix(want.Bytes(), []byte("\n"))) {
			t.Errorf("%q without HTML escaping: %s, encoding/json %s", s, got, want.Bytes())
		}
		html, _ := json.Marshal(s)
		if got := AppendString(nil, []byte(s), true); string(got) != string(html) {
			t.Errorf("%q with HTML escaping: %s, encoding/json %s", s, got, html)
		}
	}
}
