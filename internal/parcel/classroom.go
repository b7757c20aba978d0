package parcel

// The classroom dialect (hub/classroom.go): Node.js classroom vendors and
// drivers speak bare {"event","payload"} objects with no handshake. The hub
// asks the Dispatcher, as a hub.ClassroomRouter, what their events mean; the
// answers put them in the same queues as native clients, under the same
// rules:
//
//   - a classroom connection that says nothing is a driver (the classroom
//     driver only listens until it is given a pickup): it joins the drivers'
//     work queue, one pickup at a time (the classroom client parses each
//     read as one object, so it must not be handed a burst);
//   - its in-transit acknowledges the pickup it was handed (the classroom
//     protocol has no acks), and the dispatcher holds it to the same holder
//     and lifecycle rules as a native driver (the hub names it
//     "classroom-<hex>", and its events' topics end with that name);
//   - it is handed the stored order record of each pickup, and whatever it
//     echoes of it with its own events is accepted;
//   - its first pickup makes a connection the vendor of that store, for good:
//     it leaves the drivers' queue (handing back anything it held) and joins
//     the store's durable notifications, shared with native vendors of the
//     store, which the hub acknowledges once written to the socket.

import (
	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

var _ hub.ClassroomRouter = (*Dispatcher)(nil)

// ClassroomIdle makes a silent classroom connection a driver.
func (d *Dispatcher) ClassroomIdle() (hub.ClassroomPersona, bool) { return classroomDriver(), true }

// ClassroomRoute maps the classroom's events to order topics: pickup (and
// cancelled) from a vendor, in-transit, delivered, failed and returned from
// a driver; other events are not the parcel service's.
func (d *Dispatcher) ClassroomRoute(s hub.SessionInfo, event string, payload []byte) (hub.ClassroomRoute, bool, error) {
	switch event {
	case EventPickup, EventCancelled, EventInTransit, EventDelivered, EventFailed, EventReturned:
	default:
		return hub.ClassroomRoute{}, false, nil
	}
	ev, err := ParsePayload(payload)
	if err != nil {
		return hub.ClassroomRoute{}, true, reject(err)
	}
	// A repeated event is a retry the dispatcher recognises by this id (the
	// classroom protocol has none of its own).
	r := hub.ClassroomRoute{Key: msgID(ev.OrderID, event)}
	if event == EventPickup || event == EventCancelled {
		if s.Role == protocol.RoleVendor && StoreOf(s) != ev.Store {
			return r, true, reject(refuse(RuleWrongStore, "this classroom connection posts orders for store %s, not %s", StoreOf(s), ev.Store))
		}
		r.Topic = Topic(ev.Store, ev.OrderID, event, "")
		p := classroomVendor(ev.Store)
		r.Persona = &p
		return r, true, nil
	}
	if s.Role == protocol.RoleVendor {
		return r, true, reject(refuse(RuleNotHolder, "this classroom connection is the vendor of %s; a driver reports %s on a connection of its own", StoreOf(s), event))
	}
	r.Topic = Topic(ev.Store, ev.OrderID, event, s.Name)
	p := classroomDriver()
	r.Persona = &p
	if event == EventInTransit {
		r.Settles = ev.OrderID // matches pickupAckKey of the pickup it was handed
	}
	return r, true, nil
}

func classroomDriver() hub.ClassroomPersona {
	return hub.ClassroomPersona{Role: protocol.RoleDriver, Subs: []hub.ClassroomSub{{
		Pattern: PickupPattern, Durable: DriversDurable, DeliverAll: true,
		MaxInFlight: 1, AckKey: pickupAckKey,
	}}}
}

func classroomVendor(store string) hub.ClassroomPersona {
	return hub.ClassroomPersona{Role: protocol.RoleVendor, Attrs: map[string]string{StoreAttr: store}, Subs: []hub.ClassroomSub{{
		Pattern: MailboxPattern(store), Durable: VendorDurable(store), DeliverAll: true,
		MaxInFlight: 1,
	}}}
}

// pickupAckKey names a pickup delivery by its order id.
func pickupAckKey(topic string, _ []byte) string {
	p, ok := SplitTopic(topic)
	if !ok {
		return ""
	}
	return p.OrderID
}
