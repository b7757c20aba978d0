package hub_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

// storeApp stores topics under "store.>" so they can be subscribed durably.
type storeApp struct{}

func (storeApp) Setup(ctx context.Context, h *hub.Host) error {
	return h.AddStream(ctx, hub.StreamSpec{Name: "TEST_STORE", Topics: []string{"store.>"}})
}

func withStore(c *hub.Config) { c.Apps = append(c.Apps, storeApp{}) }

func TestDurableSurvivesDisconnect(t *testing.T) {
	h := startHub(t, func(c *hub.Config) { withStore(c); c.AckWait = 500 * time.Millisecond })
	sub := func() (*rawConn, uint64) {
		r := dialRaw(t, h)
		r.hello("client", "keeper")
		r.send(&protocol.Frame{Op: protocol.OpSub, ID: 1, Flags: protocol.FlagManualAck, Topic: []byte("store.items"), Key: []byte("keeper")})
		f := r.nextOp()
		if f.Op != protocol.OpOK {
			t.Fatalf("durable sub: %s", f)
		}
		return r, f.Seq
	}
	r1, sid := sub()
	pub := dialRaw(t, h)
	pub.hello("client", "pub")
	publish := func(i int) {
		pub.send(&protocol.Frame{Op: protocol.OpPub, ID: uint64(i + 1), Topic: []byte("store.items"), Key: []byte(fmt.Sprint("m", i)), Payload: []byte(fmt.Sprint(i))})
		if f := pub.nextOp(); f.Op != protocol.OpOK || f.Seq == 0 {
			t.Fatalf("stored publish: %s", f)
		}
	}
	publish(0)
	publish(1)
	// Receive both, ack only the first (with confirmation), then vanish.
	m0, m1 := r1.nextOp(), r1.nextOp()
	if m0.Op != protocol.OpMsg || m0.Flags&protocol.FlagAckRequired == 0 || m0.ID != sid {
		t.Fatalf("bad durable delivery %s", m0)
	}
	r1.send(&protocol.Frame{Op: protocol.OpAck, Flags: protocol.FlagConfirm, ID: sid, Seq: m0.Seq})
	if f := r1.nextOp(); f.Op != protocol.OpOK || f.Flags&protocol.FlagConfirm == 0 || f.Seq != m0.Seq {
		t.Fatalf("want ack confirmation, got %s", f)
	}
	_ = m1
	r1.c.Close()
	// Published while the subscriber is offline.
	publish(2)

	r2, sid2 := sub()
	got := map[string]bool{}
	confirmed := 0
	for len(got) < 2 || confirmed < 2 {
		m := r2.nextOp()
		switch m.Op {
		case protocol.OpMsg:
			if string(m.Payload) == "0" {
				t.Fatal("acknowledged message delivered again")
			}
			got[string(m.Payload)] = true
			r2.send(&protocol.Frame{Op: protocol.OpAck, Flags: protocol.FlagConfirm, ID: sid2, Seq: m.Seq})
		case protocol.OpOK:
			confirmed++
		default:
			t.Fatalf("unexpected %s", m)
		}
	}
	if !got["1"] || !got["2"] {
		t.Fatalf("lost messages: got %v", got)
	}
}

func TestDurableRedeliveredAfterAckWait(t *testing.T) {
	h := startHub(t, func(c *hub.Config) { withStore(c); c.AckWait = 300 * time.Millisecond })
	r := dialRaw(t, h)
	r.hello("client", "slow")
	r.send(&protocol.Frame{Op: protocol.OpSub, ID: 1, Flags: protocol.FlagManualAck, Topic: []byte("store.>"), Key: []byte("slow")})
	ok := r.nextOp()
	r.send(&protocol.Frame{Op: protocol.OpPub, ID: 2, Topic: []byte("store.a"), Payload: []byte("x")})
	// The delivery may overtake the publish's OK: the engine hands the
	// message to the durable as it acknowledges the publish.
	var first *protocol.Frame
	for gotOK := false; !gotOK || first == nil; {
		switch f := r.nextOp(); {
		case f.Op == protocol.OpOK && f.ID == 2 && !gotOK:
			gotOK = true
		case f.Op == protocol.OpMsg && f.ID == ok.Seq && first == nil:
			first = f
		default:
			t.Fatalf("want the publish's OK and the delivery, got %s", f)
		}
	}
	again := r.nextOp() // not acked: comes back after the ack wait
	if again.Op != protocol.OpMsg || again.Seq != first.Seq || again.Flags&protocol.FlagRedelivered == 0 {
		t.Fatalf("want redelivery of %d, got %s", first.Seq, again)
	}
}

func TestSubscribeErrors(t *testing.T) {
	h := startHub(t, withStore)
	r := dialRaw(t, h)
	r.hello("client", "bad")
	cases := []struct {
		f    protocol.Frame
		code string
	}{
		{protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("a..b")}, protocol.CodeBadTopic},
		{protocol.Frame{Op: protocol.OpSub, ID: 2, Topic: []byte("a.>.b")}, protocol.CodeBadTopic},
		{protocol.Frame{Op: protocol.OpSub, ID: 3, Topic: []byte("live.x"), Key: []byte("d")}, protocol.CodeBadRequest},
		{protocol.Frame{Op: protocol.OpSub, ID: 4, Topic: []byte("client.>")}, protocol.CodeForbidden},
		{protocol.Frame{Op: protocol.OpPub, ID: 5, Topic: []byte("client.connected"), Payload: []byte("{}")}, protocol.CodeForbidden},
		{protocol.Frame{Op: protocol.OpPub, ID: 6, Topic: []byte("a.*"), Payload: []byte("{}")}, protocol.CodeBadTopic},
		{protocol.Frame{Op: protocol.OpUnsub, ID: 77}, protocol.CodeNotFound},
		{protocol.Frame{Op: protocol.OpReq, ID: 8, Topic: []byte("nope")}, protocol.CodeNotFound},
		{protocol.Frame{Op: protocol.OpSub, ID: 9, Topic: []byte("x"), Payload: []byte("{bad")}, protocol.CodeBadRequest},
	}
	for _, c := range cases {
		r.send(&c.f)
		f := r.nextOp()
		if f.Op != protocol.OpErr || string(f.Topic) != c.code || f.ID != c.f.ID || f.Flags&protocol.FlagFatal != 0 {
			t.Errorf("%s %q: want recoverable %s, got %s", c.f.Op, c.f.Topic, c.code, f)
		}
	}
	// Still usable afterwards.
	r.send(&protocol.Frame{Op: protocol.OpPing})
	if f := r.nextOp(); f.Op != protocol.OpPong {
		t.Fatalf("want PONG, got %s", f)
	}
}
