package parcel_test

import (
	"testing"

	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// TestCancelSentRightAfterItsPickup: a vendor that cancels an order
// without waiting for its pickup's OK has the cancel stored after the
// pickup. The hub stores a session's publishes concurrently, except those
// with one ordering key: the parcel app's is the order.
func TestCancelSentRightAfterItsPickup(t *testing.T) {
	th := startHub(t, nil)
	acme := dialAs(t, th, protocol.RoleVendor, "acme")
	for i := 0; i < 20; i++ {
		o := order("acme")
		id := o["orderID"].(string)
		if err := acme.PublishAsync(parcel.Topic("acme", id, parcel.EventPickup, ""), payload(t, o)); err != nil {
			t.Fatal(err)
		}
		if err := publish(acme, parcel.Topic("acme", id, parcel.EventCancelled, ""), payload(t, map[string]any{"store": "acme", "orderID": id}), ""); err != nil {
			t.Fatalf("order %d: cancel sent right after the pickup: %v", i, err)
		}
		if got := timeline(t, th, id); got != "created/acme cancelled/acme" {
			t.Fatalf("order %d: timeline %q", i, got)
		}
	}
}
