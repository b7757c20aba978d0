package hub

import (
	"strings"
	"testing"
	"time"

	"github.com/caps-hub/caps/protocol"
)

// On an embedded engine that nothing else can reach, a live message goes
// to the engine only for a queue group (the engine picks its member); a
// plain subscriber gets it from the hub alone. Counted on the engine
// connection that carries live publishes.
func TestLivePublishSkipsAnEngineNobodyElseReaches(t *testing.T) {
	h := New(quietConfig(t, "skip-test"))
	startInternal(t, h)
	if h.eng.Shared() {
		t.Fatal("an embedded engine without cluster says it is shared")
	}
	sub, pub := dialFrames(t, h, "sub"), dialFrames(t, h, "pub")
	sub.send(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("skip.*")})
	if f := sub.next(10 * time.Second); f.Op != protocol.OpOK {
		t.Fatalf("SUB: %s", f)
	}
	// publish sends n messages to topic and waits for the subscriber to
	// have them all; it returns how many went to the engine meanwhile.
	publish := func(topic string, n int) uint64 {
		t.Helper()
		before := h.eng.Live.Stats().OutMsgs
		for i := range n {
			pub.send(&protocol.Frame{Op: protocol.OpPub, ID: uint64(i + 1), Topic: []byte(topic), Payload: []byte("x")})
			if f := pub.next(10 * time.Second); f.Op != protocol.OpOK {
				t.Fatalf("PUB: %s", f)
			}
		}
		for range n {
			if f := sub.next(10 * time.Second); f.Op != protocol.OpMsg || string(f.Topic) != topic {
				t.Fatalf("want MSG on %s, got %s", topic, f)
			}
		}
		return h.eng.Live.Stats().OutMsgs - before
	}
	if got := publish("skip.plain", 50); got != 0 {
		t.Errorf("%d of 50 live messages with only local subscribers went to the engine, want none", got)
	}
	worker := dialFrames(t, h, "worker")
	worker.send(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("skip.grouped"), Group: []byte("g")})
	if f := worker.next(10 * time.Second); f.Op != protocol.OpOK {
		t.Fatalf("SUB: %s", f)
	}
	if got := publish("skip.grouped", 50); got != 50 {
		t.Errorf("%d of 50 live messages for a queue group went to the engine, want all", got)
	}
	for range 50 {
		if f := worker.next(10 * time.Second); f.Op != protocol.OpMsg {
			t.Fatalf("queue group member: want MSG, got %s", f)
		}
	}
	if got := publish("skip.plain", 50); got != 0 {
		t.Errorf("with a queue group on another topic, %d of 50 live messages went to the engine, want none", got)
	}
}

// A publisher's cached lookup of the local subscriptions (localMatches)
// follows subscriptions made and ended while it keeps publishing to the
// same topic.
func TestLocalMatchesFollowSubscriptions(t *testing.T) {
	h := New(quietConfig(t, "cache-test"))
	startInternal(t, h)
	pub, a, b := dialFrames(t, h, "pub"), dialFrames(t, h, "a"), dialFrames(t, h, "b")
	id := uint64(0)
	publish := func(payload string) {
		t.Helper()
		id++
		pub.send(&protocol.Frame{Op: protocol.OpPub, ID: id, Topic: []byte("cache.t"), Payload: []byte(payload)})
		if f := pub.next(10 * time.Second); f.Op != protocol.OpOK || f.ID != id {
			t.Fatalf("PUB: %s", f)
		}
	}
	subscribe := func(c *frameConn, pattern string) uint64 {
		t.Helper()
		c.send(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte(pattern)})
		f := c.next(10 * time.Second)
		if f.Op != protocol.OpOK {
			t.Fatalf("SUB %s: %s", pattern, f)
		}
		return f.Seq
	}
	// expect reads what c got up to the PONG answering a PING sent now.
	expect := func(c *frameConn, want ...string) {
		t.Helper()
		c.send(&protocol.Frame{Op: protocol.OpPing})
		var got []string
		for f := c.next(10 * time.Second); f.Op != protocol.OpPong; f = c.next(10 * time.Second) {
			if f.Op == protocol.OpMsg {
				got = append(got, string(f.Payload))
			}
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	aSid := subscribe(a, "cache.t")
	publish("1")
	publish("2")
	expect(a, "1", "2")
	subscribe(b, "cache.*") // a new pattern after the publisher's lookup
	publish("3")
	expect(a, "3")
	expect(b, "3")
	bSid := subscribe(b, "cache.t") // joins a's subscription: no new lookup needed
	publish("4")
	expect(a, "4")
	expect(b, "4", "4")
	a.send(&protocol.Frame{Op: protocol.OpUnsub, ID: aSid})
	b.send(&protocol.Frame{Op: protocol.OpUnsub, ID: bSid}) // cache.t has no member left
	// An UNSUB is answered only when it fails: a PING after it on the same
	// connection is answered once it has been handled.
	expect(a)
	expect(b)
	publish("5")
	expect(a)
	expect(b, "5")
}

// A publishing session's memory of whether its last topic is stored
// (publishesStored) follows the topic it publishes to, and keeps its own
// copy of it: the read loop reuses the buffer the topic came in.
func TestPublishesStoredFollowsTheTopic(t *testing.T) {
	h := New(quietConfig(t, "stored-cache-test"))
	h.addStored("S", []string{"st.>"})
	s := &Session{hub: h}
	buf := []byte("st.a")
	for i, c := range []struct {
		topic  string
		stored bool
	}{{"st.a", true}, {"st.a", true}, {"lv.a", false}, {"lv.a", false}, {"st.b", true}, {"lv.b", false}} {
		buf = append(buf[:0], c.topic...) // the same buffer each time
		if got := s.publishesStored(buf); got != c.stored {
			t.Fatalf("publish %d to %s: stored %v, want %v", i, c.topic, got, c.stored)
		}
	}
}
