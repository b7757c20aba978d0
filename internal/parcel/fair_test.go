package parcel_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// postOneByOne posts n orders for store, each once the one before is in
// the status until (a driver took it, or delivered it): the low load at
// which a fair queue shows.
func postOneByOne(t *testing.T, th *testHub, vendor *client.Conn, store string, n int, until parcel.Status) []string {
	t.Helper()
	var ids []string
	for range n {
		o := order(store)
		id := o["orderID"].(string)
		if err := publish(vendor, parcel.Topic(store, id, parcel.EventPickup, ""), payload(t, o), ""); err != nil {
			t.Fatal(err)
		}
		hubtest.Until(t, 20*time.Second, "order "+id+" "+string(until), statusIs(th, id, until, ""))
		ids = append(ids, id)
	}
	return ids
}

// TestIdleDriversShareTheWork: at low load an idle driver of capacity 1 gets
// pickups as readily as an idle one of capacity 5 (before fair dispatch the
// one with the most free room took them all).
func TestIdleDriversShareTheWork(t *testing.T) {
	th := startHub(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFleet(t, th)
	for _, d := range []struct {
		name     string
		capacity int
	}{{"solo", 1}, {"van", 5}} {
		ready := make(chan struct{})
		f.driver(ctx, parcel.DriverConfig{Name: d.name, Capacity: d.capacity, PickupDelay: time.Millisecond, DeliverDelay: time.Millisecond,
			ClientConfig: parcel.ClientConfig{OnReady: func() { close(ready) }}})
		<-ready
	}
	ids := postOneByOne(t, th, dialAs(t, th, protocol.RoleVendor, "acme"), "acme", 8, parcel.StatusDelivered)
	hubtest.Until(t, 10*time.Second, "every delivery printed", func() bool {
		return f.drivers["solo"].count("delivered ")+f.drivers["van"].count("delivered ") == len(ids)
	})
	solo, van := f.drivers["solo"].count("delivered "), f.drivers["van"].count("delivered ")
	t.Logf("of %d orders, solo (capacity 1) delivered %d, van (capacity 5) %d", len(ids), solo, van)
	if solo < 3 || van < 3 {
		t.Errorf("solo delivered %d and van %d of %d orders at low load; want them to take turns", solo, van, len(ids))
	}
}

// TestDriverWithLessInHandGoesFirst: a driver with parcels in its van (in
// transit: its pickups are acknowledged) waits behind an idle one.
func TestDriverWithLessInHandGoesFirst(t *testing.T) {
	th := startHub(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFleet(t, th)
	startDriver := func(name string, capacity int, deliver time.Duration) {
		ready := make(chan struct{})
		f.driver(ctx, parcel.DriverConfig{Name: name, Capacity: capacity, PickupDelay: time.Millisecond, DeliverDelay: deliver, Grace: time.Millisecond,
			ClientConfig: parcel.ClientConfig{OnReady: func() { close(ready) }}})
		<-ready
	}
	// The van is alone at first: it takes two orders and keeps them on the road.
	startDriver("van", 5, time.Hour)
	vendor := dialAs(t, th, protocol.RoleVendor, "acme")
	postOneByOne(t, th, vendor, "acme", 2, parcel.StatusInTransit)
	startDriver("solo", 1, time.Millisecond)
	ids := postOneByOne(t, th, vendor, "acme", 6, parcel.StatusDelivered)
	// The hub stores a delivery before its driver hears the OK and prints it.
	hubtest.Eventually(t, 10*time.Second, "the idle driver to have delivered them all", func() error {
		if n := f.drivers["solo"].count("delivered "); n != len(ids) {
			return fmt.Errorf("the idle driver delivered %d of %d orders; the busy van took the others (%q)", n, len(ids), f.drivers["van"].Lines())
		}
		return nil
	})
}

// TestClassroomDriverBesideACapsDriverGetsPickups: a classroom driver (one
// pickup at a time) beside a `caps driver` (capacity 5) gets its share at a
// classroom pace; it used to get none.
func TestClassroomDriverBesideACapsDriverGetsPickups(t *testing.T) {
	node := lookNode(t)
	th := startHub(t, func(c *hub.Config) {
		c.HandshakeTimeout = 300 * time.Millisecond
		c.ClassroomGrace = 200 * time.Millisecond
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFleet(t, th)
	nodeDriver := startNode(t, node, "driver.js", th.addr, "PICKUP_DELAY=50", "DELIVER_DELAY=50")
	ready := make(chan struct{})
	f.driver(ctx, parcel.DriverConfig{Name: "native", Capacity: 5, PickupDelay: 50 * time.Millisecond, DeliverDelay: 50 * time.Millisecond,
		ClientConfig: parcel.ClientConfig{OnReady: func() { close(ready) }}})
	<-ready
	// The classroom driver is in the queue once the hub has presumed it one.
	hubtest.Until(t, 10*time.Second, "the classroom driver in the queue", func() bool {
		mfs, err := th.h.Metrics().Registry.Gather()
		if err != nil {
			return false
		}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				if mf.GetName() == "caps_connections" && m.GetLabel()[0].GetValue() == protocol.RoleDriver {
					return m.GetGauge().GetValue() == 2 // native and classroom
				}
			}
		}
		return false
	})
	ids := postOneByOne(t, th, dialAs(t, th, protocol.RoleVendor, "acme"), "acme", 6, parcel.StatusDelivered)
	hubtest.Until(t, 10*time.Second, "every delivery printed", func() bool {
		return nodeDriver.out.count("DRIVER: delivered ")+f.drivers["native"].count("delivered ") == len(ids)
	})
	classroom := nodeDriver.out.count("DRIVER: delivered ")
	if classroom < 2 {
		t.Errorf("the classroom driver delivered %d of %d orders beside a caps driver (native: %d)", classroom, len(ids), f.drivers["native"].count("delivered "))
	}
	if errs := nodeDriver.errs.Lines(); len(errs) > 0 {
		t.Errorf("the classroom driver printed errors: %q", errs)
	}
}
