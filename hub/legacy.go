package hub

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caps-hub/caps/protocol"
	"github.com/caps-hub/caps/protocol/classroom"
)

// The classroom dialect: a connection whose first byte is '{' speaks bare
// JSON objects {"event":…,"payload":…}, as the Node.js classroom clients do.
// Such a client has no handshake, so the hub infers what it is from what it
// sends, with the help of the apps (LegacyRouter), and answers with the same
// kind of objects, one per write. docs/PROTOCOL.md ("Classroom dialect and
// WebSocket") describes the behaviour; this file implements it.

// LegacyTopicPrefix is where classroom events that no app claims are
// published: "classroom.<event>". Every classroom connection receives that
// namespace (except its own events), as the classroom broadcast hub did.
const LegacyTopicPrefix = "classroom."

// LegacyRouter is implemented by an App (found among Config.Apps) that gives
// meaning to classroom events: the parcel app turns "pickup" into a vendor's
// order and makes a silent classroom connection a driver. The hub asks each
// router in turn; the first that handles an event decides.
type LegacyRouter interface {
	// LegacyIdle returns the persona of a classroom connection that has sent
	// nothing during the hub's grace period (Config.LegacyGrace). ok false:
	// this app has none. The hub presumes it, and drops it again when the
	// connection shows it is something else (LegacyPersona.Presumed).
	LegacyIdle() (p LegacyPersona, ok bool)
	// LegacyRoute maps an event a classroom client sent. s is the session as
	// it stands (its Role and Store are those of its current persona).
	// handled false: not this app's event. An error is sent back as an error
	// object and nothing is published.
	LegacyRoute(s SessionInfo, event string, payload []byte) (r LegacyRoute, handled bool, err error)
}

// LegacyPersona is what a classroom connection is taken to be: the role (and
// store) its publishes are checked against, and the subscriptions that feed
// it.
type LegacyPersona struct {
	Role  string
	Store string
	Subs  []LegacySub
}

// LegacySub is one subscription of a persona.
type LegacySub struct {
	Pattern string
	// Durable names a durable subscription (a JetStream consumer shared with
	// the native clients that use the same name); empty for a live one.
	Durable string
	// Flags for a durable: protocol.FlagDeliverAll as the native clients of
	// that durable use it (the consumer is created by whoever comes first).
	Flags protocol.Flags
	// MaxInFlight caps unacknowledged deliveries (0: the hub's default).
	// Classroom clients parse each read as one object, so 1 keeps them from
	// being handed a burst.
	MaxInFlight int
	// AckKey names a durable delivery so that a later event of the client
	// acknowledges it (LegacyRoute.Settles): a classroom driver's pickup is
	// acknowledged by its in-transit. Deliveries it names "" — or all, when it
	// is nil — are acknowledged once written to the socket: the classroom
	// protocol has no acknowledgements of its own.
	AckKey func(topic string, payload []byte) string
}

// LegacyRoute says what to do with one classroom event.
type LegacyRoute struct {
	// Topic to publish on. Permissions and publish hooks apply as for a
	// native client of the persona's role.
	Topic string
	// Key is the message id (de-duplication of stored topics, retries).
	Key string
	// Payload to publish; nil publishes the event's payload as received.
	Payload []byte
	// Persona, when set, is what the connection becomes before publishing.
	Persona *LegacyPersona
	// Settles acknowledges, once the publish is accepted, the delivery whose
	// AckKey is this.
	Settles string
}

// Limits of the classroom dialect.
const (
	// legacyMaxErrors malformed objects in a row mean the peer does not speak
	// the dialect: the hub closes the connection.
	legacyMaxErrors = 16
	// legacyWriteGap spaces the objects written to one classroom connection.
	// Classroom clients parse each 'data' event as one object; objects
	// written back to back can reach them in one read when they are slow to
	// read, and break JSON.parse. The gap makes that unlikely; nothing can
	// make it impossible, the dialect has no framing.
	legacyWriteGap = 100 * time.Millisecond
)

// ackRef is a durable delivery awaiting an acknowledgement.
type ackRef struct {
	sid, seq uint64
	at       time.Time
}

