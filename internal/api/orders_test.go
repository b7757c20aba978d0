package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/internal/api"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// TestIdempotentCreateUnderConcurrentRetries: a shop's backend retrying one
// POST with its Idempotency-Key, all the retries racing, makes one order;
// every retry answers with it, exactly one of them 201. The key reused for
// another order is refused and changes nothing; the same key of another
// store is another order.
func TestIdempotentCreateUnderConcurrentRetries(t *testing.T) {
	th := startHub(t, hubOpts{})
	const n = 12
	var wg sync.WaitGroup
	results := make([]response, n)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			results[i] = th.do(http.MethodPost, "/api/v1/orders", "rosa", newOrder("Ada"), "Idempotency-Key", "checkout-42")
		})
	}
	close(start)
	wg.Wait()
	created, id := 0, results[0].str("orderID")
	for _, r := range results {
		switch r.status {
		case http.StatusCreated:
			created++
		case http.StatusOK:
			if r.header.Get("Idempotent-Replayed") != "true" {
				t.Errorf("a replay without Idempotent-Replayed: true: %v", r.header)
			}
		default:
			t.Fatalf("a retry answered %d: %s", r.status, r.raw)
		}
		if r.str("orderID") != id || id == "" || r.str("trackingURL") != results[0].str("trackingURL") {
			t.Fatalf("retries answered different orders: %s vs %s", r.raw, results[0].raw)
		}
	}
	if created != 1 {
		t.Errorf("%d retries answered 201, want exactly 1", created)
	}
	list := th.do(http.MethodGet, "/api/v1/orders", "rosa", nil)
	want(t, "list", list, http.StatusOK)
	if items := list.body["items"].([]any); len(items) != 1 {
		t.Fatalf("%d orders stored, want 1: %s", len(items), list.raw)
	}

	mismatch := th.do(http.MethodPost, "/api/v1/orders", "rosa", newOrder("Someone else"), "Idempotency-Key", "checkout-42")
	want(t, "the key reused with another order", mismatch, http.StatusUnprocessableEntity, protocol.CodeRejected, parcel.RuleIdempotencyMismatch)
	if got := th.do(http.MethodGet, "/api/v1/orders/"+id, "rosa", nil); got.str("customer") != "Ada" {
		t.Errorf("the order changed: %s", got.raw)
	}
	other := th.create("bruno", newOrder("Ada"), "Idempotency-Key", "checkout-42")
	if other.str("orderID") == id || other.str("store") != "bruno" {
		t.Errorf("another store's same key: %s", other.raw)
	}
	long := th.do(http.MethodPost, "/api/v1/orders", "rosa", newOrder("Ada"), "Idempotency-Key", strings.Repeat("k", 300))
	want(t, "a 300-byte key", long, http.StatusUnprocessableEntity, protocol.CodeBadRequest)
}

// TestHTTPOrderIsTheTCPOrder: an order created over HTTP is handed to a TCP
// driver and told to its TCP vendor; its delivery shows in the API's
// timeline. Delivered: created → assigned → in-transit → delivered.
func TestHTTPOrderIsTheTCPOrder(t *testing.T) {
	th := startHub(t, hubOpts{})
	vendor := th.dial("rosa")
	heard := make(chan parcel.Record, 16)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := vendor.Subscribe(ctx, parcel.StorePattern("rosa"), func(m *client.Msg) {
		var r parcel.Record
		_ = json.Unmarshal(m.Payload, &r)
		heard <- r
	}); err != nil {
		t.Fatal(err)
	}
	dora := th.driver("dora")
	o := th.create("rosa", map[string]any{"customer": "Ada", "address": "12 Analytical Row", "phone": "+44 20 7946 0000", "note": "ring twice"})
	id := o.str("orderID")
	// The answer shows the order as it is when read back: dora, idle in
	// the queue, may have been handed it already.
	if st := o.str("status"); (st != "created" && st != "assigned") || o.str("store") != "rosa" || o.header.Get("Location") != "/api/v1/orders/"+id ||
		!strings.HasPrefix(o.str("trackingURL"), th.base+api.TrackPath) || strings.Contains(o.str("trackingURL"), id) || o.str("pin") != "" {
		t.Fatalf("created: %s %v", o.raw, o.header)
	}
	r := dora.next()
	if r.OrderID != id || r.Note != "ring twice" {
		t.Fatalf("the driver was handed %+v", r)
	}
	if err := dora.report(r, parcel.EventDelivered, nil); err != nil {
		t.Fatal(err)
	}
	got := th.do(http.MethodGet, "/api/v1/orders/"+id, "rosa", nil)
	want(t, "get", got, http.StatusOK)
	if s := statuses(got); s != "created/rosa assigned/dora in-transit/dora delivered/dora" || got.str("driver") != "dora" {
		t.Errorf("timeline %q: %s", s, got.raw)
	}
	seen := map[parcel.Status]bool{}
	hubtest.Until(t, 10*time.Second, "the vendor hearing of the delivery", func() bool {
		for {
			select {
			case r := <-heard:
				if r.OrderID == id {
					seen[r.Status] = true
				}
			default:
				return seen[parcel.StatusCreated] && seen[parcel.StatusDelivered]
			}
		}
	})
}

