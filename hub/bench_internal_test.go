package hub

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/caps-hub/caps/internal/engine"
)

// coversSplit is the original, obviously correct Covers: the fast one must
// agree with it.
func coversSplit(outer, p []byte) bool {
	ot := strings.Split(string(outer), ".")
	pt := strings.Split(string(p), ".")
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
	for i := 0; i < 20000; i++ {
		o, p := gen(), gen()
		if got, want := Covers([]byte(o), []byte(p)), coversSplit([]byte(o), []byte(p)); got != want {
			t.Fatalf("Covers(%q, %q) = %v, want %v", o, p, got, want)
		}
		if got, want := covers(o, []byte(p)), coversSplit([]byte(o), []byte(p)); got != want {
			t.Fatalf("covers(string %q, %q) = %v, want %v", o, p, got, want)
		}
	}
	for _, c := range [][2]string{{"", ""}, {">", ""}, {"a", ""}, {"", "a"}, {"a.", "a."}, {"a.>", "a."}} {
		if got, want := Covers([]byte(c[0]), []byte(c[1])), coversSplit([]byte(c[0]), []byte(c[1])); got != want {
			t.Errorf("Covers(%q, %q) = %v, want %v", c[0], c[1], got, want)
		}
	}
}

// The per-publish checks allocate nothing.
func TestPublishPathZeroAllocs(t *testing.T) {
	h := New(Config{})
	h.streams = []engine.StreamSpec{{Name: "CHAT", Topics: []string{"chat.>"}}, {Name: "PARCELS", Topics: []string{"parcel.>"}}}
	topic := []byte("parcel.pickup.acme")
	if a := testing.AllocsPerRun(1000, func() { h.streamFor(topic) }); a != 0 {
		t.Errorf("streamFor allocates %v times", a)
	}
	p := defaultPolicy()[("client")].compile(Identity{Role: "client", Name: "x"})
	if a := testing.AllocsPerRun(1000, func() { p.canPublish(topic) }); a != 0 {
		t.Errorf("canPublish allocates %v times", a)
	}
}

func BenchmarkStreamFor(b *testing.B) {
	h := New(Config{})
	h.streams = []engine.StreamSpec{{Name: "CLIENTS", Topics: []string{"client.>"}}, {Name: "CHAT", Topics: []string{"chat.>"}}, {Name: "PARCELS", Topics: []string{"parcel.>"}}}
	for _, topic := range []string{"parcel.pickup.acme", "bench.live.topic"} {
		b.Run(topic, func(b *testing.B) {
			t := []byte(topic)
			b.ReportAllocs()
			for b.Loop() {
				h.streamFor(t)
			}
		})
	}
}

// BenchmarkFanoutHandler is the router's fan-out alone: one engine message
// to N local sessions (their queues are emptied after each op, no sockets).
// allocs/op must not grow with N: the frame is encoded once for everyone.
func BenchmarkFanoutHandler(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("subs=%d", n), func(b *testing.B) {
			h := New(Config{})
			members := make([]*Session, n)
			for i := range members {
				members[i] = &Session{hub: h, wake: make(chan struct{}, 1), done: make(chan struct{}),
					perms: defaultPolicy()["client"].compile(Identity{Role: "client", Name: fmt.Sprint("s", i)})}
			}
			ts := &topicSub{sid: 7, pattern: "bench.x"}
			ts.members.Store(&members)
			handle := ts.handler(h)
			m := &nats.Msg{Subject: engine.Subject("bench.x"), Data: make([]byte, 128)}
			b.ReportAllocs()
			for b.Loop() {
				handle(m)
				for _, s := range members {
					s.mu.Lock()
					clear(s.out)
					s.out = s.out[:0]
					s.outBytes = 0
					s.mu.Unlock()
					select {
					case <-s.wake:
					default:
					}
				}
			}
		})
	}
}
