package hub

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/protocol"
)

// durables runs durable subscriptions. A durable name is a JetStream
// consumer shared by every session, on any hub, that subscribes with that
// name: each stored message goes to one of them and waits for its ACK.
// A hub runs one consumer subscription per durable name, whatever the number
// of its local members.
//
// Locks: d.mu guards the tables and is never held across an engine call;
// g.mu guards a group's members and what they hold, and is taken after
// d.mu when both are.
type durables struct {
	h      *Hub
	mu     sync.Mutex
	groups map[string]*durableGroup
	// creating holds the consumers being looked up or created, by name: a
	// second subscription to the same durable waits for the first one's
	// engine call (it needs its outcome), any other goes ahead.
	creating map[string]chan struct{}
	nextID   atomic.Uint64
	// ensure looks up (or creates) a consumer: ensureConsumer, which a test
	// of this package replaces to make one engine call slow.
	ensure func(ctx context.Context, c consumerSpec) error
}

// consumerSpec is the consumer behind a durable subscription.
type consumerSpec struct {
	stream, name string
	sb           subRequest
	// owner is the identity that subscribed; private: the durable is its
	// own (durable_limits.go), not one its permissions share.
	owner   Identity
	private bool
}

type durableGroup struct {
	d       *durables
	name    string
	stream  string
	pattern string
	// stop ends the pull loop (hub/dispatch.go), which closes loopDone.
	stop     context.CancelFunc
	loopDone chan struct{}

	mu sync.Mutex
	// After a failed pull the next waits until retryAt (guarded by mu).
	backoff time.Duration
	retryAt time.Time
	cond    *sync.Cond
	members []*durableMember
	rr      int
	closed  bool
	started bool
}

// durableMember is one session's share of a durable group.
type durableMember struct {
	g        *durableGroup
	s        *Session
	sid      uint64
	pattern  string
	max      int
	inflight map[uint64]jetstream.Msg // stream seq → message, guarded by g.mu
	gone     bool
	loads    []LoadHook // what the apps say m holds besides inflight (hub/dispatch.go)
}

var durableNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ConsumerName is the JetStream consumer behind the durable subscription
// name on pattern (for operators and tools that inspect the engine).
func ConsumerName(name, pattern string) string {
	sum := sha256.Sum256([]byte(pattern))
	return name + "_" + hex.EncodeToString(sum[:6])
}

func newDurables(h *Hub) *durables {
	d := &durables{h: h, groups: map[string]*durableGroup{}, creating: map[string]chan struct{}{}}
	d.ensure = d.ensureConsumer
	return d
}

// join adds s to the durable group sb names, creating the JetStream
// consumer on first use. The consumer is not started until start(m), once
// the subscription is accepted.
func (d *durables) join(ctx context.Context, s *Session, sb subRequest) (*durableMember, error) {
	if !durableNameRE.MatchString(sb.Durable) {
		return nil, Reject(protocol.CodeBadRequest, fmt.Sprintf("bad durable name %q: 1-64 of A-Z a-z 0-9 _ -", sb.Durable))
	}
	stream := d.h.streamFor([]byte(sb.Pattern))
	if stream == "" {
		return nil, Reject(protocol.CodeBadRequest, fmt.Sprintf("%q is not a stored topic; durable subscriptions need one", sb.Pattern))
	}
	if !d.h.EngineReady() {
		return nil, Reject(protocol.CodeUnavailable, "the engine is unavailable")
	}
	// Joining a shared durable takes a grant of its name (Permissions.Durable):
	// reading a work queue's topics is not the right to take its work. A
	// name not granted is the session's own, a consumer private to its
	// identity — unless some role is granted that name, which is refused,
	// so that nobody thinks they joined the drivers' queue while they read
	// a copy of it.
	shared := s.perms.Load().sharesDurable(sb.Durable)
	if !shared && d.h.reservedDurable(sb.Durable) {
		return nil, Reject(protocol.CodeForbidden, fmt.Sprintf("durable %q is shared by the sessions granted it, and %s %q is not: subscribe without a durable name, or with a name of your own",
			sb.Durable, s.info.Role, s.info.Name))
	}
	// The consumer is named after the durable name and the pattern together:
	// one client cannot squat another's durable by creating it first on a
	// pattern of its own, because a different pattern is a different
	// consumer. Sharing a durable therefore takes the right to subscribe to
	// its very pattern.
	spec := consumerSpec{stream: stream, sb: sb, owner: s.ident, private: !shared}
	name := ConsumerName(sb.Durable, sb.Pattern)
	if spec.private {
		name = privateConsumerName(s.ident, sb.Durable, sb.Pattern)
	}
	spec.name = name
	for {
		d.mu.Lock()
		if g := d.groups[name]; g != nil {
			if m := g.add(s, sb, d); m != nil {
				d.mu.Unlock()
				return m, nil
			}
		}
		if busy, ok := d.creating[name]; ok {
			d.mu.Unlock()
			select {
			case <-busy:
				continue
			case <-ctx.Done():
				return nil, Reject(protocol.CodeUnavailable, fmt.Sprintf("durable %q: its consumer is still being created: %v", sb.Durable, ctx.Err()))
			}
		}
		done := make(chan struct{})
		d.creating[name] = done
		d.mu.Unlock()

		err := d.ensure(ctx, spec) // no lock held: other durables go on

		d.mu.Lock()
		delete(d.creating, name)
		close(done)
		if err != nil {
			d.mu.Unlock()
			return nil, err
		}
		g := &durableGroup{d: d, name: name, stream: stream, pattern: sb.Pattern}
		g.cond = sync.NewCond(&g.mu)
		d.groups[name] = g // replaces a group whose last member was leaving
		m := g.add(s, sb, d)
		d.mu.Unlock()
		return m, nil
	}
}