// legacyCodec is a classroom session's state: it turns frames into classroom
// objects and remembers what the connection is taken to be.
type legacyCodec struct {
	h    *Hub
	self []byte // message-id prefix of this connection's own generic events

	mu        sync.Mutex
	persona   LegacyPersona
	presumed  bool   // the persona is LegacyIdle's guess, not shown by the client
	perms     *perms // the persona's permissions (the Session's perms stay empty)
	durable   map[uint64]*LegacySub
	pending   map[string]ackRef // AckKey → delivery acknowledged by a later event
	onWrite   map[*byte]ackRef  // first byte of an object → delivery acknowledged once it is written
	graceEnd  time.Time         // zero once the grace period is over
	lastWrite time.Time
	nextKey   uint64
}

// errorPayload is the payload of an "error" object.
type errorPayload struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Fatal   bool   `json:"fatal,omitempty"`
}

func errorObject(code, text string, fatal bool) []byte {
	b, _ := json.Marshal(errorPayload{Code: code, Message: text, Fatal: fatal})
	return classroom.Encode("error", b)
}

// encodeFrame turns a frame for the client into a classroom object, or nil
// for frames the classroom dialect has no use for (OK, PING, REPLY…).
func (l *legacyCodec) encodeFrame(f *protocol.Frame) []byte {
	switch f.Op {
	case protocol.OpMsg:
		return classroom.Encode(l.h.eventName(f.Topic), f.Payload)
	case protocol.OpErr:
		return errorObject(string(f.Topic), string(f.Payload), f.Flags&protocol.FlagFatal != 0)
	case protocol.OpBye:
		b, _ := json.Marshal(struct {
			Reason string `json:"reason"`
		}{string(f.Payload)})
		return classroom.Encode("bye", b)
	}
	return nil
}

// sendFrame queues the classroom form of f. It reports false when the
// session will not get it (closing, or a delivery it must not see).
func (l *legacyCodec) sendFrame(s *Session, f *protocol.Frame) bool {
	if f.Op != protocol.OpMsg {
		b := l.encodeFrame(f)
		if b == nil {
			return true
		}
		return s.send(b)
	}
	if len(f.Key) > 0 && bytes.HasPrefix(f.Key, l.self) {
		return true // its own generic event: the classroom hub did not echo
	}
	l.mu.Lock()
	if l.perms != nil && l.perms.deniedDelivery(f.Topic) {
		l.mu.Unlock()
		return false
	}
	spec, ok := l.durable[f.ID]
	if f.ID >= durableSIDBase && !ok {
		// A delivery racing with the end of that subscription (the persona
		// changed): it has been handed back, and is not this client's any more.
		l.mu.Unlock()
		return false
	}
	b := l.encodeFrame(f)
	var key string
	if f.Flags&protocol.FlagAckRequired != 0 {
		ref := ackRef{sid: f.ID, seq: f.Seq, at: time.Now()}
		if ok && spec.AckKey != nil {
			key = spec.AckKey(string(f.Topic), f.Payload)
		}
		if key != "" {
			l.pending[key] = ref
			l.armLocked(s)
		} else {
			l.onWrite[&b[0]] = ref
		}
	}
	l.mu.Unlock()
	if s.send(b) {
		return true
	}
	l.mu.Lock()
	if key != "" {
		delete(l.pending, key)
	}
	delete(l.onWrite, &b[0])
	l.mu.Unlock()
	return false
}

// write writes one object (the write loop calls it for each), keeping
// legacyWriteGap after the previous one, and acknowledges the delivery it
// carries, if that waits for the write.
func (l *legacyCodec) write(s *Session, b []byte) error {
	l.mu.Lock()
	wait := time.Until(l.lastWrite.Add(legacyWriteGap))
	l.mu.Unlock()
	if wait > 0 {
		select {
		case <-time.After(wait):
		case <-s.done: // closing: flush without pauses
		}
	}
	if _, err := s.conn.Write(b); err != nil {
		return err
	}
	l.mu.Lock()
	l.lastWrite = time.Now()
	ref, ok := l.onWrite[&b[0]]
	delete(l.onWrite, &b[0])
	l.mu.Unlock()
	if ok {
		s.legacyAck(ref)
	}
	return nil
}

// legacyAck acknowledges a durable delivery on the client's behalf. A
// delivery no longer held (its subscription ended, or the ack wait ran out
// and it went to someone else) is left alone.
func (s *Session) legacyAck(ref ackRef) {
	s.subMu.Lock()
	m := s.dur[ref.sid]
	s.subMu.Unlock()
	if m == nil {
		return
	}
	g := m.g
	g.mu.Lock()
	msg, ok := m.inflight[ref.seq]
	delete(m.inflight, ref.seq)
	g.cond.Broadcast()
	g.mu.Unlock()
	if ok {
		if err := msg.Ack(); err != nil {
			s.hub.log.Warn("classroom: ack", "session", s.info.ID, "seq", ref.seq, "err", err)
		}
	}
}

