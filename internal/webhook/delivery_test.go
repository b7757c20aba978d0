package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caps-hub/caps/internal/hubtest"
)

// Every event reaches the endpoints of its store whose filter takes it,
// signed (verified by the Standard Webhooks library), with the documented
// body; another store's endpoint gets nothing of it.
func TestEveryEventArrivesSigned(t *testing.T) {
	eng := startEngine(t)
	s := startService(t, testConfig(eng))
	all, delivered, other := newReceiver(t, nil), newReceiver(t, nil), newReceiver(t, nil)
	epAll, secret := create(t, s, "shop1", all.URL())
	all.setSecret(secret)
	_, secret = create(t, s, "shop1", delivered.URL(), "order.delivered")
	delivered.setSecret(secret)
	_, secret = create(t, s, "shop2", other.URL())
	other.setSecret(secret)

	var ids, deliveredIDs []string
	for i := range 20 {
		typ := []string{"order.created", "order.delivered"}[i%2]
		ev := testEvent{ID: fmt.Sprintf("e%02d", i), Type: typ, Store: "shop1"}
		publish(t, eng, ev)
		ids = append(ids, ev.ID)
		if typ == "order.delivered" {
			deliveredIDs = append(deliveredIDs, ev.ID)
		}
	}
	publish(t, eng, testEvent{ID: "skipped", Type: "skip", Store: "shop1"})
	publish(t, eng, testEvent{ID: "two", Type: "order.created", Store: "shop2"})

	all.waitDelivered(t, 20*time.Second, ids)
	delivered.waitDelivered(t, 20*time.Second, deliveredIDs)
	other.waitDelivered(t, 20*time.Second, []string{"two"})
	for _, rc := range []*receiver{all, delivered, other} {
		rc.checkCalls(t)
	}
	if got := len(delivered.delivered()); got != len(deliveredIDs) {
		t.Errorf("the order.delivered endpoint got %d events, want %d", got, len(deliveredIDs))
	}
	for id := range other.delivered() {
		if id != "two" {
			t.Errorf("shop2's endpoint got shop1's event %s", id)
		}
	}
	for id := range all.delivered() {
		if id == "two" || id == "skipped" {
			t.Errorf("shop1's endpoint got %s", id)
		}
	}

	// The body: {"type","timestamp","data"}, data being the event.
	c := all.snapshot()[0]
	var body struct {
		Type      string          `json:"type"`
		Timestamp string          `json:"timestamp"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(c.body, &body); err != nil {
		t.Fatal(err)
	}
	var data testEvent
	json.Unmarshal(body.Data, &data)
	if _, err := time.Parse(time.RFC3339, body.Timestamp); err != nil || data.ID != c.id || body.Type != data.Type {
		t.Errorf("body %s: want type, RFC 3339 timestamp and the event as data", c.body)
	}
	if ct := c.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}

	// The log has one delivered attempt per event, newest first.
	hubtest.Eventually(t, 10*time.Second, "the delivery log", func() error {
		log, err := s.Log(context.Background(), "shop1", epAll.ID, 0)
		if err != nil {
			return err
		}
		if len(log) != len(ids) {
			return fmt.Errorf("%d entries, want %d", len(log), len(ids))
		}
		seen := map[string]bool{}
		for i, a := range log {
			if a.Result != ResultDelivered || a.Status != 200 || a.Attempt != 1 || a.Hub != "test" || a.EventType == "" {
				return fmt.Errorf("entry %d: %+v", i, a)
			}
			seen[a.EventID] = true
		}
		if len(seen) != len(ids) {
			return fmt.Errorf("%d distinct events in the log, want %d", len(seen), len(ids))
		}
		return nil
	})
	if log, err := s.Log(context.Background(), "shop1", epAll.ID, 3); err != nil || len(log) != 3 {
		t.Errorf("Log with limit 3: %d entries, %v", len(log), err)
	}
	want := float64(len(ids) + len(deliveredIDs) + 1)
	hubtest.Until(t, 10*time.Second, "caps_webhook_deliveries_total{result=delivered} to count every delivery", func() bool {
		return counter(s.met.deliveries, ResultDelivered) == want
	})
}

// A receiver down for a while (answering 503) then back gets every event;
// every retry of an event carries the same webhook-id and body.
func TestReceiverDownThenBack(t *testing.T) {
	eng := startEngine(t)
	s := startService(t, testConfig(eng))
	var down atomic.Bool
	down.Store(true)
	rc := newReceiver(t, func(*http.Request) int {
		if down.Load() {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	ep, secret := create(t, s, "shop", rc.URL())
	rc.setSecret(secret)
	ids := publishN(t, eng, "shop", "ev", 10)

	// Down: the first events are tried, then tried again; the others wait
	// their turn instead of each hammering the receiver.
	tries := map[string]int{}
	hubtest.Eventually(t, 20*time.Second, "events retried while the receiver is down", func() error {
		clear(tries)
		for _, c := range rc.snapshot() {
			tries[c.id]++
		}
		for _, n := range tries {
			if n >= 3 {
				return nil
			}
		}
		return fmt.Errorf("tries so far: %v", tries)
	})
	if len(tries) > s.cfg.MaxInFlight {
		t.Errorf("%d events tried while the receiver was down; at most MaxInFlight (%d) should be", len(tries), s.cfg.MaxInFlight)
	}
	got, err := s.Get(context.Background(), "shop", ep.ID)
	if err != nil || !got.Enabled || got.FailingSince == nil {
		t.Fatalf("a failing endpoint: %+v, %v; want enabled and failingSince set", got, err)
	}
	log, _ := s.Log(context.Background(), "shop", ep.ID, 1)
	if len(log) != 1 || log[0].Result != ResultRetry || log[0].Status != 503 || log[0].NextRetry == nil {
		t.Errorf("last log entry while down: %+v", log)
	}

	down.Store(false)
	rc.waitDelivered(t, 20*time.Second, ids)
	rc.checkCalls(t)
	hubtest.Eventually(t, 10*time.Second, "the failing streak cleared", func() error {
		got, err := s.Get(context.Background(), "shop", ep.ID)
		if err != nil || got.FailingSince != nil {
			return fmt.Errorf("%+v, %v", got, err)
		}
		return nil
	})
}

// A receiver that hangs, and one that answers 500, delay no other: the
// healthy receiver gets every event while the hanging one has not
// answered a single request, and no more than MaxInFlight requests are
// ever open to the hanging one.
func TestSlowAndFailingReceiversDelayNoOther(t *testing.T) {
	eng := startEngine(t)
	cfg := testConfig(eng)
	// The hanging receiver's requests outlast the test: anything the
	// healthy one shared with them (a worker, a slot, a connection) would
	// stall it until the test times out.
	cfg.RequestTimeout = 5 * time.Minute
	s := startService(t, cfg)

	release := make(chan struct{})
	var open, maxOpen, answered atomic.Int32
	slow := newReceiver(t, func(r *http.Request) int {
		n := open.Add(1)
		defer open.Add(-1)
		for m := maxOpen.Load(); n > m && !maxOpen.CompareAndSwap(m, n); m = maxOpen.Load() {
		}
		select {
		case <-release:
			answered.Add(1)
		case <-r.Context().Done():
		}
		return http.StatusOK
	})
	defer close(release)
	failing := newReceiver(t, func(*http.Request) int { return http.StatusInternalServerError })
	healthy := newReceiver(t, nil)
	for _, rc := range []*receiver{slow, failing, healthy} {
		_, secret := create(t, s, "shop", rc.URL())
		rc.setSecret(secret)
	}

	ids := publishN(t, eng, "shop", "ev", 40)
	healthy.waitDelivered(t, 30*time.Second, ids)
	if n := answered.Load(); n != 0 {
		t.Fatalf("the hanging receiver answered %d requests before the healthy one had everything", n)
	}
	hubtest.Until(t, 10*time.Second, "MaxInFlight requests waiting at the hanging receiver", func() bool {
		return open.Load() == int32(cfg.MaxInFlight)
	})
	if len(slow.snapshot()) == 0 || len(failing.snapshot()) == 0 {
		t.Fatal("the slow and failing receivers were not even tried")
	}
	if m := maxOpen.Load(); m > int32(cfg.MaxInFlight) {
		t.Errorf("%d requests open at once to one endpoint; MaxInFlight is %d", m, cfg.MaxInFlight)
	}
	healthy.checkCalls(t)
	failing.checkCalls(t)
}

// An endpoint failing for longer than the retry window is disabled and
// shown so, its queue emptied; re-enabled, it gets the events that follow.
func TestEndpointFailingPastWindowIsDisabled(t *testing.T) {
	eng := startEngine(t)
	cfg := testConfig(eng)
	cfg.RetryWindow = 1500 * time.Millisecond
	s := startService(t, cfg)
	var fail atomic.Bool
	fail.Store(true)
	rc := newReceiver(t, func(*http.Request) int {
		if fail.Load() {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	ep, secret := create(t, s, "shop", rc.URL())
	rc.setSecret(secret)
	publishN(t, eng, "shop", "old", 5)

	var got Endpoint
	hubtest.Eventually(t, 20*time.Second, "the endpoint disabled", func() error {
		var err error
		got, err = s.Get(context.Background(), "shop", ep.ID)
		if err == nil && got.Enabled {
			err = fmt.Errorf("still enabled (failing since %v)", got.FailingSince)
		}
		return err
	})
	if got.DisabledAt == nil || !strings.Contains(got.DisabledReason, "retry window") || !strings.Contains(got.DisabledReason, "HTTP 500") {
		t.Errorf("disabled endpoint shown as %+v", got)
	}
	hubtest.Until(t, 10*time.Second, "caps_webhook_endpoints_disabled_total{reason=failing} = 1", func() bool {
		return counter(s.met.disabled, reasonFailing) == 1
	})
	hubtest.Eventually(t, 10*time.Second, "the endpoint gauges", func() error {
		if on, off := gauge(s.met.endpoints, "enabled"), gauge(s.met.endpoints, "disabled"); on != 0 || off != 1 {
			return fmt.Errorf("enabled %v disabled %v", on, off)
		}
		return nil
	})
	hubtest.Eventually(t, 10*time.Second, "the queue emptied", func() error {
		n, err := s.Pending(context.Background(), "shop", ep.ID)
		if err == nil && n != 0 {
			err = fmt.Errorf("%d pending", n)
		}
		return err
	})
	rc.checkCalls(t)

	// While disabled, events are not queued for it.
	ignored := counter(s.met.events, "ignored")
	publish(t, eng, testEvent{ID: "while-disabled", Type: "order.created", Store: "shop"})
	hubtest.Until(t, 10*time.Second, "the event handled", func() bool { return counter(s.met.events, "ignored") == ignored+1 })

	fail.Store(false)
	if got, err := s.Enable(context.Background(), "shop", ep.ID); err != nil || !got.Enabled || got.DisabledReason != "" {
		t.Fatalf("Enable: %+v, %v", got, err)
	}
	ids := publishN(t, eng, "shop", "new", 3)
	rc.waitDelivered(t, 20*time.Second, ids)
	if rc.delivered()["while-disabled"] != 0 {
		t.Error("an event of the disabled time was delivered")
	}
}

// 410 Gone disables the endpoint at once.
func TestGoneDisables(t *testing.T) {
	eng := startEngine(t)
	s := startService(t, testConfig(eng))
	rc := newReceiver(t, func(*http.Request) int { return http.StatusGone })
	ep, secret := create(t, s, "shop", rc.URL())
	rc.setSecret(secret)
	publishN(t, eng, "shop", "ev", 3)
	hubtest.Eventually(t, 20*time.Second, "the endpoint disabled", func() error {
		got, err := s.Get(context.Background(), "shop", ep.ID)
		if err == nil && (got.Enabled || !strings.Contains(got.DisabledReason, "410")) {
			err = fmt.Errorf("%+v", got)
		}
		return err
	})
	// Several attempts in flight may have got 410: once they are all over
	// (Stop waits for them), the endpoint must have been disabled once.
	s.Stop()
	if n := counter(s.met.disabled, reasonGone); n != 1 {
		t.Errorf("caps_webhook_endpoints_disabled_total{reason=gone} = %v", n)
	}
}

// Two services on one engine (two hubs) share the work: each event is
// delivered once.
func TestTwoDispatchersDeliverEachOnce(t *testing.T) {
	eng := startEngine(t)
	a := startService(t, testConfig(eng))
	b := startService(t, testConfig(eng))
	rc := newReceiver(t, nil)
	ep, secret := create(t, a, "shop", rc.URL())
	rc.setSecret(secret)
	hubtest.Until(t, 10*time.Second, "the second hub to learn of the endpoint", func() bool { return b.knows(ep.ID) })

	ids := publishN(t, eng, "shop", "ev", 60)
	rc.waitDelivered(t, 30*time.Second, ids)
	rc.checkCalls(t)
	for id, n := range rc.delivered() {
		if n != 1 {
			t.Errorf("%s delivered %d times", id, n)
		}
	}
	// The receiver records a request before the hub has its answer: wait
	// for the hubs' counts to settle.
	hubtest.Eventually(t, 10*time.Second, "the hubs' counts", func() error {
		da, db := counter(a.met.deliveries, ResultDelivered), counter(b.met.deliveries, ResultDelivered)
		qa, qb := counter(a.met.events, "queued"), counter(b.met.events, "queued")
		if da+db != float64(len(ids)) || qa+qb != float64(len(ids)) {
			return fmt.Errorf("hubs made %v+%v deliveries and queued %v+%v events; want %d each in total", da, db, qa, qb, len(ids))
		}
		t.Logf("deliveries: hub a %v, hub b %v; events queued: hub a %v, hub b %v", da, db, qa, qb)
		return nil
	})
	for id, n := range rc.delivered() {
		if n != 1 {
			t.Errorf("%s delivered %d times", id, n)
		}
	}
}

// A source event is acknowledged only once its deliveries are stored: when
// the engine refuses to store them, the event is handed again, and
// delivered once the engine takes them. (A process killed between the two
// steps is the same case; TestKill9LosesNothing kills at random points,
// this test at the one that matters.)
func TestEventNotAckedUntilQueued(t *testing.T) {
	eng := startEngine(t)
	s := startService(t, testConfig(eng))
	rc := newReceiver(t, nil)
	_, secret := create(t, s, "shop", rc.URL())
	rc.setSecret(secret)
	ctx := context.Background()

	// The deliveries stream refuses every task for now.
	info, err := s.tasks.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	good := info.Config
	bad := good
	bad.MaxMsgSize = 16
	if _, err := eng.JS.UpdateStream(ctx, bad); err != nil {
		t.Fatal(err)
	}
	publish(t, eng, testEvent{ID: "e1", Type: "order.created", Store: "shop"})
	hubtest.Eventually(t, 20*time.Second, "the event handed again", func() error {
		c, err := eng.JS.Consumer(ctx, testStream, DefaultSourceDurable)
		if err != nil {
			return err
		}
		if ci := c.CachedInfo(); ci.NumRedelivered == 0 {
			return fmt.Errorf("not handed again yet: %+v", ci)
		}
		return nil
	})
	if len(rc.snapshot()) != 0 {
		t.Fatal("delivered although its task was refused")
	}
	if _, err := eng.JS.UpdateStream(ctx, good); err != nil {
		t.Fatal(err)
	}
	rc.waitDelivered(t, 20*time.Second, []string{"e1"})
	rc.checkCalls(t)
}