// TestLifecyclePathsOverHTTP: the paths an order can take, each seen
// through the API: failed → offered again → delivered; failed on every
// attempt → returned; PIN required: no PIN and a wrong one refused
// (nothing changed), the attempt locked after MaxPINTries, the right one
// accepted on the next attempt.
func TestLifecyclePathsOverHTTP(t *testing.T) {
	th := startHub(t, hubOpts{orders: parcel.Options{MaxAttempts: 2, MaxPINTries: 2}})
	dora := th.driver("dora")

	// failed → retried → delivered
	id := th.create("rosa", newOrder("Retry")).str("orderID")
	r := dora.next()
	if err := dora.report(r, parcel.EventFailed, map[string]any{"reason": "recipient-absent"}); err != nil {
		t.Fatal(err)
	}
	r = dora.next()
	if r.OrderID != id || r.Attempt != 2 {
		t.Fatalf("second attempt: %+v", r)
	}
	if err := dora.report(r, parcel.EventDelivered, nil); err != nil {
		t.Fatal(err)
	}
	got := th.do(http.MethodGet, "/api/v1/orders/"+id, "rosa", nil)
	if s := statuses(got); s != "created/rosa assigned/dora in-transit/dora failed/dora created/test assigned/dora in-transit/dora delivered/dora" ||
		got.body["attempt"] != float64(2) {
		t.Errorf("failed then delivered: %q %s", s, got.raw)
	}

	// failed × MaxAttempts → returned
	id = th.create("rosa", newOrder("Never home")).str("orderID")
	for attempt := 1; attempt <= 2; attempt++ {
		r = dora.next()
		if err := dora.report(r, parcel.EventFailed, map[string]any{"reason": "other", "detail": "gate locked"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := dora.report(r, parcel.EventReturned, nil); err != nil {
		t.Fatal(err)
	}
	got = th.do(http.MethodGet, "/api/v1/orders/"+id, "rosa", nil)
	if got.str("status") != "returned" || !strings.HasSuffix(statuses(got), "failed/dora returned/dora") {
		t.Errorf("returned: %s", got.raw)
	}
	if list := th.do(http.MethodGet, "/api/v1/orders?status=returned", "rosa", nil); len(list.body["items"].([]any)) != 1 {
		t.Errorf("returned orders: %s", list.raw)
	}

	// PIN required
	o := th.create("rosa", map[string]any{"customer": "Careful", "address": "1 Vault Lane", "requirePIN": true})
	id, pin := o.str("orderID"), o.str("pin")
	if len(pin) != 6 || o.body["requirePIN"] != true {
		t.Fatalf("an order requiring a PIN: %s", o.raw)
	}
	wrong := fmt.Sprintf("%06d", (atoi(pin)+1)%1_000_000)
	r = dora.next()
	for _, c := range []struct {
		what, pin, rule string
	}{
		{"no PIN", "", parcel.RulePINRequired},
		{"a wrong PIN", wrong, parcel.RuleWrongPIN},
		{"a second wrong PIN", wrong, parcel.RuleWrongPIN},
		{"the right PIN past the tries", pin, parcel.RulePINLocked},
	} {
		err := dora.report(r, parcel.EventDelivered, map[string]any{"pin": c.pin})
		var pe *protocol.Error
		if !errors.As(err, &pe) || pe.Code != protocol.CodeRejected || !strings.HasPrefix(pe.Text, c.rule) {
			t.Fatalf("%s: want %s, got %v", c.what, c.rule, err)
		}
		if got := th.do(http.MethodGet, "/api/v1/orders/"+id, "rosa", nil); got.str("status") != "in-transit" {
			t.Fatalf("%s changed the order: %s", c.what, got.raw)
		}
	}
	if err := dora.report(r, parcel.EventFailed, map[string]any{"reason": "refused"}); err != nil {
		t.Fatal(err)
	}
	r = dora.next()
	if err := dora.report(r, parcel.EventDelivered, map[string]any{"pin": pin}); err != nil {
		t.Fatalf("the right PIN on the next attempt: %v", err)
	}
	if got := th.do(http.MethodGet, "/api/v1/orders/"+id, "rosa", nil); got.str("status") != "delivered" {
		t.Errorf("delivered with the PIN: %s", got.raw)
	}
}

func atoi(s string) int {
	n := 0
	fmt.Sscan(s, &n)
	return n
}

// TestCancelOverHTTP: an order not yet in transit is cancelled (and no
// driver is handed it); cancelling again is harmless; once in transit it
// cannot be (409 not-cancellable, nothing changed).
func TestCancelOverHTTP(t *testing.T) {
	th := startHub(t, hubOpts{})
	id := th.create("rosa", newOrder("Changed mind")).str("orderID")
	c := th.do(http.MethodPost, "/api/v1/orders/"+id+"/cancel", "rosa", nil)
	want(t, "cancel", c, http.StatusOK)
	if c.str("status") != "cancelled" || statuses(c) != "created/rosa cancelled/rosa" {
		t.Fatalf("cancelled: %s", c.raw)
	}
	want(t, "cancel again", th.do(http.MethodPost, "/api/v1/orders/"+id+"/cancel", "rosa", nil), http.StatusOK)

	dora := th.driver("dora")
	id2 := th.create("rosa", newOrder("Too late")).str("orderID")
	r := dora.next()
	if r.OrderID != id2 {
		t.Fatalf("the driver was handed %s, want %s (the cancelled order is handed to no one)", r.OrderID, id2)
	}
	late := th.do(http.MethodPost, "/api/v1/orders/"+id2+"/cancel", "rosa", nil)
	want(t, "cancel in transit", late, http.StatusConflict, protocol.CodeRejected, parcel.RuleNotCancellable)
	if got := th.do(http.MethodGet, "/api/v1/orders/"+id2, "rosa", nil); got.str("status") != "in-transit" {
		t.Errorf("a refused cancel changed the order: %s", got.raw)
	}
}

// TestStoreScoping: store rosa's token sees nothing of store bruno's
// orders (not found, as if they did not exist), may not act for bruno, and
// other roles and callers without a valid token are refused.
func TestStoreScoping(t *testing.T) {
	th := startHub(t, hubOpts{})
	theirs := th.create("bruno", newOrder("Bruno's customer")).str("orderID")
	mine := th.create("rosa", newOrder("Rosa's customer")).str("orderID")

	for _, c := range []struct {
		what           string
		method, path   string
		who            string
		body           any
		status         int
		code           string
		mustNotContain string
	}{
		{"get another store's order", "GET", "/api/v1/orders/" + theirs, "rosa", nil, 404, protocol.CodeNotFound, "Bruno"},
		{"cancel another store's order", "POST", "/api/v1/orders/" + theirs + "/cancel", "rosa", nil, 404, protocol.CodeNotFound, "Bruno"},
		{"get an order that does not exist", "GET", "/api/v1/orders/00000000-0000-4000-8000-000000000000", "rosa", nil, 404, protocol.CodeNotFound, ""},
		{"get a malformed id", "GET", "/api/v1/orders/..%2f..%2fetc", "rosa", nil, 404, protocol.CodeNotFound, ""},
		{"list another store's orders", "GET", "/api/v1/orders?store=bruno", "rosa", nil, 403, protocol.CodeForbidden, "Bruno"},
		{"create for another store", "POST", "/api/v1/orders", "rosa", map[string]any{"store": "bruno", "customer": "x", "address": "y"}, 403, protocol.CodeForbidden, ""},
		{"a driver's token", "GET", "/api/v1/orders", "dora", nil, 403, protocol.CodeForbidden, ""},
		{"no token", "GET", "/api/v1/orders", "", nil, 401, protocol.CodeAuth, ""},
		{"a wrong token", "GET", "/api/v1/orders", "caps_notatoken", nil, 401, protocol.CodeAuth, ""},
		{"an admin listing without a store", "GET", "/api/v1/orders", "ops", nil, 400, protocol.CodeBadRequest, ""},
	} {
		r := th.do(c.method, c.path, c.who, c.body)
		want(t, c.what, r, c.status, c.code)
		if c.mustNotContain != "" && strings.Contains(string(r.raw), c.mustNotContain) {
			t.Errorf("%s: the answer tells of the other store: %s", c.what, r.raw)
		}
	}
	if got := th.do("GET", "/api/v1/orders/"+theirs, "bruno", nil); got.str("status") != "created" {
		t.Errorf("bruno's order was changed by rosa's attempts: %s", got.raw)
	}
	list := th.do("GET", "/api/v1/orders", "rosa", nil)
	if items := list.body["items"].([]any); len(items) != 1 || items[0].(map[string]any)["orderID"] != mine {
		t.Errorf("rosa's list: %s", list.raw)
	}
	// An admin acts for any store it names.
	if got := th.do("GET", "/api/v1/orders?store=bruno", "ops", nil); len(got.body["items"].([]any)) != 1 {
		t.Errorf("admin's list of bruno's: %s", got.raw)
	}
	want(t, "admin gets any order", th.do("GET", "/api/v1/orders/"+theirs, "ops", nil), 200)
}

// TestListFilterAndCursor: a store's orders, newest first, a page at a
// time, filtered by status; a cursor that is not one the API gave is a 400.
func TestListFilterAndCursor(t *testing.T) {
	th := startHub(t, hubOpts{})
	var ids []string
	for i := range 5 {
		ids = append(ids, th.create("rosa", newOrder(fmt.Sprintf("Customer %d", i))).str("orderID"))
	}
	for _, id := range ids[:2] {
		want(t, "cancel", th.do("POST", "/api/v1/orders/"+id+"/cancel", "rosa", nil), 200)
	}
	var got []string
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("the cursor does not end")
		}
		q := "/api/v1/orders?limit=2"
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		r := th.do("GET", q, "rosa", nil)
		want(t, "page", r, 200)
		for _, it := range r.body["items"].([]any) {
			got = append(got, it.(map[string]any)["orderID"].(string))
		}
		if cursor = r.str("nextCursor"); cursor == "" {
			break
		}
	}
	wantOrder := []string{ids[4], ids[3], ids[2], ids[1], ids[0]}
	if strings.Join(got, ",") != strings.Join(wantOrder, ",") {
		t.Errorf("pages gave %v, want newest first %v", got, wantOrder)
	}
	cancelled := th.do("GET", "/api/v1/orders?status=cancelled", "rosa", nil)
	if items := cancelled.body["items"].([]any); len(items) != 2 {
		t.Errorf("cancelled: %s", cancelled.raw)
	}
	both := th.do("GET", "/api/v1/orders?status=cancelled&status=created", "rosa", nil)
	if items := both.body["items"].([]any); len(items) != 5 {
		t.Errorf("cancelled or created: %s", both.raw)
	}
	for _, bad := range []string{"bm90IG1pbmU", "!!!", strings.Repeat("A", 300)} {
		r := th.do("GET", "/api/v1/orders?cursor="+url.QueryEscape(bad), "rosa", nil)
		if r.status != 400 && r.status != 422 {
			t.Errorf("cursor %q: %d %s", bad, r.status, r.raw)
		}
	}
	want(t, "an unknown status", th.do("GET", "/api/v1/orders?status=lost", "rosa", nil), 422, protocol.CodeBadRequest)
	want(t, "an unknown parameter", th.do("GET", "/api/v1/orders?sort=desc", "rosa", nil), 422, protocol.CodeBadRequest)
	want(t, "a limit too large", th.do("GET", "/api/v1/orders?limit=100000", "rosa", nil), 422, protocol.CodeBadRequest)
}

// TestHostileRequests: what a hostile client sends is refused with a
// problem and a code, and changes nothing.
func TestHostileRequests(t *testing.T) {
	th := startHub(t, hubOpts{})
	huge := []byte(`{"customer":"` + strings.Repeat("x", 1<<20) + `","address":"y"}`)
	want(t, "a 1 MiB body", th.do("POST", "/api/v1/orders", "rosa", huge), 413, protocol.CodeTooLarge)
	want(t, "an unknown field", th.do("POST", "/api/v1/orders", "rosa", map[string]any{"customer": "x", "address": "y", "admin": true}), 422, protocol.CodeBadRequest)
	want(t, "a missing field", th.do("POST", "/api/v1/orders", "rosa", map[string]any{"customer": "x"}), 422, protocol.CodeBadRequest)
	want(t, "a field too long", th.do("POST", "/api/v1/orders", "rosa", map[string]any{"customer": strings.Repeat("x", 201), "address": "y"}), 422, protocol.CodeBadRequest)
	want(t, "control characters", th.do("POST", "/api/v1/orders", "rosa", map[string]any{"customer": "x\u0000y", "address": "y"}), 422, protocol.CodeRejected, parcel.RuleBadField)
	want(t, "not JSON", th.do("POST", "/api/v1/orders", "rosa", []byte(`{"customer":`)), 400, protocol.CodeBadRequest)
	want(t, "an unknown path", th.do("GET", "/api/v1/admin", "rosa", nil), 404, protocol.CodeNotFound)
	if r := th.do("GET", "/api/v1/orders", "rosa", nil, "X-Flood", strings.Repeat("h", 64<<10)); r.status != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a 64 KiB header: %d", r.status)
	}
	if list := th.do("GET", "/api/v1/orders", "rosa", nil); len(list.body["items"].([]any)) != 0 {
		t.Errorf("refused requests stored orders: %s", list.raw)
	}

	spec := th.do("GET", "/api/v1/openapi.json", "", nil)
	want(t, "openapi.json", spec, 200)
	paths, _ := spec.body["paths"].(map[string]any)
	if spec.body["openapi"] != "3.1.0" || paths["/orders"] == nil || paths["/orders/{orderID}/cancel"] == nil {
		t.Errorf("the OpenAPI document: %.300s", spec.raw)
	}
}

