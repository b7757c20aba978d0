package webhook

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caps-hub/caps/internal/hubtest"
)

// The endpoint caps hold under concurrent creation: exactly the per-store
// cap gets in, the rest are refused with too_many_webhooks.
func TestEndpointCaps(t *testing.T) {
	eng := startEngine(t)
	cfg := testConfig(eng)
	cfg.MaxEndpointsPerStore, cfg.MaxEndpoints = 3, 5
	s := startService(t, cfg)

	var wg sync.WaitGroup
	var ok, refused atomic.Int32
	for i := range 10 {
		wg.Go(func() {
			_, _, err := s.Create(context.Background(), NewEndpoint{Store: "a", URL: fmt.Sprintf("https://example.com/%d", i)})
			switch ErrorCode(err) {
			case "":
				ok.Add(1)
			case CodeTooMany:
				refused.Add(1)
			default:
				t.Errorf("Create: %v", err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 3 || refused.Load() != 7 {
		t.Fatalf("10 concurrent creates with a cap of 3: %d created, %d refused", ok.Load(), refused.Load())
	}
	if eps, _ := s.List(context.Background(), "a"); len(eps) != 3 {
		t.Fatalf("store a lists %d endpoints", len(eps))
	}
	create(t, s, "b", "https://example.com/b1")
	create(t, s, "b", "https://example.com/b2")
	_, _, err := s.Create(context.Background(), NewEndpoint{Store: "b", URL: "https://example.com/b3"})
	errorCode(t, err, CodeTooMany) // 5 in all
	if !strings.Contains(err.Error(), "limit") {
		t.Errorf("unclear error: %v", err)
	}
	eps, _ := s.List(context.Background(), "a")
	if err := s.Delete(context.Background(), "a", eps[0].ID); err != nil {
		t.Fatal(err)
	}
	create(t, s, "b", "https://example.com/b3")
}

func TestCreateRefusesBadInput(t *testing.T) {
	eng := startEngine(t)
	cfg := testConfig(eng)
	cfg.EventTypes = []string{"order.created", "order.delivered"}
	s := startService(t, cfg)
	many := make([]string, 33)
	for i := range many {
		many[i] = "order.created"
	}
	for _, ne := range []NewEndpoint{
		{Store: "", URL: "https://example.com/"},
		{Store: "a.b", URL: "https://example.com/"},
		{Store: "a*", URL: "https://example.com/"},
		{Store: ">", URL: "https://example.com/"},
		{Store: strings.Repeat("s", 33), URL: "https://example.com/"},
		{Store: "shop", URL: "https://example.com/" + strings.Repeat("p", 1024)},
		{Store: "shop", URL: ""},
		{Store: "shop", URL: "https://example.com/", Events: many},
		{Store: "shop", URL: "https://example.com/", Events: []string{"order delivered"}},
		{Store: "shop", URL: "https://example.com/", Events: []string{"order.unknown"}},
		{Store: "shop", URL: "https://example.com/", Events: []string{strings.Repeat("e", 65)}},
	} {
		if _, _, err := s.Create(context.Background(), ne); ErrorCode(err) != CodeBadRequest {
			t.Errorf("Create(%.60q, %.60q, %d events) = %v; want bad_request", ne.Store, ne.URL, len(ne.Events), err)
		}
	}
	if eps, err := s.List(context.Background(), "shop"); err != nil || len(eps) != 0 {
		t.Errorf("refused creates left %d endpoints (%v)", len(eps), err)
	}
	ep, secret := create(t, s, "shop", "https://example.com/", "order.created", "order.created")
	if len(ep.Events) != 1 || !strings.HasPrefix(secret, "whsec_") {
		t.Errorf("created %+v with secret %q", ep, secret)
	}
}

// One store cannot see, change or delete another's endpoints.
func TestOtherStoresEndpointsAreNotFound(t *testing.T) {
	eng := startEngine(t)
	s := startService(t, testConfig(eng))
	ep, _ := create(t, s, "a", "https://example.com/a")
	ctx := context.Background()
	_, err := s.Get(ctx, "b", ep.ID)
	errorCode(t, err, CodeNotFound)
	errorCode(t, s.Delete(ctx, "b", ep.ID), CodeNotFound)
	_, err = s.Enable(ctx, "b", ep.ID)
	errorCode(t, err, CodeNotFound)
	_, err = s.Log(ctx, "b", ep.ID, 0)
	errorCode(t, err, CodeNotFound)
	_, err = s.Pending(ctx, "b", ep.ID)
	errorCode(t, err, CodeNotFound)
	if eps, _ := s.List(ctx, "b"); len(eps) != 0 {
		t.Errorf("store b lists %v", eps)
	}
	if _, err := s.Get(ctx, "a", ep.ID); err != nil {
		t.Fatalf("the endpoint is gone: %v", err)
	}
}

// blocked is a receiver that answers nothing until the test ends.
func blocked(t *testing.T) *receiver {
	release := make(chan struct{})
	rc := newReceiver(t, func(r *http.Request) int {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		return http.StatusServiceUnavailable
	})
	t.Cleanup(func() { close(release) }) // runs before the server's Close
	return rc
}

// An endpoint whose backlog reaches MaxPending is disabled with a clear
// reason and its queue emptied; another endpoint of the store gets all.
func TestBacklogCapDisables(t *testing.T) {
	eng := startEngine(t)
	cfg := testConfig(eng)
	cfg.MaxPending = 5
	s := startService(t, cfg)
	slow, healthy := blocked(t), newReceiver(t, nil)
	slowEP, _ := create(t, s, "shop", slow.URL())
	_, secret := create(t, s, "shop", healthy.URL())
	healthy.setSecret(secret)

	// One event at a time, each delivered to the healthy endpoint before
	// the next: its backlog stays at one, the slow one's grows.
	for i := range 12 {
		ev := testEvent{ID: fmt.Sprintf("ev-%02d", i), Type: "order.created", Store: "shop"}
		publish(t, eng, ev)
		healthy.waitDelivered(t, 20*time.Second, []string{ev.ID})
	}
	got, err := s.Get(context.Background(), "shop", slowEP.ID)
	if err != nil || got.Enabled || !strings.Contains(got.DisabledReason, "5 deliveries were waiting") {
		t.Fatalf("the slow endpoint: %+v, %v; want disabled for its backlog", got, err)
	}
	hubtest.Until(t, 10*time.Second, "caps_webhook_endpoints_disabled_total{reason=backlog} = 1", func() bool {
		return counter(s.met.disabled, reasonBacklog) == 1
	})
	hubtest.Eventually(t, 10*time.Second, "the queue emptied", func() error {
		n, err := s.Pending(context.Background(), "shop", slowEP.ID)
		if err == nil && n != 0 {
			err = fmt.Errorf("%d pending", n)
		}
		return err
	})
}

// When the deliveries stream is full, the endpoint with the largest
// backlog is disabled; the others go on.
func TestQueueBytesCapDisablesLargestBacklog(t *testing.T) {
	eng := startEngine(t)
	cfg := testConfig(eng)
	cfg.MaxQueueBytes = 24 << 10
	s := startService(t, cfg)
	slow, healthy := blocked(t), newReceiver(t, nil)
	slowEP, _ := create(t, s, "shop", slow.URL())
	_, secret := create(t, s, "shop", healthy.URL())
	healthy.setSecret(secret)

	for i := range 40 { // 40 KB in all, for a queue of 24 KiB
		ev := testEvent{ID: fmt.Sprintf("ev-%02d", i), Type: "order.created", Store: "shop", Pad: strings.Repeat("p", 1000)}
		publish(t, eng, ev)
		healthy.waitDelivered(t, 20*time.Second, []string{ev.ID})
	}
	got, err := s.Get(context.Background(), "shop", slowEP.ID)
	if err != nil || got.Enabled || !strings.Contains(got.DisabledReason, "queue was full") {
		t.Fatalf("the slow endpoint: %+v, %v; want disabled for filling the queue", got, err)
	}
	healthy.checkCalls(t)
}

// A source event that is too large or malformed, or that the mapper
// panics on, is refused (counted, logged); the events after it are
// delivered. An event without an id gets
// one from its stream sequence.
func TestInvalidEvents(t *testing.T) {
	eng := startEngine(t)
	cfg := testConfig(eng)
	cfg.MaxEventBytes = 1024
	s := startService(t, cfg)
	rc := newReceiver(t, nil)
	_, secret := create(t, s, "shop", rc.URL())
	rc.setSecret(secret)

	publish(t, eng, testEvent{ID: "big", Type: "order.created", Store: "shop", Pad: strings.Repeat("p", 2000)})
	publish(t, eng, testEvent{ID: "bad id!", Type: "order.created", Store: "shop"})
	publish(t, eng, testEvent{ID: "ok", Type: "bad type!", Store: "shop"})
	publish(t, eng, testEvent{ID: "boom", Type: "panic", Store: "shop"})
	publish(t, eng, testEvent{ID: "", Type: "order.created", Store: "shop"})
	publish(t, eng, testEvent{ID: "last", Type: "order.created", Store: "shop"})
	rc.waitDelivered(t, 20*time.Second, []string{"TEST_EVENTS-5", "last"})
	if n := counter(s.met.events, "invalid"); n != 4 {
		t.Errorf("caps_webhook_events_total{result=invalid} = %v, want 4", n)
	}
	if n := len(rc.delivered()); n != 2 {
		t.Errorf("%d events delivered, want 2", n)
	}
}

// The log keeps the last LogSize attempts; Delete removes the endpoint,
// its queue and its log, and stops its deliveries.
func TestLogSizeAndDelete(t *testing.T) {
	eng := startEngine(t)
	cfg := testConfig(eng)
	cfg.LogSize = 5
	s := startService(t, cfg)
	rc := newReceiver(t, nil)
	ep, secret := create(t, s, "shop", rc.URL())
	rc.setSecret(secret)
	ids := publishN(t, eng, "shop", "ev", 8)
	rc.waitDelivered(t, 20*time.Second, ids)
	hubtest.Eventually(t, 10*time.Second, "the log", func() error {
		log, err := s.Log(context.Background(), "shop", ep.ID, 0)
		if err == nil && len(log) != 5 {
			err = fmt.Errorf("%d entries, want the last 5", len(log))
		}
		return err
	})

	slow := blocked(t)
	slowEP, _ := create(t, s, "shop", slow.URL())
	publishN(t, eng, "shop", "more", 8)
	hubtest.Until(t, 10*time.Second, "deliveries waiting for the slow endpoint", func() bool {
		n, _ := s.Pending(context.Background(), "shop", slowEP.ID)
		return n == 8
	})
	for _, id := range []string{ep.ID, slowEP.ID} {
		if err := s.Delete(context.Background(), "shop", id); err != nil {
			t.Fatal(err)
		}
	}
	info, err := s.tasks.Info(context.Background())
	if err != nil || info.State.Msgs != 0 {
		t.Errorf("deliveries left after deleting: %v, %v", info.State.Msgs, err)
	}
	logs, err := s.logs.Info(context.Background())
	if err != nil || logs.State.Msgs != 0 {
		t.Errorf("log entries left after deleting: %v, %v", logs.State.Msgs, err)
	}
	if _, err := s.js.Consumer(context.Background(), tasksStream, slowEP.ID); err == nil {
		t.Error("the deleted endpoint's consumer is still there")
	}
	_, err = s.Get(context.Background(), "shop", ep.ID)
	errorCode(t, err, CodeNotFound)
	errorCode(t, s.Delete(context.Background(), "shop", ep.ID), CodeNotFound)
	hubtest.Until(t, 10*time.Second, "the workers stopped", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.workers) == 0
	})
}

func TestConfig(t *testing.T) {
	eng := startEngine(t)
	if _, err := New(Config{}); err == nil {
		t.Error("New without an engine")
	}
	for _, c := range []Config{
		{Engine: eng, MaxInFlight: -1},
		{Engine: eng, MaxInFlight: 5000},
		{Engine: eng, BackoffBase: time.Hour, BackoffMax: time.Minute},
		{Engine: eng, RetryWindow: -time.Second},
		{Engine: eng, Source: Source{Map: testMap}},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
	reg := prometheus.NewRegistry()
	if _, err := New(Config{Engine: eng, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Engine: eng, Registerer: reg}); err == nil {
		t.Error("two services registered their metrics in one registry")
	}
	nets, err := ParsePrefixes("10.0.0.0/8, 127.0.0.1,::1,[fd00::1],::ffff:10.0.0.0/104")
	if err != nil || len(nets) != 5 || nets[1].String() != "127.0.0.1/32" || nets[4].String() != "10.0.0.0/8" {
		t.Errorf("ParsePrefixes: %v, %v", nets, err)
	}
	if _, err := ParsePrefixes("10.0.0.0/33"); err == nil {
		t.Error("ParsePrefixes accepted a bad network")
	}
	if h := ParseHosts(" a.lan, ,10.0.0.7 "); len(h) != 2 || h[0] != "a.lan" || h[1] != "10.0.0.7" {
		t.Errorf("ParseHosts: %q", h)
	}
}

// Changes to one store's endpoints from many writers at once are all kept
// (compare-and-set, again on conflict): none is lost.
func TestStoreUpdatesAreAtomic(t *testing.T) {
	eng := startEngine(t)
	s := startService(t, testConfig(eng))
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			_, err := s.updateStore(context.Background(), "shop", func(sr *storeRecord) error {
				sr.Endpoints = append(sr.Endpoints, endpointRecord{ID: fmt.Sprintf("ep_%024d", i), Secret: newSecret()})
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	sr, _, err := s.readStore(context.Background(), "shop")
	if err != nil || len(sr.Endpoints) != 20 {
		t.Fatalf("20 concurrent additions left %d endpoints (%v)", len(sr.Endpoints), err)
	}
}