// add makes s a member of g, or returns nil when g is closed (its last
// member is leaving: the caller starts afresh). Called with d.mu held.
func (g *durableGroup) add(s *Session, sb subRequest, d *durables) *durableMember {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	m := &durableMember{
		g: g, s: s, pattern: sb.Pattern,
		sid:      durableSIDBase + d.nextID.Add(1),
		max:      sb.MaxInFlight,
		inflight: map[uint64]jetstream.Msg{},
		loads:    d.h.loadHooksFor(sb.Pattern),
	}
	if m.max <= 0 {
		m.max = d.h.cfg.MaxInFlight
	}
	g.members = append(g.members, m)
	g.cond.Broadcast() // the pull loop may be waiting for a member with room
	return m
}

// ensureConsumer looks up the consumer, or creates it within the limits
// (durable_limits.go). An existing one must be bound to sb's pattern.
func (d *durables) ensureConsumer(ctx context.Context, spec consumerSpec) error {
	js := d.h.eng.JS
	stream, name, sb := spec.stream, spec.name, spec.sb
	c, err := js.Consumer(ctx, stream, name)
	if err == nil {
		info := c.CachedInfo()
		if info.Config.FilterSubject == engine.Subject(sb.Pattern) {
			return d.prioritize(ctx, stream, c)
		}
		// A durable keeps the pattern it was created for. Letting a SUB
		// re-point it would let any client that may subscribe to some stored
		// pattern take over another's durable (say a vendor's, by name): the
		// owner's pending messages would be skipped, and its members on
		// other hubs handed the newcomer's topics.
		return Reject(protocol.CodeForbidden, fmt.Sprintf("durable %q is bound to %q; use another durable name for %q",
			name, engine.Topic(info.Config.FilterSubject), sb.Pattern))
	}
	if !engine.IsNotFound(err) {
		return Reject(protocol.CodeUnavailable, fmt.Sprintf("consumer %s: %v", name, err))
	}
	ackWait := d.h.cfg.AckWait
	if sb.AckWait > 0 {
		ackWait = sb.AckWait
	}
	deliver := jetstream.DeliverNewPolicy
	if sb.DeliverAll {
		deliver = jetstream.DeliverAllPolicy
	}
	idle := sharedDurableIdle
	if spec.private {
		idle = d.h.cfg.DurableIdle
	}
	release, err := d.h.registry.reserve(ctx, spec.owner, stream, name)
	if err != nil {
		return err
	}
	_, err = js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable:           name,
		FilterSubject:     engine.Subject(sb.Pattern),
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           ackWait,
		DeliverPolicy:     deliver,
		MaxDeliver:        -1,
		MaxAckPending:     10000,
		InactiveThreshold: idle,
		PriorityGroups:    []string{priorityGroup},
		PriorityPolicy:    jetstream.PriorityPolicyPrioritized,
		// Replicas 0: the consumer inherits its stream's replica count, which
		// may differ from the engine's default (an existing stream keeps its own).
	})
	if err != nil {
		release()
		return Reject(protocol.CodeUnavailable, fmt.Sprintf("create consumer %s: %v", name, err))
	}
	return nil
}

