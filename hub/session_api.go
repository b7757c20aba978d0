package hub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/caps-hub/caps/protocol"
)

// The session API: what a client can do, as methods every dialect calls
// (dialect.go). The methods check everything a hostile client could get
// wrong — bounds, permissions, limits — whatever dialect it speaks, and
// refuse with a *protocol.Error whose code the dialect passes on. They run
// on the session's read loop unless said otherwise.

// subRequest describes a subscription a client asks for.
type subRequest struct {
	Pattern string
	// Group makes a live subscription one member of a queue group: each
	// message goes to one member, here and on other hubs.
	Group string
	// Durable names a durable subscription: a JetStream consumer shared, on
	// every hub, by the sessions that subscribe with this name and pattern.
	Durable string
	// DeliverAll: a durable's consumer created by this subscription starts
	// at the first stored message instead of the next one.
	DeliverAll bool
	// MaxInFlight caps a durable's unacknowledged deliveries to this
	// session (0: Config.MaxInFlight).
	MaxInFlight int
	// AckWait is a new durable consumer's redelivery time (0: Config.AckWait).
	AckWait time.Duration
	// History asks a live subscription on a stored topic for its last n
	// messages first, flagged FlagHistory.
	History int
}

// validate holds a subscription's numbers to the protocol's bounds.
func (sb subRequest) validate() error {
	o := protocol.SubOptions{MaxInFlight: sb.MaxInFlight, AckWaitMS: int(sb.AckWait / time.Millisecond), History: sb.History}
	if sb.AckWait > 0 && o.AckWaitMS == 0 {
		o.AckWaitMS = -1 // under a millisecond: out of range
	}
	if err := o.Validate(); err != nil {
		return Reject(protocol.CodeBadRequest, "subscription options: "+err.Error())
	}
	if sb.Group != "" && !protocol.ValidName(sb.Group) {
		return Reject(protocol.CodeBadRequest, fmt.Sprintf("bad queue group %q", sb.Group))
	}
	return nil
}

// subscribe subscribes the session. accepted, when not nil, runs once the
// subscription exists and before its first message is queued, with its
// id (sid): a dialect answers there (the CAPS OK carries the sid). An error
// refuses the subscription and nothing was subscribed. A history that
// cannot be read once the subscription is accepted is told to the client
// as a notice; the subscription stays.
func (s *Session) subscribe(ctx context.Context, sb subRequest, accepted func(sid uint64)) (uint64, error) {
	h := s.hub
	pattern := []byte(sb.Pattern)
	if !protocol.ValidPattern(pattern) {
		return 0, Reject(protocol.CodeBadTopic, fmt.Sprintf("invalid pattern %q", sb.Pattern))
	}
	if !s.perms.Load().canSubscribe(pattern) {
		return 0, Reject(protocol.CodeForbidden, fmt.Sprintf("%s %q may not subscribe to %q", s.info.Role, s.info.Name, sb.Pattern))
	}
	if err := sb.validate(); err != nil {
		return 0, err
	}
	if sb.History > 0 || sb.Durable != "" {
		// Work for the engine (reading a history, creating a consumer):
		// rate-limited like publishes and requests.
		if err := s.allow(); err != nil {
			return 0, err
		}
	}
	s.subMu.Lock()
	n := s.nsubs
	s.subMu.Unlock()
	if n >= h.cfg.MaxSubs {
		return 0, Reject(protocol.CodeTooManySubs, fmt.Sprintf("at most %d subscriptions per connection", h.cfg.MaxSubs))
	}
	// One subscription of the identity's on this hub, given back if this
	// one is not made (or is one the session already has).
	if !h.identSubs.take(s.identKey, h.cfg.MaxSubsPerIdentity) {
		return 0, Reject(protocol.CodeTooManySubs, fmt.Sprintf("%s %q has %d subscriptions on this hub over all its connections, the most one identity may", s.info.Role, s.info.Name, h.cfg.MaxSubsPerIdentity))
	}
	if err := h.runSubHooks(ctx, s, sb.Pattern); err != nil {
		h.identSubs.give(s.identKey, 1)
		return 0, withCode(err, protocol.CodeRejected)
	}
	if sb.Durable != "" {
		sid, err := s.subscribeDurable(ctx, sb, accepted)
		if err != nil {
			h.identSubs.give(s.identKey, 1)
		}
		return sid, err
	}
	ts, err := h.router.open(ctx, sb.Pattern, sb.Group)
	if err != nil {
		h.identSubs.give(s.identKey, 1)
		h.runUnsubHooks(s, sb.Pattern)
		return 0, Reject(protocol.CodeUnavailable, err.Error())
	}
	s.subMu.Lock()
	if s.live == nil {
		s.live = map[uint64]*topicSub{}
	}
	if _, dup := s.live[ts.sid]; !dup {
		s.live[ts.sid] = ts
		s.nsubs++
	} else {
		h.identSubs.give(s.identKey, 1)
	}
	s.subMu.Unlock()
	if sb.History == 0 {
		// Joined before the answer, with the session's deliveries on the
		// subscription held until the answer is queued: a message published
		// once the client has its OK reaches it (answered before the join,
		// a publish right after the OK could find it not yet a member, and
		// does since live messages are delivered straight from the
		// publisher's hub), and no MSG arrives before the OK naming its sid.
		s.hist.start(ts.sid)
		h.router.join(ts, s)
		if accepted != nil {
			accepted(ts.sid)
		}
		frames, _ := s.hist.release(ts.sid, nil)
		for i := range frames {
			s.deliverNow(frames[i].frame, &frames[i].f)
		}
		return ts.sid, nil
	}
	if accepted != nil {
		accepted(ts.sid)
	}
	// History (after the answer, so it carries the sid) and then live:
	// a newcomer sees the conversation in order, with no gap between.
	err = h.subscribeWithHistory(s, ts, func() (map[string]bool, error) {
		hctx, cancel := context.WithTimeout(ctx, engineCallTimeout)
		defer cancel()
		return h.sendHistory(hctx, s, sb.Pattern, sb.History, ts.sid)
	})
	if err != nil {
		code, text := errCode(err, protocol.CodeInternal)
		s.notify(code, text)
	}
	return ts.sid, nil
}