// legacyProbation is how long a presumed persona may hold a delivery
// without answering before the hub concludes it was presumed wrongly: half
// the ack wait, so that what it held is handed back (NAK) before the engine
// redelivers it on its own, which would deliver it twice.
func (h *Hub) legacyProbation() time.Duration { return h.cfg.AckWait / 2 }

// armLocked sets the connection's read deadline to the next moment the read
// loop must look at the session without input: the end of the grace period,
// or when a presumed persona's oldest delivery has waited its probation.
func (l *legacyCodec) armLocked(s *Session) {
	var at time.Time
	if !l.graceEnd.IsZero() {
		at = l.graceEnd
	}
	if l.presumed {
		for _, ref := range l.pending {
			if t := ref.at.Add(l.h.legacyProbation()); at.IsZero() || t.Before(at) {
				at = t
			}
		}
	}
	_ = s.conn.SetReadDeadline(at)
}

// legacyRefusal explains why a classroom connection is refused.
func (h *Hub) legacyRefusal() string {
	if h.cfg.Legacy == "off" {
		return "this hub does not accept the classroom dialect (it runs with --legacy=off); use a CAPS client"
	}
	return "this hub runs with authentication, so it does not accept the classroom dialect, which has none; use a CAPS client with a token, or start the hub with --legacy=on"
}

// legacyEventName names classroom.<event> topics <event>.
func legacyEventName(topic string) string { return strings.TrimPrefix(topic, LegacyTopicPrefix) }

// setupLegacy registers the hub's own naming of the classroom namespace.
func (h *Hub) setupLegacy(x *Host) {
	x.NameEvents(LegacyTopicPrefix+">", legacyEventName)
}

// legacyRouters returns the apps that implement LegacyRouter.
func (h *Hub) legacyRouters() []LegacyRouter {
	var out []LegacyRouter
	for _, a := range h.cfg.Apps {
		if r, ok := a.(LegacyRouter); ok {
			out = append(out, r)
		}
	}
	return out
}

// legacyPresumesSilent reports whether a connection that sends nothing
// within the handshake deadline is taken for a classroom client: the dialect
// is allowed and an app presumes something of silent classroom connections
// (the parcel app: they are drivers). Otherwise the deadline closes it.
func (h *Hub) legacyPresumesSilent() bool {
	if !h.cfg.legacyAllowed() {
		return false
	}
	for _, r := range h.legacyRouters() {
		if _, ok := r.LegacyIdle(); ok {
			return true
		}
	}
	return false
}

// serveLegacy runs a classroom-dialect connection: from its first byte, '{',
// or, silent is true, after it has said nothing for the handshake deadline.
func (h *Hub) serveLegacy(s *Session, br *bufio.Reader, silent bool) {
	c := s.conn
	if !h.cfg.legacyAllowed() {
		h.metrics.errors.WithLabelValues(protocol.CodeLegacyDisabled).Inc()
		s.writeNow(errorObject(protocol.CodeLegacyDisabled, h.legacyRefusal(), true))
		closeGently(c)
		return
	}
	if tc := tcpOf(c); tc != nil {
		// One object per write, sent at once: a classroom client parses each
		// read on its own. Classroom clients send no heartbeats, so dead peers
		// are found by TCP keepalive instead.
		_ = tc.SetNoDelay(true)
		_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: h.cfg.Heartbeat, Interval: h.cfg.Heartbeat / 2, Count: 4})
	}
	_ = c.SetReadDeadline(time.Time{})

	// Unique across the hubs of a cluster: the parcel app tells drivers
	// apart by name.
	id := make([]byte, 4)
	_, _ = rand.Read(id)
	name := fmt.Sprintf("classroom-%x", id)
	s.info.Dialect = "classroom"
	l := &legacyCodec{
		h:       h,
		durable: map[uint64]*LegacySub{},
		pending: map[string]ackRef{},
		onWrite: map[*byte]ackRef{},
	}
	if err := s.establish(Identity{Role: protocol.RoleClient, Name: name}, ""); err != nil {
		code, text := errCode(err, protocol.CodeForbidden)
		h.metrics.errors.WithLabelValues(code).Inc()
		s.writeNow(errorObject(code, text, true))
		closeGently(c)
		return
	}
	// Routing and deliveries use the persona's permissions (l.perms); the
	// session's own stay empty so that they never change under the router.
	s.perms = &perms{}
	l.self = []byte(s.info.ID + ".")
	l.persona = LegacyPersona{Role: protocol.RoleClient}
	l.perms = h.legacyPerms(l.persona, name)
	s.legacy = l

	routers := h.legacyRouters()
	var idle LegacyPersona
	hasIdle := false
	for _, r := range routers {
		if idle, hasIdle = r.LegacyIdle(); hasIdle {
			break
		}
	}
	h.runSession(s, func() error {
		if err := s.legacyJoinLive(LegacyTopicPrefix + ">"); err != nil {
			s.fail(0, protocol.CodeUnavailable, err.Error())
			return err
		}
		if silent && hasIdle {
			// Presume it once it has been silent for the grace period,
			// counted from the connection's start (lastRecv has not moved).
			l.mu.Lock()
			l.graceEnd = time.Unix(0, s.lastRecv.Load()).Add(h.cfg.LegacyGrace)
			l.armLocked(s)
			l.mu.Unlock()
		}
		return s.legacyReadLoop(br, routers, idle, hasIdle)
	})
}