// start begins consuming for m's group if this hub is not already.
func (d *durables) start(m *durableMember) {
	g := m.g
	g.mu.Lock()
	if g.started || g.closed {
		g.mu.Unlock()
		return
	}
	g.started = true
	g.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), engineCallTimeout)
	defer cancel()
	c, err := d.h.eng.JS.Consumer(ctx, g.stream, g.name)
	if err != nil {
		d.h.log.Error("start durable", "durable", g.name, "err", err)
		m.s.notify(protocol.CodeUnavailable, fmt.Sprintf("durable %s: %v", g.name, err))
		return
	}
	// The pull loop asks for no more than the local members have room for:
	// a message pulled here but waiting for room is invisible to other
	// hubs' members until its ack wait runs out, so one slow worker must not
	// hoard a backlog that an idle worker elsewhere could have taken.
	loopCtx, stop := context.WithCancel(context.Background())
	g.mu.Lock()
	g.stop, g.loopDone = stop, make(chan struct{})
	closed := g.closed
	g.mu.Unlock()
	go g.pullLoop(loopCtx, c)
	if closed {
		stop()
	}
}

// handle gives one stored message to one member with room for it. It blocks
// (back-pressure on the consumer) while every member is at its limit.
func (g *durableGroup) handle(msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		_ = msg.Nak()
		return
	}
	seq := meta.Sequence.Stream
	topic := []byte(engine.Topic(msg.Subject()))
	payload := msg.Data()
	h := g.d.h
	// Hand out only what is on disk: with group sync the engine syncs after
	// storing. A round ends when it has synced or failed; a disk that hangs
	// must not hold the durable's consumer for ever, so the wait is bounded
	// and the message offered again after it.
	wctx, cancel := context.WithTimeout(context.Background(), durableSyncTimeout)
	err = h.eng.WaitDurable(wctx, meta.Timestamp)
	cancel()
	if err != nil {
		_ = msg.NakWithDelay(refusedRedelivery)
		return
	}
	// Never hand a member a message outside the pattern it subscribed to
	// (the one its permissions were checked against), even if the consumer
	// was pointed elsewhere behind this hub's back: leave it to whoever
	// subscribed to it.
	if !protocol.Match([]byte(g.pattern), topic) {
		_ = msg.NakWithDelay(refusedRedelivery)
		return
	}

	g.mu.Lock()
	// A redelivery of something a member still holds: its ack wait ran out,
	// so take it back and prefer someone else.
	var prev *durableMember
	for _, m := range g.members {
		if _, ok := m.inflight[seq]; ok {
			delete(m.inflight, seq)
			prev = m
		}
	}
	tried := map[*durableMember]bool{}
	for {
		if g.closed {
			g.mu.Unlock()
			_ = msg.Nak()
			return
		}
		m := g.pick(prev, tried)
		if m == nil {
			if len(tried) > 0 && len(tried) >= len(g.members) {
				// Every member refused it (deliver hooks): let the ack wait bring it back.
				g.mu.Unlock()
				_ = msg.NakWithDelay(refusedRedelivery)
				return
			}
			g.cond.Wait()
			continue
		}
		if p := m.s.perms.Load(); len(p.denySub) > 0 && p.deniedDelivery(topic) {
			tried[m] = true // its permissions deny this topic, as for live deliveries
			continue
		}
		m.inflight[seq] = msg
		g.mu.Unlock()

		hookErr := h.runDeliverHooks(m.s, topic, payload)
		f := protocol.Frame{Op: protocol.OpMsg, Flags: protocol.FlagAckRequired, ID: m.sid, Seq: seq, Topic: topic, Payload: payload}
		if meta.NumDelivered > 1 {
			f.Flags |= protocol.FlagRedelivered
		}
		if k := clientKey(msg.Headers().Get(nats.MsgIdHdr)); k != "" {
			f.Key = []byte(k)
		}
		frame := f.Encode()

		g.mu.Lock()
		// Handed over under g.mu, so that once a member has left (leave
		// marks it gone under g.mu and hands back what it held) it is
		// handed nothing more; and only if it still holds this message (an
		// engine redelivery while the hooks ran took it back).
		if hookErr == nil && !m.gone && m.inflight[seq] == msg && m.s.deliver(frame, &f) {
			g.mu.Unlock()
			h.metrics.deliveries.Inc()
			h.metrics.deliveryLatency.Observe(time.Since(meta.Timestamp).Seconds())
			return
		}
		if errors.Is(hookErr, ErrDropDelivery) {
			// An app says no one is to have it: it leaves the durable.
			if m.inflight[seq] == msg {
				delete(m.inflight, seq)
			}
			g.cond.Broadcast()
			g.mu.Unlock()
			_ = msg.TermWithReason("dropped by the app")
			return
		}
		// Refused by a deliver hook, gone, or its session is closing: try another member.
		if m.inflight[seq] == msg {
			delete(m.inflight, seq)
		}
		tried[m] = true
	}
}

