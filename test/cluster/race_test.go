package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// flowOrderRace: a store on hub A cancels each of its orders at the moment
// the driver holding it, on hub B, reports it in transit. Each hub checks
// the order's rules against what the engine holds and stores the
// transition only if the order's last event is still the one it checked
// (expected last sequence on the order's subjects), so exactly one of the
// two wins, the other is refused with "rejected", and the order shows the
// winner's event only.
func flowOrderRace(t *testing.T, r *rig) {
	ctx, cancel := context.WithTimeout(context.Background(), flowTimeout)
	defer cancel()
	const store, driver = "racer", "race-driver"
	vendor := dial(t, store, protocol.RoleVendor, r.a.Addr())
	van := dial(t, driver, protocol.RoleDriver, r.b.Addr())
	pickups := make(chan *client.Msg, 64)
	if _, err := van.Subscribe(ctx, parcel.PickupPattern, func(m *client.Msg) { pickups <- m },
		client.Durable(parcel.DriversDurable), client.ManualAck(), client.MaxInFlight(4), client.DeliverAll()); err != nil {
		t.Fatal(err)
	}
	wins := map[string]int{}
	for i := 0; i < 40; i++ {
		id := uuid.NewString()
		pickup, _ := json.Marshal(map[string]any{"store": store, "orderID": id, "customer": "Ada Racer", "address": "1 Photo Finish Lane"})
		if _, err := vendor.Publish(ctx, parcel.Topic(store, id, parcel.EventPickup, ""), pickup); err != nil {
			t.Fatalf("order %d: pickup: %v", i, err)
		}
		var pick *client.Msg
		for pick == nil {
			select {
			case m := <-pickups:
				var rec parcel.Record
				if json.Unmarshal(m.Payload, &rec) == nil && rec.OrderID == id {
					pick = m
				} else {
					_ = m.Ack(ctx) // an order of an earlier flow: not ours to race
				}
			case <-ctx.Done():
				t.Fatalf("order %d: never handed to %s", i, driver)
			}
		}
		cancelBody, _ := json.Marshal(map[string]any{"store": store, "orderID": id})
		errs := make([]error, 2)
		start := make(chan struct{})
		var wg sync.WaitGroup
		race := []func() error{
			func() error {
				_, err := vendor.Publish(ctx, parcel.Topic(store, id, parcel.EventCancelled, ""), cancelBody)
				return err
			},
			func() error {
				_, err := van.Publish(ctx, parcel.Topic(store, id, parcel.EventInTransit, driver), pick.Payload)
				return err
			},
		}
		for k, fn := range race {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs[k] = fn()
			}()
		}
		close(start)
		wg.Wait()
		winner := ""
		for k, err := range errs {
			var pe *protocol.Error
			switch {
			case err == nil:
				if winner != "" {
					t.Fatalf("order %d: the cancel and the in-transit were both accepted", i)
				}
				winner = []string{parcel.EventCancelled, parcel.EventInTransit}[k]
			case errors.As(err, &pe) && pe.Code == protocol.CodeRejected:
			default:
				t.Fatalf("order %d: racer %d: %v", i, k, err)
			}
		}
		if winner == "" {
			t.Fatalf("order %d: neither the cancel nor the in-transit was accepted: %v", i, errs)
		}
		wins[winner]++
		_ = pick.Ack(ctx)
		if winner == parcel.EventInTransit {
			if _, err := van.Publish(ctx, parcel.Topic(store, id, parcel.EventDelivered, driver), pick.Payload); err != nil {
				t.Fatalf("order %d: delivered: %v", i, err)
			}
		}
		b, err := vendor.Request(ctx, parcel.TrackService, []byte(id))
		if err != nil {
			t.Fatalf("order %d: track: %v", i, err)
		}
		var o parcel.Order
		if err := json.Unmarshal(b, &o); err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		for _, s := range o.Timeline {
			seen[s.Event]++
		}
		loser := map[string]string{parcel.EventCancelled: parcel.EventInTransit, parcel.EventInTransit: parcel.EventCancelled}[winner]
		if seen[winner] != 1 || seen[loser] != 0 {
			t.Fatalf("order %d: %s won, but the timeline shows %v", i, winner, seen)
		}
	}
	t.Logf("winners: %v", wins)
}