// tcpOf returns the TCP connection under c (plain or TLS), or nil.
func tcpOf(c net.Conn) *net.TCPConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	tc, _ := c.(*net.TCPConn)
	return tc
}

// closeGently lets the peer read a last object before it sees the close:
// closing with unread input pending would reset the connection and could
// discard the object.
func closeGently(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
		_ = tc.SetReadDeadline(time.Now().Add(time.Second))
		_, _ = io.Copy(io.Discard, io.LimitReader(tc, 1<<16))
	}
	_ = c.Close()
}

// legacyReadLoop decodes objects until the connection ends.
func (s *Session) legacyReadLoop(br *bufio.Reader, routers []LegacyRouter, idle LegacyPersona, hasIdle bool) error {
	h, l := s.hub, s.legacy
	dec := classroom.NewDecoder(br, h.cfg.MaxFrame)
	bad := 0
	for {
		raw, err := dec.Next()
		if err != nil {
			var ce *classroom.Error
			switch {
			case isTimeout(err):
				s.legacyTimer(idle, hasIdle)
				continue
			case errors.As(err, &ce):
				if bad++; bad >= legacyMaxErrors {
					s.fail(0, protocol.CodeBadFrame, fmt.Sprintf("%d malformed objects in a row: this is not the classroom dialect; closing", bad))
					return err
				}
				s.sendErr(0, protocol.CodeBadFrame, ce.Error())
				continue
			case errors.Is(err, classroom.ErrUnsynced):
				s.fail(0, protocol.CodeBadFrame, err.Error())
				return err
			}
			return err // the connection ended
		}
		s.lastRecv.Store(time.Now().UnixNano())
		h.metrics.framesIn.Inc()
		h.metrics.bytesIn.Add(float64(len(raw)))
		obj, err := classroom.Parse(raw)
		if err != nil {
			if bad++; bad >= legacyMaxErrors {
				s.fail(0, protocol.CodeBadFrame, fmt.Sprintf("%d malformed objects in a row: this is not the classroom dialect; closing", bad))
				return err
			}
			s.sendErr(0, protocol.CodeBadRequest, err.Error())
			continue
		}
		bad = 0
		l.mu.Lock()
		if !l.graceEnd.IsZero() {
			// It spoke first: whatever it is, it is not a silent driver.
			l.graceEnd = time.Time{}
			l.armLocked(s)
		}
		l.mu.Unlock()
		s.legacyEvent(routers, obj)
	}
}

// legacyTimer runs when the read deadline set by armLocked passes.
func (s *Session) legacyTimer(idle LegacyPersona, hasIdle bool) {
	h, l := s.hub, s.legacy
	now := time.Now()
	l.mu.Lock()
	graceOver := !l.graceEnd.IsZero() && !now.Before(l.graceEnd)
	if graceOver {
		l.graceEnd = time.Time{}
	}
	stale := false
	if l.presumed {
		for _, ref := range l.pending {
			stale = stale || now.Sub(ref.at) >= h.legacyProbation()
		}
	}
	l.armLocked(s)
	l.mu.Unlock()
	switch {
	case graceOver && hasIdle:
		if err := s.legacyBecome(idle, true); err != nil {
			s.sendErr(0, errCodeOf(err), err.Error())
		}
	case stale:
		// A presumed driver that lets work wait is not one: it leaves the
		// queue, and what it held goes to someone else at once.
		h.log.Info("classroom: connection did not answer its delivery in time; no longer presumed", "session", s.info.ID, "name", s.info.Name, "role", s.info.Role)
		if err := s.legacyBecome(LegacyPersona{Role: protocol.RoleClient}, false); err != nil {
			s.sendErr(0, errCodeOf(err), err.Error())
		}
	}
}

