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

// Audit reads every stored order event and the orders in ids. It reads the
// whole stream, so it is meant for tests and the demo, not for a hub with
// months of traffic.
func (d *Dispatcher) Audit(ctx context.Context, ids []string) (*Audit, error) {
	a := &Audit{Events: map[string]map[string]int{}, Orders: map[string]*Order{}}
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
	// The orders asked for are read from the stream leader, and their events
	// counted from that read: the scan above may run on a replica a moment
	// behind (a cluster).
	for _, id := range ids {
		recs, _, err := d.store.records(ctx, id)
		if errors.Is(err, errNoOrder) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("audit: order %s: %w", id, err)
		}
		a.Orders[id] = orderOf(recs)
		a.Events[id] = map[string]int{}
		for _, r := range recs {
			a.Events[id][r.Event]++
		}
	}
	return a, nil
}
