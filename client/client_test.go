package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/protocol"
)

func TestMain(m *testing.M) {
	// The end-to-end tests run hubs with an embedded nats-server, which
	// keeps a few process-wide goroutines alive.
	goleak.VerifyTestMain(m, hubtest.LeakOptions()...)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func dialFake(t *testing.T, h *fakeHub, opts Options) *Conn {
	t.Helper()
	if opts.Name == "" {
		opts.Name = "tester"
	}
	c, err := Dial(testCtx(t), []string{h.addr()}, opts)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// collector gathers messages delivered to a handler.
type collector struct {
	mu   sync.Mutex
	msgs []*Msg
}

func (c *collector) handle(m *Msg) {
	c.mu.Lock()
	c.msgs = append(c.msgs, m)
	c.mu.Unlock()
}

func (c *collector) reset() {
	c.mu.Lock()
	c.msgs = nil
	c.mu.Unlock()
}

func (c *collector) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

func (c *collector) get(i int) *Msg {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.msgs[i]
}

func TestParseAddrs(t *testing.T) {
	got := ParseAddrs(" a:1, ,b:2,tls://c:3 ,")
	want := []string{"a:1", "b:2", "tls://c:3"}
	if !slices.Equal(got, want) {
		t.Fatalf("ParseAddrs = %q, want %q", got, want)
	}
	if ParseAddrs("") != nil {
		t.Fatal("ParseAddrs(\"\") not empty")
	}
}

func TestDefaultAddrs(t *testing.T) {
	t.Setenv(EnvHub, "")
	if got := DefaultAddrs(""); !slices.Equal(got, []string{"localhost:3000"}) {
		t.Fatalf("default = %q", got)
	}
	t.Setenv(EnvHub, "x:1,y:2")
	if got := DefaultAddrs(""); !slices.Equal(got, []string{"x:1", "y:2"}) {
		t.Fatalf("env = %q", got)
	}
	if got := DefaultAddrs("z:3"); !slices.Equal(got, []string{"z:3"}) {
		t.Fatalf("flag = %q", got)
	}
}

func TestParseEndpoint(t *testing.T) {
	cases := []struct {
		in      string
		custom  bool
		addr    string
		tls, ok bool
	}{
		{"host:1", false, "host:1", false, true},
		{"host", false, "host:3000", false, true},
		{"caps://host:4", false, "host:4", false, true},
		{"caps://host:4/", false, "host:4", false, true},
		{"tls://host:5", false, "host:5", true, true},
		{"TLS://host", false, "host:3000", true, true},
		{"[::1]:7", false, "[::1]:7", false, true},
		{"::1", false, "[::1]:3000", false, true},
		{"ws://host:8080/ws", false, "", false, false},
		{"ws://host:8080/ws", true, "ws://host:8080/ws", false, true},
		{"caps://", false, "", false, false},
	}
	for _, c := range cases {
		ep, err := parseEndpoint(c.in, false, c.custom)
		if (err == nil) != c.ok {
			t.Errorf("%q: err = %v", c.in, err)
			continue
		}
		if err == nil && (ep.addr != c.addr || ep.tls != c.tls) {
			t.Errorf("%q: got %q tls=%v, want %q tls=%v", c.in, ep.addr, ep.tls, c.addr, c.tls)
		}
	}
	if ep, _ := parseEndpoint("h:1", true, false); !ep.tls {
		t.Error("Options.TLS does not force TLS")
	}
}

func TestBackoff(t *testing.T) {
	minD, maxD := 100*time.Millisecond, 5*time.Second
	for i := 0; i < 3; i++ {
		if d := backoff(i, 3, minD, maxD, true); d != 0 {
			t.Fatalf("initial attempt %d waits %v", i, d)
		}
	}
	for attempt := 0; attempt < 200; attempt++ {
		d := backoff(attempt, 1, minD, maxD, false)
		want := minD << min(attempt, 10)
		want = min(want, maxD)
		if d < want/2 || d > want {
			t.Fatalf("attempt %d: %v not in [%v, %v]", attempt, d, want/2, want)
		}
	}
	if d := backoff(50, 1, minD, maxD, false); d < maxD/2 || d > maxD {
		t.Fatalf("cap: %v", d)
	}
	// Jitter spreads the waits.
	seen := map[time.Duration]bool{}
	for i := 0; i < 50; i++ {
		seen[backoff(3, 1, minD, maxD, false)] = true
	}
	if len(seen) < 10 {
		t.Fatalf("no jitter: %d distinct waits", len(seen))
	}
}

func TestHandshake(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{Role: protocol.RoleDriver, Name: "dave", Token: "tok"})
	w := c.Welcome()
	if w.Session != "sess-1" || w.Hub != "fake" || w.Name != "dave" || w.Role != "driver" {
		t.Fatalf("welcome = %+v", w)
	}
	hs := h.helloList()
	if len(hs) != 1 || hs[0] != (protocol.Hello{Version: protocol.Version, Role: "driver", Name: "dave", Token: "tok"}) {
		t.Fatalf("hellos = %+v", hs)
	}
	if c.State() != StateConnected || c.Err() != nil || c.Addr() != h.addr() {
		t.Fatalf("state %v err %v addr %q", c.State(), c.Err(), c.Addr())
	}
}

func TestDialBadOptions(t *testing.T) {
	ctx := testCtx(t)
	if _, err := Dial(ctx, []string{"x:1"}, Options{Name: "bad name"}); err == nil {
		t.Fatal("bad name accepted")
	}
	if _, err := Dial(ctx, []string{"x:1"}, Options{Name: "a", Role: "king"}); err == nil {
		t.Fatal("bad role accepted")
	}
	if _, err := Dial(ctx, nil, Options{}); err == nil {
		t.Fatal("no addresses accepted")
	}
}

func TestDialFatalHandshake(t *testing.T) {
	for _, code := range []string{protocol.CodeAuth, protocol.CodeNameTaken, protocol.CodeHandshake} {
		t.Run(code, func(t *testing.T) {
			h := newFakeHub(t)
			h.set(func(h *fakeHub) { h.refuse = &protocol.Error{Code: code, Text: "go away"} })
			start := time.Now()
			_, err := Dial(testCtx(t), []string{h.addr()}, Options{Name: "x"})
			var pe *protocol.Error
			if !errors.As(err, &pe) || pe.Code != code || !pe.Fatal {
				t.Fatalf("err = %v", err)
			}
			if h.connCount() != 1 || time.Since(start) > 5*time.Second {
				t.Fatalf("retried: %d connections in %v", h.connCount(), time.Since(start))
			}
		})
	}
}

func TestDialRetriesTransient(t *testing.T) {
	h := newFakeHub(t)
	h.set(func(h *fakeHub) { h.refuse = &protocol.Error{Code: protocol.CodeTooManyConns, Text: "full"} })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := Dial(ctx, []string{h.addr()}, Options{Name: "x", ReconnectMin: 10 * time.Millisecond, ReconnectMax: 20 * time.Millisecond})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.CodeTooManyConns {
		t.Fatalf("last error not reported: %v", err)
	}
	if h.connCount() < 3 {
		t.Fatalf("only %d attempts", h.connCount())
	}
}

func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

func TestDialNoReconnectOnePass(t *testing.T) {
	start := time.Now()
	_, err := Dial(testCtx(t), []string{deadAddr(t), deadAddr(t)}, Options{Name: "x", NoReconnect: true})
	if err == nil || time.Since(start) > 3*time.Second {
		t.Fatalf("err = %v after %v", err, time.Since(start))
	}
}

func TestDialRotates(t *testing.T) {
	h := newFakeHub(t)
	c, err := Dial(testCtx(t), []string{deadAddr(t), "caps://" + h.addr()}, Options{Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Addr() != "caps://"+h.addr() {
		t.Fatalf("addr = %q", c.Addr())
	}
}

func TestCustomDialer(t *testing.T) {
	h := newFakeHub(t)
	var asked atomic.Value
	c := dialFake(t, h, Options{Dialer: func(ctx context.Context, addr string) (net.Conn, error) {
		asked.Store(addr)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", h.addr())
	}})
	_ = c
	if asked.Load() != h.addr() {
		t.Fatalf("dialer got %v", asked.Load())
	}
	c2, err := Dial(testCtx(t), []string{"ws://example/ws"}, Options{Name: "y", Dialer: func(ctx context.Context, addr string) (net.Conn, error) {
		asked.Store(addr)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", h.addr())
	}})
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()
	if asked.Load() != "ws://example/ws" {
		t.Fatalf("dialer got %v", asked.Load())
	}
}

func TestPubSub(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{})
	ctx := testCtx(t)
	var col collector
	sub, err := c.Subscribe(ctx, "a.*", col.handle)
	if err != nil {
		t.Fatal(err)
	}
	payload := []byte("one")
	if seq, err := c.Publish(ctx, "a.b", payload, WithMsgID("m1")); err != nil || seq != 0 {
		t.Fatalf("publish: %d %v", seq, err)
	}
	copy(payload, "XXX") // the caller may reuse its buffer at once
	if _, err := c.Publish(ctx, "a.c", []byte("two")); err != nil {
		t.Fatal(err)
	}
	if err := c.PublishAsync("a.d", []byte("three")); err != nil {
		t.Fatal(err)
	}
	hubtest.Until(t, 10*time.Second, "3 messages", func() bool { return col.len() == 3 })
	m := col.get(0)
	if m.Topic != "a.b" || string(m.Payload) != "one" || m.Key != "m1" || m.Sub != sub || m.AckRequired {
		t.Fatalf("msg 0 = %+v", m)
	}
	if string(col.get(1).Payload) != "two" || string(col.get(2).Payload) != "three" {
		t.Fatalf("payloads %q %q", col.get(1).Payload, col.get(2).Payload)
	}
	if err := m.Ack(ctx); err != nil {
		t.Fatalf("ack of a live message: %v", err)
	}
	pubs := h.frames(protocol.OpPub)
	if len(pubs) != 3 || pubs[0].ID == 0 || string(pubs[0].Key) != "m1" || pubs[2].ID != 0 {
		t.Fatalf("pubs = %v", pubs)
	}
	if _, err := c.Publish(ctx, "a.*", nil); err == nil {
		t.Fatal("wildcard topic accepted")
	}
	if _, err := c.Subscribe(ctx, "a..b", col.handle); err == nil {
		t.Fatal("bad pattern accepted")
	}
}

func TestPublishDurableFlag(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{})
	seq, err := c.Publish(testCtx(t), "stored.x", []byte("p"), WithDurable(), WithMsgID("k"))
	if err != nil || seq != 1 {
		t.Fatalf("%d %v", seq, err)
	}
	f := h.frames(protocol.OpPub)[0]
	if f.Flags&protocol.FlagDurable == 0 || string(f.Key) != "k" {
		t.Fatalf("frame %v", &f)
	}
}

func TestPublishError(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{})
	_, err := c.Publish(testCtx(t), "fail.x", nil)
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.CodeRejected || pe.Fatal {
		t.Fatalf("err = %v", err)
	}
	// The connection is still usable.
	if _, err := c.Publish(testCtx(t), "ok.x", nil); err != nil {
		t.Fatal(err)
	}
}

