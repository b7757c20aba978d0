package protocol_test

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/caps-hub/caps/protocol"
)

// FuzzParseHello throws arbitrary HELLO payloads at ParseHello. It must never
// panic; whatever it accepts must be a HELLO the hub can act on (the right
// version, a known role, a name fit to appear in topics), and accepting must
// be stable: the accepted HELLO, encoded again, parses to the same value.
//
//	go test ./protocol -run XXX -fuzz FuzzParseHello -fuzztime 2m
func FuzzParseHello(f *testing.F) {
	for _, s := range []string{
		`{"version":1,"role":"vendor","name":"1-206-flowers"}`,
		`{"version":1,"role":"driver","name":"dana","token":"caps_abc"}`,
		`{"version":1,"name":"anon"}`,
		`{"version":1,"role":"chat","name":"ann","resume":"0b0e3c52-5a7e-4c1e-9e43-6a0e1fb1e0a4"}`,
		`{"version":2,"role":"vendor","name":"x"}`,
		`{"version":1,"role":"VENDOR","name":"x"}`,
		`{"version":1,"role":"vendor","name":"a b"}`,
		`{"version":1,"role":"vendor","name":"a.>"}`,
		`{"version":1,"role":"vendor","name":"*"}`,
		`{"version":1,"role":"vendor","name":""}`,
		`{"version":1,"role":"vendor","name":"` + strings.Repeat("a", 33) + `"}`,
		`{"version":1,"role":"vendor","name":"caf\u00e9"}`,
		`{"version":1,"role":"vendor","name":"a\u0000b"}`,
		`{"version":1.5,"name":"x"}`,
		`{"version":"1","name":"x"}`,
		`{"version":1e0,"name":"x"}`,
		`{"version":1,"version":2,"name":"x"}`,
		`{"Version":1,"ROLE":"admin","Name":"x"}`,
		`{"version":1,"name":"x","extra":{"deep":[1,2,3]}}`,
		`[1,2,3]`, `null`, `"hello"`, `{}`, ``, `{`, "\xff\xfe", `{"version":1,"name":"x"}trailing`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := protocol.ParseHello(b)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("error without text")
			}
			return
		}
		if h.Version != protocol.Version {
			t.Fatalf("accepted version %d", h.Version)
		}
		if !protocol.ValidRole(h.Role) {
			t.Fatalf("accepted role %q", h.Role)
		}
		// Names are put into topics: no spaces, wildcards or NULs.
		if !protocol.ValidName(h.Name) || strings.ContainsAny(h.Name, " *>\x00") {
			t.Fatalf("accepted name %q", h.Name)
		}
		if !utf8.ValidString(h.Name) || len(h.Name) > 32 {
			t.Fatalf("accepted name %q", h.Name)
		}
		again, err := json.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		h2, err := protocol.ParseHello(again)
		if err != nil {
			t.Fatalf("re-encoded HELLO %s refused: %v", again, err)
		}
		if h2 != h {
			t.Fatalf("round trip changed the HELLO: %+v then %+v", h, h2)
		}
	})
}
