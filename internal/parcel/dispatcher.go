package parcel

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/protocol"
)

// Names of the engine objects and services the parcel service uses.
const (
	// StreamName stores every order event (parcel.>): the orders' only state.
	StreamName = "CAPS_PARCELS"
	// SecretsBucket holds the secrets of the orders that have them (the
	// PIN of proof of delivery, the customer's tracking code), out of the
	// event stream that drivers, loggers and webhooks read.
	SecretsBucket = "CAPS_ORDER_SECRETS"
	// TrackService answers REQ frames with an order's timeline.
	TrackService = "parcel.track"
	// HeldService answers a driver with the orders it carries in transit
	// (and those it must return), so a driver that restarts under its name
	// delivers them.
	HeldService = "parcel.held"
	// SecretService answers a store with an order's PIN and tracking code.
	SecretService = "parcel.secret"
	// DriversDurable is the durable subscription drivers share: the work queue.
	DriversDurable = "drivers"
)

// Options configure the Dispatcher. Zero values select the defaults.
type Options struct {
	// MaxAttempts bounds the delivery attempts of an order (default 3): a
	// failed attempt before the last is offered to the drivers again.
	MaxAttempts int
	// MaxBytes bounds the parcel stream on disk (default 256 MiB: some
	// 150,000 orders, weeks of a busy courier's). New orders
	// are refused (store_full) once what is stored, plus what the orders in
	// flight will still store, reaches 90% of it: the orders accepted can
	// always finish (the last 10% is for failed attempts and hand-overs);
	// nothing stored is ever discarded to make room.
	MaxBytes int64
	// Retention is how long a finished order (delivered, returned,
	// cancelled) is kept after it finished, and its vendor told (default 7
	// days). An unfinished order is kept however old.
	Retention time.Duration
	// SweepEvery is how often finished orders past Retention are removed,
	// and failed orders whose offer was interrupted are offered again
	// (default 1 minute).
	SweepEvery time.Duration
	// CacheSize is how many orders' last events the hub keeps in memory to
	// spare a read per transition (default 65,536).
	CacheSize int
	// MaxPINTries bounds the wrong PINs a delivery attempt of an order that
	// needs one may be given (default 5): past it the attempt is refused
	// (pin-locked) and must be reported failed.
	MaxPINTries int
}

func (o *Options) defaults() {
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 3
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.Retention <= 0 {
		o.Retention = 7 * 24 * time.Hour
	}
	if o.SweepEvery <= 0 {
		o.SweepEvery = time.Minute
	}
	if o.CacheSize <= 0 {
		o.CacheSize = 1 << 16
	}
	if o.MaxPINTries <= 0 {
		o.MaxPINTries = 5
	}
}

// DefaultMaxBytes is the default bound of the order events on disk. The
// engine reserves it (on every replica), so it is kept to what a small
// server can spare.
const DefaultMaxBytes = 256 << 20

// fullRatio is the share of MaxBytes past which new orders are refused.
const fullRatio = 0.9

// Dispatcher is the hub application that owns the parcel domain. An order's
// events, stored in the parcel stream, are its state: the dispatcher checks
// every event a client sends against the lifecycle (lifecycle.go) and the
// order's last event, and stores it with optimistic concurrency on the
// order's subjects (store.go), so that of two hubs racing on one order one
// wins and the other's refused write changes nothing. See
// docs/ARCHITECTURE.md, "The parcel state machine".
type Dispatcher struct {
	opts    Options
	host    *hub.Host
	js      jetstream.JetStream
	store   *orderStore
	secrets jetstream.KeyValue
	metrics *orderMetrics
	loads   loadBook
	full    atomic.Bool // new orders are refused for room (for the log)
}

// NewDispatcher returns the parcel application, to be put in hub.Config.Apps.
func NewDispatcher(opts Options) *Dispatcher {
	opts.defaults()
	return &Dispatcher{opts: opts, loads: loadBook{n: map[string]int{}}}
}

