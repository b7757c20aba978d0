package parcel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/engine"
)

// The layout before orders v2 kept each order in the KV bucket CAPS_ORDERS
// (and the parcels in transit in CAPS_HELD), its events on
// parcel.<event>.<store>, the drivers' work queue on parcel.pickup.* and
// each vendor's mailbox on parcel.delivered.<store>. A hub does not start on
// it: it would not see those orders. Migrate carries them over.
const (
	legacyOrdersBucket = "CAPS_ORDERS"
	legacyHeldBucket   = "CAPS_HELD"
)

// ErrOldLayout is returned by a hub started on data in the old layout.
var ErrOldLayout = errors.New("the engine holds orders in the layout before orders v2")

// ErrNothingToMigrate is returned by Migrate where there is no old layout.
var ErrNothingToMigrate = errors.New("no orders in the old layout here: nothing to migrate")

// checkLayout refuses to run on orders kept in the old layout.
func checkLayout(ctx context.Context, js jetstream.JetStream) error {
	_, err := js.Stream(ctx, "KV_"+legacyOrdersBucket)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look for orders in the old layout: %w", err)
	}
	return fmt.Errorf("%w (KV bucket %s): stop every hub and run `caps migrate --data DIR` (or `caps migrate --nats URLS`) to carry them over, then start the hubs again; nothing has been changed",
		ErrOldLayout, legacyOrdersBucket)
}

// legacyOrder is an order record of the old layout.
type legacyOrder struct {
	OrderID  string `json:"orderID"`
	Store    string `json:"store"`
	Customer string `json:"customer"`
	Address  string `json:"address"`
	Status   string `json:"status"` // pickup, assigned, in-transit, delivered
	Driver   string `json:"driver"`
	Timeline []struct {
		Status string    `json:"status"`
		Time   time.Time `json:"time"`
		By     string    `json:"by"`
		Hub    string    `json:"hub"`
	} `json:"timeline"`
}

// MigrationReport says what Migrate did.
type MigrationReport struct {
	// Orders carried over, by what they were: in flight (created, assigned
	// or in transit), delivered and told to their vendor, delivered with the
	// vendor's notification still pending (it will be told, once).
	InFlight, Delivered, Untold int
	// Skipped orders were in the new layout already (a migration run again).
	Skipped int
	// Mailboxes are the vendors' durable mailboxes carried over.
	Mailboxes []string
}

func (r MigrationReport) String() string {
	return fmt.Sprintf("%d orders carried over: %d in flight, %d delivered, %d delivered with the vendor still to be told; %d already migrated; %d vendor mailboxes (%s)",
		r.InFlight+r.Delivered+r.Untold, r.InFlight, r.Delivered, r.Untold, r.Skipped, len(r.Mailboxes), strings.Join(r.Mailboxes, ", "))
}

