package parcel

import (
	"strings"
)

// The topic layout. Every order event is one stored message on a topic that
// names the order:
//
//	parcel.<store>.<orderID>.<event>            pickup, cancelled
//	parcel.<store>.<orderID>.<event>.<driver>   assigned, in-transit, delivered, failed, returned
//
// Each view the service needs is one wildcard over it:
//
//	parcel.*.<orderID>.>       one order: its lifecycle check (the expected
//	                           last sequence of this wildcard, so any event of
//	                           the order moves it, and another store cannot
//	                           reuse the id), its state (the last message) and
//	                           its timeline (track by id alone)
//	parcel.*.*.pickup          the drivers' work queue (a re-offered order
//	                           after a failed attempt is a new pickup)
//	parcel.<store>.*.delivered.*  a vendor's mailbox
//	parcel.<store>.>           everything of a store (its dashboard)
//	parcel.*.*.*.<driver>      what a driver has done: the held-parcels view
//	                           (the orders whose last event by that driver is
//	                           in-transit, or a final failure not yet returned)
//
// The driver is a token of its own events so that a driver's permissions can
// name it ({name}), and so that what a driver carries is one filtered read,
// not a scan of every order. Drivers' names are valid topic tokens
// (protocol.ValidName), and order ids are canonical lower-case UUIDs.
const topicRoot = "parcel"

// Events: what is stored, one message each. The names are the classroom's
// where it has them (pickup, in-transit, delivered).
const (
	// EventPickup creates an order (from its vendor) or offers it to the
	// drivers again after a failed attempt (from the hub).
	EventPickup = "pickup"
	// EventAssigned records the driver a pickup was handed to (the hub).
	EventAssigned  = "assigned"
	EventInTransit = "in-transit"
	EventDelivered = "delivered"
	// EventFailed is a delivery attempt that did not succeed; the hub then
	// offers the order again, or, after the last attempt, the driver returns it.
	EventFailed   = "failed"
	EventReturned = "returned"
	// EventCancelled is the store calling an order off before it is in transit.
	EventCancelled = "cancelled"
)

// driverEvent reports whether event's topic ends with the driver's name.
func driverEvent(event string) bool {
	switch event {
	case EventAssigned, EventInTransit, EventDelivered, EventFailed, EventReturned:
		return true
	}
	return false
}

func knownEvent(event string) bool {
	return driverEvent(event) || event == EventPickup || event == EventCancelled
}

// Topic returns the topic of an order event: "parcel.acme.<id>.pickup", or,
// for a driver's event, "parcel.acme.<id>.delivered.alice". Any argument may
// be "*" to make a pattern.
func Topic(store, orderID, event, driver string) string {
	t := topicRoot + "." + store + "." + orderID + "." + event
	if driverEvent(event) || (event == "*" && driver != "") {
		t += "." + driver
	}
	return t
}

// PickupPattern is the drivers' work queue.
const PickupPattern = topicRoot + ".*.*." + EventPickup

// MailboxPattern is the topic pattern of store's delivery notifications.
func MailboxPattern(store string) string { return Topic(store, "*", EventDelivered, "*") }

// StorePattern is every event of store's orders.
func StorePattern(store string) string { return topicRoot + "." + store + ".>" }

// orderPattern is every event of one order of store, or of any store when
// store is "*". The engine finds an order's events by the literal store
// about twice as fast (measured: BenchmarkOrderStore).
func orderPattern(store, orderID string) string {
	return topicRoot + "." + store + "." + orderID + ".>"
}

// orderKey is what a session's publishes on one order share — the topic
// up to the order id, parcel.<store>.<order> — so that the hub stores them
// in the order sent (hub.Host.OrderPublishesBy): a cancel sent right
// after its pickup, without waiting for the pickup's OK, is not stored first.
func orderKey(topic string) string {
	dots := 0
	for i := 0; i < len(topic); i++ {
		if topic[i] == '.' {
			if dots++; dots == 3 {
				return topic[:i]
			}
		}
	}
	return topic
}

// driverPattern is every event a driver made or was assigned.
func driverPattern(driver string) string { return topicRoot + ".*.*.*." + driver }

// TopicParts is a parsed order topic.
type TopicParts struct {
	Store, OrderID, Event, Driver string
}

// SplitTopic parses an order topic. ok is false when topic is not
// parcel.<store>.<orderID>.<event>[.<driver>] with a known event and the
// driver token exactly where the event has one. The order id is returned as
// written; ParseTopic also checks it.
func SplitTopic(topic string) (p TopicParts, ok bool) {
	parts := strings.Split(topic, ".")
	if len(parts) < 4 || len(parts) > 5 || parts[0] != topicRoot {
		return p, false
	}
	p = TopicParts{Store: parts[1], OrderID: parts[2], Event: parts[3]}
	if !knownEvent(p.Event) {
		return p, false
	}
	if driverEvent(p.Event) != (len(parts) == 5) {
		return p, false
	}
	if len(parts) == 5 {
		p.Driver = parts[4]
	}
	return p, true
}

// EventName names a topic in EVENT lines, logs and classroom objects: an
// order event by its event ("pickup"), anything else by its topic.
func EventName(topic string) string {
	if p, ok := SplitTopic(topic); ok {
		return p.Event
	}
	return topic
}