func TestAsyncErrorReported(t *testing.T) {
	h := newFakeHub(t)
	errs := make(chan error, 4)
	c := dialFake(t, h, Options{OnError: func(err error) { errs <- err }})
	if err := c.PublishAsync("fail.x", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		var pe *protocol.Error
		if !errors.As(err, &pe) || pe.Code != protocol.CodeRejected {
			t.Fatalf("err = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no async error")
	}
}

func TestSharedSid(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{})
	ctx := testCtx(t)
	var a, b, g collector
	sa, err := c.Subscribe(ctx, "x.>", a.handle)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := c.Subscribe(ctx, "x.>", b.handle)
	if err != nil {
		t.Fatal(err)
	}
	sg, err := c.Subscribe(ctx, "x.>", g.handle, Queue("q"))
	if err != nil {
		t.Fatal(err)
	}
	var g2 collector
	sg2, err := c.Subscribe(ctx, "x.>", g2.handle, Queue("q"))
	if err != nil {
		t.Fatal(err)
	}
	if subs := h.frames(protocol.OpSub); len(subs) != 2 {
		t.Fatalf("%d SUB frames, want 2 (one per pattern+group)", len(subs))
	}
	// Two local members of one queue group: each message to one of them.
	for range 10 {
		if err := c.PublishAsync("x.z", nil); err != nil {
			t.Fatal(err)
		}
	}
	hubtest.Until(t, 10*time.Second, "group deliveries", func() bool { return g.len()+g2.len() == 10 && a.len() == 10 })
	if g.len() == 0 || g2.len() == 0 {
		t.Fatalf("round robin: %d and %d", g.len(), g2.len())
	}
	sg2.Unsubscribe()
	a.reset()
	b.reset()
	g.reset()
	if _, err := c.Publish(ctx, "x.y", []byte("1")); err != nil {
		t.Fatal(err)
	}
	hubtest.Until(t, 10*time.Second, "deliveries", func() bool { return a.len() == 1 && b.len() == 1 && g.len() == 1 })
	if a.get(0) == b.get(0) || &a.get(0).Payload[0] == &b.get(0).Payload[0] {
		t.Fatal("handlers share one Msg")
	}
	if err := sa.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(h.frames(protocol.OpUnsub)); n != 0 {
		t.Fatalf("UNSUB sent while another local subscription uses the sid")
	}
	if _, err := c.Publish(ctx, "x.y", []byte("2")); err != nil {
		t.Fatal(err)
	}
	hubtest.Until(t, 10*time.Second, "second delivery", func() bool { return b.len() == 2 && g.len() == 2 })
	if a.len() != 1 {
		t.Fatalf("unsubscribed handler got %d", a.len())
	}
	sb.Unsubscribe()
	sb.Unsubscribe() // idempotent
	sg.Unsubscribe()
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	unsubs := h.frames(protocol.OpUnsub)
	if len(unsubs) != 2 || unsubs[0].ID != 101 || unsubs[1].ID != 102 {
		t.Fatalf("unsubs = %v", unsubs)
	}
	<-sa.Done()
	if sa.Err() != nil {
		t.Fatalf("Err after Unsubscribe = %v", sa.Err())
	}
	// Subscribing again after the last one left sends a new SUB.
	if _, err := c.Subscribe(ctx, "x.>", a.handle); err != nil {
		t.Fatal(err)
	}
	if n := len(h.frames(protocol.OpSub)); n != 3 {
		t.Fatalf("%d SUB frames", n)
	}
}

