package parcel

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

// The dispatcher's Go API for a store's requests that do not come as order
// events from a TCP session (the HTTP API, internal/api). They go through
// the same judge, the same conditional writes and the same rules as a
// vendor's publish: an order posted here is stored on the same subject, so
// TCP drivers pick it up and TCP vendors hear about it.

// NewOrder is an order a store posts through the API.
type NewOrder struct {
	Store      string
	Customer   string
	Address    string
	Phone      string
	Note       string
	RequirePIN bool
}

// RuleIdempotencyMismatch refuses an idempotency key used again with a
// different order.
const RuleIdempotencyMismatch = "idempotency-mismatch"

// MaxIdempotencyKey is the longest idempotency key accepted, in bytes.
const MaxIdempotencyKey = 255

// idempotencySpace is the UUID namespace of the order ids derived from a
// store's idempotency key.
var idempotencySpace = uuid.MustParse("6b0c7f0e-3f53-4c8a-9d7e-2a8f9e4c1d55")

// IdempotentOrderID is the order id an idempotency key of store names: the
// same key of the same store is always the same order, on every hub, so the
// engine's conditional create of that order (it must have no event yet) is
// what lets only one of concurrent retries create it; the key itself is
// recorded (digested) with the order's first event. Another store's same
// key is another order.
func IdempotentOrderID(store, key string) string {
	return uuid.NewSHA1(idempotencySpace, []byte(store+"\n"+key)).String()
}

// CreateOrder creates an order for n.Store, with its PIN and tracking code.
// With an idempotency key, posting the same order again with the same key
// returns the order the first post created (replayed true) and creates
// none; the same key with a different order is refused
// (RuleIdempotencyMismatch). Errors are *protocol.Error, as the wire
// protocol's (Rule gives a refusal's rule).
func (d *Dispatcher) CreateOrder(ctx context.Context, n NewOrder, key string) (o *Order, s *Secrets, replayed bool, err error) {
	id := uuid.NewString()
	if key != "" {
		if len(key) > MaxIdempotencyKey || !printable(key) {
			return nil, nil, false, reject(refuse(RuleBadField, "the idempotency key must be 1-%d printable characters", MaxIdempotencyKey))
		}
		id = IdempotentOrderID(n.Store, key)
	}
	ev, err := parseEvent(marshalEvent(Event{Parcel: Parcel{Store: n.Store, OrderID: id, Customer: n.Customer, Address: n.Address},
		Phone: n.Phone, Note: n.Note, RequirePIN: n.RequirePIN}), EventPickup)
	if err != nil {
		_, err = d.refused(err)
		return nil, nil, false, err
	}
	m := move{event: EventPickup, p: ev, by: ev.Store, key: keyDigest(key), hub: d.host.HubName(), now: time.Now(),
		maxAttempts: d.opts.MaxAttempts, secrets: true}
	st, err := d.create(ctx, m)
	if err != nil && (key == "" || Rule(err) != RuleDuplicate) {
		return nil, nil, false, err
	}
	recs, _, rerr := d.store.records(ctx, id)
	if rerr != nil {
		return nil, nil, false, unavailable(rerr)
	}
	if err != nil || st.Payload == nil {
		// The key's order exists: this post's retry, or another order.
		first := recs[0]
		if first.key != m.key || first.Store != ev.Store || first.Customer != ev.Customer || first.Address != ev.Address ||
			first.Phone != ev.Phone || first.Note != ev.Note || first.RequirePIN != ev.RequirePIN {
			_, err = d.refused(refuse(RuleIdempotencyMismatch, "idempotency key already used for order %s, with other details; use a new key for a new order", id))
			return nil, nil, false, err
		}
		replayed = true
	}
	if s, err = d.makeSecrets(ctx, id); err != nil {
		return nil, nil, false, secretsReadErr(err)
	}
	return orderOf(recs), s, replayed, nil
}

// StoreOrder returns an order of store with its timeline and secrets
// (nil when it has none). An order of another store is not found, so that
// one store cannot learn of another's orders.
func (d *Dispatcher) StoreOrder(ctx context.Context, store, id string) (*Order, *Secrets, error) {
	nid, err := NormalizeID(id)
	if err != nil {
		return nil, nil, notFound(id)
	}
	o, _, err := d.Order(ctx, nid)
	switch {
	case errors.Is(err, errNoOrder):
		return nil, nil, notFound(id)
	case err != nil:
		return nil, nil, unavailable(err)
	case store != "" && o.Store != store:
		return nil, nil, notFound(id)
	}
	s, err := d.Secrets(ctx, nid)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return o, nil, nil
	}
	if err != nil {
		return nil, nil, unavailable(err)
	}
	return o, s, nil
}

// CancelOrder cancels an order of store that is not yet in transit
// (RuleNotCancellable after that). Cancelling a cancelled order again
// changes nothing and succeeds.
func (d *Dispatcher) CancelOrder(ctx context.Context, store, id string) (*Order, error) {
	o, _, err := d.StoreOrder(ctx, store, id)
	if err != nil {
		return nil, err
	}
	if o.Status == StatusCancelled {
		return o, nil
	}
	m := move{event: EventCancelled, p: Event{Parcel: Parcel{Store: o.Store, OrderID: o.OrderID}}, by: o.Store,
		hub: d.host.HubName(), now: time.Now(), maxAttempts: d.opts.MaxAttempts}
	if _, err := d.change(ctx, m); err != nil {
		return nil, err
	}
	o, _, err = d.StoreOrder(ctx, store, o.OrderID)
	return o, err
}

// StoreOrders returns the last record of each of store's orders, the most
// recently created first (ties by order id). It reads the engine (every
// order event of the store, the last per subject), so it sees what every
// hub wrote.
func (d *Dispatcher) StoreOrders(ctx context.Context, store string) ([]*Record, error) {
	if !protocol.ValidName(store) {
		return nil, nil
	}
	recs, err := d.lastPerOrder(ctx, StorePattern(store), jetstream.DeliverLastPerSubjectPolicy)
	if err != nil {
		return nil, unavailable(err)
	}
	slices.SortFunc(recs, func(a, b *Record) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return cmp.Compare(a.OrderID, b.OrderID)
	})
	return recs, nil
}

// Rule returns the rule a refusal of the dispatcher broke ("" for an error
// that is not a refusal).
func Rule(err error) string {
	var r *Refusal
	if errors.As(err, &r) {
		return r.Rule
	}
	var pe *protocol.Error
	if errors.As(err, &pe) && pe.Code == protocol.CodeRejected {
		rule, _, _ := strings.Cut(pe.Text, ":")
		return rule
	}
	return ""
}

func notFound(id string) error {
	return hub.Reject(protocol.CodeNotFound, fmt.Sprintf("no order %s", clip(id)))
}

func secretsReadErr(err error) error {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return err
	}
	return unavailable(err)
}

// OrderTopics is the topic pattern of every event of store's order id: a
// subscription to it hears of that order and of no other.
func OrderTopics(store, id string) string { return orderPattern(store, id) }