// Setup declares the stream, the secrets bucket, the permissions, the hooks
// and the services, and starts the sweeper.
func (d *Dispatcher) Setup(ctx context.Context, h *hub.Host) error {
	d.host, d.js = h, h.JetStream()
	if err := checkLayout(ctx, d.js); err != nil {
		return err
	}
	if err := h.AddStream(ctx, streamSpec(d.opts)); err != nil {
		return fmt.Errorf("parcel stream: %w", err)
	}
	stream, err := lookupStream(ctx, d.js)
	if err != nil {
		return fmt.Errorf("parcel stream: %w", err)
	}
	put := func(ctx context.Context, m *nats.Msg) (*jetstream.PubAck, error) { return d.js.PublishMsg(ctx, m) }
	d.store = &orderStore{save: h.Store, put: put, stream: stream, cache: newRecordCache(d.opts.CacheSize)}
	// Secrets go with their order (the sweeper removes both); the TTL only
	// bounds what an interrupted removal leaves. A new order that needs
	// secrets is refused when the bucket is full. An order's secrets take
	// some 400 bytes against its events' 2 KB.
	if d.secrets, err = h.KeyValue(ctx, hub.BucketSpec{Bucket: SecretsBucket, TTL: d.opts.Retention + 30*24*time.Hour,
		MaxBytes: max(d.opts.MaxBytes/4, 1<<20), MaxValueSize: 512}); err != nil {
		return fmt.Errorf("order secrets bucket: %w", err)
	}
	if d.metrics, err = newOrderMetrics(h.Metrics()); err != nil {
		return fmt.Errorf("order metrics: %w", err)
	}

	// EVENT lines and classroom objects say "pickup", not the whole topic.
	h.NameEvents(topicRoot+".>", EventName)
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
		Publish:   []string{Topic("{store}", "*", EventPickup, ""), Topic("{store}", "*", EventCancelled, "")},
		Subscribe: []string{StorePattern("{store}")},
		Durable:   []string{VendorDurable("{store}")},
	})
	h.Grant(protocol.RoleDriver, hub.Permissions{
		Publish: []string{
			Topic("*", "*", EventInTransit, "{name}"), Topic("*", "*", EventDelivered, "{name}"),
			Topic("*", "*", EventFailed, "{name}"), Topic("*", "*", EventReturned, "{name}"),
		},
		Subscribe: []string{PickupPattern, driverPattern("{name}")},
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
	h.OnStore(topicRoot+".>", d.onStore)
	h.OrderPublishesBy(topicRoot+".>", orderKey)
	h.OnDeliver(PickupPattern, d.onDeliver)
	h.OnLoad(PickupPattern, d.loadOf)
	h.Handle(TrackService, d.track)
	h.Handle(HeldService, d.heldBy)
	h.Handle(SecretService, d.secret)
	go d.sweep(ctx)
	return nil
}

// streamSpec is the parcel stream: bounded in bytes, and never discarding
// what it holds to make room (DiscardNew: a full stream refuses writes, and
// the dispatcher refuses new orders well before that). Finished orders are
// removed by the sweeper after Retention; there is no age limit, which would
// drop orders still in flight.
func streamSpec(o Options) hub.StreamSpec {
	return hub.StreamSpec{
		Name: StreamName, Topics: []string{topicRoot + ".>"},
		MaxBytes: o.MaxBytes, Discard: jetstream.DiscardNew,
		// One subject per order and event (and driver): a pickup handed back
		// and forth between two drivers keeps its latest assignments.
		MaxMsgsPerSubject: 16,
		MaxMsgSize:        2 * MaxPayload,
	}
}

// lookupStream binds the parcel stream. On a cluster, a stream another
// hub has just created may not be visible from this hub's server for a
// moment: it asks again until ctx ends.
func lookupStream(ctx context.Context, js jetstream.JetStream) (jetstream.Stream, error) {
	for {
		s, err := js.Stream(ctx, StreamName)
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return s, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (waited for it: %w)", err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
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

// maxTries bounds how often one transition is judged again after losing a
// race.
const maxTries = 8

// winnerInFlight waits before the try+1st attempt at a transition whose
// write lost a race to a write that a read of the order does not show yet:
// 1, 2, 4 … 64 ms, less up to a quarter at random. On a cluster the stream
// leader refuses a write that conflicts with one it has proposed and not
// yet applied, while a read shows only what is applied: judged again at
// once, the transition lost to the same write until its tries ran out
// ("the order kept changing", test/cluster OrderRaceAcrossHubs). Waiting
// lets the winner's write land, so the loser is judged against it and
// refused by the rules.
func winnerInFlight(ctx context.Context, try int) error {
	d := time.Millisecond << min(try, 6)
	d -= time.Duration(rand.Int64N(int64(d/4) + 1))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// onStore checks a client's order event and stores it (hub.StoreHook).
func (d *Dispatcher) onStore(ctx context.Context, s hub.SessionInfo, topic string, payload []byte) (hub.Stored, error) {
	tp, ok := SplitTopic(topic)
	if !ok {
		return d.refused(refuse(RuleUnknownEvent, "order topics are parcel.<store>.<orderID>.<pickup|cancelled> or parcel.<store>.<orderID>.<in-transit|delivered|failed|returned>.<driver>, not %q", clip(topic)))
	}
	ev, err := parseEvent(payload, tp.Event)
	if err != nil {
		return d.refused(err)
	}
	switch {
	case ev.Store != tp.Store:
		return d.refused(refuse(RuleWrongStore, "the payload's store %q differs from the topic's %q", ev.Store, tp.Store))
	case ev.OrderID != tp.OrderID:
		if strings.EqualFold(ev.OrderID, tp.OrderID) {
			return d.refused(refuse(RuleBadOrderID, "the topic's orderID must be in lower case (%s)", ev.OrderID))
		}
		return d.refused(refuse(RuleMismatch, "the payload's orderID %s differs from the topic's %q", ev.OrderID, clip(tp.OrderID)))
	}
	m := move{event: tp.Event, p: ev, key: keyDigest(hub.PublishKey(ctx)), hub: d.host.HubName(), now: time.Now(), maxAttempts: d.opts.MaxAttempts}
	switch tp.Event {
	case EventPickup, EventCancelled:
		if s.Role == protocol.RoleVendor && StoreOf(s) != tp.Store {
			return d.refused(refuse(RuleWrongStore, "vendor %s may only post and cancel orders of its own store %q", s.Name, StoreOf(s)))
		}
		m.by = tp.Store
	case EventAssigned:
		return d.refused(refuse(RuleUnknownEvent, "assigned is recorded by the hub when it hands a pickup to a driver"))
	default:
		if tp.Driver != s.Name {
			return d.refused(refuse(RuleNotHolder, "%s %s may not report for driver %s", s.Role, s.Name, tp.Driver))
		}
		m.by = s.Name
	}
	if tp.Event == EventPickup {
		return d.create(ctx, m)
	}
	return d.change(ctx, m)
}

// create stores a new order's pickup, or recognises the retry of the very
// publish that created it.
func (d *Dispatcher) create(ctx context.Context, m move) (hub.Stored, error) {
	if d.nearlyFull() {
		d.metrics.refused(RuleStoreFull)
		return hub.Stored{}, hub.Reject(protocol.CodeStoreFull, fmt.Sprintf("%s: the order store is %d%% full; new orders are refused until finished orders expire or an operator raises --parcel-max-bytes", RuleStoreFull, int(fullRatio*100)))
	}
	dec, err := judge(nil, m)
	if err != nil {
		return d.refused(err)
	}
	if m.p.RequirePIN || m.secrets {
		if _, err := d.makeSecrets(ctx, m.p.OrderID); err != nil {
			var pe *protocol.Error
			if errors.As(err, &pe) {
				return hub.Stored{}, err
			}
			return hub.Stored{}, unavailable(err)
		}
	}
	seq, data, err := d.store.write(ctx, dec.next, 0)
	switch {
	case err == nil:
		d.recorded(nil, dec.next)
		return hub.Stored{Seq: seq, Payload: data}, nil
	case !errors.Is(err, errConflict):
		return hub.Stored{}, d.storeErr(err)
	}
	// The order exists: a retry of its pickup, or a duplicate.
	recs, _, err := d.store.records(ctx, m.p.OrderID)
	if err != nil {
		return hub.Stored{}, unavailable(err)
	}
	first := recs[0]
	if m.key != "" && first.key == m.key && first.Store == m.p.Store && first.Customer == m.p.Customer && first.Address == m.p.Address {
		return hub.Stored{Seq: d.firstSeq(ctx, m.p.Store, m.p.OrderID), Payload: nil}, nil
	}
	_, err = judge(recs[len(recs)-1], m)
	return d.refused(err)
}

// firstSeq is the sequence of the first event (its pickup) of store's order
// id, for the OK of a retried pickup; 0 if it cannot be read.
func (d *Dispatcher) firstSeq(ctx context.Context, store, id string) uint64 {
	m, err := d.store.stream.GetMsg(ctx, 0, jetstream.WithGetMsgSubject(hub.Subject(orderPattern(store, id))))
	if err != nil {
		return 0
	}
	return m.Sequence
}

// change applies a client's event to an existing order.
func (d *Dispatcher) change(ctx context.Context, m move) (hub.Stored, error) {
	fresh, attempted := false, ""
	lost := uint64(0) // the sequence a write expected when it lost a race
	for try := range maxTries {
		cur, seq, err := d.store.last(ctx, m.p.OrderID, m.p.Store, fresh)
		if err != nil && !errors.Is(err, errNoOrder) {
			return hub.Stored{}, unavailable(err)
		}
		if lost != 0 && seq == lost {
			if err := winnerInFlight(ctx, try); err != nil {
				return hub.Stored{}, unavailable(err)
			}
			continue
		}
		if cur != nil && attempted != "" && cur.EventID == attempted {
			// Our own write, stored by an attempt whose answer was lost.
			d.recorded(nil, cur)
			return hub.Stored{Seq: seq}, nil
		}
		dec, err := judge(cur, m)
		if err != nil || dec.retry {
			if !fresh {
				fresh = true // judged from the cache: confirm on the engine's record
				continue
			}
			if err != nil {
				return d.refused(err)
			}
			return hub.Stored{Seq: seq}, nil
		}
		if m.event == EventDelivered && cur.RequirePIN {
			if err := d.checkPIN(ctx, cur, m.p.PIN); err != nil {
				var r *Refusal
				if !errors.As(err, &r) {
					return hub.Stored{}, unavailable(err)
				}
				return d.refused(err)
			}
		}
		next := dec.next
		// The driver's load moves before the event is visible: whoever
		// sees a delivery stored (a vendor posting its next order at once)
		// finds the driver free already, not a moment later.
		undo := d.moveLoad(next)
		newSeq, data, err := d.store.write(ctx, next, seq)
		if errors.Is(err, errConflict) {
			undo()
			fresh, attempted, lost = true, next.EventID, seq
			continue
		}
		if err != nil {
			undo()
			return hub.Stored{}, d.storeErr(err)
		}
		d.metrics.record(cur, next)
		if next.Status == StatusFailed {
			d.offerAgain(ctx, next, newSeq)
		}
		return hub.Stored{Seq: newSeq, Payload: data}, nil
	}
	return hub.Stored{}, unavailable(errContention)
}

// offerAgain puts a failed order back in the drivers' work queue when it
// has attempts left. If this hub dies before it does, the sweeper does it.
func (d *Dispatcher) offerAgain(ctx context.Context, failed *Record, seq uint64) {
	next := reoffer(failed, d.host.HubName(), time.Now())
	if next == nil {
		return
	}
	if _, _, err := d.store.write(ctx, next, seq); err != nil {
		d.host.Logger().Warn("offer a failed order again: the sweeper will", "order", failed.OrderID, "err", err)
		return
	}
	d.recorded(failed, next)
}

// onDeliver records which driver a pickup is handed to: that driver now
// holds the order, and only it may move it on. A redelivery to another
// driver (the first one vanished or did not acknowledge in time) hands the
// order over. A pickup of an order that has moved on — in transit or
// finished, cancelled, offered again since — is dropped: no driver gets it.
func (d *Dispatcher) onDeliver(ctx context.Context, s hub.SessionInfo, topic string, payload []byte) error {
	if s.Role != protocol.RoleDriver {
		return nil // an admin or logger with a durable of its own: not a hand-over
	}
	tp, ok := SplitTopic(topic)
	if !ok {
		return hub.ErrDropDelivery
	}
	attempt := pickupAttempt(payload)
	fresh := false
	lost := uint64(0) // the sequence a write expected when it lost a race
	for try := range maxTries {
		cur, seq, err := d.store.last(ctx, tp.OrderID, tp.Store, fresh)
		if err != nil && !errors.Is(err, errNoOrder) {
			// Do not hand out an order whose holder cannot be recorded: the
			// hub tries again later.
			return unavailable(err)
		}
		if lost != 0 && seq == lost {
			if err := winnerInFlight(ctx, try); err != nil {
				return unavailable(err)
			}
			continue
		}
		next, what := assignment(cur, attempt, s.Name, d.host.HubName(), time.Now())
		if what != handOut && !fresh {
			fresh = true // judged from the cache: confirm on the engine's record
			continue
		}
		switch what {
		case dropIt:
			return hub.ErrDropDelivery
		case notYet:
			return unavailable(fmt.Errorf("order %s: its pickup is not visible to reads yet", tp.OrderID))
		}
		if next == nil {
			return nil // held by this driver already
		}
		if _, _, err := d.store.record(ctx, next, seq); err != nil {
			if errors.Is(err, errConflict) {
				fresh, lost = true, seq
				continue
			}
			return unavailable(err)
		}
		d.recorded(cur, next)
		return nil
	}
	return unavailable(errContention)
}

// pickupAttempt reads the attempt a stored pickup offers (1 if unreadable).
func pickupAttempt(payload []byte) int {
	r, err := decodeRecord(payload, nil)
	if err != nil || r.Attempt < 1 {
		return 1
	}
	return r.Attempt
}

// recorded updates the metrics and the drivers' loads after a transition
// this hub stored.
func (d *Dispatcher) recorded(prev, next *Record) {
	d.metrics.record(prev, next)
	d.moveLoad(next)
}

// moveLoad applies what next changes in its driver's load and returns the
// undoing of it.
func (d *Dispatcher) moveLoad(next *Record) (undo func()) {
	k := 0
	switch next.Event {
	case EventInTransit:
		k = 1
	case EventDelivered, EventFailed:
		k = -1
	default:
		return func() {}
	}
	moved := d.loads.add(next.Driver, k)
	if k < 0 {
		d.host.LoadChanged() // the drivers' queue may pull with a better priority
	}
	return func() { d.loads.add(next.Driver, -moved) }
}

// loadOf is the hub's load hook for the drivers' queue: the parcels a
// driver carries in transit (its pickups are acknowledged by then), as this
// hub recorded them.
func (d *Dispatcher) loadOf(s hub.SessionInfo) int {
	if s.Role != protocol.RoleDriver {
		return 0
	}
	return d.loads.get(s.Name)
}

// loadBook counts the parcels each driver carries in transit.
type loadBook struct {
	mu sync.Mutex
	n  map[string]int
}

// add adds k to driver's count, never going below 0, and returns what it
// changed.
func (b *loadBook) add(driver string, k int) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	was := b.n[driver]
	v := max(was+k, 0)
	if v > 0 {
		b.n[driver] = v
	} else {
		delete(b.n, driver)
	}
	return v - was
}

func (b *loadBook) get(driver string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n[driver]
}

// refused counts a refusal and returns it as the client's error.
func (d *Dispatcher) refused(err error) (hub.Stored, error) {
	var r *Refusal
	if errors.As(err, &r) {
		d.metrics.refused(r.Rule)
	}
	return hub.Stored{}, reject(err)
}

// nearlyFull reports whether new orders are to be refused for room.
func (d *Dispatcher) nearlyFull() bool {
	return float64(d.store.committed.Load()) >= fullRatio*float64(d.opts.MaxBytes)
}

// storeErr is the client's error for a failed write.
func (d *Dispatcher) storeErr(err error) error {
	if engine.IsFull(err) {
		d.metrics.refused(RuleStoreFull)
		return hub.Reject(protocol.CodeStoreFull, RuleStoreFull+": the order store is full; nothing was changed")
	}
	return unavailable(err)
}

// Order returns the current state of an order with its timeline, and the
// sequence of its last event (for tests and tools in the hub's process).
func (d *Dispatcher) Order(ctx context.Context, id string) (*Order, uint64, error) {
	recs, seq, err := d.store.records(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	return orderOf(recs), seq, nil
}

var errContention = errors.New("the order kept changing under us")

func reject(err error) error {
	if err == nil {
		return nil
	}
	return hub.Reject(protocol.CodeRejected, err.Error())
}

func unavailable(err error) error {
	return hub.Reject(protocol.CodeUnavailable, "order store: "+err.Error()+"; nothing was changed, retry later")
}
