package parcel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

// Names of the engine objects and services the parcel service uses.
const (
	// StreamName stores every parcel event (parcel.>).
	StreamName = "CAPS_PARCELS"
	// BucketName is the KV bucket holding each order's state.
	BucketName = "CAPS_ORDERS"
	// TrackService answers REQ frames with an order's timeline.
	TrackService = "parcel.track"
	// HeldService answers a driver with the orders it carries in transit,
	// so a driver that restarts under its name delivers them.
	HeldService = "parcel.held"
	// HeldBucket indexes the orders in transit by driver ("<driver>.<orderID>").
	HeldBucket = "CAPS_HELD"
	// DriversDurable is the durable subscription drivers share: the work queue.
	DriversDurable = "drivers"
)

// Options configure the Dispatcher. Zero values select the defaults.
type Options struct {
	// Retention is how long parcel events stay in the stream (default 7 days).
	Retention time.Duration
	// OrderTTL is how long an order's record lives after its last change
	// (default 30 days).
	OrderTTL time.Duration
}

// Dispatcher is the hub application that owns the parcel domain: it stores
// the parcel events, keeps every order's state in a JetStream KV bucket, and
// enforces the rules of the order lifecycle on every publish.
//
// Consistency: a publish hook runs before the hub stores the event, so the
// dispatcher writes the order's new state first (with a compare-and-set on
// the KV revision, so two hubs can never both win a transition) and the hub
// stores the event after. If storing then fails, or the hub dies in between,
// the client gets no OK and retries the same publish with the same message
// id: a retry of the transition the order has already made, by the same
// client with the same message id, is accepted without changing anything,
// and the engine's de-duplication stores the event once. The CAPS vendor
// and driver always give their publishes such ids ("<orderID>.<event>").
// Anything else that repeats a transition is refused.
type Dispatcher struct {
	opts    Options
	host    *hub.Host
	kv      jetstream.KeyValue
	held    jetstream.KeyValue // orders in transit, by driver
	metrics *orderMetrics      // internal/parcel/metrics.go
}

// NewDispatcher returns the parcel application, to be put in hub.Config.Apps.
func NewDispatcher(opts Options) *Dispatcher {
	if opts.Retention <= 0 {
		opts.Retention = 7 * 24 * time.Hour
	}
	if opts.OrderTTL <= 0 {
		opts.OrderTTL = 30 * 24 * time.Hour
	}
	return &Dispatcher{opts: opts}
}

// Setup declares the stream, the bucket, the permissions, the hooks and the
// tracking service.
func (d *Dispatcher) Setup(ctx context.Context, h *hub.Host) error {
	d.host = h
	if err := h.AddStream(ctx, hub.StreamSpec{Name: StreamName, Topics: []string{topicRoot + ".>"}, MaxAge: d.opts.Retention}); err != nil {
		return fmt.Errorf("parcel stream: %w", err)
	}
	kv, err := h.KeyValue(ctx, hub.BucketSpec{Bucket: BucketName, History: 5, TTL: d.opts.OrderTTL})
	if err != nil {
		return fmt.Errorf("orders bucket: %w", err)
	}
	d.kv = kv
	if d.held, err = h.KeyValue(ctx, hub.BucketSpec{Bucket: HeldBucket, TTL: d.opts.OrderTTL}); err != nil {
		return fmt.Errorf("held bucket: %w", err)
	}
	if d.metrics, err = newOrderMetrics(h.Metrics()); err != nil {
		return fmt.Errorf("order metrics: %w", err)
	}

	// EVENT lines and classroom objects say "pickup", not "parcel.pickup.acme".
	h.NameEvents(topicRoot+".>", func(topic string) string {
		if ev, _, ok := SplitTopic(topic); ok {
			return ev
		}
		return topic
	})
	// A vendor's store is an attribute of its identity, which its
	// permissions name as {store}: from its token on a hub with --auth; on an
	// open hub, where anyone may claim any role, its name.
	if !h.Authenticated() {
		h.OnIdentify(vendorStoreIsName)
	}
	// Reading a queue's topics is not the right to take its work: only
	// drivers share the drivers' queue, and only a store's vendor its
	// mailbox. Others (a logger) read copies, or durables of their own.
	h.Grant(protocol.RoleVendor, hub.Permissions{
		Publish:   []string{Topic(EventPickup, "{store}")},
		Subscribe: []string{topicRoot + ".*.{store}"},
		Durable:   []string{VendorDurable("{store}")},
	})
	h.Grant(protocol.RoleDriver, hub.Permissions{
		Publish:   []string{Topic(EventInTransit, "*"), Topic(EventDelivered, "*")},
		Subscribe: []string{Topic(EventPickup, "*")},
		Durable:   []string{DriversDurable},
	})
	// Generic clients may use any other topic, but parcel events carry
	// customers' names and addresses, and only vendors and drivers may make them.
	h.Grant(protocol.RoleClient, hub.Permissions{
		DenyPublish:   []string{topicRoot + ".>"},
		DenySubscribe: []string{topicRoot + ".>"},
	})
	// A driver's name is who holds its parcels: one connection at a time
	// may be that driver (a second is refused unless it resumes the first).
	h.ExclusiveName(protocol.RoleDriver)
	h.OnPublish(topicRoot+".>", d.onPublish)
	h.OnDeliver(Topic(EventPickup, "*"), d.onDeliver)
	h.Handle(TrackService, d.track)
	h.Handle(HeldService, d.heldBy)
	return nil
}

