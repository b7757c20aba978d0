package parcel

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Status is where an order is in its life.
type Status string

// Order statuses. An order is created by its vendor's pickup, assigned by
// the hub to the driver its pickup is handed to, in transit once that driver
// says so, and then delivered — or failed (with a reason), after which it is
// offered to the drivers again (created, next attempt) or, after the last
// attempt, returned to the store by the driver holding it. The store may
// cancel it until it is in transit.
const (
	StatusCreated   Status = "created"
	StatusAssigned  Status = "assigned"
	StatusInTransit Status = "in-transit"
	StatusDelivered Status = "delivered"
	StatusFailed    Status = "failed"
	StatusReturned  Status = "returned"
	StatusCancelled Status = "cancelled"
)

// Statuses lists every status, in lifecycle order.
var Statuses = []Status{StatusCreated, StatusAssigned, StatusInTransit, StatusDelivered, StatusFailed, StatusReturned, StatusCancelled}

// Terminal reports whether nothing more can happen to an order in status s.
func (s Status) Terminal() bool {
	return s == StatusDelivered || s == StatusReturned || s == StatusCancelled
}

// Actor is who may cause a transition.
type Actor string

const (
	// ActorStore is the vendor of the order's store (or an admin).
	ActorStore Actor = "store"
	// ActorHolder is the driver holding the order: the one its pickup was
	// last handed to.
	ActorHolder Actor = "holder"
	// ActorHub is the hub itself: assignments and offers after a failure.
	ActorHub Actor = "hub"
)

// Transition is one rule of the lifecycle: event, made by actor, moves an
// order in one of the From statuses to To. From is empty for the event that
// creates an order.
type Transition struct {
	Event string
	Actor Actor
	From  []Status
	To    Status
	// Rule is the refusal rule for an order in another status, after the
	// checks common to every event (store, holder, retry).
	Rule string
}

// Lifecycle is the state machine, the one table every check is made from.
// docs/ARCHITECTURE.md ("The parcel state machine") shows it as a diagram.
var Lifecycle = []Transition{
	{Event: EventPickup, Actor: ActorStore, From: nil, To: StatusCreated, Rule: RuleDuplicate},
	{Event: EventPickup, Actor: ActorHub, From: []Status{StatusFailed}, To: StatusCreated, Rule: RuleOutOfOrder},
	{Event: EventAssigned, Actor: ActorHub, From: []Status{StatusCreated, StatusAssigned}, To: StatusAssigned, Rule: RuleOutOfOrder},
	{Event: EventInTransit, Actor: ActorHolder, From: []Status{StatusAssigned}, To: StatusInTransit, Rule: RuleOutOfOrder},
	{Event: EventDelivered, Actor: ActorHolder, From: []Status{StatusInTransit}, To: StatusDelivered, Rule: RuleOutOfOrder},
	{Event: EventFailed, Actor: ActorHolder, From: []Status{StatusInTransit}, To: StatusFailed, Rule: RuleOutOfOrder},
	{Event: EventReturned, Actor: ActorHolder, From: []Status{StatusFailed}, To: StatusReturned, Rule: RuleOutOfOrder},
	{Event: EventCancelled, Actor: ActorStore, From: []Status{StatusCreated, StatusAssigned}, To: StatusCancelled, Rule: RuleNotCancellable},
}

// transitionFor returns the rule for event made by actor.
func transitionFor(event string, actor Actor) (Transition, bool) {
	for _, t := range Lifecycle {
		if t.Event == event && t.Actor == actor {
			return t, true
		}
	}
	return Transition{}, false
}

// actorOf says who makes a client's event: drivers report, stores post and
// cancel.
func actorOf(event string) Actor {
	switch event {
	case EventPickup, EventCancelled:
		return ActorStore
	case EventAssigned:
		return ActorHub
	}
	return ActorHolder
}