// Migrate carries the orders of the old layout over to the new one, with
// every hub stopped: each order becomes its events in the new layout (its
// state, holder and times kept), the drivers' work queue and each vendor's
// mailbox become durables of the new layout that start after the history,
// so that the orders not yet handed to a driver are offered again and the
// vendors not yet told of a delivery are told, once. Then the old bucket,
// consumers and events are removed. A migration cut short may be run again:
// orders already carried over are left alone. maxAttempts is the attempts
// the migrated orders get (0: the default).
func Migrate(ctx context.Context, eng *engine.Engine, maxAttempts int, log *slog.Logger) (MigrationReport, error) {
	var rep MigrationReport
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := Options{MaxAttempts: maxAttempts}
	opts.defaults()
	kv, err := eng.JS.KeyValue(ctx, legacyOrdersBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return rep, ErrNothingToMigrate
	}
	if err != nil {
		return rep, fmt.Errorf("open %s: %w", legacyOrdersBucket, err)
	}
	stream, err := eng.JS.Stream(ctx, StreamName)
	if err != nil {
		return rep, fmt.Errorf("open %s: %w", StreamName, err)
	}
	orders, err := readLegacyOrders(ctx, kv)
	if err != nil {
		return rep, err
	}
	untold, mailboxes, err := untoldDeliveries(ctx, eng.JS, stream)
	if err != nil {
		return rep, err
	}
	save := func(ctx context.Context, m *nats.Msg) (*jetstream.PubAck, error) { return eng.Store(ctx, m) }
	st := &orderStore{save: save, put: save, stream: stream, cache: newRecordCache(1024)}

	// Three passes, so that the new durables start at the right place: the
	// history first (nothing to offer, nobody to tell), then the durables,
	// then what they are to deliver.
	var queued, tellLater []*legacyOrder
	for _, o := range orders {
		if _, _, err := st.last(ctx, o.OrderID, "", true); err == nil {
			rep.Skipped++
			continue
		} else if !errors.Is(err, errNoOrder) {
			return rep, err
		}
		recs := legacyRecords(o, opts.MaxAttempts)
		switch {
		case o.Status == "pickup" || o.Status == "assigned":
			queued = append(queued, o)
			continue
		case o.Status == "delivered" && untold[o.OrderID]:
			tellLater = append(tellLater, o)
			recs = recs[:len(recs)-1] // the delivered comes after the mailbox starts
		case o.Status == "delivered":
			rep.Delivered++
		default:
			rep.InFlight++ // in transit: its driver finds it through parcel.held
		}
		if err := writeRecords(ctx, st, recs, 0); err != nil {
			return rep, err
		}
	}
	next, err := lastSeq(ctx, stream)
	if err != nil {
		return rep, err
	}
	if err := startDurable(ctx, stream, DriversDurable, PickupPattern, next+1); err != nil {
		return rep, err
	}
	for _, store := range mailboxes {
		if err := startDurable(ctx, stream, VendorDurable(store), MailboxPattern(store), next+1); err != nil {
			return rep, err
		}
		rep.Mailboxes = append(rep.Mailboxes, VendorDurable(store))
	}
	for _, o := range queued {
		if err := writeRecords(ctx, st, legacyRecords(o, opts.MaxAttempts), 0); err != nil {
			return rep, err
		}
		rep.InFlight++
	}
	for _, o := range tellLater {
		recs := legacyRecords(o, opts.MaxAttempts)
		_, seq, err := st.last(ctx, o.OrderID, o.Store, true)
		if err != nil {
			return rep, err
		}
		if err := writeRecords(ctx, st, recs[len(recs)-1:], seq); err != nil {
			return rep, err
		}
		rep.Untold++
	}
	log.Info("orders carried over to the new layout", "report", rep.String())
	return rep, removeLegacy(ctx, eng.JS, stream)
}

// readLegacyOrders reads every order of the old bucket.
func readLegacyOrders(ctx context.Context, kv jetstream.KeyValue) ([]*legacyOrder, error) {
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", legacyOrdersBucket, err)
	}
	var ids []string
	for k := range keys.Keys() { // read them all: the lister's goroutine waits on us
		ids = append(ids, k)
	}
	var orders []*legacyOrder
	for _, id := range ids {
		e, err := kv.Get(ctx, id)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read order %s: %w", id, err)
		}
		var o legacyOrder
		if err := json.Unmarshal(e.Value(), &o); err != nil || o.OrderID == "" || len(o.Timeline) == 0 {
			return nil, fmt.Errorf("order %s: unreadable record in %s (%v); nothing was changed", id, legacyOrdersBucket, err)
		}
		orders = append(orders, &o)
	}
	// Oldest first, as they were posted.
	slices.SortFunc(orders, func(a, b *legacyOrder) int { return a.Timeline[0].Time.Compare(b.Timeline[0].Time) })
	return orders, nil
}

// legacyRecords turns an old order's timeline into its events.
func legacyRecords(o *legacyOrder, maxAttempts int) []*Record {
	var recs []*Record
	cur := &Record{Store: o.Store, OrderID: o.OrderID, Customer: o.Customer, Address: o.Address,
		Attempt: 1, MaxAttempts: maxAttempts, Created: o.Timeline[0].Time.UTC()}
	for _, st := range o.Timeline {
		event, status := st.Status, Status(st.Status)
		if event == "pickup" {
			status = StatusCreated
		} else {
			cur.Driver = st.By
		}
		next := cur.clone()
		next.step(move{event: event, by: st.By, hub: st.Hub, now: st.Time})
		next.Status = status
		recs = append(recs, next)
		cur = next
	}
	return recs
}