func (s *Session) subscribeDurable(ctx context.Context, sb subRequest, accepted func(sid uint64)) (uint64, error) {
	h := s.hub
	jctx, cancel := context.WithTimeout(ctx, engineCallTimeout)
	defer cancel()
	m, err := h.durables.join(jctx, s, sb)
	if err != nil {
		h.runUnsubHooks(s, sb.Pattern)
		return 0, withCode(err, protocol.CodeInternal)
	}
	s.subMu.Lock()
	if s.dur == nil {
		s.dur = map[uint64]*durableMember{}
	}
	s.dur[m.sid] = m
	s.nsubs++
	s.subMu.Unlock()
	if accepted != nil {
		accepted(m.sid)
	}
	h.durables.start(m)
	return m.sid, nil
}

// unsubscribe ends subscription sid. Once it returns, the session gets no
// more deliveries of a durable subscription; what it had not acknowledged
// goes to another member at once.
func (s *Session) unsubscribe(sid uint64) error {
	s.subMu.Lock()
	ts, live := s.live[sid]
	m, dur := s.dur[sid]
	delete(s.live, sid)
	delete(s.dur, sid)
	if live || dur {
		s.nsubs--
		s.hub.identSubs.give(s.identKey, 1)
	}
	s.subMu.Unlock()
	switch {
	case live:
		s.hub.router.remove(ts, s)
		s.hub.runUnsubHooks(s, ts.pattern)
	case dur:
		s.hub.durables.leave(m)
		s.hub.runUnsubHooks(s, m.pattern)
	default:
		return Reject(protocol.CodeNotFound, fmt.Sprintf("no subscription %d", sid))
	}
	return nil
}

// pubRequest is a message a client publishes.
type pubRequest struct {
	// ID is the dialect's number for this publish, handed back to
	// dialect.published with the outcome.
	ID    uint64
	Topic []byte
	// Key is the message id: a stored topic keeps one message per id (a
	// retry is stored once), and publish hooks see it (PublishKey).
	Key     []byte
	Payload []byte
	// Stored refuses the publish unless the topic is stored.
	Stored bool
	// Allowed: the dialect has already taken this publish's share of the
	// rate limit (allow), before work of its own.
	Allowed bool
}

