package hub

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/caps-hub/caps/internal/engine"
)

// The per-publish checks allocate nothing.
func TestPublishPathZeroAllocs(t *testing.T) {
	h := New(Config{})
	h.addStored("CHAT", []string{"chat.>"})
	h.addStored("PARCELS", []string{"parcel.>"})
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
	h.addStored("CLIENTS", []string{"client.>"})
	h.addStored("CHAT", []string{"chat.>"})
	h.addStored("PARCELS", []string{"parcel.>"})
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
	for _, keyed := range []bool{false, true} {
		for _, n := range []int{1, 10, 100} {
			benchFanoutHandler(b, n, keyed)
		}
	}
}

// benchFanoutHandler: keyed messages carry a message id, as the engine
// stores a client's (scoped to its publisher, msgid.go): deliveries cut the
// scope off.
func benchFanoutHandler(b *testing.B, n int, keyed bool) {
	{
		b.Run(fmt.Sprintf("keyed=%v/subs=%d", keyed, n), func(b *testing.B) {
			h := New(Config{})
			members := make([]*Session, n)
			for i := range members {
				members[i] = &Session{hub: h, wake: make(chan struct{}, 1), done: make(chan struct{}),
					writing: true} // no socket: the benchmark empties the queues itself
				members[i].useCAPSFrames()
				members[i].perms.Store(defaultPolicy()["client"].compile(Identity{Role: "client", Name: fmt.Sprint("s", i)}))
			}
			ts := &topicSub{sid: 7, pattern: "bench.x"}
			ts.members.Store(&members)
			handle := ts.handler(h)
			m := &nats.Msg{Subject: engine.Subject("bench.x"), Data: make([]byte, 128)}
			if keyed {
				m.Header = nats.Header{nats.MsgIdHdr: []string{"~client~pub~6f1c1d4e-2a7b-4c53-9a43-1f6b0b3c9d10.delivered"}}
			}
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

// BenchmarkLogEvent is the cost of one EVENT line when the hub is not quiet.
func BenchmarkLogEvent(b *testing.B) {
	h := New(Config{EventOut: io.Discard})
	topic := []byte("parcel.pickup.acme")
	payload := []byte(`{"store":"acme","orderID":"6f1c1d4e-2a7b-4c53-9a43-1f6b0b3c9d10","customer":"Ada Lovelace","address":"1 Main St, Seattle"}`)
	b.ReportAllocs()
	for b.Loop() {
		h.logEvent(topic, payload)
	}
}

// The hand-written EVENT line is byte for byte json.Marshal's.
func TestEventLineMatchesMarshal(t *testing.T) {
	now := time.Date(2026, 11, 25, 23, 40, 1, 234_000_000, time.UTC)
	payloads := []string{
		`{"store":"acme","orderID":"6f1c1d4e","customer":"Ada <Lovelace> & co","address":"1 Main St"}`,
		"{\n  \"a\": [1, 2,\t3],\n  \"b\": \"x\\u2028y\"\n}", `"just a string"`, `42`, `null`, `[1,{"x":"<&>"}]`,
		"plain text, not JSON", "", "bad \xff utf8 \x00 \x1f \u2028 \u2029 <b> \"q\" \\ \b\f\n\r\t", `{"broken": `,
		"{\"k\":\"\u2028\u2029 é 日本\"}",
	}
	rnd := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 2000; i++ {
		b := make([]byte, rnd.IntN(24))
		for j := range b {
			b[j] = byte(rnd.IntN(256))
			if rnd.IntN(3) == 0 {
				b[j] = "<>&\"\\\n{}[]:,0 \xe2\x80\xa8"[rnd.IntN(16)]
			}
		}
		payloads = append(payloads, string(b))
	}
	var scratch bytes.Buffer
	for _, p := range payloads {
		for _, ev := range []string{"pickup", "parcel.pickup.a<b>&\"c\\"} {
			want, err := json.Marshal(eventLine{Event: ev, Topic: "parcel.pickup.a<b>", Time: now.Format(eventTimeLayout), Payload: jsonOrString([]byte(p))})
			if err != nil {
				t.Fatal(err)
			}
			want = append(append([]byte("EVENT "), want...), '\n')
			got := appendEventLine(nil, &scratch, []byte(ev), []byte("parcel.pickup.a<b>"), now, []byte(p))
			if !bytes.Equal(got, want) {
				t.Fatalf("payload %q:\n got %s\nwant %s", p, got, want)
			}
		}
	}
}

// eventLine and jsonOrString are how EVENT lines used to be made, kept as
// the reference the fast formatter must agree with.
type eventLine struct {
	Event   string          `json:"event"`
	Topic   string          `json:"topic"`
	Time    string          `json:"time"`
	Payload json.RawMessage `json:"payload"`
}

func jsonOrString(p []byte) json.RawMessage {
	if len(p) > 0 && json.Valid(p) {
		return p
	}
	b, _ := json.Marshal(string(p))
	return b
}
