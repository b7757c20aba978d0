package hub_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

// Each limit, when exceeded, answers with an error frame and counts it in
// caps_errors_total{code} exactly once.

func TestLimitMaxConnections(t *testing.T) {
	h := startHub(t, func(c *hub.Config) { c.MaxConns = 2 })
	a := dialRaw(t, h)
	a.hello("client", "a")
	b := dialRaw(t, h)
	b.hello("client", "b")

	over := dialRaw(t, h)
	f := over.next()
	if f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeTooManyConns || f.Flags&protocol.FlagFatal == 0 {
		t.Fatalf("want fatal too_many_conns, got %s", f)
	}
	over.expectClosed()
	if got := metric(t, h, "caps_errors_total", "code", protocol.CodeTooManyConns); got != 1 {
		t.Fatalf("too_many_conns counted %v times", got)
	}
	// The connected clients are unaffected, and a freed slot can be reused.
	a.send(&protocol.Frame{Op: protocol.OpPing})
	if f := a.nextOp(); f.Op != protocol.OpPong {
		t.Fatalf("want PONG, got %s", f)
	}
	b.c.Close()
	waitMetric(t, h, 1, "caps_sockets_open")
	c := dialRaw(t, h)
	c.hello("client", "c")
}

func TestLimitMaxFrame(t *testing.T) {
	h := startHub(t, func(c *hub.Config) { c.MaxFrame = 1024 })
	w := dialRaw(t, h).hello("client", "probe")
	if w.MaxFrame != 1024 {
		t.Fatalf("WELCOME announces max_frame %d, want 1024", w.MaxFrame)
	}
	// Just under the limit passes.
	r := dialRaw(t, h)
	r.hello("client", "big")
	ok := &protocol.Frame{Op: protocol.OpPub, ID: 1, Topic: []byte("a")}
	ok.Payload = make([]byte, 1024+protocol.HeaderLen-ok.Size())
	r.send(ok)
	if f := r.nextOp(); f.Op != protocol.OpOK {
		t.Fatalf("frame of exactly the limit: want OK, got %s", f)
	}
	// One byte over is fatal, announced from the length prefix alone.
	r.c.Write([]byte{0, 0, 0x04, 0x01})
	f := r.nextOp()
	if f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeFrameTooLarge || f.Flags&protocol.FlagFatal == 0 {
		t.Fatalf("want fatal frame_too_large, got %s", f)
	}
	r.expectClosed()
	// An oversized HELLO is refused the same way.
	hr := dialRaw(t, h)
	hr.send(&protocol.Frame{Op: protocol.OpHello, Payload: make([]byte, 2000)})
	if f := hr.next(); f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeFrameTooLarge {
		t.Fatalf("want frame_too_large for a big HELLO, got %s", f)
	}
	hr.expectClosed()
	if got := metric(t, h, "caps_errors_total", "code", protocol.CodeFrameTooLarge); got != 2 {
		t.Fatalf("frame_too_large counted %v times, want 2", got)
	}
}

func TestLimitHandshakeDeadline(t *testing.T) {
	h := startHub(t, func(c *hub.Config) { c.HandshakeTimeout = 150 * time.Millisecond })
	// Silent, and "slowloris": half a frame header that never completes.
	silent := dialRaw(t, h)
	slow := dialRaw(t, h)
	slow.c.Write([]byte{0, 0})
	for _, r := range []*rawConn{silent, slow} {
		f := r.next()
		if f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeHandshakeTime || f.Flags&protocol.FlagFatal == 0 {
			t.Fatalf("want fatal handshake_timeout, got %s", f)
		}
		r.expectClosed()
	}
	waitMetric(t, h, 2, "caps_errors_total", "code", protocol.CodeHandshakeTime)
	waitMetric(t, h, 0, "caps_sockets_open")
}