func errCodeOf(err error) string {
	code, _ := errCode(err, protocol.CodeInternal)
	return code
}

// legacyEvent routes one event from the client.
func (s *Session) legacyEvent(routers []LegacyRouter, obj classroom.Object) {
	h, l := s.hub, s.legacy
	if s.limiter != nil && !s.limiter.Allow() {
		s.sendErr(0, protocol.CodeRateLimited, fmt.Sprintf("more than %d events per second", h.cfg.PubRate))
		return
	}
	var route LegacyRoute
	handled := false
	for _, r := range routers {
		var err error
		route, handled, err = r.LegacyRoute(s.info, obj.Event, obj.Payload)
		if err != nil {
			code, text := errCode(err, protocol.CodeRejected)
			s.sendErr(0, code, fmt.Sprintf("%s: %s", obj.Event, text))
			return
		}
		if handled {
			break
		}
	}
	if !handled {
		l.mu.Lock()
		l.nextKey++
		key := string(l.self) + strconv.FormatUint(l.nextKey, 10)
		presumed := l.presumed
		l.mu.Unlock()
		route = LegacyRoute{Topic: LegacyTopicPrefix + obj.Event, Key: key}
		if presumed {
			// It talks: it was not the silent client it was taken for.
			route.Persona = &LegacyPersona{Role: protocol.RoleClient}
		}
	}
	if route.Persona != nil {
		if err := s.legacyBecome(*route.Persona, false); err != nil {
			s.sendErr(0, errCodeOf(err), err.Error())
			return
		}
	}
	payload := route.Payload
	if payload == nil {
		payload = obj.Payload
	}
	topic := []byte(route.Topic)
	var key []byte
	if route.Key != "" {
		key = []byte(route.Key)
	}
	ctx, cancel := context.WithTimeout(withPublishKey(context.Background(), key), 10*time.Second)
	defer cancel()
	l.mu.Lock()
	p := l.perms
	l.mu.Unlock()
	if err := h.checkPublishAs(ctx, s.info, p, topic, payload); err != nil {
		code, text := errCode(err, protocol.CodeRejected)
		s.sendErr(0, code, fmt.Sprintf("%s: %s", obj.Event, text))
		return
	}
	if _, err := h.publishChecked(ctx, topic, key, payload, false); err != nil {
		code, text := errCode(err, protocol.CodeUnavailable)
		s.sendErr(0, code, fmt.Sprintf("%s: %s", obj.Event, text))
		return
	}
	h.logEvent(topic, payload)
	if route.Settles != "" {
		l.mu.Lock()
		ref, ok := l.pending[route.Settles]
		delete(l.pending, route.Settles)
		l.mu.Unlock()
		if ok {
			s.legacyAck(ref)
		}
	}
}

// legacyPerms are the permissions of a persona: its role's, plus the
// classroom namespace.
func (h *Hub) legacyPerms(p LegacyPersona, name string) *perms {
	var base Permissions
	if rp := h.policy[p.Role]; rp != nil {
		base = *rp
	}
	ns := LegacyTopicPrefix + ">"
	base.Publish = append(append([]string(nil), base.Publish...), ns)
	base.Subscribe = append(append([]string(nil), base.Subscribe...), ns)
	return base.compile(Identity{Role: p.Role, Name: name, Store: p.Store})
}

func subKeyOf(sub LegacySub) string { return sub.Pattern + "\x00" + sub.Durable }

