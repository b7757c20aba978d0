package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caps-hub/caps/protocol"
)

// SubOpt configures a subscription.
type SubOpt func(*subOptions)

type subOptions struct {
	group, durable string
	flags          protocol.Flags
	so             protocol.SubOptions
	buffer         int
}

// Queue makes the subscription a member of queue group: each message goes to
// one member of the group instead of to every subscriber.
func Queue(group string) SubOpt { return func(o *subOptions) { o.group = group } }

// Durable makes the subscription durable: it is backed by a JetStream
// consumer called name, shared by every subscriber anywhere that uses the
// same name; stored messages are delivered to one of them and must be
// acknowledged (automatically after the handler returns, unless ManualAck).
func Durable(name string) SubOpt { return func(o *subOptions) { o.durable = name } }

// ManualAck leaves acknowledgement to the handler: call Msg.Ack or Msg.Nak.
// A delivery that is neither is redelivered after the ack wait.
func ManualAck() SubOpt { return func(o *subOptions) { o.flags |= protocol.FlagManualAck } }

// DeliverAll makes a new durable start with the first stored message rather
// than the next one published.
func DeliverAll() SubOpt { return func(o *subOptions) { o.flags |= protocol.FlagDeliverAll } }

// MaxInFlight caps the unacknowledged durable deliveries to this connection
// (0 = the hub's default).
func MaxInFlight(n int) SubOpt { return func(o *subOptions) { o.so.MaxInFlight = n } }

// AckWait sets the durable's ack wait, when the hub creates its consumer.
func AckWait(d time.Duration) SubOpt {
	return func(o *subOptions) { o.so.AckWaitMS = int(d / time.Millisecond) }
}

// History asks for the last n stored messages on the pattern (Msg.History
// set) before live ones. For live subscriptions on stored topics. History is
// replayed only for the first subscribe, not again after a reconnect.
func History(n int) SubOpt { return func(o *subOptions) { o.so.History = n } }

// Buffer sets how many deliveries may wait for the handler (default 1024).
// See the package documentation for what happens when it is full.
func Buffer(n int) SubOpt { return func(o *subOptions) { o.buffer = n } }

// Subscription is a handler receiving the messages of a subscription. It
// survives reconnects: the Conn subscribes again and maps the hub's new
// subscription id to it.
type Subscription struct {
	c       *Conn
	pattern string
	group   string
	durable string
	manual  bool
	handler func(*Msg)
	done    chan struct{}

	// Deliveries waiting for the handler goroutine, at most buffer of them.
	// The read loop appends under qmu and wakes the handler only when it
	// waits (idle); the handler takes everything queued at once. A channel
	// cost a locked send and a receive per message, and a wake-up of the
	// handler for nearly every one.
	qmu    sync.Mutex
	queue  []*Msg
	spare  []*Msg
	idle   bool
	wake   chan struct{} // one slot: a wake-up is never lost, never blocks
	buffer int
	// waiting counts the deliveries waiting for the handler: queued, or
	// taken but not started; Buffer bounds it. As with a channel, a
	// delivery for a handler that waits for one (idle) is handed over, not
	// buffered: handoff marks it, the first of the handler's next batch.
	waiting atomic.Int64
	handoff bool

	dropping atomic.Bool

	// guarded by c.mu
	e     *entry
	ended bool
	err   error
}

// Pattern returns the subscribed topic pattern.
func (s *Subscription) Pattern() string { return s.pattern }

// Queue returns the queue group, or "".
func (s *Subscription) Queue() string { return s.group }

// Durable returns the durable name, or "".
func (s *Subscription) Durable() string { return s.durable }

// Done is closed when the subscription has ended: Unsubscribe, Close of the
// Conn, or the hub refusing it when the Conn subscribed again after a
// reconnect (a refusal as "unavailable" is retried with backoff instead).
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err reports why the subscription ended: nil while active and after
// Unsubscribe, ErrClosed when the Conn closed, or the hub's *protocol.Error.
func (s *Subscription) Err() error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.err
}

