package parcel_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// timeline renders an order's steps as "status/by …".
func timeline(t *testing.T, th *testHub, id string) string {
	t.Helper()
	o, _, err := th.d.Order(context.Background(), id)
	if err != nil {
		t.Fatalf("order %s: %v", id, err)
	}
	return timelineOf(o)
}

func timelineOf(o *parcel.Order) string {
	var steps []string
	for _, st := range o.Timeline {
		steps = append(steps, string(st.Status)+"/"+st.By)
	}
	return strings.Join(steps, " ")
}

func statusIs(th *testHub, id string, s parcel.Status, driver string) func() bool {
	return func() bool {
		o, _, err := th.d.Order(context.Background(), id)
		return err == nil && o.Status == s && (driver == "" || o.Driver == driver)
	}
}

// onlyOrder waits for the fleet's single posted order.
func onlyOrder(t *testing.T, f *fleet) string {
	t.Helper()
	hubtest.Until(t, 10*time.Second, "the order to be posted", func() bool { return len(f.postedIDs()) == 1 })
	return f.postedIDs()[0]
}

// gone waits for a killed client to return.
func gone(t *testing.T, ch <-chan error, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not stop", what)
	}
}

func TestDriverKilledMidOrderHandsItToAnother(t *testing.T) {
	th := startHub(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFleet(t, th)

	// Alice takes the order, then dies before she reports in-transit.
	var k hubtest.Cutter
	aliceCtx, killAlice := context.WithCancel(ctx)
	defer killAlice()
	ready := make(chan struct{})
	alice := f.driver(aliceCtx, parcel.DriverConfig{
		Name: "alice", PickupDelay: time.Hour, Capacity: 1,
		ClientConfig: parcel.ClientConfig{
			Options: client.Options{Dialer: k.Dial, NoReconnect: true},
			OnReady: func() { close(ready) },
		},
	})
	<-ready
	vendor := f.vendor(ctx, "acme", 1, time.Millisecond)
	id := onlyOrder(t, f)
	hubtest.Until(t, 10*time.Second, "alice to hold the order", statusIs(th, id, parcel.StatusAssigned, "alice"))
	k.Cut()
	killAlice()
	gone(t, alice, "alice") // killed: whatever she says last does not matter

	// Bob joins and finishes it.
	bob := f.driver(ctx, parcel.DriverConfig{Name: "bob", PickupDelay: time.Millisecond, DeliverDelay: time.Millisecond})
	wait(t, vendor, 20*time.Second, "vendor")
	cancel()
	wait(t, bob, 10*time.Second, "bob")
	f.checkExactlyOnce(context.Background())
	if got, want := timeline(t, th, id), "created/acme assigned/alice assigned/bob in-transit/bob delivered/bob"; got != want {
		t.Errorf("timeline %q, want %q", got, want)
	}
	if n := len(f.drivers["alice"].Lines()); n != 0 {
		t.Errorf("alice printed %d lines after taking the order and dying", n)
	}
}

func TestPickupNotAcknowledgedInTimeGoesToAnotherDriver(t *testing.T) {
	th := startHub(t, func(c *hub.Config) { c.AckWait = 300 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFleet(t, th)

	// Alice is alive but slower than the ack wait.
	aliceLog := &capture{}
	ready := make(chan struct{})
	alice := f.driver(ctx, parcel.DriverConfig{
		Name: "alice", PickupDelay: time.Second, DeliverDelay: time.Millisecond, Capacity: 1,
		ClientConfig: parcel.ClientConfig{
			OnReady: func() { close(ready) },
			Log:     slog.New(slog.NewTextHandler(aliceLog, nil)),
		},
	})
	<-ready
	vendor := f.vendor(ctx, "acme", 1, time.Millisecond)
	id := onlyOrder(t, f)
	hubtest.Until(t, 10*time.Second, "alice to hold the order", statusIs(th, id, parcel.StatusAssigned, "alice"))
	bob := f.driver(ctx, parcel.DriverConfig{Name: "bob", PickupDelay: time.Millisecond, DeliverDelay: time.Millisecond})
	wait(t, vendor, 20*time.Second, "vendor")
	hubtest.Until(t, 10*time.Second, "the order to be delivered by bob", statusIs(th, id, parcel.StatusDelivered, "bob"))

	// Alice wakes up, reports in-transit, is refused and drops the order.
	hubtest.Until(t, 10*time.Second, "alice to try and be refused", func() bool {
		return aliceLog.count("pickup refused") == 1 && aliceLog.count(parcel.RuleNotHolder) == 1
	})
	cancel()
	wait(t, alice, 10*time.Second, "alice")
	wait(t, bob, 10*time.Second, "bob")
	f.checkExactlyOnce(context.Background())
	if got, want := timeline(t, th, id), "created/acme assigned/alice assigned/bob in-transit/bob delivered/bob"; got != want {
		t.Errorf("timeline %q, want %q", got, want)
	}
}

func TestVendorOfflineDuringDeliveryIsToldOnceOnReturn(t *testing.T) {
	th := startHub(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFleet(t, th)

	// The vendor posts an order and goes away before any driver is there.
	away, leave := context.WithCancel(ctx)
	first := f.vendor(away, "acme", 1, time.Millisecond)
	id := onlyOrder(t, f)
	leave()
	select {
	case err := <-first:
		if !errors.Is(err, parcel.ErrInterrupted) {
			t.Fatalf("vendor stopped before its order was delivered: %v, want ErrInterrupted", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the vendor did not leave")
	}
	if n := f.vendors["acme"].count(id); n != 0 {
		t.Fatalf("thanked before any driver existed (%d)", n)
	}

	driver := f.driver(ctx, parcel.DriverConfig{Name: "dave", PickupDelay: time.Millisecond, DeliverDelay: time.Millisecond})
	hubtest.Until(t, 10*time.Second, "the order to be delivered", statusIs(th, id, parcel.StatusDelivered, "dave"))

	// Back again: the notification waited for it, and comes exactly once.
	back := f.vendor(ctx, "acme", 1, time.Millisecond)
	secondRun := f.vendors["acme"]
	hubtest.Until(t, 10*time.Second, "the missed thank-you", func() bool { return secondRun.count(thankYou("acme", id)) == 1 })
	wait(t, back, 20*time.Second, "the returning vendor")

	// Acknowledged: a later run of the vendor is not told again.
	again := f.vendor(ctx, "acme", 1, time.Millisecond)
	wait(t, again, 20*time.Second, "the third vendor run")
	if n := f.vendors["acme"].count(id); n != 0 {
		t.Errorf("the third run printed the old order %d times", n)
	}
	if n := secondRun.count(thankYou("acme", id)); n != 1 {
		t.Errorf("the second run printed the missed thank-you %d times", n)
	}
	cancel()
	wait(t, driver, 10*time.Second, "driver")
	a, err := th.d.Audit(context.Background(), f.postedIDs())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range f.postedIDs() {
		if a.Events[id][parcel.EventDelivered] != 1 {
			t.Errorf("order %s delivered %d times", id, a.Events[id][parcel.EventDelivered])
		}
	}
}

func TestHubRestartMidRunLosesNothing(t *testing.T) {
	// Deliveries unacknowledged when the engine stops are redelivered after
	// the ack wait once it is back (a NAK is not kept across an engine
	// restart): keep it short so the test does not wait 30s for them.
	th := startHub(t, func(c *hub.Config) { c.AckWait = time.Second })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFleet(t, th)

	var drivers []<-chan error
	for _, name := range []string{"dave", "erin", "frank"} {
		drivers = append(drivers, f.driver(ctx, parcel.DriverConfig{
			Name: name, PickupDelay: 20 * time.Millisecond, DeliverDelay: 40 * time.Millisecond, Capacity: 2,
		}))
	}
	v1 := f.vendor(ctx, "acme", 10, 40*time.Millisecond)
	v2 := f.vendor(ctx, "rosebud", 10, 40*time.Millisecond)
	thanked := func() int {
		n := 0
		for _, out := range f.vendors {
			n += out.count("Thank you")
		}
		return n
	}
	hubtest.Until(t, 20*time.Second, "some deliveries", func() bool { return thanked() >= 3 })

	th.stop()
	t.Logf("hub stopped after %d deliveries, %d orders posted", thanked(), len(f.postedIDs()))
	th.start()

	f.waitVendor(v1, 30*time.Second, "vendor acme")
	f.waitVendor(v2, 30*time.Second, "vendor rosebud")
	cancel()
	for _, d := range drivers {
		wait(t, d, 20*time.Second, "driver")
	}
	if n := len(f.postedIDs()); n != 20 {
		t.Fatalf("%d orders posted, want 20", n)
	}
	f.checkExactlyOnce(context.Background())
}

func TestDriverRestartDeliversParcelsLeftInTransit(t *testing.T) {
	th := startHub(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFleet(t, th)

	// Alice reports in-transit, then dies with the parcel in her van.
	var k hubtest.Cutter
	aliceCtx, killAlice := context.WithCancel(ctx)
	defer killAlice()
	ready := make(chan struct{})
	alice := f.driver(aliceCtx, parcel.DriverConfig{
		Name: "alice", PickupDelay: time.Millisecond, DeliverDelay: time.Hour, Grace: time.Millisecond,
		ClientConfig: parcel.ClientConfig{
			Options: client.Options{Dialer: k.Dial, NoReconnect: true},
			OnReady: func() { close(ready) },
		},
	})
	<-ready
	firstRun := f.drivers["alice"]
	vendor := f.vendor(ctx, "acme", 1, time.Millisecond)
	id := onlyOrder(t, f)
	hubtest.Until(t, 10*time.Second, "alice to have it in transit", func() bool {
		return statusIs(th, id, parcel.StatusInTransit, "alice")() && firstRun.count("picked up "+id) == 1
	})
	k.Cut()
	killAlice()
	gone(t, alice, "alice") // killed: whatever she says last does not matter

	// Another driver cannot take it: it is in alice's van.
	bob := f.driver(ctx, parcel.DriverConfig{Name: "bob", PickupDelay: time.Millisecond, DeliverDelay: time.Millisecond})

	// Alice comes back and delivers it.
	again := f.driver(ctx, parcel.DriverConfig{Name: "alice", PickupDelay: time.Millisecond, DeliverDelay: time.Millisecond})
	secondRun := f.drivers["alice"]
	f.waitVendor(vendor, 20*time.Second, "vendor")
	if got, want := timeline(t, th, id), "created/acme assigned/alice in-transit/alice delivered/alice"; got != want {
		t.Errorf("timeline %q, want %q", got, want)
	}
	if firstRun.count("picked up "+id) != 1 || firstRun.count("delivered "+id) != 0 {
		t.Errorf("alice's first run printed %q", firstRun.Lines())
	}
	// The vendor may hear of the delivery before alice hears her OK: both
	// follow the store, in either order.
	hubtest.Until(t, 10*time.Second, "alice's second run to report the delivery", func() bool {
		return secondRun.count("delivered "+id) == 1
	})
	if secondRun.count("delivered "+id) != 1 || secondRun.count("picked up "+id) != 0 {
		t.Errorf("alice's second run printed %q", secondRun.Lines())
	}
	if n := len(f.drivers["bob"].Lines()); n != 0 {
		t.Errorf("bob printed %d lines", n)
	}
	if f.vendors["acme"].count(thankYou("acme", id)) != 1 {
		t.Errorf("vendor lines %q", f.vendors["acme"].Lines())
	}
	// While alice drives, nobody else may connect under her name: her
	// parcels are hers (issue 12, item 9).
	rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer rcancel()
	_, err := client.Dial(rctx, []string{th.addr}, client.Options{Role: protocol.RoleDriver, Name: "alice", NoReconnect: true})
	refused(t, "a second alice", err, protocol.CodeNameTaken, "driver alice is connected already")
	_, err = dialAs(t, th, protocol.RoleVendor, "acme").Request(rctx, parcel.HeldService, nil)
	refused(t, "a vendor asking for held parcels", err, protocol.CodeForbidden, "vendor acme")
	cancel()
	wait(t, again, 10*time.Second, "alice again")
	wait(t, bob, 10*time.Second, "bob")
	// Nothing left in her van.
	c, err := client.Dial(rctx, []string{th.addr}, client.Options{Role: protocol.RoleDriver, Name: "alice", RetryNameTaken: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, err := c.Request(rctx, parcel.HeldService, nil)
	if err != nil || strings.TrimSpace(string(b)) != "[]" {
		t.Errorf("held after delivery: %s, %v", b, err)
	}
}