// TestHubReturnsSameSid: entries the client does not share (history,
// durable) may still get one sid from the hub; a live MSG then reaches each
// of them once, and a durable one exactly one handler.
func TestHubReturnsSameSid(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{})
	ctx := testCtx(t)
	var a, b collector
	if _, err := c.Subscribe(ctx, "h.x", a.handle); err != nil {
		t.Fatal(err)
	}
	sb, err := c.Subscribe(ctx, "h.x", b.handle, History(5))
	if err != nil {
		t.Fatal(err)
	}
	subs := h.frames(protocol.OpSub)
	if len(subs) != 2 || string(subs[1].Payload) != `{"history":5}` {
		t.Fatalf("subs %v", subs)
	}
	h.sendAll(&protocol.Frame{Op: protocol.OpMsg, ID: 101, Topic: []byte("h.x"), Flags: protocol.FlagHistory, Payload: []byte("old")})
	h.sendAll(&protocol.Frame{Op: protocol.OpMsg, ID: 101, Topic: []byte("h.x"), Payload: []byte("new")})
	hubtest.Until(t, 10*time.Second, "deliveries", func() bool { return a.len() == 1 && b.len() == 2 })
	if string(a.get(0).Payload) != "new" || !b.get(0).History || string(b.get(0).Payload) != "old" {
		t.Fatalf("a=%+v b0=%+v", a.get(0), b.get(0))
	}
	sb.Unsubscribe()
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(h.frames(protocol.OpUnsub)); n != 0 {
		t.Fatalf("UNSUB while the sid is still used")
	}
}