// Unsubscribe ends the subscription. Its handler is not called again once a
// running call has returned; deliveries still buffered are dropped (for a
// durable, the hub hands its unacknowledged deliveries to another member
// when it gets the UNSUB). The hub is told (UNSUB) when this was the last
// local subscription sharing its subscription id.
func (s *Subscription) Unsubscribe() error {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.ended {
		return nil
	}
	c.subs.detachSub(c, s)
	s.endLocked(nil)
	return nil
}

func (s *Subscription) endLocked(err error) {
	if s.ended {
		return
	}
	s.ended = true
	s.err = err
	close(s.done)
}

// run calls the handler for each delivery, one at a time.
func (s *Subscription) run() {
	var batch []*Msg
	for {
		s.qmu.Lock()
		if len(s.queue) == 0 {
			s.idle = true
			s.qmu.Unlock()
			select {
			case <-s.wake:
				continue
			case <-s.done:
				return
			}
		}
		batch, s.queue = s.queue, s.spare[:0]
		handoff := s.handoff
		s.handoff = false
		s.qmu.Unlock()
		for i, m := range batch {
			select {
			case <-s.done:
				return
			default:
			}
			batch[i] = nil
			if i > 0 || !handoff {
				s.waiting.Add(-1)
			}
			s.handler(m)
			if m.AckRequired && !s.manual {
				m.autoAck()
			}
		}
		s.qmu.Lock()
		s.spare = batch[:0]
		s.qmu.Unlock()
	}
}

