package parcel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/protocol"
)

// requestedID reads a service request naming an order: its id, bare or as
// {"orderID": …}.
func requestedID(payload []byte) (string, error) {
	id := strings.TrimSpace(string(payload))
	if strings.HasPrefix(id, "{") {
		var req struct {
			OrderID string `json:"orderID"`
		}
		if err := json.Unmarshal(payload, &req); err != nil {
			return "", hub.Reject(protocol.CodeBadRequest, `the request must be an order id or {"orderID": "…"}`)
		}
		id = req.OrderID
	}
	nid, err := NormalizeID(id)
	if err != nil {
		return "", hub.Reject(protocol.CodeBadRequest, err.Error())
	}
	return nid, nil
}

// track answers parcel.track: the payload is an order id (bare, or JSON
// {"orderID": …}); the answer is the order with its timeline, as JSON, read
// from the order's events. Vendors see their own store's orders, drivers the
// orders they hold or held, loggers and admins every order.
func (d *Dispatcher) track(ctx context.Context, s hub.SessionInfo, payload []byte) ([]byte, error) {
	id, err := requestedID(payload)
	if err != nil {
		return nil, err
	}
	o, _, err := d.Order(ctx, id)
	if errors.Is(err, errNoOrder) {
		return nil, hub.Reject(protocol.CodeNotFound, "no such order "+id)
	}
	if err != nil {
		return nil, unavailable(err)
	}
	if !mayTrack(s, o) {
		return nil, hub.Reject(protocol.CodeForbidden, fmt.Sprintf("%s %s may not track order %s", s.Role, s.Name, id))
	}
	return json.Marshal(o)
}

func mayTrack(s hub.SessionInfo, o *Order) bool {
	switch s.Role {
	case protocol.RoleAdmin, protocol.RoleLogger:
		return true
	case protocol.RoleVendor:
		return StoreOf(s) == o.Store
	case protocol.RoleDriver:
		for _, st := range o.Timeline {
			if st.Event != EventPickup && st.Event != EventCancelled && st.By == s.Name {
				return true
			}
		}
	}
	return false
}

// heldBy answers parcel.held: the orders the calling driver carries — in
// transit, or failed on their last attempt and still to be returned to
// their store — as a JSON array of orders. A driver that died with parcels
// in its van asks when it comes back, and finishes them.
//
// It is one read of the stream: the last event per subject among the
// driver's own (parcel.*.*.*.<driver>), and an order is in the van when the
// latest of them is its in-transit or final failure. Any later event of the
// order is the driver's too (only the holder moves an order in transit),
// except a new offer after a failure, which follows that failure.
func (d *Dispatcher) heldBy(ctx context.Context, s hub.SessionInfo, _ []byte) ([]byte, error) {
	if s.Role != protocol.RoleDriver {
		return nil, hub.Reject(protocol.CodeForbidden, fmt.Sprintf("%s %s is not a driver", s.Role, s.Name))
	}
	latest, err := d.lastPerOrder(ctx, driverPattern(s.Name), jetstream.DeliverLastPerSubjectPolicy)
	if err != nil {
		return nil, unavailable(err)
	}
	orders := []*Order{}
	for _, r := range latest {
		if r.Status == StatusInTransit || (r.Status == StatusFailed && r.Attempt >= r.MaxAttempts) {
			orders = append(orders, orderOf([]*Record{r}))
		}
	}
	return json.Marshal(orders)
}

// lastPerOrder reads the records on pattern (with policy: all, or the last
// per subject) and returns the latest record of each order among them, in
// the order of their latest event.
func (d *Dispatcher) lastPerOrder(ctx context.Context, pattern string, policy jetstream.DeliverPolicy) ([]*Record, error) {
	latest := map[string]*Record{}
	seqOf := map[string]uint64{}
	err := d.scan(ctx, pattern, policy, func(m jetstream.Msg, meta *jetstream.MsgMetadata) bool {
		r, err := decodeRecord(m.Data(), m.Headers())
		if err != nil {
			return true // not an order event of this layout: skip it
		}
		if meta.Sequence.Stream > seqOf[r.OrderID] {
			latest[r.OrderID], seqOf[r.OrderID] = r, meta.Sequence.Stream
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	out := make([]*Record, 0, len(latest))
	for _, r := range latest {
		out = append(out, r)
	}
	return out, nil
}

// scan reads the stored messages on pattern with an ordered consumer,
// calling fn for each until it returns false or everything pending when it
// started has been read.
func (d *Dispatcher) scan(ctx context.Context, pattern string, policy jetstream.DeliverPolicy, fn func(jetstream.Msg, *jetstream.MsgMetadata) bool) error {
	return scanStream(ctx, d.js, []string{pattern}, policy, fn)
}

// scanStream is scan on the patterns of the parcel stream.
func scanStream(ctx context.Context, js jetstream.JetStream, patterns []string, policy jetstream.DeliverPolicy, fn func(jetstream.Msg, *jetstream.MsgMetadata) bool) error {
	subjects := make([]string, len(patterns))
	for i, p := range patterns {
		subjects[i] = engine.Subject(p)
	}
	pattern := strings.Join(patterns, ", ")
	var cons jetstream.Consumer
	var err error
	for wait := 50 * time.Millisecond; ; wait *= 2 {
		cons, err = js.OrderedConsumer(ctx, StreamName, jetstream.OrderedConsumerConfig{
			FilterSubjects: subjects,
			DeliverPolicy:  policy,
		})
		// A cluster electing a leader answers nothing for a moment.
		if err == nil || !errors.Is(err, nats.ErrNoResponders) || wait > 2*time.Second {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("read %s: %w", pattern, err)
		case <-time.After(wait):
		}
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", pattern, err)
	}
	pending := int(cons.CachedInfo().NumPending)
	for read := 0; read < pending; {
		batch, err := cons.Fetch(min(pending-read, 256), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return fmt.Errorf("read %s: %w", pattern, err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			meta, err := m.Metadata()
			if err != nil {
				continue
			}
			if !fn(m, meta) {
				return nil
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return fmt.Errorf("read %s: %w", pattern, err)
		}
		if got == 0 {
			return fmt.Errorf("read %s: got %d of %d stored events", pattern, read, pending)
		}
		read += got
	}
	return nil
}
