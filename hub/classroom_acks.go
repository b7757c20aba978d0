package hub

import (
	"errors"
	"time"

	"github.com/caps-hub/caps/protocol"
)

// The classroom protocol has no acknowledgements, so the hub gives them
// for the client, through the session API like any client's ACK: a durable
// delivery whose subscription names it (ClassroomSub.AckKey) is
// acknowledged by a later event of the client that settles that key (a
// driver's in-transit for its pickup); any other is acknowledged once it
// has been written to the socket.

// ackRef is a durable delivery awaiting an acknowledgement.
type ackRef struct {
	sid, seq uint64
	at       time.Time // when it was handed to the client
}

// classroomAcks are a connection's deliveries awaiting acknowledgement,
// guarded by classroomConn.mu.
type classroomAcks struct {
	pending map[string]ackRef // AckKey → delivery acknowledged by a later event
	onWrite map[*byte]ackRef  // first byte of an object → delivery acknowledged once it is written
}

// track records durable delivery m, encoded as b, until it is settled.
// ok is false when m's subscription is not (or no longer) the persona's;
// untrack undoes track when b could not be queued.
func (c *classroomConn) track(m protocol.Frame, b []byte) (untrack func(), ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	spec, ok := c.durable[m.ID]
	if !ok {
		return nil, false
	}
	ref := ackRef{sid: m.ID, seq: m.Seq, at: time.Now()}
	var key string
	if spec.AckKey != nil {
		key = c.ackKey(spec.AckKey, m)
	}
	if key != "" {
		c.acks.pending[key] = ref
		c.armLocked()
	} else {
		c.acks.onWrite[&b[0]] = ref
	}
	return func() {
		c.mu.Lock()
		if key != "" {
			delete(c.acks.pending, key)
		}
		delete(c.acks.onWrite, &b[0])
		c.mu.Unlock()
	}, true
}

// written acknowledges the delivery object b carried, if that waited for
// the write (the write loop calls it).
func (c *classroomConn) written(b []byte) {
	c.mu.Lock()
	ref, ok := c.acks.onWrite[&b[0]]
	delete(c.acks.onWrite, &b[0])
	c.mu.Unlock()
	if ok {
		c.ack(ref)
	}
}

// settle acknowledges the delivery named key (ClassroomRoute.Settles).
func (c *classroomConn) settle(key string) {
	c.mu.Lock()
	ref, ok := c.acks.pending[key]
	delete(c.acks.pending, key)
	c.mu.Unlock()
	if ok {
		c.ack(ref)
	}
}

// ack acknowledges ref for the client. A delivery no longer held (its
// subscription ended, or the ack wait ran out and it went to someone else)
// is left alone. Never called with c.mu held: acknowledging takes the
// durable's lock, under which deliveries take c.mu.
func (c *classroomConn) ack(ref ackRef) {
	err := c.s.ack(c.s.ctx, ref.sid, ref.seq, false)
	var pe *protocol.Error
	if err != nil && !(errors.As(err, &pe) && pe.Code == protocol.CodeNotFound) {
		c.h.log.Warn("classroom: ack", "session", c.s.info.ID, "seq", ref.seq, "err", err)
	}
}

// forget drops what awaits acknowledgement on subscription sid, which the
// connection has left (what it held was handed back).
func (c *classroomConn) forget(sid uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.durable, sid)
	for k, ref := range c.acks.pending {
		if ref.sid == sid {
			delete(c.acks.pending, k)
		}
	}
	for k, ref := range c.acks.onWrite {
		if ref.sid == sid {
			delete(c.acks.onWrite, k)
		}
	}
}

// overdueLocked reports whether a presumed persona holds a delivery it was
// handed at least probation ago, and when the next one will be (zero: none).
func (c *classroomConn) overdueLocked(now time.Time, probation time.Duration) (overdue bool, next time.Time) {
	for _, ref := range c.acks.pending {
		due := ref.at.Add(probation)
		if !now.Before(due) {
			overdue = true
		}
		if next.IsZero() || due.Before(next) {
			next = due
		}
	}
	return overdue, next
}

// ackKey runs an app's AckKey; one that panics names nothing (the delivery
// is acknowledged once written), contained.
func (c *classroomConn) ackKey(fn func(topic string, payload []byte) string, m protocol.Frame) (key string) {
	defer func() {
		if c.h.contained(inAppFunc, recover()) != nil {
			key = ""
		}
	}()
	return fn(string(m.Topic), m.Payload)
}