// StoreAttr is the identity attribute naming a vendor's store
// (hub.Identity.Attrs, hub.SessionInfo.Attrs), which permission patterns
// name as {store}. An auth file's vendor tokens set it (internal/auth).
const StoreAttr = "store"

// StoreOf returns the store of a vendor's session ("" for other roles).
func StoreOf(s hub.SessionInfo) string { return s.Attr(StoreAttr) }

// vendorStoreIsName makes, on an open hub, a vendor's store its name.
func vendorStoreIsName(id hub.Identity) hub.Identity {
	if id.Role == protocol.RoleVendor && id.Attr(StoreAttr) == "" {
		return id.WithAttr(StoreAttr, id.Name)
	}
	return id
}

// maxAttempts bounds the compare-and-set retries of one transition.
const maxAttempts = 8

// onPublish enforces the lifecycle on a client's parcel event.
func (d *Dispatcher) onPublish(ctx context.Context, s hub.SessionInfo, topic string, payload []byte) error {
	event, store, ok := SplitTopic(topic)
	if !ok {
		return reject(refuse(RuleUnknownEvent, "parcel topics are parcel.<pickup|in-transit|delivered>.<store>, not %q", topic))
	}
	ev, err := ParsePayload(payload)
	if err != nil {
		return reject(err)
	}
	if ev.Store != store {
		return reject(refuse(RuleWrongStore, "the payload's store %q differs from the topic's %q", ev.Store, store))
	}
	key := hub.PublishKey(ctx)
	switch event {
	case EventPickup:
		if s.Role == protocol.RoleVendor && StoreOf(s) != store {
			return reject(refuse(RuleWrongStore, "vendor %s may only post pickups for its own store %q", s.Name, StoreOf(s)))
		}
		return d.pickup(ctx, s, ev.Parcel, key)
	case EventInTransit:
		return d.advance(ctx, s, StatusInTransit, ev.Parcel, key)
	default:
		return d.advance(ctx, s, StatusDelivered, ev.Parcel, key)
	}
}

func (d *Dispatcher) pickup(ctx context.Context, s hub.SessionInfo, p Parcel, key string) error {
	for range maxAttempts {
		o, _, err := d.get(ctx, p.OrderID)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			o := newOrder(p, s.Name, d.host.HubName(), key, time.Now())
			b, _ := json.Marshal(o)
			if _, err := d.kv.Create(ctx, p.OrderID, b); err != nil {
				if errors.Is(err, jetstream.ErrKeyExists) {
					continue // created meanwhile: judge it against that one
				}
				return unavailable(err)
			}
			d.metrics.record(o)
			return nil
		case err != nil:
			return unavailable(err)
		}
		return reject(repeatPickup(o, p, key))
	}
	return unavailable(errContention)
}

func (d *Dispatcher) advance(ctx context.Context, s hub.SessionInfo, to Status, p Parcel, key string) error {
	for range maxAttempts {
		o, rev, err := d.get(ctx, p.OrderID)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			return reject(refuse(RuleNoSuchOrder, "no order %s", p.OrderID))
		case err != nil:
			return unavailable(err)
		}
		n, err := advance(o, to, p, s.Name, d.host.HubName(), key, time.Now())
		if err != nil {
			return reject(err)
		}
		if n == nil {
			return nil // a retry of the transition already made
		}
		// The index first: an entry whose order did not move is ignored
		// (and dropped) by heldBy; a missing one would strand the parcel.
		hk := heldKey(s.Name, p.OrderID)
		if to == StatusInTransit {
			if _, err := d.held.Put(ctx, hk, nil); err != nil {
				return unavailable(err)
			}
		}
		if err := d.put(ctx, n, rev); err != nil {
			if isConflict(err) {
				continue // changed meanwhile (a hand-over, another hub): judge again
			}
			return unavailable(err)
		}
		if to == StatusDelivered {
			if err := d.held.Delete(ctx, hk); err != nil {
				d.host.Logger().Debug("drop held index entry", "key", hk, "err", err)
			}
		}
		return nil
	}
	return unavailable(errContention)
}

func heldKey(driver, orderID string) string { return driver + "." + orderID }