func TestSubscribeRefused(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{})
	_, err := c.Subscribe(testCtx(t), "forbidden.x", func(*Msg) {})
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.CodeForbidden {
		t.Fatalf("err = %v", err)
	}
}

func TestRequest(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{})
	ctx := testCtx(t)
	got, err := c.Request(ctx, "echo", []byte("hi"))
	if err != nil || string(got) != "hi" {
		t.Fatalf("%q %v", got, err)
	}
	_, err = c.Request(ctx, "nope", nil)
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.CodeNotFound {
		t.Fatalf("err = %v", err)
	}
	// Many at once, answered by correlation id.
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := fmt.Sprint(i)
			got, err := c.Request(ctx, "echo", []byte(want))
			if err != nil || string(got) != want {
				t.Errorf("request %d: %q %v", i, got, err)
			}
		}()
	}
	wg.Wait()
}

func TestManualAckConfirmed(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{})
	ctx := testCtx(t)
	acked := make(chan error, 1)
	_, err := c.Subscribe(ctx, "stored.>", func(m *Msg) {
		if !m.AckRequired || m.Seq != 1 {
			acked <- fmt.Errorf("msg %+v", m)
			return
		}
		err := m.Ack(ctx)
		if err == nil && !errors.Is(m.Ack(ctx), ErrAcked) {
			err = errors.New("second Ack accepted")
		}
		acked <- err
	}, Durable("d1"), ManualAck(), DeliverAll(), MaxInFlight(3), AckWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	sub := h.frames(protocol.OpSub)[0]
	if string(sub.Key) != "d1" || sub.Flags != protocol.FlagManualAck|protocol.FlagDeliverAll ||
		string(sub.Payload) != `{"max_inflight":3,"ack_wait_ms":2000}` {
		t.Fatalf("SUB = %v", &sub)
	}
	if _, err := c.Publish(ctx, "stored.a", []byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-acked:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("no delivery")
	}
	acks := h.frames(protocol.OpAck)
	if len(acks) != 1 || acks[0].Flags != protocol.FlagConfirm || acks[0].ID != 101 || acks[0].Seq != 1 {
		t.Fatalf("acks = %v", acks)
	}
}

