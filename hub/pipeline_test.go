package hub_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/protocol"
)

// gateApp stores plain.> in a stream of its own and "stores" gated.> with a
// store hook that waits at a gate until the test opens it, counting who
// entered. ordered.> publishes share one ordering key.
type gateApp struct {
	mu      sync.Mutex
	entered []string // topics, in the order their hook was entered
	inside  atomic.Int64
	gate    chan struct{} // one receive lets one waiting hook through
	closed  chan struct{} // closed: every hook goes through
}

func newGateApp(t *testing.T) *gateApp {
	g := &gateApp{gate: make(chan struct{}), closed: make(chan struct{})}
	t.Cleanup(func() { close(g.closed) })
	return g
}

func (g *gateApp) Setup(ctx context.Context, x *hub.Host) error {
	x.OrderPublishesBy("ordered.>", func(string) string { return "ordered" })
	hook := func(ctx context.Context, _ hub.SessionInfo, topic string, _ []byte) (hub.Stored, error) {
		g.mu.Lock()
		g.entered = append(g.entered, topic)
		g.mu.Unlock()
		g.inside.Add(1)
		defer g.inside.Add(-1)
		select {
		case <-g.gate:
		case <-g.closed:
		case <-ctx.Done():
			return hub.Stored{}, ctx.Err()
		}
		return hub.Stored{Seq: 1}, nil
	}
	x.OnStore("gated.>", hook)
	x.OnStore("ordered.>", hook)
	return x.AddStream(ctx, hub.StreamSpec{Name: "PLAIN", Topics: []string{"plain.>"}, MaxAge: time.Hour})
}

func (g *gateApp) enteredTopics() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.entered...)
}

func gatedHub(t *testing.T) (*gateApp, *rawConn) {
	g := newGateApp(t)
	h := startHub(t, func(c *hub.Config) { c.Apps = []hub.App{g}; c.PubRate = -1 })
	c := dialRaw(t, h)
	c.hello("client", "pipeliner")
	return g, c
}

// A stored publish waiting for the engine does not hold up the session's
// next stored publish on another topic: the read loop goes on.
func TestStoredPublishOnAnotherTopicDoesNotWait(t *testing.T) {
	g, c := gatedHub(t)
	c.send(&protocol.Frame{Op: protocol.OpPub, ID: 1, Topic: []byte("gated.a"), Payload: []byte("slow")})
	c.send(&protocol.Frame{Op: protocol.OpPub, ID: 2, Topic: []byte("plain.x"), Payload: []byte("fast")})
	if f := c.nextOp(); f.Op != protocol.OpOK || f.ID != 2 {
		t.Fatalf("want OK 2 while publish 1 waits at the gate, got %s", f)
	}
	g.gate <- struct{}{}
	if f := c.nextOp(); f.Op != protocol.OpOK || f.ID != 1 {
		t.Fatalf("want OK 1 once the gate opened, got %s", f)
	}
}

// Stored publishes on one topic are stored and answered in the order sent.
func TestStoredPublishesOnOneTopicKeepTheirOrder(t *testing.T) {
	_, c := gatedHub(t)
	const n = 300
	var out []byte
	for i := 1; i <= n; i++ {
		out = (&protocol.Frame{Op: protocol.OpPub, ID: uint64(i), Topic: []byte("plain.same"), Payload: fmt.Appendf(nil, "%d", i)}).Append(out)
	}
	if _, err := c.c.Write(out); err != nil {
		t.Fatal(err)
	}
	var lastSeq uint64
	for i := 1; i <= n; i++ {
		f := c.nextOp()
		if f.Op != protocol.OpOK || f.ID != uint64(i) || f.Seq <= lastSeq {
			t.Fatalf("answer %d: %s (last stream seq %d)", i, f, lastSeq)
		}
		lastSeq = f.Seq
	}
}

