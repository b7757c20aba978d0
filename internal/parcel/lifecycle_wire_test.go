package parcel_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// inbox collects the messages of a subscription.
type inbox struct {
	mu   sync.Mutex
	msgs []*client.Msg
}

func (b *inbox) add(m *client.Msg) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.msgs = append(b.msgs, m)
}

func (b *inbox) all() []*client.Msg {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*client.Msg(nil), b.msgs...)
}

// orderIDOf reads the order id of an order event.
func orderIDOf(m *client.Msg) string {
	var r parcel.Record
	_ = json.Unmarshal(m.Payload, &r)
	return r.OrderID
}

// joinQueue subscribes c to the drivers' queue, one pickup at a time.
func joinQueue(t *testing.T, c *client.Conn) *inbox {
	t.Helper()
	got := &inbox{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Subscribe(ctx, parcel.PickupPattern, got.add, client.Durable(parcel.DriversDurable),
		client.ManualAck(), client.MaxInFlight(1), client.DeliverAll()); err != nil {
		t.Fatal(err)
	}
	return got
}

// firstPickup waits for the first pickup a queue member is handed.
func firstPickup(t *testing.T, got *inbox) *client.Msg {
	t.Helper()
	hubtest.Until(t, 10*time.Second, "a pickup", func() bool { return len(got.all()) > 0 })
	return got.all()[0]
}

// takePickup subscribes c to the drivers' queue, one pickup at a time, and
// returns the first pickup it is handed.
func takePickup(t *testing.T, c *client.Conn) *client.Msg {
	t.Helper()
	return firstPickup(t, joinQueue(t, c))
}

// TestMessageIDsCannotPoisonAnotherOrder is issue 12's message-id
// poisoning: a driver publishes its own, legitimate delivery with the
// message id another order's delivery will carry. The hub, not the client,
// chooses the engine's de-duplication ids, so the other order's real
// delivery is still stored, told to its vendor and shown by track.
func TestMessageIDsCannotPoisonAnotherOrder(t *testing.T) {
	th := startHub(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	acme := dialAs(t, th, protocol.RoleVendor, "acme")
	told := &inbox{}
	if _, err := acme.Subscribe(ctx, parcel.MailboxPattern("acme"), told.add, client.Durable(parcel.VendorDurable("acme")), client.DeliverAll()); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		o := order("acme")
		if err := publish(acme, parcel.Topic("acme", o["orderID"].(string), parcel.EventPickup, ""), payload(t, o), ""); err != nil {
			t.Fatal(err)
		}
	}
	drivers := map[string]*client.Conn{"alice": dialAs(t, th, protocol.RoleDriver, "alice"), "mallory": dialAs(t, th, protocol.RoleDriver, "mallory")}
	held := map[string]*client.Msg{}
	for name, c := range drivers {
		held[name] = takePickup(t, c)
	}
	victim, own := orderIDOf(held["alice"]), orderIDOf(held["mallory"])
	if victim == own {
		t.Fatalf("both drivers were handed order %s", victim)
	}
	report := func(driver, event, key string) error {
		var r parcel.Record
		_ = json.Unmarshal(held[driver].Payload, &r)
		return publish(drivers[driver], parcel.Topic("acme", r.OrderID, event, driver), held[driver].Payload, key)
	}
	// Mallory moves her own order on, every publish keyed with the victim's ids.
	for _, ev := range []string{parcel.EventInTransit, parcel.EventDelivered} {
		if err := report("mallory", ev, victim+"."+ev); err != nil {
			t.Fatalf("mallory's %s: %v", ev, err)
		}
	}
	// Alice delivers the victim order with the ids a CAPS driver uses.
	for _, ev := range []string{parcel.EventInTransit, parcel.EventDelivered} {
		if err := report("alice", ev, victim+"."+ev); err != nil {
			t.Fatalf("alice's %s: %v", ev, err)
		}
	}

	hubtest.Until(t, 10*time.Second, "the vendor told of both deliveries", func() bool {
		ids := map[string]bool{}
		for _, m := range told.all() {
			ids[orderIDOf(m)] = true
		}
		return ids[victim] && ids[own]
	})
	o, _, err := th.d.Order(ctx, victim)
	if err != nil || o.Status != parcel.StatusDelivered || o.Driver != "alice" {
		t.Fatalf("track of the victim order: %+v, %v", o, err)
	}
	a, err := th.d.Audit(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{victim, own} {
		if n := a.Events[id][parcel.EventDelivered]; n != 1 {
			t.Errorf("order %s: %d delivered events stored, want 1", id, n)
		}
	}
}

// TestFailedAttemptsAreOfferedAgainThenReturned: a driver that fails every
// attempt (--fail-rate 1) sees the order offered again until its attempts
// are used up, then returns it to its store.
func TestFailedAttemptsAreOfferedAgainThenReturned(t *testing.T) {
	th := startHubWith(t, parcel.Options{MaxAttempts: 2}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFleet(t, th)
	drv := f.driver(ctx, parcel.DriverConfig{Name: "unlucky", PickupDelay: time.Millisecond, DeliverDelay: time.Millisecond, FailRate: 1})
	acme := dialAs(t, th, protocol.RoleVendor, "acme")
	o := order("acme")
	id := o["orderID"].(string)
	if err := publish(acme, parcel.Topic("acme", id, parcel.EventPickup, ""), payload(t, o), ""); err != nil {
		t.Fatal(err)
	}
	hubtest.Eventually(t, 20*time.Second, "the order returned", func() error {
		if statusIs(th, id, parcel.StatusReturned, "unlucky")() {
			return nil
		}
		o, _, err := th.d.Order(context.Background(), id)
		if err != nil {
			return err
		}
		return fmt.Errorf("order %s: %s (driver printed %q)", o.Status, timelineOf(o), f.drivers["unlucky"].Lines())
	})
	want := "created/acme assigned/unlucky in-transit/unlucky failed/unlucky created/test assigned/unlucky in-transit/unlucky failed/unlucky returned/unlucky"
	if got := timeline(t, th, id); got != want {
		t.Errorf("timeline %q, want %q", got, want)
	}
	tracked, _, err := th.d.Order(ctx, id)
	if err != nil || tracked.Attempt != 2 || tracked.Timeline[3].Reason != "recipient-absent" {
		t.Errorf("order %+v, %v", tracked, err)
	}
	out := f.drivers["unlucky"]
	hubtest.Until(t, 10*time.Second, "the driver's line", func() bool { return out.count("returned "+id) == 1 })
	if out.count("failed "+id) != 2 || out.count("returned "+id) != 1 || out.count("delivered "+id) != 0 {
		t.Errorf("driver printed %q", out.Lines())
	}
	// A failure needs a known reason. (The next driver joins the queue
	// before the first leaves it: a pickup posted the moment a hub's last
	// driver leaves may go to that driver's pull request as it is being
	// withdrawn, and then waits for the ack wait.)
	c := dialAs(t, th, protocol.RoleDriver, "careless")
	queue := joinQueue(t, c)
	cancel()
	wait(t, drv, 10*time.Second, "driver")
	bad := order("acme")
	if err := publish(acme, parcel.Topic("acme", bad["orderID"].(string), parcel.EventPickup, ""), payload(t, bad), ""); err != nil {
		t.Fatal(err)
	}
	pick := firstPickup(t, queue)
	var r parcel.Record
	_ = json.Unmarshal(pick.Payload, &r)
	if err := publish(c, parcel.Topic("acme", r.OrderID, parcel.EventInTransit, "careless"), pick.Payload, ""); err != nil {
		t.Fatal(err)
	}
	unchanged(t, th, r.OrderID, "a failure without a known reason", func() {
		refused(t, "failure without a reason", publish(c, parcel.Topic("acme", r.OrderID, parcel.EventFailed, "careless"), pick.Payload, ""), protocol.CodeRejected, parcel.RuleMissingField)
		refused(t, "failure with an unknown reason", publish(c, parcel.Topic("acme", r.OrderID, parcel.EventFailed, "careless"),
			payload(t, map[string]any{"store": "acme", "orderID": r.OrderID, "reason": "lazy"}), ""), protocol.CodeRejected, parcel.RuleBadField)
		refused(t, "returned before the last attempt", publish(c, parcel.Topic("acme", r.OrderID, parcel.EventReturned, "careless"), pick.Payload, ""), protocol.CodeRejected, parcel.RuleOutOfOrder)
	})
}

// TestCancelledBeforeTransitOnly: a store cancels an order nobody carries
// yet; no driver is handed it afterwards. Once in transit it cannot.
func TestCancelledBeforeTransitOnly(t *testing.T) {
	th := startHub(t, nil)
	acme := dialAs(t, th, protocol.RoleVendor, "acme")
	post := func() string {
		o := order("acme")
		if err := publish(acme, parcel.Topic("acme", o["orderID"].(string), parcel.EventPickup, ""), payload(t, o), ""); err != nil {
			t.Fatal(err)
		}
		return o["orderID"].(string)
	}
	cancelOrder := func(c *client.Conn, store, id string) error {
		return publish(c, parcel.Topic(store, id, parcel.EventCancelled, ""), payload(t, map[string]any{"store": store, "orderID": id}), "")
	}
	gone := post()
	refused(t, "another store cancelling", cancelOrder(dialAs(t, th, protocol.RoleVendor, "rosebud"), "acme", gone), protocol.CodeForbidden, `vendor "rosebud" may not publish`)
	if err := cancelOrder(acme, "acme", gone); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	kept := post()
	alice := dialAs(t, th, protocol.RoleDriver, "alice")
	pick := takePickup(t, alice)
	if id := orderIDOf(pick); id != kept {
		t.Fatalf("alice was handed %s, want %s (the other was cancelled)", id, kept)
	}
	if err := publish(alice, parcel.Topic("acme", kept, parcel.EventInTransit, "alice"), pick.Payload, ""); err != nil {
		t.Fatal(err)
	}
	unchanged(t, th, kept, "cancelling in transit", func() {
		refused(t, "cancelling in transit", cancelOrder(acme, "acme", kept), protocol.CodeRejected, parcel.RuleNotCancellable)
	})
	if got := timeline(t, th, gone); got != "created/acme cancelled/acme" {
		t.Errorf("the cancelled order's timeline %q", got)
	}
}

// TestProofOfDeliveryPIN: an order posted with requirePIN is delivered only
// with the customer's PIN, which only its store can read, and which no
// stored event carries.
func TestProofOfDeliveryPIN(t *testing.T) {
	th := startHub(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	acme := dialAs(t, th, protocol.RoleVendor, "acme")
	o := with(order("acme"), "requirePIN", true)
	id := o["orderID"].(string)
	if err := publish(acme, parcel.Topic("acme", id, parcel.EventPickup, ""), payload(t, o), ""); err != nil {
		t.Fatal(err)
	}
	b, err := acme.Request(ctx, parcel.SecretService, []byte(id))
	if err != nil {
		t.Fatalf("the store asking for its order's PIN: %v", err)
	}
	var sec parcel.Secrets
	if err := json.Unmarshal(b, &sec); err != nil || len(sec.PIN) != 6 || len(sec.TrackingCode) < 20 || strings.Contains(sec.TrackingCode, id) {
		t.Fatalf("secrets %s, %v", b, err)
	}
	alice := dialAs(t, th, protocol.RoleDriver, "alice")
	for who, c := range map[string]*client.Conn{"vendor rosebud": dialAs(t, th, protocol.RoleVendor, "rosebud"), "driver alice": alice, "logger log": dialAs(t, th, protocol.RoleLogger, "log")} {
		_, err := c.Request(ctx, parcel.SecretService, []byte(id))
		refused(t, who+" asking for the PIN", err, protocol.CodeForbidden, who)
	}
	pick := takePickup(t, alice)
	var r parcel.Record
	if err := json.Unmarshal(pick.Payload, &r); err != nil || !r.RequirePIN {
		t.Fatalf("the pickup does not say a PIN is needed: %s", pick.Payload)
	}
	topic := func(ev string) string { return parcel.Topic("acme", id, ev, "alice") }
	if err := publish(alice, topic(parcel.EventInTransit), pick.Payload, ""); err != nil {
		t.Fatal(err)
	}
	wrong := "000000"
	if sec.PIN == wrong {
		wrong = "111111"
	}
	unchanged(t, th, id, "delivered without the right PIN", func() {
		refused(t, "no PIN", publish(alice, topic(parcel.EventDelivered), pick.Payload, ""), protocol.CodeRejected, parcel.RulePINRequired)
		refused(t, "wrong PIN", publish(alice, topic(parcel.EventDelivered), payload(t, map[string]any{"store": "acme", "orderID": id, "pin": wrong}), ""), protocol.CodeRejected, parcel.RuleWrongPIN)
	})
	if err := publish(alice, topic(parcel.EventDelivered), payload(t, map[string]any{"store": "acme", "orderID": id, "pin": sec.PIN}), ""); err != nil {
		t.Fatalf("delivered with the PIN: %v", err)
	}
	// No stored event carries the PIN or the tracking code.
	stored, _, err := th.d.Order(ctx, id)
	if err != nil || stored.Status != parcel.StatusDelivered {
		t.Fatalf("order %+v, %v", stored, err)
	}
	logger := dialAs(t, th, protocol.RoleLogger, "log2")
	all := &inbox{}
	if _, err := logger.Subscribe(ctx, parcel.StorePattern("acme"), all.add, client.History(100)); err != nil {
		t.Fatal(err)
	}
	hubtest.Until(t, 10*time.Second, "the order's events replayed", func() bool { return len(all.all()) == 4 })
	for _, m := range all.all() {
		if strings.Contains(string(m.Payload), sec.PIN) || strings.Contains(string(m.Payload), sec.TrackingCode) || strings.Contains(string(m.Payload), `"pin"`) {
			t.Errorf("stored event %s carries a secret: %s", m.Topic, m.Payload)
		}
	}
}

// TestStoreFullRefusesNewOrdersOnly: once the order store is nearly full,
// new orders are refused with store_full (and counted), while the orders
// already accepted still move on; nothing stored is discarded.
func TestStoreFullRefusesNewOrdersOnly(t *testing.T) {
	th := startHubWith(t, parcel.Options{MaxBytes: 64 << 10}, nil)
	acme := dialAs(t, th, protocol.RoleVendor, "acme")
	var posted []string
	var full error
	for range 200 {
		o := with(order("acme"), "note", strings.Repeat("n", parcel.MaxNote))
		err := publish(acme, parcel.Topic("acme", o["orderID"].(string), parcel.EventPickup, ""), payload(t, o), "")
		if err != nil {
			full = err
			break
		}
		posted = append(posted, o["orderID"].(string))
	}
	var pe *protocol.Error
	if !errors.As(full, &pe) || pe.Code != protocol.CodeStoreFull || !strings.HasPrefix(pe.Text, parcel.RuleStoreFull) {
		t.Fatalf("after %d orders: %v, want a store_full refusal", len(posted), full)
	}
	t.Logf("%d orders accepted before %v", len(posted), full)
	// The orders accepted still go all the way.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFleet(t, th)
	drv := f.driver(ctx, parcel.DriverConfig{Name: "dana", PickupDelay: time.Millisecond, DeliverDelay: time.Millisecond, Capacity: 8})
	hubtest.Eventually(t, 30*time.Second, "every accepted order delivered", func() error {
		for _, id := range posted {
			if !statusIs(th, id, parcel.StatusDelivered, "")() {
				return fmt.Errorf("order %s not delivered", id)
			}
		}
		return nil
	})
	cancel()
	wait(t, drv, 10*time.Second, "driver")
	mfs, err := th.h.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	refusals := 0.0
	for _, mf := range mfs {
		if mf.GetName() == "caps_order_refusals_total" {
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == parcel.RuleStoreFull {
					refusals = m.GetCounter().GetValue()
				}
			}
		}
	}
	if refusals < 1 {
		t.Errorf("caps_order_refusals_total{rule=%q} = %v", parcel.RuleStoreFull, refusals)
	}
}

// TestFinishedOrdersExpireUnfinishedStay: the sweeper removes finished
// orders past the retention, but keeps an order still in flight however old,
// and a delivered order whose vendor has not acknowledged the notice.
func TestFinishedOrdersExpireUnfinishedStay(t *testing.T) {
	th := startHubWith(t, parcel.Options{Retention: 300 * time.Millisecond, SweepEvery: time.Hour}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	acme := dialAs(t, th, protocol.RoleVendor, "acme")
	notices := &inbox{}
	if _, err := acme.Subscribe(ctx, parcel.MailboxPattern("acme"), notices.add, client.Durable(parcel.VendorDurable("acme")),
		client.ManualAck(), client.DeliverAll()); err != nil {
		t.Fatal(err)
	}
	post := func() string {
		o := order("acme")
		if err := publish(acme, parcel.Topic("acme", o["orderID"].(string), parcel.EventPickup, ""), payload(t, o), ""); err != nil {
			t.Fatal(err)
		}
		return o["orderID"].(string)
	}
	done := post()
	alice := dialAs(t, th, protocol.RoleDriver, "alice")
	pick := takePickup(t, alice)
	for _, ev := range []string{parcel.EventInTransit, parcel.EventDelivered} {
		if err := publish(alice, parcel.Topic("acme", done, ev, "alice"), pick.Payload, ""); err != nil {
			t.Fatal(err)
		}
	}
	waiting := post() // nobody takes it: in flight, however old
	finished := time.Now()
	hubtest.Until(t, 10*time.Second, "the delivery notice", func() bool { return len(notices.all()) == 1 })
	hubtest.Until(t, 10*time.Second, "the retention of the test hub to pass", func() bool { return time.Since(finished) > 400*time.Millisecond })

	th.d.SweepNow(ctx)
	if _, _, err := th.d.Order(ctx, done); err != nil {
		t.Fatalf("a delivered order whose vendor was not yet told was removed: %v", err)
	}
	if err := notices.all()[0].Ack(ctx); err != nil {
		t.Fatal(err)
	}
	hubtest.Eventually(t, 10*time.Second, "the told order removed", func() error {
		th.d.SweepNow(ctx)
		if _, _, err := th.d.Order(ctx, done); !errors.Is(err, parcel.ErrNoSuchOrder) {
			return fmt.Errorf("order %s: %v", done, err)
		}
		return nil
	})
	if o, _, err := th.d.Order(ctx, waiting); err != nil || o.Status != parcel.StatusCreated {
		t.Errorf("the order in flight: %+v, %v", o, err)
	}
}
