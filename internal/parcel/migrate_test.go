package parcel_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// oldOrder is an order as the layout before orders v2 kept it.
type oldOrder struct {
	id, store, status, driver string
}

// writeOldLayout builds, through the engine, a data directory as a hub
// before orders v2 left it: the orders in the KV bucket CAPS_ORDERS (and
// CAPS_HELD), their events on parcel.<event>.<store>, the drivers' work
// queue and the vendors' mailboxes as consumers on those subjects. The
// mailbox of acme has acknowledged the notification of toldID and holds the
// others delivered to it but not acknowledged; rosebud's has never been read.
func writeOldLayout(t *testing.T, dir string, orders []oldOrder, toldID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	eng, err := engine.Start(ctx, engine.Config{DataDir: dir, Name: "old-hub", Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	if _, err := eng.EnsureStream(ctx, engine.StreamSpec{Name: parcel.StreamName, Topics: []string{"parcel.>"}, MaxAge: 7 * 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	kv, err := eng.EnsureKV(ctx, engine.KVSpec{Bucket: "CAPS_ORDERS", History: 5, TTL: 30 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	held, err := eng.EnsureKV(ctx, engine.KVSpec{Bucket: "CAPS_HELD", TTL: 30 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	mailbox := func(store string) jetstream.Consumer {
		c, err := eng.JS.CreateOrUpdateConsumer(ctx, parcel.StreamName, jetstream.ConsumerConfig{
			Durable: hub.ConsumerName(parcel.VendorDurable(store), "parcel.delivered."+store), FilterSubject: "caps.t.parcel.delivered." + store,
			AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, DeliverPolicy: jetstream.DeliverAllPolicy, MaxDeliver: -1,
		})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	acme := mailbox("acme")
	mailbox("rosebud")
	if _, err := eng.JS.CreateOrUpdateConsumer(ctx, parcel.StreamName, jetstream.ConsumerConfig{
		Durable: hub.ConsumerName(parcel.DriversDurable, "parcel.pickup.*"), FilterSubject: "caps.t.parcel.pickup.*",
		AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy, MaxDeliver: -1,
	}); err != nil {
		t.Fatal(err)
	}
	start := time.Now().Add(-time.Hour).UTC()
	for i, o := range orders {
		type step struct {
			Status string    `json:"status"`
			Time   time.Time `json:"time"`
			By     string    `json:"by"`
			Hub    string    `json:"hub"`
			Key    string    `json:"key,omitempty"`
		}
		rec := map[string]any{"orderID": o.id, "store": o.store, "customer": fmt.Sprintf("Customer %d", i), "address": fmt.Sprintf("%d Old Road", i), "status": o.status}
		timeline := []step{{Status: "pickup", Time: start.Add(time.Duration(i) * time.Minute), By: o.store, Hub: "old-hub", Key: o.id + ".pickup"}}
		events := []string{"pickup"}
		for j, s := range []string{"assigned", "in-transit", "delivered"} {
			if o.status == "pickup" || (o.status == "assigned" && j > 0) || (o.status == "in-transit" && j > 1) {
				break
			}
			rec["driver"] = o.driver
			timeline = append(timeline, step{Status: s, Time: timeline[0].Time.Add(time.Duration(j+1) * time.Second), By: o.driver, Hub: "old-hub"})
			if s != "assigned" {
				events = append(events, s)
			}
		}
		rec["timeline"] = timeline
		b, _ := json.Marshal(rec)
		if _, err := kv.Put(ctx, o.id, b); err != nil {
			t.Fatal(err)
		}
		if o.status == "in-transit" {
			if _, err := held.Put(ctx, o.driver+"."+o.id, nil); err != nil {
				t.Fatal(err)
			}
		}
		payload, _ := json.Marshal(map[string]string{"store": o.store, "orderID": o.id, "customer": rec["customer"].(string), "address": rec["address"].(string)})
		for _, ev := range events {
			m := &nats.Msg{Subject: "caps.t.parcel." + ev + "." + o.store, Data: payload, Header: nats.Header{nats.MsgIdHdr: []string{o.id + "." + ev}}}
			if _, err := eng.JS.PublishMsg(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
	}
	// acme's vendor read its notifications and acknowledged one.
	batch, err := acme.Fetch(10, jetstream.FetchMaxWait(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		var ev parcel.Event
		_ = json.Unmarshal(m.Data(), &ev)
		if ev.OrderID == toldID {
			if err := m.DoubleAck(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestMigrateFromTheOldLayout: a hub refuses to start on orders stored by a
// hub before orders v2 and says to run `caps migrate`; the migration keeps
// every order's state and holder, and afterwards the orders in flight
// finish, and each vendor is told of each delivery exactly once — the one
// it had acknowledged before the upgrade not again.
func TestMigrateFromTheOldLayout(t *testing.T) {
	dir := t.TempDir()
	id := func() string { return uuid.NewString() }
	told, untold, transit, assigned, waiting, rosebud := id(), id(), id(), id(), id(), id()
	writeOldLayout(t, dir, []oldOrder{
		{told, "acme", "delivered", "dave"}, {untold, "acme", "delivered", "dave"}, {transit, "acme", "in-transit", "alice"},
		{assigned, "acme", "assigned", "bob"}, {waiting, "acme", "pickup", ""}, {rosebud, "rosebud", "delivered", "dave"},
	}, told)

	// A hub refuses the old layout, saying what to do.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := hub.New(hub.Config{Addr: "127.0.0.1:0", HTTPAddr: "off", DataDir: dir, Quiet: true, Logger: quietLog(),
		Apps: []hub.App{parcel.NewDispatcher(parcel.Options{})}}).Run(ctx)
	if !errors.Is(err, parcel.ErrOldLayout) || !strings.Contains(err.Error(), "caps migrate --data DIR") {
		t.Fatalf("a hub on the old layout: %v; want it refused with what to do", err)
	}

	eng, err := engine.Start(ctx, engine.Config{DataDir: dir, Name: "migrate", Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := parcel.Migrate(ctx, eng, 0, quietLog())
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if rep.InFlight != 3 || rep.Delivered != 1 || rep.Untold != 2 || len(rep.Mailboxes) != 2 {
		t.Errorf("report %s", rep)
	}
	if _, err := parcel.Migrate(ctx, eng, 0, quietLog()); !errors.Is(err, parcel.ErrNothingToMigrate) {
		t.Errorf("a second migration: %v", err)
	}
	eng.Close()

	th := &testHub{t: t, dir: dir, addr: "127.0.0.1:0"}
	th.start()
	t.Cleanup(th.stop)
	for oid, want := range map[string]string{
		told:     "created/acme assigned/dave in-transit/dave delivered/dave",
		transit:  "created/acme assigned/alice in-transit/alice",
		assigned: "created/acme assigned/bob",
		waiting:  "created/acme",
	} {
		if got := timeline(t, th, oid); got != want {
			t.Errorf("order %s: timeline %q, want %q", oid, got, want)
		}
	}

	// The vendors, back: each is told of the deliveries it had not acknowledged.
	notices := map[string]*inbox{}
	for _, store := range []string{"acme", "rosebud"} {
		notices[store] = &inbox{}
		c := dialAs(t, th, protocol.RoleVendor, store)
		if _, err := c.Subscribe(ctx, parcel.MailboxPattern(store), notices[store].add, client.Durable(parcel.VendorDurable(store)), client.DeliverAll()); err != nil {
			t.Fatal(err)
		}
	}
	// The drivers, back: alice finishes the parcel she carried, the others
	// those not yet on the road.
	dctx, stopDrivers := context.WithCancel(ctx)
	defer stopDrivers()
	f := newFleet(t, th)
	var drivers []<-chan error
	for _, name := range []string{"alice", "bob", "erin"} {
		drivers = append(drivers, f.driver(dctx, parcel.DriverConfig{Name: name, PickupDelay: time.Millisecond, DeliverDelay: time.Millisecond}))
	}
	hubtest.Eventually(t, 30*time.Second, "every order delivered", func() error {
		for _, oid := range []string{told, untold, transit, assigned, waiting, rosebud} {
			if !statusIs(th, oid, parcel.StatusDelivered, "")() {
				return fmt.Errorf("order %s not delivered", oid)
			}
		}
		return nil
	})
	if !statusIs(th, transit, parcel.StatusDelivered, "alice")() {
		t.Errorf("the parcel alice carried was delivered by %q", timeline(t, th, transit))
	}
	count := func(store string) map[string]int {
		n := map[string]int{}
		for _, m := range notices[store].all() {
			n[orderIDOf(m)]++
		}
		return n
	}
	hubtest.Until(t, 10*time.Second, "the vendors told", func() bool { return len(count("acme")) == 4 && len(count("rosebud")) == 1 })
	for store, want := range map[string][]string{"acme": {untold, transit, assigned, waiting}, "rosebud": {rosebud}} {
		got := count(store)
		for _, oid := range want {
			if got[oid] != 1 {
				t.Errorf("vendor %s told of %s %d times, want once", store, oid, got[oid])
			}
		}
		if got[told] != 0 {
			t.Errorf("vendor %s told again of %s, which it acknowledged before the upgrade", store, told)
		}
	}
	stopDrivers()
	for _, ch := range drivers {
		wait(t, ch, 10*time.Second, "driver")
	}
}