// allow takes one publish or request from the session's rate limit.
func (s *Session) allow() error {
	if s.limiter != nil && !s.limiter.Allow() {
		return Reject(protocol.CodeRateLimited, fmt.Sprintf("more than %d publishes and requests per second", s.hub.cfg.PubRate))
	}
	return nil
}

// publish checks p (rate, topic, permissions, the apps' publish hooks),
// hands it to the engine and reports the outcome to the dialect
// (dialect.published). A live publish is reported before publish returns;
// a stored one may be reported later, from another goroutine, once the
// engine has it (pipeline.go): the read loop goes on meanwhile, and the
// engine's group commit amortises its writes over the publishes in
// flight. p's slices are not used once publish returns.
func (s *Session) publish(ctx context.Context, p pubRequest) {
	err := s.checkPublish(p)
	if err == nil && s.pipelines && s.publishesStored(p.Topic) {
		s.publishPipelined(ctx, p)
		return
	}
	var seq uint64
	if err == nil {
		if s.pubMatches == nil {
			s.pubMatches = &localMatches{} // sessions that never publish do without
		}
		seq, err = s.store(ctx, s.info, s.keyScope, p, s.pubMatches)
	}
	if err != nil {
		err = withCode(err, protocol.CodeRejected)
	}
	s.dialect.published(s, p.ID, seq, err)
}

// publishesStored is Hub.isStored for the read loop, remembered for the
// topic the session last asked about: publishers mostly publish to one
// topic again, and which topics are stored is fixed once the hub runs
// (asking each time was 4 % of the pubsub scenario's CPU).
func (s *Session) publishesStored(topic []byte) bool {
	if s.pubMatches == nil {
		s.pubMatches = &localMatches{} // sessions that never publish do without
	}
	lm := s.pubMatches
	if !lm.storedKnown || !bytes.Equal(lm.storedTopic, topic) {
		lm.storedTopic = append(lm.storedTopic[:0], topic...)
		lm.stored, lm.storedKnown = s.hub.isStored(topic), true
	}
	return lm.stored
}

// checkPublish holds p to the session's rate limit, the topic and id rules
// and its permissions. Read loop only.
func (s *Session) checkPublish(p pubRequest) error {
	if !p.Allowed {
		if err := s.allow(); err != nil {
			return err
		}
	}
	if !protocol.ValidTopic(p.Topic) {
		return Reject(protocol.CodeBadTopic, fmt.Sprintf("invalid topic %q", p.Topic))
	}
	if len(p.Key) > 0 && !protocol.ValidKey(p.Key) {
		return Reject(protocol.CodeBadRequest, fmt.Sprintf("bad message id: 1-%d bytes of printable ASCII, no spaces", protocol.MaxKeyLen))
	}
	if !s.perms.Load().canPublish(p.Topic) {
		return Reject(protocol.CodeForbidden, fmt.Sprintf("%s %q may not publish to %q", s.info.Role, s.info.Name, p.Topic))
	}
	return nil
}

// store runs the apps' publish hooks on checked p and hands it to the
// engine as the session (info, scope) published it; lm is the session's
// cache of a live topic's local subscribers (nil off the read loop, where
// only stored topics are published). Safe off the read loop with nil lm:
// it reads nothing else of the session that the loop changes.
func (s *Session) store(ctx context.Context, info SessionInfo, scope string, p pubRequest, lm *localMatches) (uint64, error) {
	h := s.hub
	if err := h.runPubHooks(ctx, info, p.Key, p.Topic, p.Payload); err != nil {
		return 0, withCode(err, protocol.CodeRejected)
	}
	// publishFrom bounds the wait for the engine itself, on stored topics
	// only: a timer per live publish was a quarter of the hub's allocations.
	// An app that stores the topic itself (StoreHook) sees the client's
	// message id; the engine gets it scoped to the client's identity
	// (msgid.go), so no client can pre-empt another's.
	seq, logged, err := h.publishFrom(ctx, info, scope, p.Topic, p.Key, p.Payload, p.Stored, lm)
	if err != nil {
		return 0, withCode(err, protocol.CodeUnavailable)
	}
	h.logEvent(p.Topic, logged)
	return seq, nil
}

// ack acknowledges delivery seq of durable subscription sid; with confirm
// it returns once the engine has the acknowledgement.
func (s *Session) ack(ctx context.Context, sid, seq uint64, confirm bool) error {
	how := settleAck
	if confirm {
		how = settleAckConfirm
	}
	return s.settle(ctx, sid, seq, how)
}