// push hands m to the handler goroutine without ever blocking the read loop.
func (s *Subscription) push(m *Msg) {
	select {
	case <-s.done:
		return
	default:
	}
	s.qmu.Lock()
	handoff := s.idle
	if !handoff && s.waiting.Load() >= int64(s.buffer) {
		s.qmu.Unlock()
		if s.dropping.CompareAndSwap(false, true) {
			what := "live messages are lost"
			if m.AckRequired {
				what = "durable deliveries will be redelivered after the ack wait"
			}
			s.c.asyncError(fmt.Errorf("subscription %q: buffer of %d full, %s: %w", s.pattern, s.buffer, what, ErrSlowConsumer))
		}
		return
	}
	s.queue = append(s.queue, m)
	if handoff {
		s.idle, s.handoff = false, true
	} else {
		s.waiting.Add(1)
	}
	s.qmu.Unlock()
	if s.dropping.Load() {
		s.dropping.Store(false)
	}
	if handoff {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// Msg is one delivery. Its fields are the subscriber's own copy.
type Msg struct {
	Topic   string // the concrete topic it was published to
	Payload []byte
	Key     string // message id given by the publisher, if any
	// Seq is the stream sequence of a durable delivery (0 for live ones).
	Seq uint64
	// Redelivered: delivered before and not acknowledged.
	Redelivered bool
	// History: replayed because of History(n), not live.
	History bool
	// AckRequired: a durable delivery that must be acknowledged.
	AckRequired bool
	// Sub is the subscription it was delivered to.
	Sub *Subscription

	t       *transport
	sid     uint64
	settled atomic.Bool
}

// Ack acknowledges a durable delivery and waits until the hub confirms that
// the engine has stored the acknowledgement: then the message will not be
// delivered again. It is a no-op for live messages. It fails with an error
// wrapping ErrDisconnected when the connection the message arrived on is
// gone; the message is then redelivered.
func (m *Msg) Ack(ctx context.Context) error { return m.settle(ctx, protocol.OpAck) }

// Nak gives a durable delivery back so that it is delivered again at once,
// possibly to another member of the durable, and waits for the hub's
// confirmation. It is a no-op for live messages.
func (m *Msg) Nak(ctx context.Context) error { return m.settle(ctx, protocol.OpNak) }

func (m *Msg) settle(ctx context.Context, op protocol.Op) error {
	if !m.AckRequired || m.t == nil {
		return nil
	}
	if !m.settled.CompareAndSwap(false, true) {
		return ErrAcked
	}
	k := ackKey{m.sid, m.Seq}
	cl := newCall()
	fail := func(err error) error {
		m.settled.Store(false)
		return fmt.Errorf("%s %s seq %d: %w", op, m.Topic, m.Seq, err)
	}
	if err := m.t.registerAck(k, cl); err != nil {
		return fail(err)
	}
	if err := m.t.enqueue(&protocol.Frame{Op: op, Flags: protocol.FlagConfirm, ID: m.sid, Seq: m.Seq}, false); err != nil {
		m.t.unregisterAck(k, cl)
		return fail(err)
	}
	select {
	case <-cl.done:
		if cl.err != nil {
			return fail(cl.err)
		}
		return nil
	case <-ctx.Done():
		m.t.unregisterAck(k, cl)
		return fail(ctx.Err())
	}
}

// autoAck acknowledges without waiting for a confirmation.
func (m *Msg) autoAck() { m.settleQuiet(protocol.OpAck) }

func (m *Msg) settleQuiet(op protocol.Op) {
	if m.t == nil || !m.settled.CompareAndSwap(false, true) {
		return
	}
	_ = m.t.enqueue(&protocol.Frame{Op: op, ID: m.sid, Seq: m.Seq}, false)
}

// entry is one subscription on the hub: a SUB this Conn sent (and sends
// again after every reconnect). Live subscriptions to the same pattern and
// group share an entry, because the hub gives them the same sid anyway.
type entry struct {
	n       uint64 // creation order, for resubscribing in order
	pattern string
	group   string
	durable string
	flags   protocol.Flags
	so      protocol.SubOptions
	shared  bool

	subs    []*Subscription // copy on write
	sid     uint64          // 0 until the hub answered on transport on
	on      *transport      // transport the SUB was last sent on
	ready   chan struct{}   // closed after the first answer (or removal)
	isReady bool
	removed bool
	retries int         // resubscriptions refused as unavailable in a row
	retry   *time.Timer // pending resubscription
}

func (e *entry) stopRetry() {
	if e.retry != nil {
		e.retry.Stop()
		e.retry = nil
	}
}

type liveKey struct{ pattern, group string }

// subTable holds the entries of a Conn. Guarded by Conn.mu.
type subTable struct {
	n       uint64
	entries map[*entry]struct{}
	shared  map[liveKey]*entry
	bySid   map[uint64][]*entry // copy on write
	rr      uint64
}

func newSubTable() subTable {
	return subTable{
		entries: make(map[*entry]struct{}),
		shared:  make(map[liveKey]*entry),
		bySid:   make(map[uint64][]*entry),
	}
}

// Subscribe subscribes handler to pattern ("parcel.pickup.*", "chat.>") and
// waits for the hub's answer. A refusal is returned as a *protocol.Error
// (bad_topic, forbidden, too_many_subs…). When the connection is down,
// Subscribe waits for it to come back, bounded by ctx. Once subscribed, the
// subscription lasts until Unsubscribe or Close, across reconnects.
func (c *Conn) Subscribe(ctx context.Context, pattern string, handler func(*Msg), opts ...SubOpt) (*Subscription, error) {
	if handler == nil {
		return nil, errors.New("caps client: subscribe: nil handler")
	}
	if !protocol.ValidPattern([]byte(pattern)) {
		return nil, fmt.Errorf("subscribe %q: %w", pattern, &protocol.Error{Code: protocol.CodeBadTopic, Text: "invalid pattern (checked locally)"})
	}
	o := subOptions{buffer: DefaultBuffer}
	for _, opt := range opts {
		opt(&o)
	}
	if o.buffer < 1 {
		o.buffer = 1
	}
	s := &Subscription{
		c: c, pattern: pattern, group: o.group, durable: o.durable,
		manual:  o.flags&protocol.FlagManualAck != 0,
		handler: handler,
		done:    make(chan struct{}),
		wake:    make(chan struct{}, 1),
		buffer:  o.buffer,
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, fmt.Errorf("subscribe %q: %w", pattern, ErrClosed)
	}
	e := c.subs.entryFor(c, pattern, o)
	e.subs = append(slices.Clip(e.subs), s)
	s.e = e
	ready := e.ready
	c.mu.Unlock()

	select {
	case <-ready:
	case <-ctx.Done():
		_ = s.Unsubscribe()
		return nil, fmt.Errorf("subscribe %q: %w", pattern, ctx.Err())
	}
	c.mu.Lock()
	ended, err := s.ended, s.err
	c.mu.Unlock()
	if ended {
		if err == nil {
			err = ErrClosed
		}
		return nil, fmt.Errorf("subscribe %q: %w", pattern, err)
	}
	go s.run()
	return s, nil
}

// entryFor finds the shared entry for a live subscription or makes a new one
// (sending its SUB when connected).
func (st *subTable) entryFor(c *Conn, pattern string, o subOptions) *entry {
	shared := o.durable == "" && o.so == (protocol.SubOptions{})
	k := liveKey{pattern, o.group}
	if shared {
		if e := st.shared[k]; e != nil {
			return e
		}
	}
	st.n++
	e := &entry{
		n: st.n, pattern: pattern, group: o.group, durable: o.durable,
		flags: o.flags, so: o.so, shared: shared,
		ready: make(chan struct{}),
	}
	st.entries[e] = struct{}{}
	if shared {
		st.shared[k] = e
	}
	if c.t != nil {
		st.subscribeOn(c, c.t, e)
	}
	return e
}

// subscribeOn sends e's SUB on t. A dead t is ignored: the next transport
// subscribes every entry again.
func (st *subTable) subscribeOn(c *Conn, t *transport, e *entry) {
	e.on, e.sid = t, 0
	id := c.nextID()
	cl := &call{}
	cl.fn = func(cl *call) { c.subAnswered(t, e, cl) }
	if t.register(id, cl) != nil {
		return
	}
	so := e.so
	if e.isReady {
		so.History = 0 // replay history once, not after every reconnect
	}
	var payload []byte
	if so != (protocol.SubOptions{}) {
		payload, _ = json.Marshal(so)
	}
	f := protocol.Frame{
		Op: protocol.OpSub, Flags: e.flags, ID: id,
		Topic: []byte(e.pattern), Key: []byte(e.durable), Group: []byte(e.group),
		Payload: payload,
	}
	if t.enqueue(&f, false) != nil {
		t.unregister(id)
	}
}

// subAnswered handles the OK or ERR answering a SUB sent on t.
func (c *Conn) subAnswered(t *transport, e *entry, cl *call) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := &c.subs
	if cl.err != nil {
		if errors.Is(cl.err, ErrDisconnected) || e.removed || e.on != t {
			return // subscribed again on the next connection
		}
		err := cl.err
		wasReady := e.isReady
		var pe *protocol.Error
		if wasReady && errors.As(err, &pe) && pe.Code == protocol.CodeUnavailable {
			// The hub's engine is not back yet: try again on this connection.
			e.retries++
			d := backoff(e.retries, 1, c.opts.ReconnectMin, c.opts.ReconnectMax, false)
			c.log.Warn("caps: subscribe again later", "pattern", e.pattern, "durable", e.durable, "in", d, "err", err)
			e.on = nil
			e.retry = time.AfterFunc(d, func() {
				c.mu.Lock()
				defer c.mu.Unlock()
				if !e.removed && e.on == nil && c.t == t {
					st.subscribeOn(c, t, e)
				}
			})
			return
		}
		st.remove(c, e)
		for _, s := range e.subs {
			s.endLocked(err)
		}
		if wasReady {
			c.asyncError(fmt.Errorf("subscribe %q again after reconnect: %w", e.pattern, err))
		}
		return
	}
	sid := cl.seq
	if e.removed || e.on != t {
		// Unsubscribed while the SUB was on its way: drop it on the hub,
		// unless another entry uses the same sid.
		if e.removed && c.t == t && len(st.bySid[sid]) == 0 {
			_ = t.enqueue(&protocol.Frame{Op: protocol.OpUnsub, ID: sid}, false)
		}
		return
	}
	e.sid = sid
	e.retries = 0
	st.bySid[sid] = append(slices.Clip(st.bySid[sid]), e)
	e.markReady()
}

func (e *entry) markReady() {
	if !e.isReady {
		e.isReady = true
		close(e.ready)
	}
}

// detachSub removes s from its entry, and the entry when it was the last one.
func (st *subTable) detachSub(c *Conn, s *Subscription) {
	e := s.e
	if e == nil {
		return
	}
	i := slices.Index(e.subs, s)
	if i < 0 {
		return
	}
	e.subs = slices.Delete(slices.Clone(e.subs), i, i+1)
	if len(e.subs) == 0 {
		st.remove(c, e)
	}
}

// remove forgets e, sending UNSUB when no other entry shares its sid.
func (st *subTable) remove(c *Conn, e *entry) {
	if e.removed {
		return
	}
	e.removed = true
	e.stopRetry()
	delete(st.entries, e)
	if k := (liveKey{e.pattern, e.group}); e.shared && st.shared[k] == e {
		delete(st.shared, k)
	}
	if e.sid != 0 {
		list := st.bySid[e.sid]
		if i := slices.Index(list, e); i >= 0 {
			list = slices.Delete(slices.Clone(list), i, i+1)
		}
		if len(list) == 0 {
			delete(st.bySid, e.sid)
			if e.on != nil && e.on == c.t {
				_ = e.on.enqueue(&protocol.Frame{Op: protocol.OpUnsub, ID: e.sid}, false)
			}
		} else {
			st.bySid[e.sid] = list
		}
	}
	e.on = nil
	e.markReady()
}

// lost forgets every sid: they belonged to the dead transport t.
func (st *subTable) lost(*transport) {
	for e := range st.entries {
		e.on, e.sid = nil, 0
		e.stopRetry()
	}
	clear(st.bySid)
}

// resubscribe sends every entry's SUB on the new transport t, in the order
// they were made.
func (st *subTable) resubscribe(c *Conn, t *transport) {
	list := make([]*entry, 0, len(st.entries))
	for e := range st.entries {
		list = append(list, e)
	}
	slices.SortFunc(list, func(a, b *entry) int { return int(a.n - b.n) })
	for _, e := range list {
		st.subscribeOn(c, t, e)
	}
}

// closeAll ends every subscription (the Conn is closing).
func (st *subTable) closeAll(c *Conn) {
	for e := range st.entries {
		for _, s := range e.subs {
			s.endLocked(ErrClosed)
		}
		e.removed = true
		e.on = nil
		e.stopRetry()
		e.markReady()
	}
	clear(st.entries)
	clear(st.shared)
	clear(st.bySid)
}

// deliver hands a MSG to the local subscriptions for its sid (read goroutine).
func (c *Conn) deliver(t *transport, f *protocol.Frame) {
	ackReq := f.Flags&protocol.FlagAckRequired != 0
	hist := f.Flags&protocol.FlagHistory != 0
	var buf [4]*Subscription
	targets := buf[:0]

	c.mu.Lock()
	ents := c.subs.bySid[f.ID]
	if ackReq {
		// A durable delivery is for exactly one handler.
		total := 0
		for _, e := range ents {
			total += len(e.subs)
		}
		if total > 0 {
			i := int(c.subs.rr % uint64(total))
			c.subs.rr++
			for _, e := range ents {
				if i < len(e.subs) {
					targets = append(targets, e.subs[i])
					break
				}
				i -= len(e.subs)
			}
		}
	} else {
		for _, e := range ents {
			switch {
			case hist && e.so.History == 0:
				// history asked for by another subscription on the same sid
			case e.group != "" && len(e.subs) > 1:
				// The hub gave it to this connection as one member of the
				// queue group: one local member handles it.
				targets = append(targets, e.subs[c.subs.rr%uint64(len(e.subs))])
				c.subs.rr++
			default:
				targets = append(targets, e.subs...)
			}
		}
	}
	c.mu.Unlock()

	if len(targets) == 0 {
		// Unsubscribed while it was on its way; a durable delivery is
		// handed to another member by the hub when it processes the UNSUB.
		c.log.Debug("caps: MSG for unknown sid", "sid", f.ID, "topic", string(f.Topic))
		return
	}
	topic, key := t.intern(f.Topic), string(f.Key)
	for _, s := range targets {
		m := &Msg{
			Topic: topic, Key: key, Payload: clone(f.Payload), Seq: f.Seq,
			Redelivered: f.Flags&protocol.FlagRedelivered != 0,
			History:     hist,
			AckRequired: ackReq,
			Sub:         s,
			t:           t,
			sid:         f.ID,
		}
		s.push(m)
	}
}
