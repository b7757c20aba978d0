package hub_test

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/protocol"
)

// A live message published on a hub reaches that hub's subscribers straight
// from the hub, and everyone else through the engine. Either way, each
// subscription gets each publisher's messages once, in the order they were
// published, and a queue group gets each message once. Run on an embedded
// engine nobody else can reach (the hub does not publish its live messages
// to the engine at all, except for its queue groups) and on an external one
// (it does, on a connection that does not echo them back), where a plain
// NATS connection plays another hub publishing on the same topics, from the
// moment the subscriptions are answered.
func TestLiveDeliveryOnceInOrder(t *testing.T) {
	t.Run("embedded", func(t *testing.T) {
		testLiveOnceInOrder(t, startHub(t, nil), nil)
	})
	t.Run("external engine", func(t *testing.T) {
		ns := startNATS(t, 0, t.TempDir())
		t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
		h := startHub(t, func(c *hub.Config) { c.DataDir = ""; c.NATSURLs = ns.ClientURL() })
		other, err := nats.Connect(ns.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(other.Close)
		testLiveOnceInOrder(t, h, other)
	})
}

// liveMsgs is how many messages each publisher sends in the live tests.
const liveMsgs = 300

func testLiveOnceInOrder(t *testing.T, h *hub.Hub, other *nats.Conn) {
	// One session with two overlapping subscriptions (each gets every
	// message, under its own sid), one with a wildcard, and a queue group
	// of two on the same topic.
	both := dialRaw(t, h)
	both.hello("client", "both")
	exact := both.expect(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("live.t")}, protocol.OpOK, "").Seq
	all := both.expect(&protocol.Frame{Op: protocol.OpSub, ID: 2, Topic: []byte("live.>")}, protocol.OpOK, "").Seq
	wild := dialRaw(t, h)
	wild.hello("client", "wild")
	wild.expect(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("live.*")}, protocol.OpOK, "")
	var workers []*rawConn
	for i := range 2 {
		w := dialRaw(t, h)
		w.hello("client", fmt.Sprintf("worker%d", i))
		w.expect(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("live.t"), Group: []byte("g")}, protocol.OpOK, "")
		workers = append(workers, w)
	}
	conns := []*rawConn{both, wild, workers[0], workers[1]}

	// A SUB is answered once the engine has the subscription: what is
	// published elsewhere from now on reaches it.
	publishers := []string{"p1", "p2"}
	if other != nil {
		publishers = append(publishers, "elsewhere")
	}

	// Readers first, then the publishers all at once.
	want := liveMsgs * len(publishers)
	mine, wilds, group := &liveLog{}, &liveLog{}, &liveLog{}
	mine.start(both)
	wilds.start(wild)
	for _, w := range workers {
		group.start(w)
	}
	var pubs sync.WaitGroup
	for _, name := range publishers {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			if name == "elsewhere" {
				for i := range liveMsgs {
					other.Publish(hub.Subject("live.t"), []byte(name+":"+strconv.Itoa(i)))
				}
				other.Flush()
				return
			}
			c, err := net.Dial("tcp", h.Addr().String())
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			hello := protocol.Frame{Op: protocol.OpHello, Payload: []byte(`{"version":1,"role":"client","name":"` + name + `"}`)}
			out := hello.Append(nil)
			for i := range liveMsgs {
				out = (&protocol.Frame{Op: protocol.OpPub, Topic: []byte("live.t"), Payload: []byte(name + ":" + strconv.Itoa(i))}).Append(out)
			}
			out = (&protocol.Frame{Op: protocol.OpPub, ID: 1, Topic: []byte("live.done")}).Append(out)
			c.Write(out)
			rd := protocol.NewReader(c, 0)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			for {
				f, err := rd.Next()
				if err != nil {
					t.Errorf("%s: no OK for its last publish: %v", name, err)
					return
				}
				if f.Op == protocol.OpOK && f.ID == 1 || f.Op == protocol.OpErr {
					if f.Op == protocol.OpErr {
						t.Errorf("%s: %s", name, f)
					}
					return
				}
			}
		}()
	}
	pubs.Wait()
	hubtest.Until(t, 20*time.Second, "every message to every subscription", func() bool {
		return mine.count() >= 2*want && wilds.count() >= want && group.count() >= want
	})
	// Anything queued for the sessions before their PONG is read too: a
	// second copy of a message would show.
	for _, c := range conns {
		c.c.SetReadDeadline(time.Now())
	}
	for _, l := range []*liveLog{mine, wilds, group} {
		l.wait()
	}
	for _, c := range conns {
		c.c.SetReadDeadline(time.Time{})
		c.send(&protocol.Frame{Op: protocol.OpPing})
		for f := c.nextOp(); f.Op != protocol.OpPong; f = c.nextOp() {
			if f.Op == protocol.OpMsg {
				t.Errorf("%s: one more message than expected: %q", f.Topic, f.Payload)
			}
		}
	}

	mine.checkOnceInOrder(t, "subscription live.t", exact, publishers)
	mine.checkOnceInOrder(t, "subscription live.>", all, publishers)
	wilds.checkOnceInOrder(t, "subscription live.*", 0, publishers)
	group.checkOnce(t, "queue group g", publishers)
}