// nak gives delivery seq of durable subscription sid back, for another
// member (or this one) at once.
func (s *Session) nak(sid, seq uint64) error {
	return s.settle(s.ctx, sid, seq, settleNak)
}

func (s *Session) settle(ctx context.Context, sid, seq uint64, how settlement) error {
	s.subMu.Lock()
	m := s.dur[sid]
	s.subMu.Unlock()
	if m == nil {
		return Reject(protocol.CodeNotFound, fmt.Sprintf("no durable subscription %d", sid))
	}
	return s.hub.durables.settle(ctx, m, seq, how)
}

// maxRequests is how many requests of one session run at once. A client
// that sends more waits (its read loop does): requests are answered by id,
// in any order, but one connection cannot take over the hub's goroutines.
const maxRequests = 8

// request runs service name with payload off the read loop and reports the
// answer to the dialect (dialect.replied) with id. The service gets
// ServiceTimeout, and less if the session ends first. While maxRequests of
// the session's requests run, request waits for one to end.
func (s *Session) request(id uint64, name string, payload []byte) {
	h := s.hub
	if err := s.allow(); err != nil {
		s.dialect.replied(s, id, name, nil, err)
		return
	}
	fn, ok := h.services[name]
	if !ok {
		s.dialect.replied(s, id, name, nil, Reject(protocol.CodeNotFound, fmt.Sprintf("no service %q", name)))
		return
	}
	if s.reqs == nil {
		s.reqs = make(chan struct{}, maxRequests)
	}
	select {
	case s.reqs <- struct{}{}:
	case <-s.done:
		return
	}
	body := bytes.Clone(payload) // the read loop reuses payload's buffer
	info := s.info
	s.work.Add(1)
	go func() {
		defer s.work.Done()
		defer func() { <-s.reqs }()
		ctx, cancel := context.WithTimeout(s.ctx, ServiceTimeout)
		defer cancel()
		var out []byte
		err := h.contain(inService, func() (err error) {
			out, err = fn(ctx, info, body)
			return err
		})
		if err != nil {
			err = withCode(err, protocol.CodeInternal)
		}
		s.dialect.replied(s, id, name, out, err)
	}()
}

// reidentify changes who the session is taken for: its role, attributes
// and permissions (a classroom connection shows by what it sends whether
// it is a vendor or a driver). Its subscriptions stay: the dialect ends
// those the new identity should not have. Only the read loop may call it.
func (s *Session) reidentify(id Identity) {
	h := s.hub
	id.Name = s.ident.Name
	id = h.completeIdentity(id)
	old := s.ident
	s.ident = id
	s.keyScope = keyScope(id)
	s.perms.Store(h.permissionsOf(id))
	s.infoMu.Lock()
	s.info.Role, s.info.Attrs = id.Role, id.Attrs
	s.infoMu.Unlock()
	if old.Role != id.Role {
		h.metrics.conns.WithLabelValues(old.Role).Dec()
		h.metrics.conns.WithLabelValues(id.Role).Inc()
	}
}

// rename gives the session another name (a text client choosing one): the
// identity is completed again (identify hooks) and its permissions, whose
// {name} placeholders name it, compiled anew. Its subscriptions stay; the
// app that lets a client rename keeps its own records. Only the read loop
// may call it.
func (s *Session) rename(name string) error {
	h := s.hub
	if !protocol.ValidName(name) {
		return Reject(protocol.CodeBadRequest, fmt.Sprintf("bad name %q: 1-32 of A-Z a-z 0-9 _ . -, starting with a letter or digit", name))
	}
	id := s.ident
	id.Name = name
	id = h.completeIdentity(id)
	s.ident = id
	s.perms.Store(h.permissionsOf(id))
	s.infoMu.Lock()
	s.info.Name, s.info.Attrs = id.Name, id.Attrs
	s.infoMu.Unlock()
	return nil
}

// close ends the session at the client's request: what is queued is
// written, then the connection is closed.
func (s *Session) close(reason error) { s.closeWith(nil, "", reason) }

// withCode makes err a *protocol.Error, with code when it has none.
func withCode(err error, code string) error {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return pe
	}
	return &protocol.Error{Code: code, Text: err.Error()}
}