// An app's ordering key (OrderPublishesBy) orders publishes on different
// topics: the second waits for the first, though it is on another topic.
func TestStoredPublishesWithOneOrderingKeyKeepTheirOrder(t *testing.T) {
	g, c := gatedHub(t)
	c.send(&protocol.Frame{Op: protocol.OpPub, ID: 1, Topic: []byte("ordered.first")})
	c.send(&protocol.Frame{Op: protocol.OpPub, ID: 2, Topic: []byte("ordered.second")})
	// Answered: the read loop has handled both publishes before this one.
	c.send(&protocol.Frame{Op: protocol.OpPub, ID: 3, Topic: []byte("plain.x")})
	if f := c.nextOp(); f.Op != protocol.OpOK || f.ID != 3 {
		t.Fatalf("want OK 3, got %s", f)
	}
	hubtest.Until(t, 10*time.Second, "the first publish at the gate", func() bool { return g.inside.Load() == 1 })
	if got := g.enteredTopics(); len(got) != 1 || got[0] != "ordered.first" {
		t.Fatalf("entered %v while the first waits: the second must wait behind it", got)
	}
	g.gate <- struct{}{}
	g.gate <- struct{}{}
	for want := uint64(1); want <= 2; want++ {
		if f := c.nextOp(); f.Op != protocol.OpOK || f.ID != want {
			t.Fatalf("want OK %d, got %s", want, f)
		}
	}
	if got := strings.Join(g.enteredTopics(), " "); got != "ordered.first ordered.second" {
		t.Fatalf("stored in the order %s", got)
	}
}

// A client that sends stored publishes and BYE at once gets every answer
// before the hub closes the connection.
func TestByeAfterStoredPublishesAnswersThemAll(t *testing.T) {
	_, c := gatedHub(t)
	const n = 100
	var out []byte
	for i := 1; i <= n; i++ {
		out = (&protocol.Frame{Op: protocol.OpPub, ID: uint64(i), Topic: fmt.Appendf(nil, "plain.t%d", i%7), Payload: []byte("x")}).Append(out)
	}
	out = (&protocol.Frame{Op: protocol.OpBye}).Append(out)
	if _, err := c.c.Write(out); err != nil {
		t.Fatal(err)
	}
	oks := map[uint64]bool{}
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := c.rd.Next()
		if err != nil {
			break
		}
		if f.Op == protocol.OpOK {
			oks[f.ID] = true
		}
	}
	if len(oks) != n {
		t.Fatalf("%d of %d publishes answered before the close", len(oks), n)
	}
}

// A client cannot make the hub hold more than the pipeline's bounds: with
// every stored publish stuck at the gate, at most 64 are in flight (the
// read loop waits for room), and at most 4 MiB of payloads.
func TestStoredPublishesInFlightAreBounded(t *testing.T) {
	for _, tc := range []struct {
		name    string
		n, size int
		max     int64
	}{
		{"count", 300, 10, 64},
		{"bytes", 12, 900 << 10, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGateApp(t)
			h := startHub(t, func(c *hub.Config) { c.Apps = []hub.App{g}; c.PubRate = -1 })
			c := dialRaw(t, h)
			c.hello("client", "flooder")
			payload := make([]byte, tc.size)
			go func() {
				for i := 1; i <= tc.n; i++ {
					f := &protocol.Frame{Op: protocol.OpPub, ID: uint64(i), Topic: fmt.Appendf(nil, "gated.t%d", i), Payload: payload}
					if _, err := c.c.Write(f.Encode()); err != nil {
						return
					}
				}
			}()
			hubtest.Until(t, 10*time.Second, "the pipeline full", func() bool { return g.inside.Load() == tc.max })
			for released := 0; released < tc.n; released++ {
				if in := g.inside.Load(); in > tc.max {
					t.Fatalf("%d publishes in flight, above the bound %d", in, tc.max)
				}
				g.gate <- struct{}{}
			}
			for i := 0; i < tc.n; i++ {
				if f := c.nextOp(); f.Op != protocol.OpOK {
					t.Fatalf("want OK, got %s", f)
				}
			}
		})
	}
}