func TestLimitIdleTimeout(t *testing.T) {
	// Long enough that the live client's PONGs always arrive in time on a
	// busy machine: it has a whole interval of slack.
	h := startHub(t, func(c *hub.Config) { c.Heartbeat = 250 * time.Millisecond })
	idle := dialRaw(t, h)
	idle.hello("client", "idle")
	live := dialRaw(t, h)
	live.hello("client", "live")
	// live answers every PING; idle reads them and says nothing.
	liveDone := make(chan error, 1)
	stop := make(chan struct{})
	go func() {
		rd := protocol.NewReader(live.c, 0)
		for {
			select {
			case <-stop:
				liveDone <- nil
				return
			default:
			}
			live.c.SetReadDeadline(time.Now().Add(5 * time.Second))
			f, err := rd.Next()
			if err != nil {
				liveDone <- err
				return
			}
			switch f.Op {
			case protocol.OpPing:
				live.c.Write((&protocol.Frame{Op: protocol.OpPong}).Encode())
			default:
				liveDone <- fmt.Errorf("live client got %s", f)
				return
			}
		}
	}()
	for {
		f := idle.next()
		if f.Op == protocol.OpPing {
			continue
		}
		if f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeHeartbeat || f.Flags&protocol.FlagFatal == 0 {
			t.Fatalf("want fatal heartbeat_timeout, got %s", f)
		}
		break
	}
	idle.expectClosed()
	waitMetric(t, h, 1, "caps_connections", "role", "client") // only live is left
	// Counted once, although the heartbeat loop saw the dead session on
	// several ticks before it was gone.
	if got := metric(t, h, "caps_errors_total", "code", protocol.CodeHeartbeat); got != 1 {
		t.Fatalf("heartbeat_timeout counted %v times", got)
	}
	close(stop)
	if err := <-liveDone; err != nil {
		t.Fatalf("live client: %v", err)
	}
}

func TestLimitPublishRate(t *testing.T) {
	h := startHub(t, func(c *hub.Config) { c.PubRate = 5; c.PubBurst = 5 })
	r := dialRaw(t, h)
	if w := r.hello("client", "flood"); w.MaxPubRate != 5 {
		t.Fatalf("WELCOME announces max_pub_rate %d, want 5", w.MaxPubRate)
	}
	// 200 publishes in one write: the burst passes, the rest are refused
	// (at 5/s the bucket refills by one only every 200ms).
	const n = 200
	var buf bytes.Buffer
	for i := 1; i <= n; i++ {
		buf.Write((&protocol.Frame{Op: protocol.OpPub, ID: uint64(i), Topic: []byte("rate.t"), Payload: []byte("x")}).Encode())
	}
	r.c.Write(buf.Bytes())
	oks, limited := 0, 0
	for i := 0; i < n; i++ {
		f := r.nextOp()
		switch {
		case f.Op == protocol.OpOK:
			oks++
		case f.Op == protocol.OpErr && string(f.Topic) == protocol.CodeRateLimited:
			if f.Flags&protocol.FlagFatal != 0 {
				t.Fatal("rate_limited must not be fatal")
			}
			limited++
		default:
			t.Fatalf("unexpected %s", f)
		}
	}
	if oks < 5 || limited == 0 || oks+limited != n {
		t.Fatalf("%d OK, %d rate_limited", oks, limited)
	}
	if got := metric(t, h, "caps_errors_total", "code", protocol.CodeRateLimited); got != float64(limited) {
		t.Fatalf("rate_limited counted %v, sent %d", got, limited)
	}
	// Still connected; requests share the same budget (the bucket may
	// have refilled a little meanwhile, so send more than it can hold).
	buf.Reset()
	for i := uint64(1); i <= 50; i++ {
		buf.Write((&protocol.Frame{Op: protocol.OpReq, ID: n + i, Topic: []byte("any.service")}).Encode())
	}
	r.c.Write(buf.Bytes())
	limited = 0
	for range 50 {
		f := r.nextOp()
		switch {
		case f.Op == protocol.OpErr && string(f.Topic) == protocol.CodeRateLimited:
			limited++
		case f.Op == protocol.OpErr && string(f.Topic) == protocol.CodeNotFound: // within the budget: no such service
		default:
			t.Fatalf("request: unexpected %s", f)
		}
	}
	if limited == 0 {
		t.Fatal("50 requests at once were not rate limited")
	}
	r.send(&protocol.Frame{Op: protocol.OpPing})
	if f := r.nextOp(); f.Op != protocol.OpPong {
		t.Fatalf("want PONG, got %s", f)
	}
}