// writeRecords stores recs in order after the order's event prevSeq.
func writeRecords(ctx context.Context, st *orderStore, recs []*Record, prevSeq uint64) error {
	for _, r := range recs {
		seq, _, err := st.write(ctx, r, prevSeq)
		if err != nil {
			return fmt.Errorf("write %s of order %s: %w", r.Event, r.OrderID, err)
		}
		prevSeq = seq
	}
	return nil
}

// untoldDeliveries finds, for every vendor mailbox of the old layout, the
// delivery notifications not yet acknowledged: never delivered, or
// delivered and not acknowledged. The consumer keeps no list of the latter
// that a client can read, so its ack wait is cut short, and what it delivers
// again (without an ack) is what it was still waiting for.
func untoldDeliveries(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream) (map[string]bool, []string, error) {
	untold := map[string]bool{}
	var stores []string
	prefix := engine.Subject(topicRoot + ".delivered.")
	for info := range stream.ListConsumers(ctx).Info() {
		filter := info.Config.FilterSubject
		if !strings.HasPrefix(filter, prefix) || info.Config.Durable == "" {
			continue
		}
		store := strings.TrimPrefix(filter, prefix)
		cfg := info.Config
		cfg.AckWait = 100 * time.Millisecond
		c, err := js.UpdateConsumer(ctx, StreamName, cfg)
		if err != nil {
			return nil, nil, fmt.Errorf("mailbox of %s: %w", store, err)
		}
		want := int(info.NumPending) + info.NumAckPending
		seen := map[uint64]bool{}
		deadline := time.Now().Add(30 * time.Second)
		for len(seen) < want && time.Now().Before(deadline) {
			batch, err := c.Fetch(256, jetstream.FetchMaxWait(500*time.Millisecond))
			if err != nil {
				return nil, nil, fmt.Errorf("mailbox of %s: %w", store, err)
			}
			for m := range batch.Messages() {
				meta, err := m.Metadata()
				if err != nil {
					continue
				}
				seen[meta.Sequence.Stream] = true
				var ev Event
				if json.Unmarshal(m.Data(), &ev) == nil {
					if id, err := NormalizeID(ev.OrderID); err == nil {
						untold[id] = true
					}
				}
			}
		}
		if len(seen) < want {
			return nil, nil, fmt.Errorf("mailbox of %s: read %d of its %d pending notifications in 30s; nothing was changed", store, len(seen), want)
		}
		stores = append(stores, store)
	}
	slices.Sort(stores)
	return untold, stores, nil
}

// lastSeq is the stream's last sequence.
func lastSeq(ctx context.Context, stream jetstream.Stream) (uint64, error) {
	info, err := stream.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.LastSeq, nil
}

// startDurable creates the durable consumer a hub makes for name on
// pattern (hub.ConsumerName), starting at sequence from. A hub adopts it as
// it is (it checks only its pattern).
func startDurable(ctx context.Context, stream jetstream.Stream, name, pattern string, from uint64) error {
	_, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:           hub.ConsumerName(name, pattern),
		FilterSubject:     engine.Subject(pattern),
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           30 * time.Second,
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       from,
		MaxDeliver:        -1,
		MaxAckPending:     10000,
		InactiveThreshold: 30 * 24 * time.Hour,
	})
	if err != nil && !errors.Is(err, jetstream.ErrConsumerExists) {
		return fmt.Errorf("durable %s: %w", name, err)
	}
	return nil
}

// removeLegacy removes what the old layout left: its consumers, its events
// (parcel.<event>.<store>, three tokens) and its buckets, the orders bucket
// last (a hub refuses to start while it exists).
func removeLegacy(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream) error {
	old := engine.Subject(topicRoot + ".*.*")
	for info := range stream.ListConsumers(ctx).Info() {
		if f := info.Config.FilterSubject; f != "" && strings.Count(f, ".") == strings.Count(old, ".") {
			if err := stream.DeleteConsumer(ctx, info.Name); err != nil {
				return fmt.Errorf("remove consumer %s of the old layout: %w", info.Name, err)
			}
		}
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeSubject(old)); err != nil {
		return fmt.Errorf("remove the old layout's events: %w", err)
	}
	for _, b := range []string{legacyHeldBucket, legacyOrdersBucket} {
		if err := js.DeleteKeyValue(ctx, b); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
			return fmt.Errorf("remove bucket %s: %w", b, err)
		}
	}
	return nil
}
