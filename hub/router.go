package hub

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/nats-io/nats-server/v2/server/gsl"
	"github.com/nats-io/nats.go"

	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/protocol"
)

type natsConn = nats.Conn

// router keeps one engine subscription per (pattern, queue group) on this
// hub and fans each message out to the local sessions that want it, encoding
// the MSG frame once for all of them.
//
// A live message takes one of two ways to a subscription (docs/ARCHITECTURE.md,
// "A message's path"):
//   - published on this hub: straight to the local subscriptions that match
//     it (deliverLocal, on the publisher's read loop), and to the engine on
//     its no-echo connection (engine.Live) for everyone else;
//   - published anywhere else (another hub, an app on the engine, a stored
//     publish): from the engine, through the subscription's handler.
//
// So a plain subscription is subscribed on engine.Live, which never hands
// back what this hub published there. A queue group is subscribed on the
// echoing connection instead, and every message for it goes through the
// engine, local publisher or not: the engine alone picks the one member of
// the whole cluster that gets it, so no hub can serve the group a second time.
//
// When nothing outside this process can reach the engine (engine.Shared:
// an embedded server without cluster or client port), the engine has no
// subscriber for a live topic but this hub's own, so a live publish goes to
// it only when one of this hub's queue groups wants it (needsEngine).
type router struct {
	h      *Hub
	mu     sync.Mutex
	subs   map[subKey]*topicSub
	nextID atomic.Uint64
	// plain and grouped index the subscriptions by pattern: plain ones for
	// deliverLocal, queue groups for needsEngine. Changed under mu; read
	// without it.
	plain, grouped *gsl.GenericSublist[*topicSub]
	ngrouped       atomic.Int64 // queue groups in grouped
	// plainGen counts the changes of plain: a publisher's localMatches
	// taken at another count are stale.
	plainGen atomic.Uint64
}

type subKey struct{ pattern, group string }

// topicSub is one engine subscription and its local subscribers.
type topicSub struct {
	sid     uint64
	pattern string
	group   string
	nsub    *nats.Subscription
	// members is replaced, never mutated, so deliveries read it without a lock.
	members atomic.Pointer[[]*Session]
	rr      atomic.Uint64
	dead    bool // engine subscription dropped (guarded by router.mu)
	// confirmed is closed once the engine has the subscription (open).
	confirmed chan struct{}
}

func newRouter(h *Hub) *router {
	r := &router{h: h, subs: map[subKey]*topicSub{}, plain: gsl.NewSublist[*topicSub](), grouped: gsl.NewSublist[*topicSub]()}
	return r
}

// sid space: live subscription ids count up from 1; durable members use the
// high half so the two never collide on a session.
const durableSIDBase = 1 << 62

// open returns the hub's subscription for (pattern, group), creating it
// (with no members yet) if needed. It returns once the engine has the
// subscription (confirm), so that once a client is told it is subscribed,
// a message published through the engine after that reaches it.
func (r *router) open(ctx context.Context, pattern, group string) (*topicSub, error) {
	r.mu.Lock()
	k := subKey{pattern, group}
	ts := r.subs[k]
	if ts != nil {
		r.mu.Unlock()
		<-ts.confirmed
		return ts, nil
	}
	ts = &topicSub{sid: r.nextID.Add(1), pattern: pattern, group: group, confirmed: make(chan struct{})}
	ts.members.Store(&[]*Session{})
	if err := r.subscribe(ts); err != nil {
		r.mu.Unlock()
		return nil, err
	}
	r.subs[k] = ts
	r.mu.Unlock()
	r.confirm(ctx, ts)
	close(ts.confirmed)
	return ts, nil
}

// confirm waits until the engine has processed ts's subscription: a round
// trip on its connection, which the engine answers after the SUB. The
// subscription is on another connection than some of the publishes that
// must reach it (a stored publish of this hub, a live one for a queue
// group), so nothing else orders the two. Skipped while the engine is
// unreachable (nats.go subscribes again when it is back).
func (r *router) confirm(ctx context.Context, ts *topicSub) {
	nc := r.conn(ts)
	if !nc.IsConnected() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, engineCallTimeout)
	defer cancel()
	if err := nc.FlushWithContext(ctx); err != nil {
		r.h.log.Debug("engine subscription not confirmed", "pattern", ts.pattern, "err", err)
	}
}

// join adds s to the members of ts.
func (r *router) join(ts *topicSub, s *Session) {
	r.mu.Lock()
	old := *ts.members.Load()
	for _, m := range old {
		if m == s {
			r.mu.Unlock()
			return
		}
	}
	nm := make([]*Session, len(old), len(old)+1)
	copy(nm, old)
	nm = append(nm, s)
	ts.members.Store(&nm)
	revived := ts.dead
	if ts.dead {
		// ts was dropped while empty between open and join: revive it.
		if err := r.subscribe(ts); err != nil {
			r.h.log.Error("engine resubscribe", "pattern", ts.pattern, "err", err)
		}
		ts.dead = false
		r.subs[subKey{ts.pattern, ts.group}] = ts
	}
	r.mu.Unlock()
	if revived {
		r.confirm(s.ctx, ts)
	}
}

