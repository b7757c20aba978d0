package protocol_test

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/caps-hub/caps/protocol"
)

func TestValidTopicAndPattern(t *testing.T) {
	tok64 := strings.Repeat("a", 64)
	tok65 := strings.Repeat("a", 65)
	// 4 tokens of 63 bytes and 3 dots = 255; then one more byte = 256.
	long256 := strings.Repeat(strings.Repeat("b", 63)+".", 3) + strings.Repeat("b", 64)
	long257 := long256 + "b"
	if len(long256) != protocol.MaxTopicLen || len(long257) != protocol.MaxTopicLen+1 {
		t.Fatalf("test topic lengths %d %d", len(long256), len(long257))
	}
	cases := []struct {
		in             string
		topic, pattern bool
	}{
		// Concrete topics.
		{"a", true, true},
		{"parcel.pickup.acme", true, true},
		{"chat.room.lobby", true, true},
		{"A-Z_0-9:~!@#%^&()+=,;'\"?/\\[]{}|`", true, true}, // any printable ASCII but . * > $
		{tok64, true, true},
		{tok64 + "." + tok64, true, true},
		{long256, true, true},
		{"a*b", false, false}, // wildcard inside a token
		{"a>b", false, false},
		{"x.a*", false, false},
		{"x.*a", false, false},
		{"x.>a", false, false},
		// Too long.
		{tok65, false, false},
		{"a." + tok65, false, false},
		{long257, false, false},
		// Empty tokens.
		{"", false, false},
		{".", false, false},
		{"..", false, false},
		{".a", false, false},
		{"a.", false, false},
		{"a..b", false, false},
		{"*.", false, false},
		{".>", false, false},
		// Forbidden bytes.
		{"a b", false, false},
		{" a", false, false},
		{"a\tb", false, false},
		{"a\nb", false, false},
		{"a\x00b", false, false},
		{"a\x7f", false, false},
		{"caf\xc3\xa9", false, false}, // non-ASCII
		{"\xff", false, false},
		{"$SYS.x", false, false}, // reserved
		{"a.$b", false, false},
		{"a.b$", false, false},
		// Patterns.
		{"*", false, true},
		{">", false, true},
		{"a.*", false, true},
		{"*.a", false, true},
		{"a.*.c", false, true},
		{"*.*.*", false, true},
		{"a.>", false, true},
		{"*.>", false, true},
		{"a.*.>", false, true},
		{strings.Repeat("*.", 127) + ">", false, true},
		{">.a", false, false}, // > must be last
		{"a.>.b", false, false},
		{">.>", false, false},
		{"**", false, false},
		{">>", false, false},
		{"*>", false, false},
		{"a.>>", false, false},
		{"a..*", false, false},
		{"a.*.", false, false},
		{"$*", false, false},
	}
	for _, c := range cases {
		if got := protocol.ValidTopic([]byte(c.in)); got != c.topic {
			t.Errorf("ValidTopic(%q) = %v, want %v", c.in, got, c.topic)
		}
		if got := protocol.ValidPattern([]byte(c.in)); got != c.pattern {
			t.Errorf("ValidPattern(%q) = %v, want %v", c.in, got, c.pattern)
		}
		if c.topic && !c.pattern {
			t.Errorf("bad test case %q: every topic is a pattern", c.in)
		}
		if c.pattern {
			wantWild := !c.topic
			if got := protocol.HasWildcard([]byte(c.in)); got != wantWild {
				t.Errorf("HasWildcard(%q) = %v, want %v", c.in, got, wantWild)
			}
		}
	}
	if protocol.ValidTopic(nil) || protocol.ValidPattern(nil) {
		t.Error("nil is valid")
	}
}

