package hub

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/nats-io/nats.go"

	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/protocol"
)

type natsConn = nats.Conn

// router keeps one engine subscription per (pattern, queue group) on this
// hub and fans each message out to the local sessions that want it, encoding
// the MSG frame once for all of them.
type router struct {
	h      *Hub
	mu     sync.Mutex
	subs   map[subKey]*topicSub
	nextID atomic.Uint64
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
}

func newRouter(h *Hub) *router {
	r := &router{h: h, subs: map[subKey]*topicSub{}}
	return r
}

// sid space: live subscription ids count up from 1; durable members use the
// high half so the two never collide on a session.
const durableSIDBase = 1 << 62

// add subscribes s to pattern (in group), creating the engine subscription
// if this hub has none for it yet.
func (r *router) add(s *Session, pattern, group string) (*topicSub, error) {
	ts, err := r.open(pattern, group)
	if err != nil {
		return nil, err
	}
	r.join(ts, s)
	return ts, nil
}

// open returns the hub's subscription for (pattern, group), creating it
// (with no members yet) if needed.
func (r *router) open(pattern, group string) (*topicSub, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := subKey{pattern, group}
	ts := r.subs[k]
	if ts == nil {
		ts = &topicSub{sid: r.nextID.Add(1), pattern: pattern, group: group}
		ts.members.Store(&[]*Session{})
		if err := r.subscribe(ts); err != nil {
			return nil, err
		}
		r.subs[k] = ts
	}
	return ts, nil
}

// join adds s to the members of ts.
func (r *router) join(ts *topicSub, s *Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := *ts.members.Load()
	for _, m := range old {
		if m == s {
			return
		}
	}
	nm := make([]*Session, len(old), len(old)+1)
	copy(nm, old)
	nm = append(nm, s)
	ts.members.Store(&nm)
	if ts.dead {
		// ts was dropped while empty between open and join: revive it.
		if err := r.subscribe(ts); err != nil {
			r.h.log.Error("engine resubscribe", "pattern", ts.pattern, "err", err)
		}
		ts.dead = false
		r.subs[subKey{ts.pattern, ts.group}] = ts
	}
}

func (r *router) subscribe(ts *topicSub) error {
	var err error
	subj := engine.Subject(ts.pattern)
	if ts.group != "" {
		ts.nsub, err = r.h.eng.NC.QueueSubscribe(subj, ts.group, ts.handler(r.h))
	} else {
		ts.nsub, err = r.h.eng.NC.Subscribe(subj, ts.handler(r.h))
	}
	if err != nil {
		return fmt.Errorf("engine subscribe %s: %w", ts.pattern, err)
	}
	// Fan-out happens here, so let the engine buffer generously instead of
	// dropping messages for a busy topic.
	_ = ts.nsub.SetPendingLimits(1<<20, 256<<20)
	return nil
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
	if len(nm) == 0 {
		if ts.nsub != nil {
			_ = ts.nsub.Unsubscribe()
		}
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
		if ts.nsub != nil {
			_ = ts.nsub.Unsubscribe()
		}
		delete(r.subs, k)
	}
}

// handler delivers one engine message to local members: all of them, or one
// (round robin) for a queue group. The frame is encoded once and shared.
func (ts *topicSub) handler(h *Hub) nats.MsgHandler {
	return func(m *nats.Msg) {
		members := *ts.members.Load()
		if len(members) == 0 {
			return
		}
		var key string
		if m.Header != nil {
			key = clientKey(m.Header.Get(nats.MsgIdHdr))
		}
		// One allocation per message whatever the number of members: the
		// encoded frame, which f and topic point into.
		frame, f := encodeMsg(ts.sid, 0, 0, engine.Topic(m.Subject), key, m.Data)
		topic := f.Topic
		if ts.group != "" {
			// One member of the group gets it; skip members that are closing.
			n := uint64(len(members))
			start := ts.rr.Add(1)
			for i := uint64(0); i < n; i++ {
				s := members[(start+i)%n]
				if p := s.perms.Load(); len(p.denySub) > 0 && p.deniedDelivery(topic) {
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
			if p := s.perms.Load(); len(p.denySub) > 0 && p.deniedDelivery(topic) {
				continue
			}
			if s.deliver(frame, &f) {
				delivered++
			}
		}
		// One atomic add per message, not one per member.
		h.metrics.deliveries.Add(float64(delivered))
	}
}

// encodeMsg encodes a MSG frame in one allocation and returns it with a
// Frame whose Topic, Key and Payload alias the encoded bytes (for the
// permission checks and classroom sessions that need the fields).
func encodeMsg(sid, seq uint64, flags protocol.Flags, topic, key string, payload []byte) ([]byte, protocol.Frame) {
	// Read-only views of the strings: Append only copies from them.
	f := protocol.Frame{Op: protocol.OpMsg, Flags: flags, ID: sid, Seq: seq,
		Topic: unsafe.Slice(unsafe.StringData(topic), len(topic)),
		Key:   unsafe.Slice(unsafe.StringData(key), len(key)), Payload: payload}
	frame := f.Encode()
	if _, err := protocol.Decode(frame, len(frame), &f); err != nil {
		panic("hub: MSG frame does not decode: " + err.Error()) // a bug in protocol, not bad input
	}
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
