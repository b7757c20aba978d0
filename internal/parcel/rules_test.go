package parcel_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

func dialAs(t *testing.T, th *testHub, role, name string) *client.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, []string{th.addr}, client.Options{Role: role, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func payload(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func order(store string) map[string]any {
	return map[string]any{"store": store, "orderID": uuid.NewString(), "customer": "Ada Lovelace", "address": "12 Analytical Row, London"}
}

func with(m map[string]any, k string, v any) map[string]any {
	c := map[string]any{}
	for kk, vv := range m {
		c[kk] = vv
	}
	if v == nil {
		delete(c, k)
	} else {
		c[k] = v
	}
	return c
}

// stateOf captures everything the dispatcher holds about an order: its
// record (with revision) and the events stored for it.
type state struct {
	rev    uint64
	record string
	events map[string]int
}

func stateOf(t *testing.T, th *testHub, id string) state {
	t.Helper()
	ctx := context.Background()
	var s state
	o, rev, err := th.d.Order(ctx, id)
	if err == nil {
		b, _ := json.Marshal(o)
		s.rev, s.record = rev, string(b)
	}
	a, err := th.d.Audit(ctx, []string{id})
	if err != nil {
		t.Fatal(err)
	}
	s.events = a.Events[id]
	return s
}

func (s state) same(o state) bool {
	if s.rev != o.rev || s.record != o.record || len(s.events) != len(o.events) {
		return false
	}
	for k, v := range s.events {
		if o.events[k] != v {
			return false
		}
	}
	return true
}

func publish(c *client.Conn, topic string, body []byte, key string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var opts []client.PubOpt
	if key != "" {
		opts = append(opts, client.WithMsgID(key))
	}
	_, err := c.Publish(ctx, topic, body, opts...)
	return err
}

// refused asserts that err is the hub's refusal with code and a text
// starting with rule.
func refused(t *testing.T, what string, err error, code, rule string) {
	t.Helper()
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		t.Errorf("%s: want refusal %s/%s, got %v", what, code, rule, err)
		return
	}
	if pe.Code != code || !strings.HasPrefix(pe.Text, rule) {
		t.Errorf("%s: want %s %q…, got %s %q", what, code, rule, pe.Code, pe.Text)
	}
}

// unchanged runs fn and asserts it left the order's state as it was.
func unchanged(t *testing.T, th *testHub, id, what string, fn func()) {
	t.Helper()
	before := stateOf(t, th, id)
	fn()
	if after := stateOf(t, th, id); !before.same(after) {
		t.Errorf("%s changed order %s:\n before %+v\n after  %+v", what, id, before, after)
	}
}

func TestRefusedInputChangesNothing(t *testing.T) {
	th := startHub(t, nil)
	acme := dialAs(t, th, protocol.RoleVendor, "acme")
	rosebud := dialAs(t, th, protocol.RoleVendor, "rosebud")
	alice := dialAs(t, th, protocol.RoleDriver, "alice")
	bob := dialAs(t, th, protocol.RoleDriver, "bob")
	generic := dialAs(t, th, protocol.RoleClient, "someone")
	admin := dialAs(t, th, protocol.RoleAdmin, "root")

	good := order("acme")
	id := good["orderID"].(string)
	pickup := parcel.Topic("acme", id, parcel.EventPickup, "")
	inTransit := parcel.Topic("acme", id, parcel.EventInTransit, "alice")
	delivered := parcel.Topic("acme", id, parcel.EventDelivered, "alice")
	// bob's own topics for the same order.
	bobInTransit := parcel.Topic("acme", id, parcel.EventInTransit, "bob")
	bobDelivered := parcel.Topic("acme", id, parcel.EventDelivered, "bob")
	if err := publish(acme, pickup, payload(t, good), id+".pickup"); err != nil {
		t.Fatalf("good pickup: %v", err)
	}

	// Malformed pickups: refused, and no order appears.
	fresh := order("acme")
	freshID := fresh["orderID"].(string)
	freshPickup := parcel.Topic("acme", freshID, parcel.EventPickup, "")
	badPickups := []struct {
		what, rule, code string
		topic            string
		body             []byte
		conn             *client.Conn
	}{
		{"not JSON", parcel.RuleBadPayload, protocol.CodeRejected, freshPickup, []byte("pickup please"), acme},
		{"a JSON array", parcel.RuleBadPayload, protocol.CodeRejected, freshPickup, []byte(`[1,2]`), acme},
		{"JSON null", parcel.RuleBadPayload, protocol.CodeRejected, freshPickup, []byte(`null`), acme},
		{"no customer", parcel.RuleMissingField, protocol.CodeRejected, freshPickup, payload(t, with(fresh, "customer", nil)), acme},
		{"empty address", parcel.RuleMissingField, protocol.CodeRejected, freshPickup, payload(t, with(fresh, "address", "  ")), acme},
		{"no orderID", parcel.RuleMissingField, protocol.CodeRejected, freshPickup, payload(t, with(fresh, "orderID", nil)), acme},
		{"numeric customer", parcel.RuleBadField, protocol.CodeRejected, freshPickup, payload(t, with(fresh, "customer", 42)), acme},
		{"control characters", parcel.RuleBadField, protocol.CodeRejected, freshPickup, payload(t, with(fresh, "address", "1 Main St\x1b[2J")), acme},
		{"short orderID", parcel.RuleBadOrderID, protocol.CodeRejected, freshPickup, payload(t, with(fresh, "orderID", "1234")), acme},
		{"non-hex orderID", parcel.RuleBadOrderID, protocol.CodeRejected, freshPickup, payload(t, with(fresh, "orderID", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz")), acme},
		{"oversize customer", parcel.RuleFieldTooLong, protocol.CodeRejected, freshPickup, payload(t, with(fresh, "customer", strings.Repeat("x", parcel.MaxField+1))), acme},
		{"oversize payload", parcel.RuleBadPayload, protocol.CodeRejected, freshPickup, payload(t, with(fresh, "note", strings.Repeat("x", parcel.MaxPayload))), acme},
		{"payload store differs from topic", parcel.RuleWrongStore, protocol.CodeRejected, freshPickup, payload(t, with(fresh, "store", "rosebud")), acme},
		{"vendor posting for another store", `vendor "acme" may not publish`, protocol.CodeForbidden, parcel.Topic("rosebud", freshID, parcel.EventPickup, ""), payload(t, with(fresh, "store", "rosebud")), acme},
		{"admin posting for a vendor under another store's topic", parcel.RuleWrongStore, protocol.CodeRejected, parcel.Topic("rosebud", freshID, parcel.EventPickup, ""), payload(t, fresh), admin},
		{"generic client posting a pickup", "client", protocol.CodeForbidden, freshPickup, payload(t, fresh), generic},
		{"driver posting a pickup", "driver", protocol.CodeForbidden, freshPickup, payload(t, fresh), alice},
		{"payload order differs from topic", parcel.RuleMismatch, protocol.CodeRejected, freshPickup, payload(t, with(fresh, "orderID", id)), acme},
		{"unknown field", parcel.RuleUnknownField, protocol.CodeRejected, freshPickup, payload(t, with(fresh, "colour", "blue")), acme},
		{"unknown parcel event", parcel.RuleUnknownEvent, protocol.CodeRejected, "parcel.acme." + freshID + ".lost", payload(t, fresh), admin},
	}
	for _, c := range badPickups {
		unchanged(t, th, freshID, c.what, func() {
			refused(t, c.what, publish(c.conn, c.topic, c.body, ""), c.code, c.rule)
		})
	}
	if _, _, err := th.d.Order(context.Background(), freshID); err == nil {
		t.Fatalf("a refused pickup created order %s", freshID)
	}

	// Duplicates of the good order.
	unchanged(t, th, id, "duplicate with other content", func() {
		refused(t, "duplicate with other content", publish(acme, pickup, payload(t, with(good, "customer", "Charles Babbage")), ""), protocol.CodeRejected, parcel.RuleDuplicate)
	})
	unchanged(t, th, id, "duplicate without message id", func() {
		refused(t, "duplicate without message id", publish(acme, pickup, payload(t, good), ""), protocol.CodeRejected, parcel.RuleDuplicate)
	})
	unchanged(t, th, id, "duplicate with another message id", func() {
		refused(t, "duplicate with another message id", publish(acme, pickup, payload(t, good), "other"), protocol.CodeRejected, parcel.RuleDuplicate)
	})
	unchanged(t, th, id, "another store reusing the id", func() {
		refused(t, "another store reusing the id", publish(rosebud, parcel.Topic("rosebud", id, parcel.EventPickup, ""), payload(t, with(good, "store", "rosebud")), ""), protocol.CodeRejected, parcel.RuleDuplicate)
	})
	// A retry of the very publish that created it is accepted and stored once.
	unchanged(t, th, id, "retry of the pickup", func() {
		if err := publish(acme, pickup, payload(t, good), id+".pickup"); err != nil {
			t.Errorf("retry of the pickup: %v", err)
		}
	})

	// Nobody holds the order yet.
	unchanged(t, th, id, "in-transit before any driver got it", func() {
		refused(t, "in-transit before any driver got it", publish(bob, bobInTransit, payload(t, good), ""), protocol.CodeRejected, parcel.RuleNotHolder)
	})

	// Alice takes the pickup from the work queue: she holds the order.
	got := make(chan *client.Msg, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := alice.Subscribe(ctx, parcel.PickupPattern, func(m *client.Msg) { got <- m },
		client.Durable(parcel.DriversDurable), client.ManualAck(), client.DeliverAll()); err != nil {
		t.Fatal(err)
	}
	var pick *client.Msg
	select {
	case pick = <-got:
	case <-ctx.Done():
		t.Fatal("alice got no pickup")
	}
	hubtest.Until(t, 5*time.Second, "alice to hold the order", func() bool {
		o, _, err := th.d.Order(context.Background(), id)
		return err == nil && o.Status == parcel.StatusAssigned && o.Driver == "alice"
	})

	stranger := order("acme")
	strangerInTransit := parcel.Topic("acme", stranger["orderID"].(string), parcel.EventInTransit, "alice")
	badTransitions := []struct {
		what, rule, code string
		conn             *client.Conn
		topic            string
		body             []byte
	}{
		{"in-transit from a driver not holding it", parcel.RuleNotHolder, protocol.CodeRejected, bob, bobInTransit, payload(t, good)},
		{"in-transit reported for another driver", `driver "bob" may not publish`, protocol.CodeForbidden, bob, inTransit, payload(t, good)},
		{"delivered before in-transit", parcel.RuleOutOfOrder, protocol.CodeRejected, alice, delivered, payload(t, good)},
		{"delivered before in-transit, from another driver", parcel.RuleNotHolder, protocol.CodeRejected, bob, bobDelivered, payload(t, good)},
		{"in-transit with another address", parcel.RuleMismatch, protocol.CodeRejected, alice, inTransit, payload(t, with(good, "address", "somewhere else"))},
		{"in-transit under another store", parcel.RuleWrongStore, protocol.CodeRejected, alice, parcel.Topic("rosebud", id, parcel.EventInTransit, "alice"), payload(t, with(good, "store", "rosebud"))},
		{"in-transit with topic and payload stores differing", parcel.RuleWrongStore, protocol.CodeRejected, alice, parcel.Topic("rosebud", id, parcel.EventInTransit, "alice"), payload(t, good)},
		{"in-transit with a bad orderID", parcel.RuleBadOrderID, protocol.CodeRejected, alice, inTransit, payload(t, with(good, "orderID", "not-a-uuid"))},
		{"in-transit for an unknown order", parcel.RuleNoSuchOrder, protocol.CodeRejected, alice, strangerInTransit, payload(t, stranger)},
		{"vendor reporting in-transit", "vendor", protocol.CodeForbidden, acme, inTransit, payload(t, good)},
		{"generic client reporting delivered", "client", protocol.CodeForbidden, generic, delivered, payload(t, good)},
	}
	for _, c := range badTransitions {
		unchanged(t, th, id, c.what, func() {
			refused(t, c.what, publish(c.conn, c.topic, c.body, ""), c.code, c.rule)
		})
	}

	// In transit, by its holder.
	if err := publish(alice, inTransit, payload(t, with(good, "driver", "alice")), id+".in-transit"); err != nil {
		t.Fatalf("in-transit by the holder: %v", err)
	}
	if err := pick.Ack(ctx); err != nil {
		t.Fatalf("ack pickup: %v", err)
	}
	unchanged(t, th, id, "retry of the in-transit", func() {
		if err := publish(alice, inTransit, payload(t, with(good, "driver", "alice")), id+".in-transit"); err != nil {
			t.Errorf("retry of the in-transit: %v", err)
		}
	})
	for _, c := range []struct {
		what, rule string
		conn       *client.Conn
		topic, key string
	}{
		{"in-transit twice", parcel.RuleOutOfOrder, alice, inTransit, ""},
		{"in-transit twice, another message id", parcel.RuleOutOfOrder, alice, inTransit, "again"},
		{"delivered by a driver not holding it", parcel.RuleNotHolder, bob, bobDelivered, ""},
	} {
		unchanged(t, th, id, c.what, func() {
			refused(t, c.what, publish(c.conn, c.topic, payload(t, good), c.key), protocol.CodeRejected, c.rule)
		})
	}

	if err := publish(alice, delivered, payload(t, good), id+".delivered"); err != nil {
		t.Fatalf("delivered by the holder: %v", err)
	}
	unchanged(t, th, id, "retry of the delivered", func() {
		if err := publish(alice, delivered, payload(t, good), id+".delivered"); err != nil {
			t.Errorf("retry of the delivered: %v", err)
		}
	})
	for _, c := range []struct {
		what, topic string
	}{
		{"delivered twice", delivered},
		{"in-transit after delivered", inTransit},
	} {
		unchanged(t, th, id, c.what, func() {
			refused(t, c.what, publish(alice, c.topic, payload(t, good), ""), protocol.CodeRejected, parcel.RuleOutOfOrder)
		})
	}

	// Each event stored exactly once, retries included.
	s := stateOf(t, th, id)
	for _, ev := range []string{parcel.EventPickup, parcel.EventInTransit, parcel.EventDelivered} {
		if s.events[ev] != 1 {
			t.Errorf("%d %s events stored, want 1", s.events[ev], ev)
		}
	}
	o, _, err := th.d.Order(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	for _, st := range o.Timeline {
		steps = append(steps, string(st.Status)+"/"+st.By)
	}
	if got, want := strings.Join(steps, " "), "created/acme assigned/alice in-transit/alice delivered/alice"; got != want {
		t.Errorf("timeline %q, want %q", got, want)
	}
}

func TestTrackingIsPrivate(t *testing.T) {
	th := startHub(t, nil)
	acme := dialAs(t, th, protocol.RoleVendor, "acme")
	good := order("acme")
	id := good["orderID"].(string)
	if err := publish(acme, parcel.Topic("acme", id, parcel.EventPickup, ""), payload(t, good), ""); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	track := func(c *client.Conn, req string) ([]byte, error) {
		return c.Request(ctx, parcel.TrackService, []byte(req))
	}

	b, err := track(acme, id)
	if err != nil {
		t.Fatalf("vendor tracking its own order: %v", err)
	}
	var o parcel.Order
	if err := json.Unmarshal(b, &o); err != nil || o.OrderID != id || o.Status != parcel.StatusCreated || o.Customer != "Ada Lovelace" {
		t.Fatalf("track answer %s (%v)", b, err)
	}
	if strings.Contains(string(b), `"key"`) {
		t.Errorf("track answer shows message ids: %s", b)
	}
	if _, err := track(acme, `{"orderID":"`+strings.ToUpper(id)+`"}`); err != nil {
		t.Errorf("JSON request with an upper-case id: %v", err)
	}
	logger := dialAs(t, th, protocol.RoleLogger, "log")
	if _, err := track(logger, id); err != nil {
		t.Errorf("logger tracking: %v", err)
	}
	_, err = track(dialAs(t, th, protocol.RoleVendor, "rosebud"), id)
	refused(t, "another vendor tracking", err, protocol.CodeForbidden, "vendor rosebud")
	_, err = track(dialAs(t, th, protocol.RoleDriver, "bob"), id)
	refused(t, "a driver who never had it", err, protocol.CodeForbidden, "driver bob")
	_, err = track(dialAs(t, th, protocol.RoleClient, "x"), id)
	refused(t, "a generic client", err, protocol.CodeForbidden, "client x")
	_, err = track(logger, uuid.NewString())
	refused(t, "unknown order", err, protocol.CodeNotFound, "no such order")
	_, err = track(logger, "12345")
	refused(t, "bad id", err, protocol.CodeBadRequest, parcel.RuleBadOrderID)

	// A vendor cannot listen to another store's parcels.
	_, err = acme.Subscribe(ctx, parcel.MailboxPattern("rosebud"), func(*client.Msg) {})
	refused(t, "vendor subscribing to another store", err, protocol.CodeForbidden, `vendor "acme" may not subscribe`)
	_, err = acme.Subscribe(ctx, "parcel.>", func(*client.Msg) {})
	refused(t, "vendor subscribing to every store", err, protocol.CodeForbidden, `vendor "acme" may not subscribe`)
}