func TestAutoAck(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{})
	ctx := testCtx(t)
	var col collector
	if _, err := c.Subscribe(ctx, "stored.>", col.handle, Durable("d2")); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := c.Publish(ctx, "stored.a", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	hubtest.Until(t, 10*time.Second, "3 acks", func() bool { return len(h.frames(protocol.OpAck)) == 3 })
	for i, a := range h.frames(protocol.OpAck) {
		if a.Flags != 0 || a.ID != 101 || a.Seq != uint64(i+1) {
			t.Fatalf("ack %d = %v", i, &a)
		}
	}
}

func TestNak(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{})
	ctx := testCtx(t)
	done := make(chan error, 1)
	if _, err := c.Subscribe(ctx, "stored.>", func(m *Msg) { done <- m.Nak(ctx) }, Durable("d3"), ManualAck()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, "stored.a", nil); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	naks := h.frames(protocol.OpNak)
	if len(naks) != 1 || naks[0].Flags != protocol.FlagConfirm {
		t.Fatalf("naks %v", naks)
	}
}

func TestAckError(t *testing.T) {
	h := newFakeHub(t)
	h.set(func(h *fakeHub) { h.ackErr = true })
	c := dialFake(t, h, Options{})
	ctx := testCtx(t)
	msgs := make(chan *Msg, 1)
	if _, err := c.Subscribe(ctx, "stored.>", func(m *Msg) { msgs <- m }, Durable("d4"), ManualAck()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, "stored.a", nil); err != nil {
		t.Fatal(err)
	}
	m := <-msgs
	// The hub answers the ACK with an ERR carrying the sid and no sequence.
	err := m.Ack(ctx)
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.CodeNotFound {
		t.Fatalf("err = %v", err)
	}
	// A failed Ack may be retried.
	h.set(func(h *fakeHub) { h.ackErr = false })
	if err := m.Ack(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestReconnectResubscribes(t *testing.T) {
	h := newFakeHub(t)
	var mu sync.Mutex
	var states []State
	c := dialFake(t, h, Options{
		ReconnectMin: 5 * time.Millisecond, ReconnectMax: 20 * time.Millisecond,
		OnState: func(s State) { mu.Lock(); states = append(states, s); mu.Unlock() },
	})
	ctx := testCtx(t)
	var live, dur collector
	sl, err := c.Subscribe(ctx, "r.>", live.handle)
	if err != nil {
		t.Fatal(err)
	}
	sl2, err := c.Subscribe(ctx, "r.>", live.handle) // shares the sid
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctx, "stored.>", dur.handle, Durable("dd"), Queue("g")); err != nil {
		t.Fatal(err)
	}
	h.kill()
	hubtest.Until(t, 10*time.Second, "reconnect", func() bool {
		return h.connCount() == 2 && c.State() == StateConnected && len(h.frames(protocol.OpSub)) == 4
	})
	hs := h.helloList()
	if hs[1].Resume != "resume-sess-1" || c.Welcome().Session != "sess-2" || !c.Welcome().Resumed {
		t.Fatalf("hello %+v welcome %+v", hs[1], c.Welcome())
	}
	subs := h.frames(protocol.OpSub)
	if string(subs[2].Topic) != "r.>" || string(subs[3].Key) != "dd" || string(subs[3].Group) != "g" {
		t.Fatalf("resubscribed %v", subs[2:])
	}
	// The new connection's sids are 201, 202: deliveries reach the same handlers.
	if _, err := c.Publish(ctx, "r.x", []byte("after")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, "stored.y", []byte("d")); err != nil {
		t.Fatal(err)
	}
	hubtest.Until(t, 10*time.Second, "deliveries after reconnect", func() bool { return live.len() == 2 && dur.len() == 1 })
	if m0, m1 := live.get(0), live.get(1); m0.sid != 201 || m1.sid != 201 || m0.Sub == m1.Sub ||
		(m0.Sub != sl && m0.Sub != sl2) || (m1.Sub != sl && m1.Sub != sl2) {
		m := live.get(0)
		t.Fatalf("msg %+v", m)
	}
	hubtest.Until(t, 10*time.Second, "auto ack on the new sid", func() bool {
		a := h.frames(protocol.OpAck)
		return len(a) == 1 && a[0].ID == 202
	})
	c.Close()
	hubtest.Until(t, 10*time.Second, "closed state", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(states) > 0 && states[len(states)-1] == StateClosed
	})
	mu.Lock()
	want := []State{StateConnecting, StateConnected, StateReconnecting, StateConnected, StateClosed}
	if !slices.Equal(states, want) {
		t.Fatalf("states %v, want %v", states, want)
	}
	mu.Unlock()
}

