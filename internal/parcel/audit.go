package parcel

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Audit is what the engine holds about a set of orders: how many times each
// event was stored, and each order's state. It is the independent evidence
// the demo and the tests check "delivered exactly once" against.
type Audit struct {
	// Events counts stored events by order id and event name.
	Events map[string]map[string]int
	// Orders holds each order's state and timeline (absent when the stream
	// has none of its events).
	Orders map[string]*Order
}

// Audit reads the orders in ids, each from the stream leader (exact on a
// cluster too), and counts their events; with no ids, it counts the events
// of every order in the stream. It is meant for tests and the demo, not for
// a hub with months of traffic.
func (d *Dispatcher) Audit(ctx context.Context, ids []string) (*Audit, error) {
	a := &Audit{Events: map[string]map[string]int{}, Orders: map[string]*Order{}}
	if len(ids) > 0 {
		return a, d.auditOrders(ctx, a, ids)
	}
	err := d.scan(ctx, topicRoot+".>", jetstream.DeliverAllPolicy, func(m jetstream.Msg, _ *jetstream.MsgMetadata) bool {
		r, err := decodeRecord(m.Data(), m.Headers())
		if err != nil {
			return true
		}
		if a.Events[r.OrderID] == nil {
			a.Events[r.OrderID] = map[string]int{}
		}
		a.Events[r.OrderID][r.Event]++
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return a, nil
}

func (d *Dispatcher) auditOrders(ctx context.Context, a *Audit, ids []string) error {
	for _, id := range ids {
		recs, _, err := d.store.records(ctx, id)
		if errors.Is(err, errNoOrder) {
			continue
		}
		if err != nil {
			return fmt.Errorf("audit: order %s: %w", id, err)
		}
		a.Orders[id] = orderOf(recs)
		a.Events[id] = map[string]int{}
		for _, r := range recs {
			a.Events[id][r.Event]++
		}
	}
	return nil
}
