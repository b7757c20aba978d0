package api_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/caps-hub/caps/internal/api"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/internal/webhook"
	"github.com/caps-hub/caps/protocol"
)

// receiver is a shop's webhook endpoint: it verifies every request's
// signature with the Standard Webhooks library and records what it got.
type receiver struct {
	t   *testing.T
	srv *httptest.Server
	wh  *standardwebhooks.Webhook
	// fail answers the next fail requests 500 (after recording them: the
	// retries must carry the same webhook-id); down drops connections
	// without an answer; delay answers late.
	fail  atomic.Int32
	down  atomic.Bool
	delay atomic.Int64

	mu       sync.Mutex
	byID     map[string][]delivery // webhook-id → every request carrying it
	acked    map[string]bool       // webhook-ids answered 2xx
	requests int
	bad      []string
}

type delivery struct {
	Type      string        `json:"type"`
	Timestamp string        `json:"timestamp"`
	Data      parcel.Record `json:"data"`
	body      string
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{t: t, byID: map[string][]delivery{}, acked: map[string]bool{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	if r.down.Load() {
		panic(http.ErrAbortHandler) // the connection is dropped: a receiver that is down
	}
	// The body is read first: only then does the server notice that the
	// client gave up (the request's context ends).
	body, _ := io.ReadAll(req.Body)
	if d := r.delay.Load(); d > 0 {
		select {
		case <-time.After(time.Duration(d)):
		case <-req.Context().Done():
			return
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests++
	if r.wh == nil {
		r.bad = append(r.bad, "a request before the secret was known")
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	if err := r.wh.Verify(body, req.Header); err != nil {
		r.bad = append(r.bad, fmt.Sprintf("signature: %v", err))
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var d delivery
	if err := json.Unmarshal(body, &d); err != nil {
		r.bad = append(r.bad, fmt.Sprintf("body %s: %v", body, err))
	}
	d.body = string(body)
	id := req.Header.Get("webhook-id")
	r.byID[id] = append(r.byID[id], d)
	if r.fail.Add(-1) >= 0 {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	r.acked[id] = true
	w.WriteHeader(http.StatusNoContent)
}

func (r *receiver) setSecret(secret string) {
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	r.wh = wh
	r.mu.Unlock()
}

// events returns, per order, the event types received and answered 2xx
// (once per webhook-id, in the order of their timestamps), and checks that
// repeats of an id are the same event.
func (r *receiver) events() map[string][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.bad {
		r.t.Errorf("receiver: %s", b)
	}
	r.bad = nil
	type ev struct {
		at, typ string
	}
	per := map[string][]ev{}
	for id, ds := range r.byID {
		for _, d := range ds[1:] {
			if d.body != ds[0].body {
				r.t.Errorf("webhook-id %s carried two different events:\n%s\n%s", id, ds[0].body, d.body)
			}
		}
		if ds[0].Data.EventID != id {
			r.t.Errorf("webhook-id %s is not the event's id %s", id, ds[0].Data.EventID)
		}
		if !r.acked[id] {
			continue
		}
		per[ds[0].Data.OrderID] = append(per[ds[0].Data.OrderID], ev{ds[0].Data.Time.Format(time.RFC3339Nano), ds[0].Type})
	}
	out := map[string][]string{}
	for o, evs := range per {
		slices.SortFunc(evs, func(a, b ev) int { return strings.Compare(a.at, b.at) })
		for _, e := range evs {
			out[o] = append(out[o], e.typ)
		}
	}
	return out
}

func (r *receiver) repeats() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, ds := range r.byID {
		n += len(ds) - 1
	}
	return n
}

// webhookTimings are test-sized: http to loopback allowed, retries within
// tens of milliseconds, a 1-second attempt timeout.
func webhookTimings() webhook.Config {
	return webhook.Config{
		AllowHTTP:      []string{"127.0.0.1"},
		AllowPrivate:   []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
		RetryWindow:    time.Minute,
		BackoffBase:    50 * time.Millisecond,
		BackoffMax:     300 * time.Millisecond,
		RequestTimeout: time.Second,
		StatsInterval:  100 * time.Millisecond,
	}
}

// register creates an endpoint over the API for who and gives its
// receiver the secret.
func (th *testHub) register(who string, r *receiver, events ...string) string {
	th.t.Helper()
	body := map[string]any{"url": r.srv.URL + "/hooks"}
	if len(events) > 0 {
		body["events"] = events
	}
	resp := th.do(http.MethodPost, "/api/v1/webhooks", who, body)
	want(th.t, "register a webhook", resp, http.StatusCreated)
	secret := resp.str("secret")
	if !strings.HasPrefix(secret, "whsec_") || resp.str("id") == "" || resp.body["enabled"] != true {
		th.t.Fatalf("registered: %s", resp.raw)
	}
	r.setSecret(secret)
	return resp.str("id")
}

var fullLifecycle = []string{"order.created", "order.assigned", "order.in_transit", "order.delivered"}

// TestWebhooksThroughTheHub: a store's endpoints are told of every change
// of its orders, signed, as Standard Webhooks: one endpoint answering 500s
// and then down for a while gets every event once it is back (the repeats
// with the same webhook-id and body), another that hangs past the attempt
// timeout delays neither it nor the other store's endpoint, which hears
// only of its own store's orders. The delivery log shows the failures.
func TestWebhooksThroughTheHub(t *testing.T) {
	th := startHub(t, hubOpts{api: api.Config{Webhooks: webhookTimings(), AddrRate: 1000, TokenRate: 1000}})
	flaky, slow, brunos := newReceiver(t), newReceiver(t), newReceiver(t)
	flakyID := th.register("rosa", flaky)
	th.register("rosa", slow, "order.delivered")
	th.register("bruno", brunos)
	flaky.fail.Store(3)
	slow.delay.Store(int64(3 * time.Second)) // past the 1 s attempt timeout

	dora := th.driver("dora")
	var rosas []string
	for i := range 3 {
		rosas = append(rosas, th.create("rosa", newOrder(fmt.Sprintf("Rosa's %d", i))).str("orderID"))
	}
	bruno := th.create("bruno", newOrder("Bruno's")).str("orderID")
	for range 4 {
		r := dora.next()
		if err := dora.report(r, parcel.EventDelivered, nil); err != nil {
			t.Fatal(err)
		}
	}
	// While the slow endpoint hangs, the others get everything.
	hubtest.Eventually(t, 20*time.Second, "every event at the flaky endpoint and bruno's", func() error {
		got := flaky.events()
		for _, id := range rosas {
			if !slices.Equal(got[id], fullLifecycle) {
				return fmt.Errorf("rosa's order %s: %v", id, got[id])
			}
		}
		if b := brunos.events(); !slices.Equal(b[bruno], fullLifecycle) || len(b) != 1 {
			return fmt.Errorf("bruno's endpoint: %v", b)
		}
		return nil
	})
	if flaky.repeats() < 3 {
		t.Errorf("%d repeats at the endpoint that answered 500 three times", flaky.repeats())
	}
	if _, ok := flaky.events()[bruno]; ok {
		t.Error("rosa's endpoint was told of bruno's order")
	}

	// Down for a while, then back: what happened meanwhile arrives.
	flaky.down.Store(true)
	cancelled := th.create("rosa", newOrder("Changed mind")).str("orderID")
	r := dora.next()
	if r.OrderID != cancelled {
		t.Fatalf("handed %s", r.OrderID)
	}
	if err := dora.report(r, parcel.EventFailed, map[string]any{"reason": "address-not-found"}); err != nil {
		t.Fatal(err)
	}
	r = dora.next()
	if err := dora.report(r, parcel.EventDelivered, nil); err != nil {
		t.Fatal(err)
	}
	hubtest.Eventually(t, 10*time.Second, "failed attempts in the delivery log", func() error {
		log := th.do(http.MethodGet, "/api/v1/webhooks/"+flakyID+"/deliveries", "rosa", nil)
		if log.status != 200 {
			return fmt.Errorf("%d %s", log.status, log.raw)
		}
		items := log.body["items"].([]any)
		if len(items) == 0 || items[0].(map[string]any)["result"] != "retry" {
			return fmt.Errorf("the latest attempt: %.300s", log.raw)
		}
		return nil
	})
	flaky.down.Store(false)
	hubtest.Eventually(t, 20*time.Second, "the events of the time it was down", func() error {
		want := []string{"order.created", "order.assigned", "order.in_transit", "order.failed", "order.created", "order.assigned", "order.in_transit", "order.delivered"}
		if got := flaky.events()[cancelled]; !slices.Equal(got, want) {
			return fmt.Errorf("got %v", got)
		}
		return nil
	})
	// The slow endpoint, filtered to deliveries, got nothing in time, and
	// has them waiting.
	ep := th.do(http.MethodGet, "/api/v1/webhooks", "rosa", nil)
	if n := len(ep.body["items"].([]any)); n != 2 {
		t.Errorf("rosa's endpoints: %s", ep.raw)
	}
	slow.delay.Store(0)
	hubtest.Eventually(t, 20*time.Second, "the slow endpoint's deliveries once it answers", func() error {
		got := slow.events()
		for _, id := range append(rosas, cancelled) {
			if !slices.Equal(got[id], []string{"order.delivered"}) {
				return fmt.Errorf("order %s: %v", id, got[id])
			}
		}
		return nil
	})
}

// TestWebhookEndpointsScoped: a store sees, changes and reads the log of
// its own endpoints only; URLs that would reach inside are refused.
func TestWebhookEndpointsScoped(t *testing.T) {
	th := startHub(t, hubOpts{api: api.Config{Webhooks: webhookTimings()}})
	rec := newReceiver(t)
	theirs := th.register("bruno", rec)
	for _, c := range []struct {
		what, method, path string
	}{
		{"get", "GET", "/api/v1/webhooks/" + theirs},
		{"delete", "DELETE", "/api/v1/webhooks/" + theirs},
		{"enable", "POST", "/api/v1/webhooks/" + theirs + "/enable"},
		{"log", "GET", "/api/v1/webhooks/" + theirs + "/deliveries"},
	} {
		want(t, "rosa: "+c.what+" bruno's endpoint", th.do(c.method, c.path, "rosa", nil), 404, protocol.CodeNotFound)
	}
	if l := th.do("GET", "/api/v1/webhooks", "rosa", nil); len(l.body["items"].([]any)) != 0 {
		t.Errorf("rosa lists %s", l.raw)
	}
	want(t, "list bruno's as rosa", th.do("GET", "/api/v1/webhooks?store=bruno", "rosa", nil), 403, protocol.CodeForbidden)
	got := th.do("GET", "/api/v1/webhooks/"+theirs, "bruno", nil)
	if got.status != 200 || got.str("secret") != "" || got.body["pending"] == nil {
		t.Errorf("bruno's own endpoint (no secret after creation, pending shown): %s", got.raw)
	}
	for _, u := range []string{"http://example.com/hook", "https://169.254.169.254/latest", "ftp://x/y", "https://user:pw@example.com/"} {
		want(t, "url "+u, th.do("POST", "/api/v1/webhooks", "rosa", map[string]any{"url": u}), 422, protocol.CodeBadRequest)
	}
	want(t, "an unknown event type", th.do("POST", "/api/v1/webhooks", "rosa", map[string]any{"url": rec.srv.URL, "events": []string{"order.lost"}}), 422, protocol.CodeBadRequest)
	want(t, "delete", th.do("DELETE", "/api/v1/webhooks/"+theirs, "bruno", nil), 204)
	want(t, "get after delete", th.do("GET", "/api/v1/webhooks/"+theirs, "bruno", nil), 404, protocol.CodeNotFound)
}

// TestFailingEndpointIsDisabledAndShownSo: an endpoint that fails for
// longer than the retry window is disabled, shown as such (enabled false,
// the reason), and can be enabled again.
func TestFailingEndpointIsDisabledAndShownSo(t *testing.T) {
	timings := webhookTimings()
	timings.RetryWindow = time.Second
	th := startHub(t, hubOpts{api: api.Config{Webhooks: timings, AddrRate: 1000, TokenRate: 1000}})
	dead := newReceiver(t)
	id := th.register("rosa", dead)
	dead.fail.Store(1 << 30)
	// An event's deliveries give up once the event is older than the window,
	// and the endpoint is disabled at a failure past the window: the shop
	// keeps having orders, so failures keep coming.
	hubtest.Eventually(t, 20*time.Second, "the endpoint disabled", func() error {
		ep := th.do("GET", "/api/v1/webhooks/"+id, "rosa", nil)
		if ep.body["enabled"] != false || !strings.Contains(ep.str("disabledReason"), "retry window") || ep.str("disabledAt") == "" {
			th.create("rosa", newOrder("Nobody listens"))
			return fmt.Errorf("%s", ep.raw)
		}
		return nil
	})
	again := th.do("POST", "/api/v1/webhooks/"+id+"/enable", "rosa", nil)
	if again.status != 200 || again.body["enabled"] != true {
		t.Errorf("enable: %s", again.raw)
	}
}