func TestResubscribeRetriedWhileUnavailable(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{ReconnectMin: 5 * time.Millisecond, ReconnectMax: 20 * time.Millisecond})
	ctx := testCtx(t)
	var col collector
	sub, err := c.Subscribe(ctx, "stored.>", col.handle, Durable("d"))
	if err != nil {
		t.Fatal(err)
	}
	h.set(func(h *fakeHub) { h.subErr["stored.>"] = protocol.CodeUnavailable })
	h.kill()
	hubtest.Until(t, 10*time.Second, "refused resubscriptions", func() bool { return len(h.frames(protocol.OpSub)) >= 4 })
	h.set(func(h *fakeHub) { delete(h.subErr, "stored.>") })
	hubtest.Until(t, 10*time.Second, "resubscribed", func() bool {
		_, err := c.Publish(ctx, "stored.x", nil)
		return err == nil && col.len() > 0
	})
	select {
	case <-sub.Done():
		t.Fatalf("subscription ended: %v", sub.Err())
	default:
	}
}

func TestResubscribeRefused(t *testing.T) {
	h := newFakeHub(t)
	errs := make(chan error, 4)
	c := dialFake(t, h, Options{ReconnectMin: 5 * time.Millisecond, OnError: func(err error) { errs <- err }})
	ctx := testCtx(t)
	sub, err := c.Subscribe(ctx, "gone.x", func(*Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	other, err := c.Subscribe(ctx, "kept.x", func(*Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	h.set(func(h *fakeHub) { h.subErr["gone.x"] = protocol.CodeForbidden })
	h.kill()
	select {
	case <-sub.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("subscription not ended")
	}
	var pe *protocol.Error
	if !errors.As(sub.Err(), &pe) || pe.Code != protocol.CodeForbidden {
		t.Fatalf("sub.Err = %v", sub.Err())
	}
	select {
	case err := <-errs:
		if !errors.As(err, &pe) || pe.Code != protocol.CodeForbidden {
			t.Fatalf("OnError got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("refusal not reported")
	}
	if other.Err() != nil {
		t.Fatalf("other subscription: %v", other.Err())
	}
}

func TestPendingPublishDisconnected(t *testing.T) {
	h := newFakeHub(t)
	h.set(func(h *fakeHub) { h.hold["slow.x"] = true })
	c := dialFake(t, h, Options{ReconnectMin: 5 * time.Millisecond})
	ctx := testCtx(t)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Publish(ctx, "slow.x", []byte("p"), WithMsgID("id-1"))
		errc <- err
	}()
	hubtest.Until(t, 10*time.Second, "PUB at the hub", func() bool { return len(h.frames(protocol.OpPub)) == 1 })
	h.kill()
	err := <-errc
	if !errors.Is(err, ErrDisconnected) {
		t.Fatalf("err = %v", err)
	}
	// A retry after the reconnect goes through.
	h.set(func(h *fakeHub) { delete(h.hold, "slow.x") })
	if _, err := c.Publish(ctx, "slow.x", []byte("p"), WithMsgID("id-1")); err != nil {
		t.Fatal(err)
	}
}

func TestPublishWaitsForReconnect(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{ReconnectMin: 50 * time.Millisecond, ReconnectMax: 50 * time.Millisecond})
	h.kill()
	hubtest.Until(t, 10*time.Second, "reconnecting", func() bool { return c.State() == StateReconnecting })
	if err := c.PublishAsync("a.b", nil); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("PublishAsync while down: %v", err)
	}
	if _, err := c.Publish(testCtx(t), "a.b", nil); err != nil {
		t.Fatalf("publish: %v", err)
	}
	if h.connCount() != 2 {
		t.Fatalf("%d connections", h.connCount())
	}
}

func TestSubscribeWhileDown(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{ReconnectMin: 50 * time.Millisecond, ReconnectMax: 50 * time.Millisecond})
	h.kill()
	hubtest.Until(t, 10*time.Second, "reconnecting", func() bool { return c.State() == StateReconnecting })
	var col collector
	if _, err := c.Subscribe(testCtx(t), "w.x", col.handle); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(testCtx(t), "w.x", nil); err != nil {
		t.Fatal(err)
	}
	hubtest.Until(t, 10*time.Second, "delivery", func() bool { return col.len() == 1 })
	if n := len(h.frames(protocol.OpSub)); n != 1 {
		t.Fatalf("%d SUBs", n)
	}
	// A Subscribe whose context ends first leaves nothing behind.
	h.kill()
	hubtest.Until(t, 10*time.Second, "reconnecting", func() bool { return c.State() == StateReconnecting })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Subscribe(ctx, "w.y", col.handle); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	hubtest.Until(t, 10*time.Second, "reconnect", func() bool { return c.State() == StateConnected })
	if err := c.Flush(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	for _, f := range h.frames(protocol.OpSub) {
		if string(f.Topic) == "w.y" {
			t.Fatal("canceled subscription sent")
		}
	}
}

func TestHeartbeatDeadHub(t *testing.T) {
	h := newFakeHub(t)
	h.set(func(h *fakeHub) { h.hb = 50; h.noPong = true })
	dialFake(t, h, Options{ReconnectMin: 5 * time.Millisecond})
	// The client pings when idle, and gives up on a hub that stays silent
	// for two intervals.
	hubtest.Until(t, 10*time.Second, "ping", func() bool { return len(h.frames(protocol.OpPing)) > 0 })
	hubtest.Until(t, 10*time.Second, "dead-peer reconnect", func() bool { return h.connCount() >= 2 })
}

func TestHeartbeatLiveHub(t *testing.T) {
	h := newFakeHub(t)
	// Generous interval: the property is timing-based, and test machines
	// can stall goroutines for hundreds of milliseconds under load.
	h.set(func(h *fakeHub) { h.hb = 400 })
	dialFake(t, h, Options{ReconnectMin: 5 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(tWriter{t}, nil))})
	// A hub that answers keeps the connection (several intervals without traffic).
	deadline := time.Now().Add(2400 * time.Millisecond)
	for time.Now().Before(deadline) {
		if h.connCount() != 1 {
			t.Fatalf("reconnected although the hub answers pings")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(h.frames(protocol.OpPing)); n < 3 || n > 12 {
		t.Fatalf("%d pings in 6 intervals", n)
	}
	// The client answers the hub's PINGs with the PING's id.
	h.sendAll(&protocol.Frame{Op: protocol.OpPing, ID: 77})
	hubtest.Until(t, 10*time.Second, "pong", func() bool {
		for _, f := range h.frames(protocol.OpPong) {
			if f.ID == 77 {
				return true
			}
		}
		return false
	})
}

func TestByeReconnects(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{ReconnectMin: 5 * time.Millisecond})
	h.sendAll(&protocol.Frame{Op: protocol.OpBye, Payload: []byte("shutting down")})
	hubtest.Until(t, 10*time.Second, "reconnect", func() bool { return h.connCount() == 2 && c.State() == StateConnected })
}

func TestFatalErrReconnects(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{ReconnectMin: 5 * time.Millisecond})
	h.sendAll(protocol.ErrorFrame(0, protocol.CodeSlowConsumer, "too slow", true))
	hubtest.Until(t, 10*time.Second, "reconnect", func() bool { return h.connCount() == 2 && c.State() == StateConnected })
}

func TestReconnectRefused(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{ReconnectMin: 5 * time.Millisecond})
	h.set(func(h *fakeHub) { h.refuse = &protocol.Error{Code: protocol.CodeAuth, Text: "revoked"} })
	h.kill()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("not closed")
	}
	var pe *protocol.Error
	if !errors.As(c.Err(), &pe) || pe.Code != protocol.CodeAuth {
		t.Fatalf("Err = %v", c.Err())
	}
}

