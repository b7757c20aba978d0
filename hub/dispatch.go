package hub

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/protocol"
)

// Fair dispatch of a durable's messages among its members, on one hub and
// across hubs.
//
// A member's load is what it has in hand relative to its capacity: its
// unacknowledged deliveries plus what an app says it still holds for the
// durable (LoadHook: a driver acknowledges its pickup once in transit, and
// carries the parcel until it is delivered), over its MaxInFlight. On one
// hub each message goes to the member with the lowest load, ties taken in
// turn, so an idle driver of capacity 1 is served as readily as an idle one
// of capacity 5, and a driver with parcels in its van waits behind one with
// none.
//
// Across hubs, each hub pulls for its own members, and the JetStream
// consumer is a priority group with the "prioritized" policy (nats-server
// 2.12+): a pull request carries a priority from 0 (served first) to 9, and
// the server hands each message to the waiting request of the best
// priority, taking requests of equal priority in turn
// (consumer.go, waitQueue.popAndRequeue: the request served moves to the
// end of its priority). A hub's request carries the load level of its
// least-loaded members, and asks for only as many messages as those members
// can take before their level would rise, so that it never claims a better
// priority than its members would then have: an idle driver on one hub is
// served before a busy one on another.

// LoadHook tells how much work a session holds for durable subscriptions on
// topics matching the hook's pattern beyond its unacknowledged deliveries
// (the parcel app: the parcels a driver carries in transit).
type LoadHook func(s SessionInfo) int

// OnLoad registers fn for the durable subscriptions whose pattern lies
// within pattern.
func (x *Host) OnLoad(pattern string, fn LoadHook) {
	x.h.loadHooks = append(x.h.loadHooks, patternHook[LoadHook]{[]byte(pattern), fn})
}

// priorityGroup is the one priority group of every durable's consumer.
const priorityGroup = "caps"

// maxLevel is the worst priority (nats-server accepts 0-9).
const maxLevel = 9

// loadLevel maps inHand of capacity to a priority: 0 when idle, 9 when
// full, evenly between.
func loadLevel(inHand, capacity int) int {
	switch {
	case inHand <= 0:
		return 0
	case inHand >= capacity:
		return maxLevel
	}
	return 1 + (maxLevel-1)*inHand/capacity
}

// inHand is m's work: unacknowledged deliveries plus what the apps report.
// Called with g.mu held.
func (m *durableMember) inHand() int {
	n := len(m.inflight)
	if len(m.loads) > 0 {
		info := m.s.infoSnapshot()
		h := m.g.d.h
		for _, fn := range m.loads {
			n += max(h.appLoad(fn, info), 0)
		}
	}
	return n
}

// appLoad runs an app's load hook; one that panics counts as holding
// nothing (contained: logged and counted, contain.go). It runs under the
// durable group's lock: a load hook must be quick and call nothing of the
// hub's.
func (h *Hub) appLoad(fn LoadHook, info SessionInfo) (n int) {
	defer func() {
		if h.contained(inAppFunc, recover()) != nil {
			n = 0
		}
	}()
	return fn(info)
}

// pick returns the member with room and the lowest load, ties taken in
// turn, avoiding prev (which just let a message's ack wait run out) when
// another has room. Called with g.mu held.
func (g *durableGroup) pick(prev *durableMember, tried map[*durableMember]bool) *durableMember {
	var best *durableMember
	var bestHand int
	n := len(g.members)
	for i := 0; i < n; i++ {
		m := g.members[(g.rr+i)%n]
		if m.gone || tried[m] || m.max-len(m.inflight) <= 0 {
			continue
		}
		if m == prev && n > 1 {
			continue
		}
		h := m.inHand()
		// h/max < bestHand/best.max, without division; the first of equals wins.
		if best == nil || h*best.max < bestHand*m.max {
			best, bestHand = m, h
		}
	}
	if best == nil && prev != nil && !prev.gone && !tried[prev] && prev.max-len(prev.inflight) > 0 {
		best = prev // the last resort
	}
	if best != nil {
		g.rr++
	}
	return best
}

// pullShape returns how many messages the hub asks for next, and at which
// priority, or n 0 when no member has room. Called with g.mu held.
func (g *durableGroup) pullShape() (n, priority int) {
	type load struct{ hand, room, max, level int }
	loads := make([]load, 0, len(g.members))
	priority = maxLevel + 1
	for _, m := range g.members {
		room := m.max - len(m.inflight)
		if m.gone || room <= 0 {
			continue
		}
		l := load{hand: m.inHand(), room: room, max: m.max}
		l.level = loadLevel(l.hand, l.max)
		priority = min(priority, l.level)
		loads = append(loads, l)
	}
	for _, l := range loads {
		if l.level != priority {
			continue
		}
		// As many as this member takes before its level rises, or an eighth
		// of its room if that is more: a request then claims a level its
		// members have left by at most an eighth of their capacity (none for
		// capacities under 16, a classroom driver's 1, a caps driver's 5),
		// and a busy mailbox of capacity 64 is not pulled one message at a
		// time.
		k := 1
		for k < l.room && loadLevel(l.hand+k, l.max) == l.level {
			k++
		}
		n += max(k, l.room/8)
	}
	return min(n, maxPull), min(priority, maxLevel)
}