// liveLog records the MSGs on live.t read from raw connections.
type liveLog struct {
	mu   sync.Mutex
	msgs []liveMsg
	wg   sync.WaitGroup
}

type liveMsg struct {
	sid     uint64
	payload string
}

// start reads c in the background until its read deadline passes.
func (l *liveLog) start(c *rawConn) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			f, err := c.rd.Next()
			if err != nil {
				return
			}
			if f.Op != protocol.OpMsg || string(f.Topic) != "live.t" {
				continue
			}
			l.mu.Lock()
			l.msgs = append(l.msgs, liveMsg{sid: f.ID, payload: string(f.Payload)})
			l.mu.Unlock()
		}
	}()
}

func (l *liveLog) wait() { l.wg.Wait() }

func (l *liveLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.msgs)
}

// checkOnceInOrder: subscription sid (0: any) got every publisher's
// messages on live.t once each, in publish order.
func (l *liveLog) checkOnceInOrder(t *testing.T, what string, sid uint64, publishers []string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	next := map[string]int{}
	for _, m := range l.msgs {
		if sid != 0 && m.sid != sid {
			continue
		}
		who, n := splitLive(t, m.payload)
		if n != next[who] {
			t.Errorf("%s: from %s got message %d, want %d (out of order, lost or twice)", what, who, n, next[who])
			return
		}
		next[who]++
	}
	for _, p := range publishers {
		if next[p] != liveMsgs {
			t.Errorf("%s: got %d of %s's %d messages", what, next[p], p, liveMsgs)
		}
	}
}

// checkOnce: every publisher's messages on live.t arrived once each,
// across the connections l read.
func (l *liveLog) checkOnce(t *testing.T, what string, publishers []string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := map[string]int{}
	for _, m := range l.msgs {
		seen[m.payload]++
	}
	for _, p := range publishers {
		for i := range liveMsgs {
			if k := p + ":" + strconv.Itoa(i); seen[k] != 1 {
				t.Errorf("%s: %s delivered %d times, want once", what, k, seen[k])
			}
		}
	}
}

func splitLive(t *testing.T, payload string) (string, int) {
	t.Helper()
	who, num, ok := strings.Cut(payload, ":")
	n, err := strconv.Atoi(num)
	if !ok || err != nil {
		t.Fatalf("unexpected payload %q", payload)
	}
	return who, n
}

// A live message delivered on its publisher's hub carries the message id
// as the client gave it, as one delivered through the engine does: the
// engine's copy is scoped to the publisher (msgid.go), the subscriber
// never sees that.
func TestLiveDeliveryCarriesTheClientsID(t *testing.T) {
	h := startHub(t, nil)
	sub := dialRaw(t, h)
	sub.hello("client", "sub")
	sub.expect(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("live.keyed")}, protocol.OpOK, "")
	pub := dialRaw(t, h)
	pub.hello("client", "pub")
	pub.expect(&protocol.Frame{Op: protocol.OpPub, ID: 1, Topic: []byte("live.keyed"), Key: []byte("k-1"), Payload: []byte("x")}, protocol.OpOK, "")
	if m := sub.nextOp(); m.Op != protocol.OpMsg || string(m.Key) != "k-1" {
		t.Fatalf("got %s, want MSG with key k-1", m)
	}
}

// caps_deliveries_total counts each message queued to a subscriber once,
// whichever way it reached the subscription: a live publish with two plain
// subscribers on the publisher's hub (delivered by the hub) and a queue
// group of two (delivered through the engine, which picks the member) is
// three deliveries, as before local delivery.
func TestLiveDeliveriesCountedOnce(t *testing.T) {
	h := startHub(t, nil)
	var subs []*rawConn
	for i, group := range []string{"", "", "g", "g"} {
		c := dialRaw(t, h)
		c.hello("client", fmt.Sprintf("s%d", i))
		c.expect(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("live.m"), Group: []byte(group)}, protocol.OpOK, "")
		subs = append(subs, c)
	}
	base := metric(t, h, "caps_deliveries_total")
	pub := dialRaw(t, h)
	pub.hello("client", "pub")
	const n = 20
	for i := range n {
		pub.expect(&protocol.Frame{Op: protocol.OpPub, ID: uint64(i + 1), Topic: []byte("live.m"), Payload: []byte(strconv.Itoa(i))}, protocol.OpOK, "")
	}
	waitMetric(t, h, base+3*n, "caps_deliveries_total")
	// What each subscriber got, up to the PONG answering a PING sent now.
	got := make([]int, len(subs))
	for i, c := range subs {
		c.send(&protocol.Frame{Op: protocol.OpPing})
		for f := c.nextOp(); f.Op != protocol.OpPong; f = c.nextOp() {
			if f.Op == protocol.OpMsg {
				got[i]++
			}
		}
	}
	if got[0] != n || got[1] != n || got[2]+got[3] != n {
		t.Fatalf("plain subscribers got %d and %d, the group %d+%d; want %d each and %d in all", got[0], got[1], got[2], got[3], n, n)
	}
	if d := metric(t, h, "caps_deliveries_total") - base; d != 3*n {
		t.Fatalf("caps_deliveries_total grew by %v, want %d", d, 3*n)
	}
}