func TestNoReconnect(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{NoReconnect: true})
	var col collector
	sub, err := c.Subscribe(testCtx(t), "n.x", col.handle)
	if err != nil {
		t.Fatal(err)
	}
	h.kill()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("not closed")
	}
	if c.Err() == nil || errors.Is(c.Err(), ErrClosed) || c.State() != StateClosed {
		t.Fatalf("Err = %v state %v", c.Err(), c.State())
	}
	<-sub.Done()
	if _, err := c.Publish(testCtx(t), "n.x", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("publish after end: %v", err)
	}
	if h.connCount() != 1 {
		t.Fatal("reconnected")
	}
}

func TestCloseSaysBye(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{})
	var col collector
	sub, err := c.Subscribe(testCtx(t), "c.x", col.handle)
	if err != nil {
		t.Fatal(err)
	}
	c.PublishAsync("c.x", []byte("last")) // flushed before the BYE
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	hubtest.Until(t, 10*time.Second, "PUB then BYE at the hub", func() bool {
		return len(h.frames(protocol.OpBye)) == 1 && len(h.frames(protocol.OpPub)) == 1
	})
	<-c.Done()
	if !errors.Is(c.Err(), ErrClosed) || !errors.Is(sub.Err(), ErrClosed) || c.State() != StateClosed {
		t.Fatalf("Err %v sub %v", c.Err(), sub.Err())
	}
	if _, err := c.Subscribe(testCtx(t), "c.y", col.handle); !errors.Is(err, ErrClosed) {
		t.Fatalf("subscribe after close: %v", err)
	}
	if _, err := c.Request(testCtx(t), "echo", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("request after close: %v", err)
	}
}