// TestRateLimits: past its rate, an address (or a token) is answered 429
// with Retry-After, before its token is even checked.
func TestRateLimits(t *testing.T) {
	th := startHub(t, hubOpts{api: api.Config{AddrRate: 1, AddrBurst: 3}})
	var last response
	for range 4 {
		last = th.do("GET", "/api/v1/orders", "caps_wrong", nil)
	}
	want(t, "the fourth request at once", last, http.StatusTooManyRequests, protocol.CodeRateLimited)
	if last.header.Get("Retry-After") == "" {
		t.Errorf("429 without Retry-After: %v", last.header)
	}

	tok := startHub(t, hubOpts{api: api.Config{TokenRate: 1, TokenBurst: 2}})
	for range 2 {
		want(t, "within the token's burst", tok.do("GET", "/api/v1/orders", "rosa", nil), 200)
	}
	want(t, "past the token's burst", tok.do("GET", "/api/v1/orders", "rosa", nil), http.StatusTooManyRequests, protocol.CodeRateLimited)
	want(t, "another token", tok.do("GET", "/api/v1/orders", "bruno", nil), 200)
}

// TestOpenHub: on a hub without tokens, requests name their store.
func TestOpenHub(t *testing.T) {
	th := startHub(t, hubOpts{open: true})
	want(t, "no store", th.do("POST", "/api/v1/orders", "", newOrder("x")), 400, protocol.CodeBadRequest)
	want(t, "a bad store", th.do("POST", "/api/v1/orders", "", map[string]any{"store": "a.b", "customer": "x", "address": "y"}), 400, protocol.CodeBadRequest)
	o := th.create("", map[string]any{"store": "corner", "customer": "x", "address": "y"})
	id := o.str("orderID")
	want(t, "get without the store", th.do("GET", "/api/v1/orders/"+id, "", nil), 400, protocol.CodeBadRequest)
	want(t, "get as another store", th.do("GET", "/api/v1/orders/"+id+"?store=other", "", nil), 404, protocol.CodeNotFound)
	want(t, "get", th.do("GET", "/api/v1/orders/"+id+"?store=corner", "", nil), 200)
	if l := th.do("GET", "/api/v1/orders?store=corner", "", nil); len(l.body["items"].([]any)) != 1 {
		t.Errorf("list: %s", l.raw)
	}
}