func TestHasWildcard(t *testing.T) {
	for in, want := range map[string]bool{
		"a": false, "a.b.c": false, "parcel.pickup.acme": false,
		"*": true, ">": true, "a.*": true, "*.a": true, "a.*.b": true, "a.>": true,
	} {
		if got := protocol.HasWildcard([]byte(in)); got != want {
			t.Errorf("HasWildcard(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestMatch(t *testing.T) {
	cases := []struct {
		pattern, topic string
		want           bool
	}{
		{"a", "a", true},
		{"a", "b", false},
		{"a", "ab", false},
		{"ab", "a", false},
		{"a", "a.b", false},
		{"a.b", "a", false},
		{"a.b", "a.b", true},
		{"a.b", "a.c", false},
		{"a.b", "a.bc", false},
		{"a.bc", "a.b", false},
		{"a.b.c", "a.b", false},
		{"parcel.pickup.acme", "parcel.pickup.acme", true},

		{"*", "a", true},
		{"*", "a.b", false},
		{"*.*", "a", false},
		{"*.*", "a.b", true},
		{"*.*", "a.b.c", false},
		{"a.*", "a.b", true},
		{"a.*", "a", false},
		{"a.*", "a.b.c", false},
		{"a.*", "b.c", false},
		{"*.b", "a.b", true},
		{"*.b", "a.c", false},
		{"a.*.c", "a.b.c", true},
		{"a.*.c", "a.b.d", false},
		{"a.*.c", "a.c", false},
		{"parcel.pickup.*", "parcel.pickup.acme", true},
		{"parcel.pickup.*", "parcel.pickup", false},
		{"parcel.pickup.*", "parcel.pickup.acme.x", false},

		{">", "a", true},
		{">", "a.b.c", true},
		{"a.>", "a", false},
		{"a.>", "a.b", true},
		{"a.>", "a.b.c.d", true},
		{"a.>", "b.c", false},
		{"a.>", "ab.c", false},
		{"a.b.>", "a.b", false},
		{"a.b.>", "a.c.d", false},
		{"*.>", "a", false},
		{"*.>", "a.b", true},
		{"a.*.>", "a.b", false},
		{"a.*.>", "a.b.c", true},
		{"*.pickup.>", "parcel.pickup.acme", true},
		{"parcel.>", "parcel", false},
		{"parcel.>", "parcel.pickup.acme", true},
	}
	for _, c := range cases {
		if got := protocol.Match([]byte(c.pattern), []byte(c.topic)); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.pattern, c.topic, got, c.want)
		}
	}
	// A concrete topic matches itself, and ">" matches everything.
	for _, topic := range []string{"a", "a.b", "parcel.pickup.acme", strings.Repeat("x.", 100) + "y"} {
		if !protocol.Match([]byte(topic), []byte(topic)) {
			t.Errorf("Match(%q, itself) = false", topic)
		}
		if !protocol.Match([]byte(">"), []byte(topic)) {
			t.Errorf("Match(>, %q) = false", topic)
		}
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	p, topic := []byte("parcel.*.acme"), []byte("parcel.pickup.acme")
	if n := testing.AllocsPerRun(1000, func() { protocol.Match(p, topic) }); n != 0 {
		t.Errorf("Match allocates %v times per call", n)
	}
	if n := testing.AllocsPerRun(1000, func() { protocol.ValidPattern(p) }); n != 0 {
		t.Errorf("ValidPattern allocates %v times per call", n)
	}
}

// coversSplit is the obvious Covers, token lists side by side: the fast one
// must agree with it.
func coversSplit(outer, p string) bool {
	ot, pt := strings.Split(outer, "."), strings.Split(p, ".")
	for i, o := range ot {
		if o == ">" {
			return i < len(pt)
		}
		if i >= len(pt) {
			return false
		}
		switch {
		case pt[i] == ">":
			return false
		case o == "*":
		case o != pt[i]:
			return false
		}
	}
	return len(ot) == len(pt)
}

func TestCoversAgreesWithSplit(t *testing.T) {
	tokens := []string{"a", "b", "ab", "*", ">"}
	rnd := rand.New(rand.NewPCG(1, 2))
	gen := func() string {
		n := 1 + rnd.IntN(4)
		parts := make([]string, n)
		for i := range parts {
			parts[i] = tokens[rnd.IntN(len(tokens))]
			if parts[i] == ">" && i != n-1 {
				parts[i] = "a"
			}
		}
		return strings.Join(parts, ".")
	}
	for range 20000 {
		o, p := gen(), gen()
		if got, want := protocol.Covers([]byte(o), []byte(p)), coversSplit(o, p); got != want {
			t.Fatalf("Covers(%q, %q) = %v, want %v", o, p, got, want)
		}
	}
	for _, c := range [][2]string{{"", ""}, {">", ""}, {"a", ""}, {"", "a"}, {"a.", "a."}, {"a.>", "a."}} {
		if got, want := protocol.Covers([]byte(c[0]), []byte(c[1])), coversSplit(c[0], c[1]); got != want {
			t.Errorf("Covers(%q, %q) = %v, want %v", c[0], c[1], got, want)
		}
	}
	outer, p := []byte("parcel.*.>"), []byte("parcel.pickup.acme")
	if a := testing.AllocsPerRun(1000, func() { protocol.Covers(outer, p) }); a != 0 {
		t.Errorf("Covers allocates %v times", a)
	}
}
