package hub

import (
	"errors"
	"fmt"
	"time"

	"github.com/caps-hub/caps/protocol"
)

// What a classroom connection is taken to be, and how that changes:
//
//   - it starts as a generic client (anonymousClassroom);
//   - an app's route may make it something else (a pickup makes it a
//     vendor, in-transit a driver): become(persona, false);
//   - silent for the grace period (Config.ClassroomGrace, counted from the
//     connection's start), it is presumed what the apps presume of silent
//     connections (ClassroomRouter.ClassroomIdle: a driver);
//   - presumed, it is on probation: holding a delivery for half the ack
//     wait without settling it, or sending an event no app claims, shows
//     it is not what it was presumed to be, and it becomes a generic client
//     again — what it held goes to someone else at once.
//
// The timers are the connection's read deadline (armLocked): the read loop
// wakes on it and calls timer.

// personaKey identifies a subscription of a persona.
type personaKey struct{ pattern, durable string }

func keyOf(sub ClassroomSub) personaKey { return personaKey{sub.Pattern, sub.Durable} }

// probation is how long a presumed persona may hold a delivery without
// answering before the hub concludes it was presumed wrongly: half the ack
// wait, so that what it held is handed back (NAK) before the engine
// redelivers it on its own, which would deliver it twice.
func (c *classroomConn) probation() time.Duration { return c.h.cfg.AckWait / 2 }

// armLocked sets the connection's read deadline to the next moment the read
// loop must look at the session without input: the end of the grace period,
// or when a presumed persona's oldest delivery has waited its probation.
// Called with c.mu held.
func (c *classroomConn) armLocked() {
	at := c.graceEnd
	if !c.silentEnd.IsZero() && (at.IsZero() || c.silentEnd.Before(at)) {
		at = c.silentEnd
	}
	if c.presumed {
		if _, next := c.overdueLocked(time.Now(), c.probation()); !next.IsZero() && (at.IsZero() || next.Before(at)) {
			at = next
		}
	}
	_ = c.s.conn.SetReadDeadline(at)
}

// startGrace starts the grace period of a connection that said nothing so
// far, counted from its start (when an app presumes anything of silent
// connections), and the time it may stay silent.
func (c *classroomConn) startGrace() {
	c.mu.Lock()
	if c.hasIdle {
		c.graceEnd = time.Unix(0, c.s.lastRecv.Load()).Add(c.h.cfg.ClassroomGrace)
	}
	c.armLocked()
	c.mu.Unlock()
}

// spoke ends the grace period and the silence: whatever it is, it is not a
// silent client, and it gives back its place among them.
func (c *classroomConn) spoke() {
	c.mu.Lock()
	wasSilent := !c.silentEnd.IsZero()
	c.silentEnd = time.Time{}
	if !c.graceEnd.IsZero() || wasSilent {
		c.graceEnd = time.Time{}
		c.armLocked()
	}
	c.mu.Unlock()
	if wasSilent {
		c.h.silent.Add(-1)
	}
}

// timer runs when the read deadline set by armLocked passes.
func (c *classroomConn) timer() {
	now := time.Now()
	c.mu.Lock()
	if !c.silentEnd.IsZero() && !now.Before(c.silentEnd) {
		c.mu.Unlock()
		// Never a word: a dead peer, or a socket held to take a place.
		c.s.fail(protocol.CodeHeartbeat, fmt.Sprintf("nothing received for %s: a classroom connection that never sends anything is closed (--classroom-silent-timeout)", c.h.cfg.ClassroomSilentTimeout))
		return
	}
	graceOver := !c.graceEnd.IsZero() && !now.Before(c.graceEnd)
	if graceOver {
		c.graceEnd = time.Time{}
	}
	stale := false
	if c.presumed {
		stale, _ = c.overdueLocked(now, c.probation())
	}
	c.armLocked()
	c.mu.Unlock()
	switch {
	case graceOver && c.hasIdle:
		if err := c.become(c.idle, true); err != nil {
			c.sendError(codeOf(err), err.Error())
		}
	case stale:
		// A presumed driver that lets work wait is not one: it leaves the
		// queue, and what it held goes to someone else at once.
		c.h.log.Info("classroom: connection did not answer its delivery in time; no longer presumed",
			"session", c.s.info.ID, "name", c.s.info.Name, "role", c.s.info.Role)
		if err := c.become(anonymousClassroom(), false); err != nil {
			c.sendError(codeOf(err), err.Error())
		}
	}
}

// become makes the connection persona p: it leaves the subscriptions p
// does not have, takes on p's role and attributes, and joins p's
// subscriptions. What it held on subscriptions it leaves goes to someone
// else at once. It runs on the read loop, through the session API.
func (c *classroomConn) become(p ClassroomPersona, presumed bool) error {
	s := c.s
	id := Identity{Role: p.Role, Attrs: p.Attrs, Perms: c.h.classroomPermissions(p.Role)}
	np := c.h.permissionsOf(c.h.completeIdentity(Identity{Role: id.Role, Name: s.info.Name, Attrs: id.Attrs, Perms: id.Perms}))
	for _, sub := range p.Subs {
		if !np.canSubscribe([]byte(sub.Pattern)) {
			return Reject(protocol.CodeForbidden, fmt.Sprintf("a classroom %s may not subscribe to %q", p.Role, sub.Pattern))
		}
	}
	want := map[personaKey]bool{}
	for _, sub := range p.Subs {
		want[keyOf(sub)] = true
	}
	for k, sid := range c.held {
		if !want[k] {
			c.leave(k, sid)
		}
	}
	oldRole := s.info.Role
	s.reidentify(id)
	c.mu.Lock()
	c.presumed = presumed
	c.armLocked()
	c.mu.Unlock()
	if oldRole != p.Role {
		c.h.log.Debug("classroom: persona", "session", s.info.ID, "name", s.info.Name, "role", p.Role, "attrs", p.Attrs, "presumed", presumed)
	}
	var errs []error
	for _, sub := range p.Subs {
		if _, ok := c.held[keyOf(sub)]; ok {
			continue
		}
		if err := c.join(sub); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// join subscribes the connection as sub says.
func (c *classroomConn) join(sub ClassroomSub) error {
	spec := sub
	sid, err := c.s.subscribe(c.s.ctx, subscriptionOf(sub), func(sid uint64) {
		if sub.Durable != "" {
			// Known before its first delivery, which track looks it up for.
			c.mu.Lock()
			c.durable[sid] = &spec
			c.mu.Unlock()
		}
	})
	if err != nil {
		return err
	}
	c.held[keyOf(sub)] = sid
	return nil
}

// leave ends the persona's subscription sid: no delivery of it arrives
// once unsubscribe has returned, and what it held was handed back.
func (c *classroomConn) leave(k personaKey, sid uint64) {
	delete(c.held, k)
	if err := c.s.unsubscribe(sid); err != nil {
		c.h.log.Warn("classroom: leave", "session", c.s.info.ID, "pattern", k.pattern, "err", err)
	}
	c.forget(sid)
}

// subscriptionOf is the session API's form of a persona's subscription.
func subscriptionOf(cs ClassroomSub) subRequest {
	return subRequest{Pattern: cs.Pattern, Durable: cs.Durable, DeliverAll: cs.DeliverAll, MaxInFlight: cs.MaxInFlight}
}

func codeOf(err error) string {
	code, _ := errCode(err, protocol.CodeInternal)
	return code
}