func (h *Hub) runDeliverHooks(s *Session, topic, payload []byte) error {
	if len(h.deliverHooks) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), HookTimeout)
	defer cancel()
	t := string(topic)
	info := s.infoSnapshot() // this runs on the consumer's goroutine
	for _, dh := range h.deliverHooks {
		if protocol.Match(dh.pattern, topic) {
			if err := h.contain(inDeliverHook, func() error { return dh.fn(ctx, info, t, payload) }); err != nil {
				return err
			}
		}
	}
	return nil
}

// settlement is how a delivery is settled.
type settlement int

const (
	settleAck        settlement = iota
	settleAckConfirm            // ack, and wait for the engine to have it
	settleNak                   // give it back for redelivery at once
)

// settle acknowledges (or gives back) delivery seq held by m.
func (d *durables) settle(ctx context.Context, m *durableMember, seq uint64, how settlement) error {
	g := m.g
	g.mu.Lock()
	msg, ok := m.inflight[seq]
	delete(m.inflight, seq)
	g.cond.Broadcast()
	g.mu.Unlock()
	if !ok {
		return Reject(protocol.CodeNotFound, fmt.Sprintf("sequence %d is not awaiting an ack on this connection (already acknowledged, or redelivered after the ack wait)", seq))
	}
	var err error
	switch how {
	case settleNak:
		err = msg.Nak()
	case settleAckConfirm:
		ctx, cancel := context.WithTimeout(ctx, ackConfirmTimeout)
		defer cancel()
		err = msg.DoubleAck(ctx)
	default:
		err = msg.Ack()
	}
	if err != nil {
		return Reject(protocol.CodeUnavailable, fmt.Sprintf("ack %d: %v", seq, err))
	}
	return nil
}

// leave removes a member: its unacknowledged deliveries are handed back at
// once, and the hub stops consuming when its last local member leaves.
func (d *durables) leave(m *durableMember) {
	g := m.g
	g.mu.Lock()
	m.gone = true
	held := m.inflight
	m.inflight = map[uint64]jetstream.Msg{}
	for i, x := range g.members {
		if x == m {
			g.members = append(g.members[:i], g.members[i+1:]...)
			break
		}
	}
	last := len(g.members) == 0
	if last {
		g.closed = true
	}
	g.cond.Broadcast()
	g.mu.Unlock()
	if last {
		d.mu.Lock()
		if d.groups[g.name] == g {
			delete(d.groups, g.name)
		}
		d.mu.Unlock()
		// Stop pulling before giving anything back: a NAK while this hub still
		// pulls would hand the message straight back to this closing group.
		// What the pull requests bring meanwhile is NAKed by handle, since
		// the group is closed.
		g.stopPulling()
	}
	for _, msg := range held {
		_ = msg.Nak()
	}
}

// stopPulling ends the group's pull loop and waits (briefly) until the
// messages it was handed have been through handle. Its pull requests are
// withdrawn by dropping their inboxes: the server delivers only to
// requests whose reply subject still has interest. A message the server
// sent in the instant before it saw that is lost to this hub and comes
// back after its ack wait, as with any consumer that stops.
func (g *durableGroup) stopPulling() {
	g.mu.Lock()
	stop, done := g.stop, g.loopDone
	g.mu.Unlock()
	if stop == nil {
		return
	}
	stop()
	select {
	case <-done:
	case <-time.After(consumerDrainTimeout):
		g.d.h.log.Warn("durable pull loop did not stop in time", "durable", g.name, "waited", consumerDrainTimeout)
	}
}

func (d *durables) stopAll() {
	d.mu.Lock()
	gs := make([]*durableGroup, 0, len(d.groups))
	for _, g := range d.groups {
		gs = append(gs, g)
	}
	d.groups = map[string]*durableGroup{}
	d.mu.Unlock()
	for _, g := range gs {
		g.mu.Lock()
		g.closed = true
		g.cond.Broadcast()
		g.mu.Unlock()
		g.stopPulling()
	}
}
