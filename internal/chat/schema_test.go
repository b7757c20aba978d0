package chat

import (
	"errors"
	"strings"
	"testing"
)

func TestDecodeStrict(t *testing.T) {
	good := `{"id":"1","from":"ann","room":"lobby","text":"hi","kind":"msg","time":"2026-01-02T03:04:05Z"}`
	if m, err := decodeStrict([]byte(good), MaxPayload(DefaultMaxText)); err != nil || m.From != "ann" || m.Text != "hi" {
		t.Fatalf("a good message: %+v, %v", m, err)
	}
	// The largest text a client can send, every character escaped, fits.
	worst := `{"id":"1","from":"ann","room":"lobby","kind":"msg","text":"` + strings.Repeat(`\ud83d\ude00`, DefaultMaxText) + `"}`
	if _, err := decodeStrict([]byte(worst), MaxPayload(DefaultMaxText)); err != nil {
		t.Fatalf("the longest text, escaped: %v", err)
	}
	for _, c := range []struct{ what, payload, want string }{
		{"unknown field", `{"id":"1","from":"ann","x":1}`, `unknown field "x"`},
		{"a field in other case", `{"id":"1","from":"ann","FROM":"bob"}`, `unknown field "FROM"`},
		{"a field twice", `{"id":"1","from":"bob","from":"ann"}`, `field "from" given twice`},
		{"not an object", `["id"]`, "not a JSON object"},
		{"trailing bytes", good + `{}`, "something after"},
		{"broken", `{"id":"1",`, "not valid JSON"},
		{"a wrong type", `{"id":1}`, "not a JSON message"},
	} {
		if _, err := decodeStrict([]byte(c.payload), 1<<20); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.what, err, c.want)
		}
	}
	if _, err := decodeStrict([]byte(good+strings.Repeat(" ", 100)), len(good)); !errors.Is(err, errTooLarge) {
		t.Errorf("over the size: %v, want errTooLarge", err)
	}
}