// legacyBecome makes the session persona p: it leaves the subscriptions p
// does not have, takes on p's role and store, and joins p's subscriptions.
// Deliveries it held on subscriptions it leaves go to someone else at once.
// It runs on the read loop, the only goroutine that changes s.info.
func (s *Session) legacyBecome(p LegacyPersona, presumed bool) error {
	h, l := s.hub, s.legacy
	np := h.legacyPerms(p, s.info.Name)
	for _, sub := range p.Subs {
		if !np.canSubscribe([]byte(sub.Pattern)) {
			return Reject(protocol.CodeForbidden, fmt.Sprintf("a classroom %s may not subscribe to %q", p.Role, sub.Pattern))
		}
	}
	l.mu.Lock()
	old := l.persona
	l.mu.Unlock()
	want := map[string]bool{}
	for _, sub := range p.Subs {
		want[subKeyOf(sub)] = true
	}
	have := map[string]bool{}
	for _, sub := range old.Subs {
		have[subKeyOf(sub)] = true
		if !want[subKeyOf(sub)] {
			s.legacyLeave(sub)
		}
	}

	l.mu.Lock()
	l.persona = LegacyPersona{Role: p.Role, Store: p.Store}
	l.presumed = presumed
	l.perms = np
	l.armLocked(s)
	l.mu.Unlock()
	if old.Role != p.Role || old.Store != p.Store {
		s.infoMu.Lock()
		s.info.Role, s.info.Store = p.Role, p.Store
		s.infoMu.Unlock()
		h.metrics.conns.WithLabelValues(old.Role).Dec()
		h.metrics.conns.WithLabelValues(p.Role).Inc()
		h.log.Debug("classroom: persona", "session", s.info.ID, "name", s.info.Name, "role", p.Role, "store", p.Store, "presumed", presumed)
	}

	var errs []error
	for _, sub := range p.Subs {
		if have[subKeyOf(sub)] {
			l.mu.Lock()
			l.persona.Subs = append(l.persona.Subs, sub)
			l.mu.Unlock()
			continue
		}
		if err := s.legacyJoin(sub); err != nil {
			errs = append(errs, err)
			continue
		}
	}
	return errors.Join(errs...)
}

// legacyJoin subscribes the session as sub says.
func (s *Session) legacyJoin(sub LegacySub) error {
	h, l := s.hub, s.legacy
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.runSubHooks(ctx, s, sub.Pattern); err != nil {
		return err
	}
	if sub.Durable == "" {
		if err := s.legacyJoinLive(sub.Pattern); err != nil {
			h.runUnsubHooks(s, sub.Pattern)
			return err
		}
	} else {
		m, err := h.durables.join(ctx, s, sub.Pattern, sub.Durable, sub.Flags, protocol.SubOptions{MaxInFlight: sub.MaxInFlight})
		if err != nil {
			h.runUnsubHooks(s, sub.Pattern)
			return err
		}
		spec := sub
		l.mu.Lock()
		l.durable[m.sid] = &spec
		l.mu.Unlock()
		s.subMu.Lock()
		s.dur[m.sid] = m
		s.nsubs++
		s.subMu.Unlock()
		h.durables.start(m)
	}
	l.mu.Lock()
	l.persona.Subs = append(l.persona.Subs, sub)
	l.mu.Unlock()
	return nil
}

// legacyJoinLive joins the hub's live subscription to pattern.
func (s *Session) legacyJoinLive(pattern string) error {
	ts, err := s.hub.router.open(pattern, "")
	if err != nil {
		return err
	}
	s.subMu.Lock()
	if _, dup := s.live[ts.sid]; !dup {
		s.live[ts.sid] = ts
		s.nsubs++
	}
	s.subMu.Unlock()
	s.hub.router.join(ts, s)
	return nil
}

// legacyLeave ends the session's subscription sub.
func (s *Session) legacyLeave(sub LegacySub) {
	h, l := s.hub, s.legacy
	s.subMu.Lock()
	var m *durableMember
	var ts *topicSub
	for sid, x := range s.dur {
		if sub.Durable != "" && x.g.name == sub.Durable && x.pattern == sub.Pattern {
			m = x
			delete(s.dur, sid)
			s.nsubs--
			break
		}
	}
	if sub.Durable == "" {
		for sid, x := range s.live {
			if x.pattern == sub.Pattern && x.group == "" {
				ts = x
				delete(s.live, sid)
				s.nsubs--
				break
			}
		}
	}
	s.subMu.Unlock()
	if m != nil {
		l.mu.Lock()
		delete(l.durable, m.sid)
		for k, ref := range l.pending {
			if ref.sid == m.sid {
				delete(l.pending, k)
			}
		}
		for k, ref := range l.onWrite {
			if ref.sid == m.sid {
				delete(l.onWrite, k)
			}
		}
		l.mu.Unlock()
		h.durables.leave(m)
		h.runUnsubHooks(s, m.pattern)
	}
	if ts != nil {
		h.router.remove(ts, s)
		h.runUnsubHooks(s, ts.pattern)
	}
}