// maxPull bounds one pull request.
const maxPull = 64

// pullReq is a pull request waiting at the server.
type pullReq struct{ priority int }

// pullLoop pulls the group's messages until the group closes. It keeps a
// pull request waiting at the server, shaped by pullShape when it is sent.
// When the group's best load level improves while one waits (a member
// acknowledged, or an app said its loads went down: Host.LoadChanged), it
// sends another, better request rather than cancel the first: a message the
// server had just sent to a cancelled request would be lost until its ack
// wait ran out. Each new request must be better than every one waiting, so
// at most one per level waits; the server serves the best first, and a
// superseded one only when no better request waits anywhere (it expires
// within pullWaitBusy). What a superseded request brings while the members
// are full waits here for room: at most its size, a few messages.
func (g *durableGroup) pullLoop(ctx context.Context, c jetstream.Consumer) {
	defer close(g.loopDone)
	var fetches sync.WaitGroup
	defer fetches.Wait()
	waiting := map[*pullReq]bool{} // guarded by g.mu
	g.mu.Lock()
	defer g.mu.Unlock()
	for !g.closed {
		n, prio := g.pullShape()
		best := maxLevel + 1
		for r := range waiting {
			best = min(best, r.priority)
		}
		if n <= 0 || prio >= best || time.Now().Before(g.retryAt) {
			g.cond.Wait() // a member's room, a load, a finished request or the retry time
			continue
		}
		r := &pullReq{priority: prio}
		waiting[r] = true
		fetches.Add(1)
		go func() {
			defer fetches.Done()
			err := g.fetch(ctx, c, n, prio)
			g.mu.Lock()
			delete(waiting, r)
			g.backoffAfter(err)
			g.cond.Broadcast()
			g.mu.Unlock()
		}()
	}
}

// fetch sends one pull request and hands each message it brings to a member.
func (g *durableGroup) fetch(ctx context.Context, c jetstream.Consumer, n, priority int) error {
	wait := pullWaitBusy
	if priority == 0 {
		wait = pullWait
	}
	fctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	batch, err := c.Fetch(n, jetstream.FetchContext(fctx),
		jetstream.FetchPriorityGroup(priorityGroup), jetstream.FetchPrioritized(uint8(priority)))
	if err != nil {
		return err
	}
	// In order: a member is handed a durable's messages in the order the
	// stream has them.
	for msg := range batch.Messages() {
		g.handle(msg)
	}
	return batch.Error()
}

// backoffAfter decides when the next pull may go after one that ended
// with err. Called with g.mu held.
func (g *durableGroup) backoffAfter(err error) {
	if err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoMessages) {
		g.backoff = 0
		return
	}
	// The engine is away or the consumer is gone: do not spin.
	g.backoff = min(max(2*g.backoff, 100*time.Millisecond), 2*time.Second)
	g.retryAt = time.Now().Add(g.backoff)
	time.AfterFunc(g.backoff, g.cond.Broadcast)
	g.d.h.log.Debug("durable pull", "durable", g.name, "err", err, "retry_in", g.backoff)
}

// LoadChanged tells the hub that what some sessions hold (LoadHook) went
// down, so that its pull requests may ask with a better priority.
func (x *Host) LoadChanged() {
	d := x.h.durables
	d.mu.Lock()
	gs := make([]*durableGroup, 0, len(d.groups))
	for _, g := range d.groups {
		gs = append(gs, g)
	}
	d.mu.Unlock()
	for _, g := range gs {
		g.mu.Lock()
		g.cond.Broadcast()
		g.mu.Unlock()
	}
}

// loadHooksFor returns the load hooks that apply to a durable on pattern.
func (h *Hub) loadHooksFor(pattern string) []LoadHook {
	var out []LoadHook
	for _, lh := range h.loadHooks {
		if protocol.Covers(lh.pattern, []byte(pattern)) {
			out = append(out, lh.fn)
		}
	}
	return out
}

// prioritize makes an existing consumer (created by a hub before fair
// dispatch) a priority group, keeping the rest of its configuration.
func (d *durables) prioritize(ctx context.Context, stream string, c jetstream.Consumer) error {
	cfg := c.CachedInfo().Config
	if cfg.PriorityPolicy == jetstream.PriorityPolicyPrioritized && slices.Contains(cfg.PriorityGroups, priorityGroup) {
		return nil
	}
	cfg.PriorityPolicy = jetstream.PriorityPolicyPrioritized
	cfg.PriorityGroups = []string{priorityGroup}
	if _, err := d.h.eng.JS.UpdateConsumer(ctx, stream, cfg); err != nil {
		return Reject(protocol.CodeUnavailable, fmt.Sprintf("make consumer %s a priority group: %v", cfg.Durable, err))
	}
	return nil
}