// conn is the engine connection ts is subscribed on (see router).
func (r *router) conn(ts *topicSub) *natsConn {
	if ts.group != "" {
		return r.h.eng.NC
	}
	return r.h.eng.Live
}

// subscribe makes ts's engine subscription and indexes it. Called with mu held.
func (r *router) subscribe(ts *topicSub) error {
	var err error
	subj := engine.Subject(ts.pattern)
	if ts.group != "" {
		ts.nsub, err = r.conn(ts).QueueSubscribe(subj, ts.group, ts.handler(r.h))
	} else {
		ts.nsub, err = r.conn(ts).Subscribe(subj, ts.handler(r.h))
	}
	if err != nil {
		return fmt.Errorf("engine subscribe %s: %w", ts.pattern, err)
	}
	// Fan-out happens here, so let the engine buffer generously instead of
	// dropping messages for a busy topic.
	_ = ts.nsub.SetPendingLimits(1<<20, 256<<20)
	if err := r.index(ts).Insert(ts.pattern, ts); err != nil {
		_ = ts.nsub.Unsubscribe()
		return fmt.Errorf("index %s: %w", ts.pattern, err)
	}
	if ts.group != "" {
		r.ngrouped.Add(1)
	} else {
		r.plainGen.Add(1)
	}
	return nil
}

// unsubscribe ends ts's engine subscription and takes it out of its index.
// Called with mu held.
func (r *router) unsubscribe(ts *topicSub) {
	if r.index(ts).Remove(ts.pattern, ts) == nil {
		if ts.group != "" {
			r.ngrouped.Add(-1)
		} else {
			r.plainGen.Add(1)
		}
	}
	if ts.nsub != nil {
		_ = ts.nsub.Unsubscribe()
	}
}

func (r *router) index(ts *topicSub) *gsl.GenericSublist[*topicSub] {
	if ts.group != "" {
		return r.grouped
	}
	return r.plain
}

// needsEngine reports whether a live message published on this hub must go
// to the engine: always when others can reach it, else only for a queue
// group of this hub (which the engine serves).
func (r *router) needsEngine(topic []byte) bool {
	if r.h.eng.Shared() {
		return true
	}
	return r.ngrouped.Load() > 0 && r.grouped.HasInterest(unsafe.String(unsafe.SliceData(topic), len(topic)))
}

// remove takes s out of ts, dropping the engine subscription with the last member.
func (r *router) remove(ts *topicSub, s *Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := *ts.members.Load()
	nm := make([]*Session, 0, len(old))
	for _, m := range old {
		if m != s {
			nm = append(nm, m)
		}
	}
	ts.members.Store(&nm)
	if len(nm) == 0 && !ts.dead {
		r.unsubscribe(ts)
		ts.dead = true
		if r.subs[subKey{ts.pattern, ts.group}] == ts {
			delete(r.subs, subKey{ts.pattern, ts.group})
		}
	}
}

func (r *router) stopAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, ts := range r.subs {
		r.unsubscribe(ts)
		ts.dead = true
		delete(r.subs, k)
	}
}

// localMatches remembers, for one publisher (a session's read loop), the
// plain subscriptions matching the topic it published to last: publishers
// mostly publish to the same topic again, and the index lookup was a tenth
// of a one-to-one message's CPU. Only its owner uses it.
type localMatches struct {
	gen   uint64 // router.plainGen when subs was found
	topic []byte
	subs  []*topicSub
	// stored tells whether storedTopic is stored (Session.publishesStored).
	storedTopic         []byte
	stored, storedKnown bool
}

// maxLocalMatches bounds the matching subscriptions deliverLocal collects on
// its stack when it has no localMatches to keep them in.
const maxLocalMatches = 8

// deliverLocal hands a message published on this hub to the local plain
// subscriptions that match topic, as the engine would have. It runs on the
// publisher's read loop, so one publisher's messages reach each
// subscription in the order it sent them. lm, when not nil, is the
// publisher's cache of the lookup.
func (r *router) deliverLocal(topic, key, payload []byte, lm *localMatches) {
	var matched []*topicSub
	if lm == nil {
		var buf [maxLocalMatches]*topicSub
		matched = r.match(topic, buf[:0])
	} else {
		if gen := r.plainGen.Load(); lm.gen != gen || !bytes.Equal(lm.topic, topic) {
			// gen is taken before the lookup: a change during it makes the
			// next publish look again.
			lm.gen, lm.topic = gen, append(lm.topic[:0], topic...)
			lm.subs = r.match(topic, lm.subs[:0])
		}
		matched = lm.subs
	}
	for _, ts := range matched {
		ts.fanout(r.h, topic, key, payload)
	}
}

