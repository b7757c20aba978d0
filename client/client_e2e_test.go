package client_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/protocol"
)

// End-to-end tests against a real hub with an embedded engine.

// testApp gives the hub a stored topic space ("store.>") and a service.
type testApp struct{}

func (testApp) Setup(ctx context.Context, x *hub.Host) error {
	if err := x.AddStream(ctx, hub.StreamSpec{Name: "E2E", Topics: []string{"store.>"}, Duplicates: time.Minute}); err != nil {
		return err
	}
	x.Handle("test.echo", func(_ context.Context, _ hub.SessionInfo, p []byte) ([]byte, error) { return p, nil })
	return nil
}

type testHub struct {
	t    *testing.T
	h    *hub.Hub
	dir  string
	addr string
	stop func()
}

// startHub runs a hub on dir (a new temp dir when empty) and addr
// ("127.0.0.1:0" when empty) until stop or the end of the test.
func startHub(t *testing.T, dir, addr string, mod func(*hub.Config)) *testHub {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	cfg := hub.Config{Addr: addr, DataDir: dir, Name: "e2e", Apps: []hub.App{testApp{}}}
	if mod != nil {
		mod(&cfg)
	}
	h := hubtest.Start(t, cfg)
	return &testHub{t: t, h: h.Hub, dir: dir, addr: h.Addr().String(), stop: h.Stop}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func dial(t *testing.T, addr, name string, opts client.Options) *client.Conn {
	t.Helper()
	opts.Name = name
	if opts.ReconnectMin == 0 {
		opts.ReconnectMin = 10 * time.Millisecond
		opts.ReconnectMax = 200 * time.Millisecond
	}
	c, err := client.Dial(ctxFor(t, 10*time.Second), []string{addr}, opts)
	if err != nil {
		t.Fatalf("dial %s: %v", name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// inbox collects deliveries.
type inbox struct {
	mu   sync.Mutex
	msgs []*client.Msg
	ch   chan struct{}
}

func newInbox() *inbox { return &inbox{ch: make(chan struct{}, 1)} }

func (b *inbox) add(m *client.Msg) {
	b.mu.Lock()
	b.msgs = append(b.msgs, m)
	b.mu.Unlock()
	select {
	case b.ch <- struct{}{}:
	default:
	}
}

func (b *inbox) all() []*client.Msg {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.msgs)
}

func (b *inbox) topics() []string {
	var out []string
	for _, m := range b.all() {
		out = append(out, m.Topic)
	}
	slices.Sort(out)
	return out
}

func TestE2EPubSub(t *testing.T) {
	th := startHub(t, "", "", nil)
	ctx := ctxFor(t, 30*time.Second)
	sub := dial(t, th.addr, "sub", client.Options{})
	pub := dial(t, th.addr, "pub", client.Options{})
	if w := sub.Welcome(); w.Session == "" || w.Hub != "e2e" || w.HeartbeatMS <= 0 || w.MaxFrame <= 0 || w.Name != "sub" || w.Role != protocol.RoleClient {
		t.Fatalf("welcome %+v", w)
	}
	in := newInbox()
	if _, err := sub.Subscribe(ctx, "e2e.*", in.add); err != nil {
		t.Fatal(err)
	}
	seq, err := pub.Publish(ctx, "e2e.one", []byte("hello"), client.WithMsgID("m-1"))
	if err != nil || seq != 0 {
		t.Fatalf("live publish: seq %d err %v", seq, err)
	}
	if err := pub.PublishAsync("e2e.two", []byte("async")); err != nil {
		t.Fatal(err)
	}
	hubtest.Until(t, 15*time.Second, "2 messages", func() bool { return len(in.all()) == 2 })
	m := in.all()[0]
	if m.Topic != "e2e.one" || string(m.Payload) != "hello" || m.Key != "m-1" || m.Seq != 0 || m.AckRequired {
		t.Fatalf("msg %+v", m)
	}
	// Stored topics give a stream sequence; de-duplication by message id.
	s1, err := pub.Publish(ctx, "store.a", []byte("x"), client.WithMsgID("dup-1"), client.WithDurable())
	if err != nil || s1 == 0 {
		t.Fatalf("stored publish: %d %v", s1, err)
	}
	s2, err := pub.Publish(ctx, "store.a", []byte("x"), client.WithMsgID("dup-1"))
	if err != nil || s2 != s1 {
		t.Fatalf("duplicate publish: seq %d (first %d) err %v", s2, s1, err)
	}
	// WithDurable on a live topic fails; so does a reserved topic.
	var pe *protocol.Error
	if _, err := pub.Publish(ctx, "e2e.x", nil, client.WithDurable()); !errors.As(err, &pe) {
		t.Fatalf("durable publish on a live topic: %v", err)
	}
	if _, err := pub.Publish(ctx, "client.x", nil); !errors.As(err, &pe) || pe.Code != protocol.CodeForbidden {
		t.Fatalf("reserved topic: %v", err)
	}
	if err := pub.Flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

func TestE2EWildcards(t *testing.T) {
	th := startHub(t, "", "", nil)
	ctx := ctxFor(t, 30*time.Second)
	c := dial(t, th.addr, "wild", client.Options{})
	patterns := []string{"w.*", "w.>", "w.*.x", "*.a.x", "w.a.x", ">"}
	boxes := map[string]*inbox{}
	for _, p := range patterns {
		boxes[p] = newInbox()
		if _, err := c.Subscribe(ctx, p, boxes[p].add); err != nil {
			t.Fatalf("subscribe %s: %v", p, err)
		}
	}
	topics := []string{"w", "w.a", "w.a.x", "w.b.x", "w.a.y", "v.a.x", "w.a.x.y"}
	for _, tp := range topics {
		if _, err := c.Publish(ctx, tp, []byte(tp)); err != nil {
			t.Fatalf("publish %s: %v", tp, err)
		}
	}
	want := map[string][]string{}
	for _, p := range patterns {
		for _, tp := range topics {
			if protocol.Match([]byte(p), []byte(tp)) {
				want[p] = append(want[p], tp)
			}
		}
		slices.Sort(want[p])
	}
	total := func() int {
		n := 0
		for _, b := range boxes {
			n += len(b.all())
		}
		return n
	}
	wantTotal := 0
	for _, w := range want {
		wantTotal += len(w)
	}
	hubtest.Until(t, 15*time.Second, "deliveries", func() bool { return total() >= wantTotal })
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range patterns {
		if got := boxes[p].topics(); !slices.Equal(got, want[p]) {
			t.Errorf("%s: got %q, want %q", p, got, want[p])
		}
	}
}

// TestE2ESharedSid: two local subscriptions to one pattern share the hub's
// sid; dropping one leaves the other working.
func TestE2ESharedSid(t *testing.T) {
	th := startHub(t, "", "", nil)
	ctx := ctxFor(t, 30*time.Second)
	c := dial(t, th.addr, "twice", client.Options{})
	a, b := newInbox(), newInbox()
	sa, err := c.Subscribe(ctx, "s.x", a.add)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctx, "s.x", b.add); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, "s.x", []byte("1")); err != nil {
		t.Fatal(err)
	}
	hubtest.Until(t, 15*time.Second, "both", func() bool { return len(a.all()) == 1 && len(b.all()) == 1 })
	if err := sa.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, "s.x", []byte("2")); err != nil {
		t.Fatal(err)
	}
	hubtest.Until(t, 15*time.Second, "second", func() bool { return len(b.all()) == 2 })
	if len(a.all()) != 1 {
		t.Fatalf("unsubscribed handler called again")
	}
}

func TestE2EQueueGroup(t *testing.T) {
	th := startHub(t, "", "", func(c *hub.Config) { c.PubRate = -1 })
	ctx := ctxFor(t, 60*time.Second)
	const n = 600
	var mu sync.Mutex
	seen := map[string][]string{} // payload → members that got it
	perMember := map[string]int{}
	members := []string{"m1", "m2", "m3"}
	for _, name := range members {
		c := dial(t, th.addr, name, client.Options{})
		// m3 has two local members of the group on one connection.
		locals := 1
		if name == "m3" {
			locals = 2
		}
		for i := range locals {
			member := fmt.Sprintf("%s/%d", name, i)
			if _, err := c.Subscribe(ctx, "q.work.*", func(m *client.Msg) {
				mu.Lock()
				seen[string(m.Payload)] = append(seen[string(m.Payload)], member)
				perMember[member]++
				mu.Unlock()
			}, client.Queue("workers")); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A subscriber outside the group sees everything.
	all := newInbox()
	watcher := dial(t, th.addr, "watcher", client.Options{})
	if _, err := watcher.Subscribe(ctx, "q.>", all.add); err != nil {
		t.Fatal(err)
	}
	pub := dial(t, th.addr, "pub", client.Options{})
	for i := range n {
		if err := pub.PublishAsync(fmt.Sprintf("q.work.%d", i%7), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	hubtest.Until(t, 20*time.Second, "all deliveries", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == n && len(all.all()) == n
	})
	// Give duplicates a chance to show up: a round trip through every member's connection.
	if err := watcher.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range n {
		if got := seen[fmt.Sprint(i)]; len(got) != 1 {
			t.Fatalf("message %d delivered to %v, want exactly one member", i, got)
		}
	}
	for member, k := range perMember {
		if k == 0 {
			t.Errorf("member %s got nothing", member)
		}
	}
	if len(perMember) != 4 {
		t.Errorf("deliveries per member: %v", perMember)
	}
}

// TestE2EDurableAcrossDisconnect: a durable subscriber that loses its
// connection gets, after the reconnect, every message it had not
// acknowledged and every message published meanwhile, and none of those it
// had acknowledged.
func TestE2EDurableAcrossDisconnect(t *testing.T) {
	th := startHub(t, "", "", nil)
	ctx := ctxFor(t, 60*time.Second)
	var k hubtest.Cutter
	var stMu sync.Mutex
	var states []client.State
	worker := dial(t, th.addr, "worker", client.Options{
		Dialer:  k.Dial,
		OnState: func(s client.State) { stMu.Lock(); states = append(states, s); stMu.Unlock() },
	})
	pub := dial(t, th.addr, "pub", client.Options{})

	var mu sync.Mutex
	acked := map[uint64]bool{} // stream seqs acknowledged (confirmed)
	pending := map[uint64]*client.Msg{}
	var redeliveredAcked []uint64
	var deliveries []*client.Msg
	ackNow := true
	sub, err := worker.Subscribe(ctx, "store.jobs.>", func(m *client.Msg) {
		mu.Lock()
		deliveries = append(deliveries, m)
		if acked[m.Seq] {
			redeliveredAcked = append(redeliveredAcked, m.Seq)
		}
		doAck := ackNow
		if !doAck {
			pending[m.Seq] = m
		}
		mu.Unlock()
		if doAck {
			if err := m.Ack(ctx); err != nil {
				t.Errorf("ack %d: %v", m.Seq, err)
				return
			}
			mu.Lock()
			acked[m.Seq] = true
			mu.Unlock()
		}
	}, client.Durable("jobs"), client.ManualAck(), client.MaxInFlight(100),
		// The hub may strand deliveries of a member that left until the ack
		// wait (see TestE2EDurablePromptRedelivery): keep it short so that
		// this test checks the client's guarantees, not the hub's latency.
		client.AckWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if sub.Durable() != "jobs" {
		t.Fatal("durable name")
	}
	published := map[uint64]string{}
	publish := func(i int) {
		id := fmt.Sprintf("job-%d", i)
		seq, err := pub.Publish(ctx, fmt.Sprintf("store.jobs.%d", i%3), []byte(id), client.WithMsgID(id))
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		published[seq] = id
	}
	// 10 acknowledged.
	for i := range 10 {
		publish(i)
	}
	hubtest.Until(t, 20*time.Second, "10 acks", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) == 10 })
	// 10 delivered but not acknowledged.
	mu.Lock()
	ackNow = false
	mu.Unlock()
	for i := 10; i < 20; i++ {
		publish(i)
	}
	hubtest.Until(t, 20*time.Second, "10 unacked deliveries", func() bool { mu.Lock(); defer mu.Unlock(); return len(pending) == 10 })

	// Cut the connection; publish more while the worker is away.
	stMu.Lock()
	nStates := len(states)
	stMu.Unlock()
	mu.Lock()
	ackNow = true
	mu.Unlock()
	k.Cut()
	for i := 20; i < 30; i++ {
		publish(i)
	}
	hubtest.Until(t, 15*time.Second, "every message acknowledged", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) == 30
	})
	stMu.Lock()
	if got := states[nStates:]; !slices.Contains(got, client.StateReconnecting) || got[len(got)-1] != client.StateConnected {
		t.Errorf("states after the cut: %v", got)
	}
	stMu.Unlock()
	// Let anything that would be redelivered arrive.
	if err := worker.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(redeliveredAcked) > 0 {
		t.Fatalf("acknowledged messages delivered again: %v", redeliveredAcked)
	}
	for seq, id := range published {
		if !acked[seq] {
			t.Errorf("message %s (seq %d) never acknowledged", id, seq)
		}
	}
	// The withheld ones came back flagged as redelivered.
	for seq := range pending {
		found := false
		for _, m := range deliveries {
			if m.Seq == seq && m.Redelivered {
				found = true
			}
		}
		if !found {
			t.Errorf("seq %d: no redelivery flagged", seq)
		}
	}
	// Acking the stale copy from the dead connection fails cleanly.
	for _, m := range pending {
		if err := m.Ack(ctx); !errors.Is(err, client.ErrDisconnected) {
			t.Errorf("ack on a dead connection: %v", err)
		}
		break
	}
}

// TestE2EDurablePromptRedelivery checks doc.go's "when a session ends, its
// unacknowledged deliveries go to another member at once": a member that
// reconnects gets them back well within the (default, 30 s) ack wait.
//
// It guards a fixed hub bug: the last member leaving used to NAK its held
// deliveries before stopping the consumer, stranding what JetStream handed
// back meanwhile until the ack wait (typically 6 of 10 waited 30 s).
func TestE2EDurablePromptRedelivery(t *testing.T) {
	th := startHub(t, "", "", nil)
	ctx := ctxFor(t, 60*time.Second)
	for round := range 3 {
		var k hubtest.Cutter
		w := dial(t, th.addr, fmt.Sprintf("w%d", round), client.Options{Dialer: k.Dial})
		pub := dial(t, th.addr, fmt.Sprintf("p%d", round), client.Options{})
		var mu sync.Mutex
		hold := true
		held, done := map[uint64]bool{}, map[uint64]bool{}
		durable := fmt.Sprintf("prompt%d", round)
		if _, err := w.Subscribe(ctx, "store.prompt."+durable, func(m *client.Msg) {
			mu.Lock()
			defer mu.Unlock()
			if hold {
				held[m.Seq] = true
				return
			}
			done[m.Seq] = true
			_ = m.Ack(ctx)
		}, client.Durable(durable), client.ManualAck()); err != nil {
			t.Fatal(err)
		}
		for i := range 10 {
			if _, err := pub.Publish(ctx, "store.prompt."+durable, []byte(fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
		hubtest.Until(t, 20*time.Second, "10 held", func() bool { mu.Lock(); defer mu.Unlock(); return len(held) == 10 })
		mu.Lock()
		hold = false
		mu.Unlock()
		k.Cut()
		hubtest.Until(t, 20*time.Second, "held deliveries back after the reconnect", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(done) == 10
		})
		w.Close()
		pub.Close()
	}
}

// TestE2EDurableAutoAck: without ManualAck, deliveries are acknowledged when
// the handler returns: a second subscriber to the same durable later sees nothing old.
func TestE2EDurableAutoAck(t *testing.T) {
	th := startHub(t, "", "", nil)
	ctx := ctxFor(t, 30*time.Second)
	pub := dial(t, th.addr, "pub", client.Options{})
	c1 := dial(t, th.addr, "one", client.Options{})
	in := newInbox()
	s1, err := c1.Subscribe(ctx, "store.auto.>", in.add, client.Durable("auto"), client.DeliverAll())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := pub.Publish(ctx, "store.auto.x", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	hubtest.Until(t, 20*time.Second, "5 deliveries", func() bool { return len(in.all()) == 5 })
	if err := c1.Flush(ctx); err != nil { // the automatic ACKs have been read
		t.Fatal(err)
	}
	s1.Unsubscribe()
	c2 := dial(t, th.addr, "two", client.Options{})
	in2 := newInbox()
	if _, err := c2.Subscribe(ctx, "store.auto.>", in2.add, client.Durable("auto")); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(ctx, "store.auto.x", []byte("new")); err != nil {
		t.Fatal(err)
	}
	hubtest.Until(t, 20*time.Second, "the new one", func() bool { return len(in2.all()) >= 1 })
	if err := c2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := in2.all(); len(got) != 1 || string(got[0].Payload) != "new" {
		var ps []string
		for _, m := range got {
			ps = append(ps, string(m.Payload))
		}
		t.Fatalf("second member got %q; acknowledged messages came back", ps)
	}
}

func TestE2EHistory(t *testing.T) {
	th := startHub(t, "", "", nil)
	ctx := ctxFor(t, 30*time.Second)
	c := dial(t, th.addr, "hist", client.Options{})
	for i := range 5 {
		if _, err := c.Publish(ctx, "store.hist.x", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	plain, withHist := newInbox(), newInbox()
	if _, err := c.Subscribe(ctx, "store.hist.*", plain.add); err != nil {
		t.Fatal(err)
	}
	// Same pattern, same connection: the hub gives both one sid.
	if _, err := c.Subscribe(ctx, "store.hist.*", withHist.add, client.History(3)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, "store.hist.x", []byte("live")); err != nil {
		t.Fatal(err)
	}
	hubtest.Until(t, 20*time.Second, "history and live", func() bool { return len(withHist.all()) == 4 && len(plain.all()) == 1 })
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range withHist.all() {
		got = append(got, fmt.Sprintf("%s/%v", m.Payload, m.History))
	}
	if want := []string{"2/true", "3/true", "4/true", "live/false"}; !slices.Equal(got, want) {
		t.Fatalf("with history: %q, want %q", got, want)
	}
	if m := plain.all(); len(m) != 1 || string(m[0].Payload) != "live" || m[0].History {
		t.Fatalf("plain subscription got %d messages", len(m))
	}
	// A generic client may not watch the hub's own topics.
	_, err := c.Subscribe(ctx, "client.>", plain.add)
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.CodeForbidden {
		t.Fatalf("subscribe client.>: %v", err)
	}
}

func TestE2ERequest(t *testing.T) {
	th := startHub(t, "", "", nil)
	ctx := ctxFor(t, 30*time.Second)
	c := dial(t, th.addr, "req", client.Options{})
	_, err := c.Request(ctx, "no.such.service", []byte("?"))
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.CodeNotFound || pe.Fatal {
		t.Fatalf("unknown service: %v", err)
	}
	got, err := c.Request(ctx, "test.echo", []byte("ping"))
	if err != nil || string(got) != "ping" {
		t.Fatalf("echo: %q %v", got, err)
	}
}

func TestE2EFatalHandshake(t *testing.T) {
	th := startHub(t, "", "", func(c *hub.Config) { c.Auth = denyAll{} })
	_, err := client.Dial(ctxFor(t, 10*time.Second), []string{th.addr}, client.Options{Name: "x", Token: "bad"})
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.CodeAuth {
		t.Fatalf("err = %v", err)
	}
}

type denyAll struct{}

func (denyAll) Authenticate(protocol.Hello) (hub.Identity, error) {
	return hub.Identity{}, errors.New("no")
}

// TestE2EHubRestart: the hub stops (BYE) and starts again on the same data
// directory and port; the client reconnects, subscribes again and gets the
// stored messages it had not acknowledged. (Across an engine restart they
// come back after the ack wait, not at once: the hub's NAK of a closing
// session's deliveries does not survive the restart. Hence AckWait(2s).)
func TestE2EHubRestart(t *testing.T) {
	th := startHub(t, "", "", nil)
	ctx := ctxFor(t, 90*time.Second)
	var stMu sync.Mutex
	var states []client.State
	c := dial(t, th.addr, "survivor", client.Options{
		OnState: func(s client.State) { stMu.Lock(); states = append(states, s); stMu.Unlock() },
	})
	session1 := c.Welcome().Session
	live := newInbox()
	if _, err := c.Subscribe(ctx, "live.>", live.add); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	got := map[string]int{}
	hold := true
	var held []*client.Msg
	if _, err := c.Subscribe(ctx, "store.restart.>", func(m *client.Msg) {
		mu.Lock()
		defer mu.Unlock()
		got[string(m.Payload)]++
		if hold {
			held = append(held, m)
			return
		}
		if err := m.Ack(ctx); err != nil {
			t.Errorf("ack: %v", err)
		}
	}, client.Durable("restart"), client.ManualAck(), client.AckWait(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := c.Publish(ctx, "store.restart.x", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	hubtest.Until(t, 20*time.Second, "5 held", func() bool { mu.Lock(); defer mu.Unlock(); return len(held) == 5 })
	mu.Lock()
	if err := held[0].Ack(ctx); err != nil { // one acknowledged before the restart
		t.Fatal(err)
	}
	hold = false
	mu.Unlock()

	t0 := time.Now()
	th.stop()
	t.Logf("hub stopped in %v", time.Since(t0))
	hubtest.Until(t, 20*time.Second, "reconnecting", func() bool { return c.State() == client.StateReconnecting })
	// A publish while the hub is down waits for it.
	pubDone := make(chan error, 1)
	go func() {
		_, err := c.Publish(ctx, "store.restart.x", []byte("during"), client.WithMsgID("during"))
		pubDone <- err
	}()
	startHub(t, th.dir, th.addr, nil)
	hubtest.Until(t, 30*time.Second, "reconnected", func() bool { return c.State() == client.StateConnected })
	if err := <-pubDone; err != nil {
		t.Fatalf("publish across the restart: %v", err)
	}
	t.Logf("reconnected after %v", time.Since(t0))
	if w := c.Welcome(); w.Session == session1 || !w.Resumed {
		t.Errorf("welcome after restart %+v (first session %s)", w, session1)
	}
	hubtest.Until(t, 30*time.Second, "unacknowledged messages again, and the new one", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for i := 1; i < 5; i++ {
			if got[fmt.Sprint(i)] < 2 {
				return false
			}
		}
		return got["during"] == 1
	})
	t.Logf("redelivered after %v", time.Since(t0))
	if _, err := c.Publish(ctx, "live.x", []byte("after")); err != nil {
		t.Fatal(err)
	}
	hubtest.Until(t, 20*time.Second, "live subscription restored", func() bool { return len(live.all()) == 1 })
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if got["0"] != 1 {
		t.Errorf("message acknowledged before the restart delivered %d times", got["0"])
	}
	mu.Unlock()
	stMu.Lock()
	defer stMu.Unlock()
	if !slices.Contains(states, client.StateReconnecting) {
		t.Errorf("states %v", states)
	}
}

// selfSigned returns a server certificate for 127.0.0.1 and a pool trusting it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "caps test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

func TestE2ETLS(t *testing.T) {
	cert, pool := selfSigned(t)
	th := startHub(t, "", "", func(c *hub.Config) {
		c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	})
	ctx := ctxFor(t, 30*time.Second)
	c, err := client.Dial(ctx, []string{"tls://" + th.addr}, client.Options{Name: "secure", TLS: &tls.Config{RootCAs: pool}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	in := newInbox()
	if _, err := c.Subscribe(ctx, "tls.x", in.add); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, "tls.x", []byte("secret")); err != nil {
		t.Fatal(err)
	}
	hubtest.Until(t, 15*time.Second, "delivery over TLS", func() bool { return len(in.all()) == 1 })

	// An untrusted certificate ends Dial instead of retrying forever.
	start := time.Now()
	_, err = client.Dial(ctx, []string{"tls://" + th.addr}, client.Options{Name: "doubter", TLS: &tls.Config{RootCAs: x509.NewCertPool()}})
	var cve *tls.CertificateVerificationError
	if !errors.As(err, &cve) || time.Since(start) > 10*time.Second {
		t.Fatalf("untrusted certificate: %v after %v", err, time.Since(start))
	}
	// Plain text to the TLS port: the hub answers in plain text, and the
	// refusal is final.
	_, err = client.Dial(ctx, []string{th.addr}, client.Options{Name: "plain"})
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		t.Fatalf("plain text to the TLS port: %v", err)
	}
}

// TestE2EFailover: with two hubs in the address list, a client whose hub
// goes away continues on the other.
func TestE2EFailover(t *testing.T) {
	a := startHub(t, "", "", nil)
	b := startHub(t, "", "", nil)
	ctx := ctxFor(t, 60*time.Second)
	c, err := client.Dial(ctx, []string{a.addr, "caps://" + b.addr}, client.Options{Name: "roamer", ReconnectMin: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Addr() != a.addr {
		t.Fatalf("first hub %s", c.Addr())
	}
	in := newInbox()
	if _, err := c.Subscribe(ctx, "f.x", in.add); err != nil {
		t.Fatal(err)
	}
	a.stop()
	hubtest.Until(t, 20*time.Second, "failover", func() bool { return c.State() == client.StateConnected && c.Addr() == "caps://"+b.addr })
	if _, err := c.Publish(ctx, "f.x", []byte("on b")); err != nil {
		t.Fatal(err)
	}
	hubtest.Until(t, 20*time.Second, "delivery on b", func() bool { return len(in.all()) == 1 })
}