func TestCloseFailsPendingWithErrClosed(t *testing.T) {
	h := newFakeHub(t)
	h.set(func(h *fakeHub) { h.hold["slow.x"] = true })
	c := dialFake(t, h, Options{})
	errc := make(chan error, 1)
	go func() {
		_, err := c.Publish(testCtx(t), "slow.x", nil)
		errc <- err
	}()
	hubtest.Until(t, 10*time.Second, "PUB at the hub", func() bool { return len(h.frames(protocol.OpPub)) == 1 })
	c.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) || errors.Is(err, ErrDisconnected) {
		t.Fatalf("err = %v", err)
	}
}

func TestCloseWhileReconnecting(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{ReconnectMin: time.Hour})
	h.kill()
	hubtest.Until(t, 10*time.Second, "reconnecting", func() bool { return c.State() == StateReconnecting })
	errc := make(chan error, 1)
	go func() {
		_, err := c.Publish(context.Background(), "a.b", nil)
		errc <- err
	}()
	c.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("waiting publish: %v", err)
	}
}

func TestCloseFromHandler(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{})
	if _, err := c.Subscribe(testCtx(t), "q.x", func(m *Msg) { m.Sub.c.Close() }); err != nil {
		t.Fatal(err)
	}
	c.PublishAsync("q.x", nil)
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("not closed")
	}
}

// TestHandlerMayPublish: a handler waiting for its own Publish's answer does
// not stall the read loop.
func TestHandlerMayPublish(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{})
	ctx := testCtx(t)
	var col collector
	if _, err := c.Subscribe(ctx, "out.x", col.handle); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctx, "in.x", func(m *Msg) {
		if _, err := c.Publish(ctx, "out.x", m.Payload); err != nil {
			t.Error(err)
		}
	}); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if _, err := c.Publish(ctx, "in.x", []byte("p")); err != nil {
			t.Fatal(err)
		}
	}
	hubtest.Until(t, 10*time.Second, "echoes", func() bool { return col.len() == 20 })
}

func TestSlowConsumer(t *testing.T) {
	h := newFakeHub(t)
	errs := make(chan error, 10)
	c := dialFake(t, h, Options{OnError: func(err error) { errs <- err }})
	ctx := testCtx(t)
	release := make(chan struct{})
	var slow, fast collector
	if _, err := c.Subscribe(ctx, "s.x", func(m *Msg) { <-release; slow.handle(m) }, Buffer(2)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctx, "s.>", fast.handle, Queue("other")); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if err := c.PublishAsync("s.x", nil); err != nil {
			t.Fatal(err)
		}
	}
	// The other subscription and the connection keep going.
	hubtest.Until(t, 10*time.Second, "fast deliveries", func() bool { return fast.len() == 10 })
	if _, err := c.Request(ctx, "echo", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		if !errors.Is(err, ErrSlowConsumer) {
			t.Fatalf("err = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no slow consumer report")
	}
	close(release)
	hubtest.Until(t, 10*time.Second, "slow deliveries", func() bool { return slow.len() == 3 }) // one running, two buffered
}

func TestMaxFrame(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{})
	big := make([]byte, protocol.DefaultMaxFrame)
	if _, err := c.Publish(testCtx(t), "a.b", big); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v", err)
	}
	if err := c.PublishAsync("a.b", big); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v", err)
	}
}

func TestConcurrentPublish(t *testing.T) {
	h := newFakeHub(t)
	c := dialFake(t, h, Options{})
	ctx := testCtx(t)
	var got atomic.Int64
	if _, err := c.Subscribe(ctx, "p.>", func(*Msg) { got.Add(1) }); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				topic := fmt.Sprintf("p.%d", g)
				if i%2 == 0 {
					if _, err := c.Publish(ctx, topic, []byte("x")); err != nil {
						t.Error(err)
						return
					}
				} else if err := c.PublishAsync(topic, []byte("y")); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	hubtest.Until(t, 10*time.Second, "all deliveries", func() bool { return got.Load() == 1600 })
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }
