package parcel

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/caps-hub/caps/protocol"
)

// Topic prefixes and event names. A parcel topic is parcel.<event>.<store>.
const (
	EventPickup    = "pickup"
	EventInTransit = "in-transit"
	EventDelivered = "delivered"

	topicRoot = "parcel"
)

// Limits on what a client may put in an order.
const (
	// MaxField is the longest store, orderID, customer or address, in bytes.
	MaxField = 200
	// MaxPayload is the largest parcel event payload, in bytes.
	MaxPayload = 4096
)

// Topic returns the topic of event for store: "parcel.pickup.acme".
func Topic(event, store string) string { return topicRoot + "." + event + "." + store }

// SplitTopic returns the event and store of a parcel topic, or ok=false when
// topic is not parcel.<event>.<store> with a known event.
func SplitTopic(topic string) (event, store string, ok bool) {
	parts := strings.Split(topic, ".")
	if len(parts) != 3 || parts[0] != topicRoot {
		return "", "", false
	}
	switch parts[1] {
	case EventPickup, EventInTransit, EventDelivered:
		return parts[1], parts[2], true
	}
	return "", "", false
}

// Parcel is the classroom order payload. The field names are the classroom's,
// so classroom clients interoperate.
type Parcel struct {
	Store    string `json:"store"`
	OrderID  string `json:"orderID"`
	Customer string `json:"customer"`
	Address  string `json:"address"`
}

// Event is the payload of a parcel event: the order, plus who sent it and
// when by their clock (informational; the hub's own times are in the order's
// timeline).
type Event struct {
	Parcel
	Driver string    `json:"driver,omitempty"`
	Time   time.Time `json:"time,omitzero"`
}

// Status is where an order is in its life.
type Status string

// Order statuses, in lifecycle order. "assigned" is not an event clients
// send: the dispatcher records it when it hands a pickup to a driver.
const (
	StatusPickup    Status = "pickup"
	StatusAssigned  Status = "assigned"
	StatusInTransit Status = "in-transit"
	StatusDelivered Status = "delivered"
)

// Order is the dispatcher's record of an order, kept in the orders bucket.
type Order struct {
	OrderID  string `json:"orderID"`
	Store    string `json:"store"`
	Customer string `json:"customer"`
	Address  string `json:"address"`
	Status   Status `json:"status"`
	// Driver holds the order: the driver its pickup was last handed to.
	Driver   string `json:"driver,omitempty"`
	Timeline []Step `json:"timeline"`
}

// Step is one transition of an order.
type Step struct {
	Status Status    `json:"status"`
	Time   time.Time `json:"time"` // the hub's clock
	// By is who caused it: the vendor for a pickup, the driver otherwise.
	By  string `json:"by,omitempty"`
	Hub string `json:"hub,omitempty"`
	// Key is the message id of the publish that made the transition, so a
	// retry of that publish can be recognised.
	Key string `json:"key,omitempty"`
}

// maxTimeline bounds an order's timeline: a pickup handed from driver to
// driver many times keeps its first and latest steps.
const maxTimeline = 32

// At returns the time of the latest step with status s, or the zero time.
func (o *Order) At(s Status) time.Time {
	for i := len(o.Timeline) - 1; i >= 0; i-- {
		if o.Timeline[i].Status == s {
			return o.Timeline[i].Time
		}
	}
	return time.Time{}
}

// Parcel returns the order's classroom payload.
func (o *Order) Parcel() Parcel {
	return Parcel{Store: o.Store, OrderID: o.OrderID, Customer: o.Customer, Address: o.Address}
}

func (o *Order) clone() *Order {
	c := *o
	c.Timeline = append([]Step(nil), o.Timeline...)
	return &c
}

func (o *Order) step(s Status, by, hub, key string, now time.Time) {
	o.Status = s
	o.Timeline = append(o.Timeline, Step{Status: s, Time: now.UTC(), By: by, Hub: hub, Key: key})
	if n := len(o.Timeline); n > maxTimeline {
		// Keep the pickup, drop the oldest hand-overs.
		o.Timeline = append(o.Timeline[:1], o.Timeline[n-maxTimeline+1:]...)
	}
}

// lastKey returns the message id of the latest step with status s.
func (o *Order) lastKey(s Status) string {
	for i := len(o.Timeline) - 1; i >= 0; i-- {
		if o.Timeline[i].Status == s {
			return o.Timeline[i].Key
		}
	}
	return ""
}

// public returns the order as shown to clients (without message ids).
func (o *Order) public() *Order {
	c := o.clone()
	for i := range c.Timeline {
		c.Timeline[i].Key = ""
	}
	return c
}

// Refusal is a rule the dispatcher enforces, with the reason it was broken.
// It becomes an ERR frame with code "rejected" and text "<rule>: <reason>".
type Refusal struct {
	Rule   string
	Reason string
}

func (r *Refusal) Error() string { return r.Rule + ": " + r.Reason }

func refuse(rule, format string, args ...any) *Refusal {
	return &Refusal{Rule: rule, Reason: fmt.Sprintf(format, args...)}
}

// Rule names, the first word of every refusal.
const (
	RuleBadPayload   = "bad-payload"
	RuleMissingField = "missing-field"
	RuleBadField     = "bad-field"
	RuleFieldTooLong = "field-too-long"
	RuleBadOrderID   = "bad-order-id"
	RuleUnknownEvent = "unknown-event"
	RuleWrongStore   = "wrong-store"
	RuleDuplicate    = "duplicate-order"
	RuleNoSuchOrder  = "no-such-order"
	RuleMismatch     = "order-mismatch"
	RuleNotHolder    = "not-holder"
	RuleOutOfOrder   = "out-of-order"
)

// ParsePayload decodes and checks a parcel event payload: a JSON object
// whose store, orderID, customer and address are non-empty strings of at most
// MaxField bytes without control characters, orderID a UUID. Other fields are
// allowed and ignored. The orderID is returned in lower case.
func ParsePayload(b []byte) (Event, error) {
	var ev Event
	if len(b) > MaxPayload {
		return ev, refuse(RuleBadPayload, "payload is %d bytes, at most %d allowed", len(b), MaxPayload)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil || fields == nil {
		return ev, refuse(RuleBadPayload, `payload must be a JSON object {"store","orderID","customer","address"}`)
	}
	get := func(name string) (string, error) {
		raw, ok := fields[name]
		if !ok {
			return "", refuse(RuleMissingField, "payload has no %q", name)
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", refuse(RuleBadField, "%q must be a string", name)
		}
		s = strings.TrimSpace(s)
		switch {
		case s == "":
			return "", refuse(RuleMissingField, "%q is empty", name)
		case len(s) > MaxField:
			return "", refuse(RuleFieldTooLong, "%q is %d bytes, at most %d allowed", name, len(s), MaxField)
		case !printable(s):
			return "", refuse(RuleBadField, "%q contains control characters or invalid UTF-8", name)
		}
		return s, nil
	}
	var err error
	for _, f := range []struct {
		name string
		dst  *string
	}{{"store", &ev.Store}, {"orderID", &ev.OrderID}, {"customer", &ev.Customer}, {"address", &ev.Address}} {
		if *f.dst, err = get(f.name); err != nil {
			return ev, err
		}
	}
	if ev.OrderID, err = NormalizeID(ev.OrderID); err != nil {
		return ev, err
	}
	if !protocol.ValidName(ev.Store) {
		return ev, refuse(RuleBadField, "store %q is not a valid name (1-32 letters, digits, _ or -)", ev.Store)
	}
	if raw, ok := fields["driver"]; ok {
		_ = json.Unmarshal(raw, &ev.Driver) // informational only
	}
	return ev, nil
}

// NormalizeID checks that id is a UUID in its canonical 36-character form and
// returns it in lower case.
func NormalizeID(id string) (string, error) {
	if len(id) != 36 {
		return "", refuse(RuleBadOrderID, "orderID %q is not a UUID (want the form 8-4-4-4-12 hex digits)", clip(id))
	}
	u, err := uuid.Parse(id)
	if err != nil {
		return "", refuse(RuleBadOrderID, "orderID %q is not a UUID: %v", clip(id), err)
	}
	return u.String(), nil
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// sameParcel reports whether ev describes order o.
func (o *Order) sameParcel(p Parcel) bool {
	return o.Store == p.Store && o.OrderID == p.OrderID && o.Customer == p.Customer && o.Address == p.Address
}

// newOrder is the order a pickup creates.
func newOrder(p Parcel, by, hub, key string, now time.Time) *Order {
	o := &Order{OrderID: p.OrderID, Store: p.Store, Customer: p.Customer, Address: p.Address}
	o.step(StatusPickup, by, hub, key, now)
	return o
}

// repeatPickup decides on a pickup for an order that already exists: only
// a retry of the very publish that created it (same message id, same
// content) is accepted, and it changes nothing.
func repeatPickup(o *Order, p Parcel, key string) error {
	if key != "" && o.lastKey(StatusPickup) == key && o.sameParcel(p) {
		return nil
	}
	return refuse(RuleDuplicate, "order %s already exists (%s, store %s)", o.OrderID, o.Status, o.Store)
}

// advance applies an in-transit or delivered event from driver to o. It
// returns the new order, or nil when the event is a retry of the transition
// o has already made (accepted, nothing to change), or a refusal.
func advance(o *Order, to Status, p Parcel, driver, hub, key string, now time.Time) (*Order, error) {
	if o.Store != p.Store {
		return nil, refuse(RuleWrongStore, "order %s belongs to store %s, not %s", o.OrderID, o.Store, p.Store)
	}
	if !o.sameParcel(p) {
		return nil, refuse(RuleMismatch, "the payload's customer or address differs from order %s", o.OrderID)
	}
	switch {
	case o.Driver == "":
		return nil, refuse(RuleNotHolder, "order %s has not been handed to a driver yet", o.OrderID)
	case o.Driver != driver:
		return nil, refuse(RuleNotHolder, "order %s is held by driver %s, not %s", o.OrderID, o.Driver, driver)
	}
	// A repeat of the transition already made, by the same publish, is a retry.
	if o.Status == to && key != "" && o.lastKey(to) == key {
		return nil, nil
	}
	var from []Status
	switch to {
	case StatusInTransit:
		from = []Status{StatusPickup, StatusAssigned}
	case StatusDelivered:
		from = []Status{StatusInTransit}
	default:
		return nil, fmt.Errorf("parcel: advance to %q", to)
	}
	ok := false
	for _, s := range from {
		ok = ok || o.Status == s
	}
	if !ok {
		if to == StatusDelivered && (o.Status == StatusPickup || o.Status == StatusAssigned) {
			return nil, refuse(RuleOutOfOrder, "order %s is %s: delivered must follow in-transit", o.OrderID, o.Status)
		}
		return nil, refuse(RuleOutOfOrder, "order %s is already %s", o.OrderID, o.Status)
	}
	n := o.clone()
	n.step(to, driver, hub, key, now)
	return n, nil
}

// assign records that o's pickup was handed to driver. It returns nil when
// nothing changes: the order is already past its pickup (a late redelivery
// changes no holder) or already held by that driver.
func assign(o *Order, driver, hub string, now time.Time) *Order {
	if o.Status != StatusPickup && o.Status != StatusAssigned {
		return nil
	}
	if o.Status == StatusAssigned && o.Driver == driver {
		return nil
	}
	n := o.clone()
	n.Driver = driver
	n.step(StatusAssigned, driver, hub, "", now)
	return n
}

// marshalEvent encodes an event payload.
func marshalEvent(ev Event) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(ev)
	return bytes.TrimRight(buf.Bytes(), "\n")
}
