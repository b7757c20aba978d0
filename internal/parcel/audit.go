package parcel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/hub"
)

// Audit is what the engine holds about a set of orders: how many times each
// event was stored, and each order's state. It is the independent evidence
// the demo and the tests check "delivered exactly once" against.
type Audit struct {
	// Events counts stored events by order id and event name.
	Events map[string]map[string]int
	// Orders holds each order's record (absent when the bucket has none).
	Orders map[string]*Order
}

// Audit reads every stored parcel event and the records of the orders in
// ids. It reads the whole stream, so it is meant for tests and the demo,
// not for a hub with months of traffic.
func (d *Dispatcher) Audit(ctx context.Context, ids []string) (*Audit, error) {
	a := &Audit{Events: map[string]map[string]int{}, Orders: map[string]*Order{}}
	js := d.host.JetStream()
	cons, err := js.OrderedConsumer(ctx, StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{hub.Subject(topicRoot + ".>")},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	pending := int(cons.CachedInfo().NumPending)
	for read := 0; read < pending; {
		batch, err := cons.Fetch(min(pending-read, 256), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, fmt.Errorf("audit: %w", err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			event, _, ok := SplitTopic(hub.TopicOf(m.Subject()))
			if !ok {
				continue
			}
			var ev Event
			if json.Unmarshal(m.Data(), &ev) != nil {
				continue
			}
			id, err := NormalizeID(ev.OrderID)
			if err != nil {
				continue
			}
			if a.Events[id] == nil {
				a.Events[id] = map[string]int{}
			}
			a.Events[id][event]++
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, fmt.Errorf("audit: %w", err)
		}
		if got == 0 {
			return nil, fmt.Errorf("audit: read %d of %d stored events", read, pending)
		}
		read += got
	}
	for _, id := range ids {
		o, _, err := d.get(ctx, id)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("audit: order %s: %w", id, err)
		}
		a.Orders[id] = o
	}
	return a, nil
}