func TestLimitMaxSubscriptions(t *testing.T) {
	h := startHub(t, func(c *hub.Config) { c.MaxSubs = 3 })
	r := dialRaw(t, h)
	if w := r.hello("client", "subber"); w.MaxSubs != 3 {
		t.Fatalf("WELCOME announces max_subs %d", w.MaxSubs)
	}
	sids := map[int]uint64{}
	for i := 1; i <= 4; i++ {
		r.send(&protocol.Frame{Op: protocol.OpSub, ID: uint64(i), Topic: []byte(fmt.Sprintf("t%d.>", i))})
		f := r.nextOp()
		if i <= 3 {
			if f.Op != protocol.OpOK {
				t.Fatalf("sub %d: want OK, got %s", i, f)
			}
			sids[i] = f.Seq
			continue
		}
		if f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeTooManySubs || f.ID != 4 || f.Flags&protocol.FlagFatal != 0 {
			t.Fatalf("sub 4: want recoverable too_many_subs, got %s", f)
		}
	}
	if got := metric(t, h, "caps_errors_total", "code", protocol.CodeTooManySubs); got != 1 {
		t.Fatalf("too_many_subs counted %v times", got)
	}
	// Freeing one makes room again.
	r.send(&protocol.Frame{Op: protocol.OpUnsub, ID: sids[1]})
	r.send(&protocol.Frame{Op: protocol.OpSub, ID: 5, Topic: []byte("t5.>")})
	if f := r.nextOp(); f.Op != protocol.OpOK || f.ID != 5 {
		t.Fatalf("after UNSUB: want OK 5, got %s", f)
	}
}

// TestLimitSlowConsumer: a subscriber that stops reading is cut off with
// slow_consumer once its queue passes MaxPending; a subscriber that reads
// gets every message and stays connected.
func TestLimitSlowConsumer(t *testing.T) {
	const maxPending = 256 << 10
	h := startHub(t, func(c *hub.Config) { c.MaxPending = maxPending; c.PubRate = -1 })

	slow := dialRaw(t, h)
	slow.hello("client", "slow")
	slow.send(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("flood")})
	if f := slow.nextOp(); f.Op != protocol.OpOK {
		t.Fatalf("want OK, got %s", f)
	}

	fast := dialRaw(t, h)
	fast.hello("client", "fast")
	fast.send(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("flood")})
	if f := fast.nextOp(); f.Op != protocol.OpOK {
		t.Fatalf("want OK, got %s", f)
	}
	var got atomic.Int64
	var fastErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rd := protocol.NewReader(fast.c, 0)
		for {
			fast.c.SetReadDeadline(time.Now().Add(10 * time.Second))
			f, err := rd.Next()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					fastErr = err
				}
				return
			}
			switch f.Op {
			case protocol.OpMsg:
				got.Add(1)
			case protocol.OpPing:
			default:
				fastErr = fmt.Errorf("fast subscriber got %s", f)
				return
			}
		}
	}()

	pub := dialRaw(t, h)
	pub.hello("client", "pub")
	payload := bytes.Repeat([]byte("p"), 1024)
	sent := 0
	// publish sends a batch of 64 (each acknowledged) and waits until the
	// fast subscriber has all of it, so the fast one's queue never holds
	// more than a batch however the machine schedules it, while the slow
	// one's backlog only grows.
	publish := func() {
		t.Helper()
		var buf bytes.Buffer
		for i := 0; i < 64; i++ {
			sent++
			buf.Write((&protocol.Frame{Op: protocol.OpPub, ID: uint64(sent), Topic: []byte("flood"), Payload: payload}).Encode())
		}
		pub.c.Write(buf.Bytes())
		for i := 0; i < 64; i++ {
			if f := pub.nextOp(); f.Op != protocol.OpOK {
				t.Fatalf("publisher: want OK, got %s", f)
			}
		}
		for deadline := time.Now().Add(10 * time.Second); got.Load() < int64(sent); {
			if time.Now().After(deadline) || fastErr != nil {
				t.Fatalf("fast subscriber got %d of %d (%v)", got.Load(), sent, fastErr)
			}
			time.Sleep(time.Millisecond)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for metric(t, h, "caps_slow_consumers_total") == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no slow consumer after %d messages", sent)
		}
		publish()
	}
	// The reader keeps getting everything after the cut.
	publish()
	publish()

	// The slow one, once it reads, finds the reason at the end of its backlog.
	sawErr := false
	for !sawErr {
		f := slow.next()
		switch f.Op {
		case protocol.OpMsg, protocol.OpPing:
		case protocol.OpErr:
			if string(f.Topic) != protocol.CodeSlowConsumer || f.Flags&protocol.FlagFatal == 0 {
				t.Fatalf("want fatal slow_consumer, got %s", f)
			}
			sawErr = true
		default:
			t.Fatalf("slow subscriber got %s", f)
		}
	}
	slow.expectClosed()
	if n := metric(t, h, "caps_errors_total", "code", protocol.CodeSlowConsumer); n != 1 {
		t.Fatalf("slow_consumer counted %v times", n)
	}
	waitMetric(t, h, 1, "caps_slow_consumers_total")
	waitMetric(t, h, 2, "caps_connections", "role", "client") // fast and pub
	fast.c.Close()
	wg.Wait()
	if fastErr != nil {
		t.Fatal(fastErr)
	}
}

// Every number in SUB options is bounded: a huge history count used to make
// the hub allocate a ring of that size and crash (makeslice: cap out of
// range), taking every other client with it.
func TestLimitSubOptionsBounded(t *testing.T) {
	h := startHub(t, nil)
	bystander := dialRaw(t, h)
	bystander.hello("client", "bystander")
	r := dialRaw(t, h)
	r.hello("logger", "probe") // its own client.connected is stored: the topic has history
	cases := []struct{ name, opts string }{
		{"history huge", `{"history": 4611686018427387904}`},
		{"history over max", fmt.Sprintf(`{"history": %d}`, protocol.MaxHistory+1)},
		{"history negative", `{"history": -1}`},
		{"max_inflight huge", `{"max_inflight": 9223372036854775807}`},
		{"max_inflight negative", `{"max_inflight": -5}`},
		{"ack_wait_ms huge", `{"ack_wait_ms": 9223372036854775807}`},
		{"ack_wait_ms negative", `{"ack_wait_ms": -1}`},
		{"number beyond int64", `{"history": 1e40}`},
	}
	for i, c := range cases {
		id := uint64(100 + i)
		r.send(&protocol.Frame{Op: protocol.OpSub, ID: id, Topic: []byte("client.>"), Payload: []byte(c.opts)})
		f := r.nextOp()
		if f.Op != protocol.OpErr || f.ID != id || string(f.Topic) != protocol.CodeBadRequest || f.Flags&protocol.FlagFatal != 0 {
			t.Fatalf("%s: want recoverable bad_request for id %d, got %s", c.name, id, f)
		}
	}
	// The maximum itself is accepted, and the hub and the other client are fine.
	r.send(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("client.>"), Payload: []byte(fmt.Sprintf(`{"history": %d}`, protocol.MaxHistory))})
	if f := r.nextOp(); f.Op != protocol.OpOK {
		t.Fatalf("history at the maximum: want OK, got %s", f)
	}
	bystander.send(&protocol.Frame{Op: protocol.OpPing})
	if f := bystander.nextOp(); f.Op != protocol.OpPong {
		t.Fatalf("bystander: want PONG, got %s", f)
	}
}