// FailReasons are the reasons a delivery attempt may fail; "other" needs a
// detail.
var FailReasons = []string{"recipient-absent", "address-not-found", "refused", "damaged", "other"}

// move is a request to change an order, already checked for form: an event,
// who makes it, and what it carries.
type move struct {
	event string
	by    string // the store (pickup, cancelled) or the driver
	p     Event  // the client's payload, parsed (empty for the hub's own)
	key   string // digest of the client's message id, to recognise a retry
	hub   string
	now   time.Time
	// maxAttempts bounds delivery attempts (for a new order).
	maxAttempts int
	// secrets asks for a new order's PIN and tracking code even when it
	// does not require the PIN (an order posted over the HTTP API).
	secrets bool
}

// decision is what judge decided: a new record to store, or a retry of the
// transition last made (nothing to store).
type decision struct {
	next  *Record
	retry bool
}

// judge applies m to the order whose last record is cur (nil: no such
// order) by the Lifecycle table. It changes nothing: it returns the record
// to store, or a refusal.
func judge(cur *Record, m move) (decision, error) {
	actor := actorOf(m.event)
	t, ok := transitionFor(m.event, actor)
	if !ok {
		return decision{}, refuse(RuleUnknownEvent, "%q is not an order event", m.event)
	}
	if cur == nil {
		if t.From != nil {
			return decision{}, refuse(RuleNoSuchOrder, "no order %s", m.p.OrderID)
		}
		return decision{next: newRecord(m)}, nil
	}
	if t.From == nil {
		// A second pickup for an existing order, of any store: the
		// dispatcher recognises a retry of the very pickup that created it
		// before asking here.
		return decision{}, refuse(RuleDuplicate, "order %s already exists (%s, store %s)", cur.OrderID, cur.Status, cur.Store)
	}
	if cur.Store != m.p.Store {
		return decision{}, refuse(RuleWrongStore, "order %s belongs to store %s, not %s", cur.OrderID, cur.Store, m.p.Store)
	}
	if !cur.sameParcel(m.p) {
		return decision{}, refuse(RuleMismatch, "the payload's customer or address differs from order %s", cur.OrderID)
	}
	if actor == ActorHolder {
		switch {
		case cur.Status == StatusCancelled:
			return decision{}, refuse(RuleOutOfOrder, "order %s was cancelled by its store", cur.OrderID)
		case cur.Driver == "":
			return decision{}, refuse(RuleNotHolder, "order %s has not been handed to a driver yet", cur.OrderID)
		case cur.Driver != m.by:
			return decision{}, refuse(RuleNotHolder, "order %s is held by driver %s, not %s", cur.OrderID, cur.Driver, m.by)
		}
	}
	// The same transition, by the same party, from the same publish (its
	// message id, recorded with the transition): a retry whose answer was lost.
	if cur.Event == m.event && cur.By == m.by && m.key != "" && cur.key == m.key {
		return decision{retry: true}, nil
	}
	if !slices.Contains(t.From, cur.Status) {
		return decision{}, outOfOrder(t, cur)
	}
	next := cur.clone()
	next.step(m)
	next.Status = t.To
	switch m.event {
	case EventFailed:
		next.Reason, next.Detail = m.p.Reason, m.p.Detail
	case EventReturned:
		if cur.Attempt < cur.MaxAttempts {
			return decision{}, refuse(RuleOutOfOrder, "order %s failed attempt %d of %d: the hub offers it again, it is not to be returned yet", cur.OrderID, cur.Attempt, cur.MaxAttempts)
		}
	case EventCancelled:
		next.Driver = ""
	}
	return decision{next: next}, nil
}