// heldBy answers parcel.held: the orders the calling driver carries in
// transit, as a JSON array. A driver that died with parcels in its van asks
// when it comes back, and delivers them.
func (d *Dispatcher) heldBy(ctx context.Context, s hub.SessionInfo, _ []byte) ([]byte, error) {
	if s.Role != protocol.RoleDriver {
		return nil, hub.Reject(protocol.CodeForbidden, fmt.Sprintf("%s %s is not a driver", s.Role, s.Name))
	}
	lister, err := d.held.ListKeysFiltered(ctx, s.Name+".*")
	if err != nil {
		return nil, unavailable(err)
	}
	var keys []string
	for k := range lister.Keys() { // read them all: the lister's goroutine waits on us
		keys = append(keys, k)
	}
	orders := []*Order{}
	for _, k := range keys {
		id := strings.TrimPrefix(k, s.Name+".")
		o, _, err := d.get(ctx, id)
		switch {
		case err == nil && o.Driver == s.Name && o.Status == StatusInTransit:
			orders = append(orders, o.public())
			continue
		case err == nil && o.Driver == s.Name && (o.Status == StatusPickup || o.Status == StatusAssigned):
			continue // its in-transit is being recorded right now
		case err != nil && !errors.Is(err, jetstream.ErrKeyNotFound):
			return nil, unavailable(err)
		}
		// Delivered, expired, or never moved: not in this driver's van.
		_ = d.held.Delete(ctx, k)
	}
	return json.Marshal(orders)
}

// onDeliver records which driver a pickup is handed to: that driver now
// holds the order, and only it may move it on. A redelivery to another
// driver (the first one vanished or did not acknowledge in time) hands the
// order over.
func (d *Dispatcher) onDeliver(ctx context.Context, s hub.SessionInfo, topic string, payload []byte) error {
	if s.Role != protocol.RoleDriver {
		return nil // a vendor's durable on its own topics, a logger: not a hand-over
	}
	ev, err := ParsePayload(payload)
	if err != nil {
		return nil // cannot happen for a stored pickup; the driver will be told at in-transit
	}
	for range maxAttempts {
		o, rev, err := d.get(ctx, ev.OrderID)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			return nil // expired; the driver is told at in-transit
		case err != nil:
			// Do not hand out an order whose holder cannot be recorded: the
			// hub tries again later.
			return unavailable(err)
		}
		n := assign(o, s.Name, d.host.HubName(), time.Now())
		if n == nil {
			return nil
		}
		if err := d.put(ctx, n, rev); err != nil {
			if isConflict(err) {
				continue
			}
			return unavailable(err)
		}
		return nil
	}
	return unavailable(errContention)
}

// track answers parcel.track: the payload is an order id (bare, or JSON
// {"orderID": …}); the answer is the order with its timeline, as JSON.
// Vendors see their own store's orders, drivers the orders they hold or
// held, loggers and admins every order.
func (d *Dispatcher) track(ctx context.Context, s hub.SessionInfo, payload []byte) ([]byte, error) {
	id := strings.TrimSpace(string(payload))
	if strings.HasPrefix(id, "{") {
		var req struct {
			OrderID string `json:"orderID"`
		}
		if err := json.Unmarshal(payload, &req); err != nil {
			return nil, hub.Reject(protocol.CodeBadRequest, `track request must be an order id or {"orderID": "…"}`)
		}
		id = req.OrderID
	}
	nid, err := NormalizeID(id)
	if err != nil {
		return nil, hub.Reject(protocol.CodeBadRequest, err.Error())
	}
	o, _, err := d.get(ctx, nid)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, hub.Reject(protocol.CodeNotFound, "no such order "+nid)
	}
	if err != nil {
		return nil, unavailable(err)
	}
	if !mayTrack(s, o) {
		return nil, hub.Reject(protocol.CodeForbidden, fmt.Sprintf("%s %s may not track order %s", s.Role, s.Name, nid))
	}
	return json.Marshal(o.public())
}

func mayTrack(s hub.SessionInfo, o *Order) bool {
	switch s.Role {
	case protocol.RoleAdmin, protocol.RoleLogger:
		return true
	case protocol.RoleVendor:
		return StoreOf(s) == o.Store
	case protocol.RoleDriver:
		for _, st := range o.Timeline {
			if st.Status != StatusPickup && st.By == s.Name {
				return true
			}
		}
	}
	return false
}

// Order returns the current state of an order (for tests and tools in the
// hub's process).
func (d *Dispatcher) Order(ctx context.Context, id string) (*Order, uint64, error) {
	return d.get(ctx, id)
}

func (d *Dispatcher) get(ctx context.Context, id string) (*Order, uint64, error) {
	e, err := d.kv.Get(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	var o Order
	if err := json.Unmarshal(e.Value(), &o); err != nil {
		return nil, 0, fmt.Errorf("order %s: corrupt record: %w", id, err)
	}
	return &o, e.Revision(), nil
}

func (d *Dispatcher) put(ctx context.Context, o *Order, rev uint64) error {
	b, err := json.Marshal(o)
	if err != nil {
		return err
	}
	if _, err = d.kv.Update(ctx, o.OrderID, b, rev); err != nil {
		return err
	}
	d.metrics.record(o)
	return nil
}

var errContention = errors.New("the order kept changing under us")

// isConflict reports whether a KV update lost a compare-and-set race.
func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists)
}

func reject(err error) error {
	if err == nil {
		return nil
	}
	return hub.Reject(protocol.CodeRejected, err.Error())
}

func unavailable(err error) error {
	return hub.Reject(protocol.CodeUnavailable, "order store: "+err.Error()+"; nothing was changed, retry later")
}