// match appends the plain subscriptions matching topic to into.
func (r *router) match(topic []byte, into []*topicSub) []*topicSub {
	// The topic's bytes viewed as a string for the index, which neither
	// keeps nor changes it.
	r.plain.Match(unsafe.String(unsafe.SliceData(topic), len(topic)), func(ts *topicSub) {
		into = append(into, ts)
	})
	return into
}

// handler delivers one engine message to the local members of ts.
func (ts *topicSub) handler(h *Hub) nats.MsgHandler {
	return func(m *nats.Msg) {
		var key string
		if m.Header != nil {
			key = clientKey(m.Header.Get(nats.MsgIdHdr))
		}
		topic := engine.Topic(m.Subject)
		ts.fanout(h, unsafe.Slice(unsafe.StringData(topic), len(topic)), unsafe.Slice(unsafe.StringData(key), len(key)), m.Data)
	}
}

// fanout delivers one message to the local members of ts: all of them, or
// one (round robin) for a queue group. The frame is encoded once and
// shared. topic, key and payload are only read.
func (ts *topicSub) fanout(h *Hub, topic, key, payload []byte) {
	members := *ts.members.Load()
	if len(members) == 0 {
		return
	}
	// One allocation per message whatever the number of members: the
	// encoded frame, which f points into.
	frame, f := encodeMsg(ts.sid, 0, 0, topic, key, payload)
	var deny denyCheck
	if ts.group != "" {
		// One member of the group gets it; skip members that are closing.
		n := uint64(len(members))
		start := ts.rr.Add(1)
		for i := uint64(0); i < n; i++ {
			s := members[(start+i)%n]
			if deny.denied(s, f.Topic) {
				continue
			}
			if s.deliver(frame, &f) {
				h.metrics.deliveries.Inc()
				return
			}
		}
		return
	}
	delivered := 0
	for _, s := range members {
		if deny.denied(s, f.Topic) {
			continue
		}
		if s.deliver(frame, &f) {
			delivered++
		}
	}
	// One atomic add per message, not one per member.
	h.metrics.deliveries.Add(float64(delivered))
}

// denyCheck tells whether a session's permissions refuse it a topic
// (deny_subscribe), deciding once per permission set for one message:
// sessions mostly share their sets (sharedPerms).
type denyCheck struct {
	last *perms
	deny bool
}

func (d *denyCheck) denied(s *Session, topic []byte) bool {
	if p := s.perms.Load(); p != d.last {
		d.last, d.deny = p, len(p.denySub) > 0 && p.deniedDelivery(topic)
	}
	return d.deny
}

// encodeMsg encodes a MSG frame in one allocation and returns it with a
// Frame whose Topic, Key and Payload alias the encoded bytes (for the
// permission checks and classroom sessions that need the fields).
func encodeMsg(sid, seq uint64, flags protocol.Flags, topic, key, payload []byte) ([]byte, protocol.Frame) {
	f := protocol.Frame{Op: protocol.OpMsg, Flags: flags, ID: sid, Seq: seq, Topic: topic, Key: key, Payload: payload}
	frame := f.EncodeOwned()
	return frame, f
}

// deliver queues a MSG for this session, unless its subscription's
// history is being sent (history.go), in which case it waits for it.
func (s *Session) deliver(frame []byte, f *protocol.Frame) bool {
	if s.hist.hold(frame, f) {
		return true
	}
	return s.deliverNow(frame, f)
}

// deliverNow queues a MSG: CAPS frames as encoded (one encoding shared by
// the whole fan-out), another dialect in its own form.
func (s *Session) deliverNow(frame []byte, f *protocol.Frame) bool {
	if s.native {
		return s.send(frame)
	}
	return s.dialect.deliver(s, *f)
}

// runSubHooks runs the subscribe hooks whose pattern covers pattern, with
// HookTimeout for them all.
func (h *Hub) runSubHooks(ctx context.Context, s *Session, pattern string) error {
	if len(h.subHooks) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, HookTimeout)
	defer cancel()
	p := []byte(pattern)
	for _, sh := range h.subHooks {
		if protocol.Covers(sh.pattern, p) {
			if err := h.contain(inSubscribeHook, func() error { return sh.fn(ctx, s.info, pattern) }); err != nil {
				return err
			}
		}
	}
	return nil
}

func (h *Hub) runUnsubHooks(s *Session, pattern string) {
	p := []byte(pattern)
	info := s.infoSnapshot()
	for _, uh := range h.unsubHooks {
		if protocol.Covers(uh.pattern, p) {
			_ = h.contain(inUnsubscribeHook, func() error { uh.fn(info, pattern); return nil })
		}
	}
}