// outOfOrder explains why t does not apply to an order in cur's status.
func outOfOrder(t Transition, cur *Record) error {
	if t.Rule == RuleNotCancellable && !cur.Status.Terminal() {
		return refuse(RuleNotCancellable, "order %s is %s: only an order not yet in transit can be cancelled", cur.OrderID, cur.Status)
	}
	if cur.Status.Terminal() || cur.Status == t.To {
		return refuse(RuleOutOfOrder, "order %s is already %s", cur.OrderID, cur.Status)
	}
	want := make([]string, len(t.From))
	for i, s := range t.From {
		want[i] = string(s)
	}
	return refuse(RuleOutOfOrder, "order %s is %s: %s must follow %s", cur.OrderID, cur.Status, t.Event, strings.Join(want, " or "))
}

// handout is what to do with a pickup the hub is about to hand to a driver.
type handout int

const (
	handOut handout = iota // hand it out (recording the assignment, if any)
	dropIt                 // hand it to no one: the order moved on
	notYet                 // the order's state read is older than the pickup: read again later
)

// assignment is the hub handing the pickup of attempt pickupAttempt of the
// order whose last record is cur to driver. It returns the record to store
// (nil when the driver holds it already), and whether to hand it out at
// all: not when the order moved on (in transit, finished, cancelled, offered
// again since), nor while the state read does not yet show the pickup (in a
// cluster a replica may hand out a message before the stream leader, which
// answers reads, has applied it).
func assignment(cur *Record, pickupAttempt int, driver, hub string, now time.Time) (*Record, handout) {
	switch {
	case cur == nil || cur.Attempt < pickupAttempt:
		return nil, notYet
	case cur.Attempt > pickupAttempt || (cur.Status != StatusCreated && cur.Status != StatusAssigned):
		return nil, dropIt
	case cur.Status == StatusAssigned && cur.Driver == driver:
		return nil, handOut
	}
	next := cur.clone()
	next.step(move{event: EventAssigned, by: driver, hub: hub, now: now})
	next.Status = StatusAssigned
	next.Driver = driver
	return next, handOut
}

// reoffer is the hub offering a failed order to the drivers again, or nil
// when its attempts are used up (the holder returns it).
func reoffer(cur *Record, hub string, now time.Time) *Record {
	if cur.Status != StatusFailed || cur.Attempt >= cur.MaxAttempts {
		return nil
	}
	next := cur.clone()
	next.step(move{event: EventPickup, by: hub, hub: hub, now: now})
	next.Status = StatusCreated
	next.Driver = ""
	next.Attempt++
	return next
}

// newRecord is the record of a new order.
func newRecord(m move) *Record {
	r := &Record{
		Store: m.p.Store, OrderID: m.p.OrderID, Customer: m.p.Customer, Address: m.p.Address,
		Phone: m.p.Phone, Note: m.p.Note, RequirePIN: m.p.RequirePIN,
		Status: StatusCreated, Attempt: 1, MaxAttempts: max(m.maxAttempts, 1), Created: m.now.UTC(),
	}
	r.step(m)
	return r
}

// step stamps r as the record of event m.
func (r *Record) step(m move) {
	r.Event, r.By, r.Hub, r.Time, r.key = m.event, m.by, m.hub, m.now.UTC(), m.key
	r.EventID, r.Reason, r.Detail = "", "", ""
}

func (r *Record) clone() *Record {
	c := *r
	return &c
}

// sameParcel reports whether p, where it names them, describes r's parcel.
func (r *Record) sameParcel(p Event) bool {
	return (p.Customer == "" || p.Customer == r.Customer) && (p.Address == "" || p.Address == r.Address)
}

// eventIDFor is the hub's message id of the record that follows the order's
// message seq (0 for a new order): derived from what was validated, so no
// client can choose or foresee another order's, and unique per transition.
func eventIDFor(r *Record, prevSeq uint64) string {
	id := fmt.Sprintf("%s.%d.%s", r.OrderID, prevSeq, r.Event)
	if driverEvent(r.Event) {
		id += "." + r.Driver
	} else if r.Event == EventPickup && r.Attempt > 1 {
		id += fmt.Sprintf(".%d", r.Attempt)
	}
	return id
}
