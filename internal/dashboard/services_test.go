package dashboard_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/internal/dashboard"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
	"github.com/google/uuid"
)

// TestOrdersFollowTheStream runs vendors of two stores and a driver, and
// checks that an admin sees every order reach delivered (snapshot, then
// changes since a cursor), a vendor sees its own store's only, and a driver
// none.
func TestOrdersFollowTheStream(t *testing.T) {
	th := startHub(t, nil)
	admin := th.dial(t, protocol.RoleAdmin, "boss", "")
	// Before any order: an empty snapshot with a cursor.
	first, err := request[dashboard.OrdersReply](t, admin, dashboard.ServiceOrders, map[string]any{})
	if err != nil {
		t.Fatal(err)
	}
	if !first.Reset || len(first.Orders) != 0 || first.Cursor == "" {
		t.Fatalf("first answer: %+v, want an empty reset with a cursor", first)
	}

	f := newFleet(t, th)
	f.vendor("north", 3, 20*time.Millisecond, "")
	f.vendor("south", 2, 20*time.Millisecond, "")
	f.driver("dana", 10*time.Millisecond, 10*time.Millisecond, "")

	// Follow the changes from the first cursor, as the page does.
	seen, cursor := followOrders(t, admin, first.Cursor, 5)
	t.Run("every order's timeline, without message ids", func(t *testing.T) {
		for _, o := range seen {
			if len(o.Timeline) != 4 || o.Driver != "dana" {
				t.Errorf("order %s: driver %q timeline %+v, want dana and pickup, assigned, in-transit, delivered", o.OrderID, o.Driver, o.Timeline)
			}
			if b, _ := json.Marshal(o); strings.Contains(string(b), `"key"`) {
				t.Errorf("order %s: message ids shown to the page: %s", o.OrderID, b)
			}
		}
	})
	t.Run("cursors", func(t *testing.T) {
		// Nothing changed since: an empty answer.
		r, err := request[dashboard.OrdersReply](t, admin, dashboard.ServiceOrders, map[string]any{"cursor": cursor})
		if err != nil || r.Reset || len(r.Orders) != 0 {
			t.Fatalf("no change since %s: %+v, %v", cursor, r, err)
		}
		// A cursor from another hub (or run) gets a whole snapshot.
		r, err = request[dashboard.OrdersReply](t, admin, dashboard.ServiceOrders, map[string]any{"cursor": "elsewhere:3"})
		if err != nil || !r.Reset || len(r.Orders) != 5 || !r.Loaded {
			t.Fatalf("foreign cursor: %+v, %v; want a loaded reset of 5", r, err)
		}
	})
	t.Run("a vendor sees its own store's orders, a driver none", func(t *testing.T) {
		vendor := th.dial(t, protocol.RoleVendor, "north", "")
		r, err := request[dashboard.OrdersReply](t, vendor, dashboard.ServiceOrders, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Orders) != 3 {
			t.Errorf("vendor north sees %d orders, want its 3", len(r.Orders))
		}
		for _, o := range r.Orders {
			if o.Store != "north" {
				t.Errorf("vendor north sees order %s of store %s", o.OrderID, o.Store)
			}
		}
		driver := th.dial(t, protocol.RoleDriver, "eve", "")
		r, err = request[dashboard.OrdersReply](t, driver, dashboard.ServiceOrders, nil)
		if err != nil || len(r.Orders) != 0 {
			t.Errorf("driver sees %d orders (%v), want none", len(r.Orders), err)
		}
	})
	for _, tc := range []struct {
		role, name      string
		orders          string
		people, traffic bool
	}{
		{protocol.RoleAdmin, "boss", "all", true, true},
		{protocol.RoleLogger, "log", "all", true, true},
		{protocol.RoleVendor, "north", "store", false, false},
		{protocol.RoleDriver, "eve", "none", false, false},
		{protocol.RoleChat, "carol", "none", false, false},
	} {
		t.Run("what a "+tc.role+" may see", func(t *testing.T) {
			c := th.dial(t, tc.role, tc.name, "")
			h, err := request[dashboard.Hello](t, c, dashboard.ServiceHello, nil)
			if err != nil {
				t.Fatal(err)
			}
			if h.Orders != tc.orders || h.People != tc.people || h.Traffic != tc.traffic || !h.Open || h.Role != tc.role {
				t.Errorf("%s %s: hello %+v, want orders %s people %v traffic %v", tc.role, tc.name, h, tc.orders, tc.people, tc.traffic)
			}
			_, err = request[dashboard.PeopleReply](t, c, dashboard.ServicePeople, nil)
			if tc.people != (err == nil) {
				t.Errorf("%s: people service: %v", tc.role, err)
			}
			var pe *protocol.Error
			if err != nil && (!errors.As(err, &pe) || pe.Code != protocol.CodeForbidden) {
				t.Errorf("%s: people refused with %v, want forbidden", tc.role, err)
			}
		})
	}
}

// followOrders asks for the orders changed since cursor, as the page does,
// until it has seen n orders, all delivered; it returns them (the latest
// revision of each) and the last cursor.
func followOrders(t *testing.T, c *client.Conn, cursor string, n int) (map[string]*dashboard.OrderView, string) {
	t.Helper()
	seen := map[string]*dashboard.OrderView{}
	hubtest.Eventually(t, wait, fmt.Sprintf("admin sees %d delivered orders", n), func() error {
		r, err := request[dashboard.OrdersReply](t, c, dashboard.ServiceOrders, map[string]any{"cursor": cursor})
		if err != nil {
			return err
		}
		if r.Reset {
			return fmt.Errorf("changes since %s came as a reset", cursor)
		}
		cursor = r.Cursor
		for _, o := range r.Orders {
			if old := seen[o.OrderID]; old == nil || old.Rev < o.Rev {
				seen[o.OrderID] = o
			}
		}
		delivered := 0
		for _, o := range seen {
			if o.Status == parcel.StatusDelivered {
				delivered++
			}
		}
		if delivered != n || len(seen) != n {
			return fmt.Errorf("%d orders seen, %d delivered", len(seen), delivered)
		}
		return nil
	})
	return seen, cursor
}

// TestPeopleAndLoads checks the People panel's data: every client with its
// role and address, and a driver's in-flight orders.
func TestPeopleAndLoads(t *testing.T) {
	th := startHub(t, nil)
	admin := th.dial(t, protocol.RoleAdmin, "boss", "")
	f := newFleet(t, th)
	// A slow driver holds orders long enough to be seen holding them.
	f.driver("slowpoke", time.Hour, 0, "")
	f.vendor("east", 2, 10*time.Millisecond, "")
	hubtest.Eventually(t, wait, "driver slowpoke holds 2 orders", func() error {
		p, err := request[dashboard.PeopleReply](t, admin, dashboard.ServicePeople, nil)
		if err != nil {
			return err
		}
		roles := map[string]string{}
		for _, x := range p.People {
			roles[x.Name] = x.Role
			if x.Remote == "" || x.Since.IsZero() || x.Hub != "test" {
				return fmt.Errorf("person %+v lacks an address, a hub or a time", x)
			}
			if x.Name == "slowpoke" {
				if x.Load == nil || *x.Load != 2 {
					return fmt.Errorf("slowpoke's load is %v", x.Load)
				}
			}
		}
		if roles["boss"] != "admin" || roles["slowpoke"] != "driver" || roles["east"] != "vendor" {
			return fmt.Errorf("people %v", roles)
		}
		if len(p.Hubs) != 1 || p.Loads["slowpoke"] != 2 {
			return fmt.Errorf("hubs %v loads %v", p.Hubs, p.Loads)
		}
		return nil
	})
}

// TestTraffic checks that the traffic service has points with rates and
// latencies once messages flow, and counts errors.
func TestTraffic(t *testing.T) {
	th := startHub(t, nil)
	admin := th.dial(t, protocol.RoleAdmin, "boss", "")
	f := newFleet(t, th)
	f.vendor("west", 0, 20*time.Millisecond, "")
	f.driver("dana", 0, 0, "")
	// A refused publish is an error frame.
	vendor := th.dial(t, protocol.RoleVendor, "west2", "")
	if _, err := vendor.Publish(t.Context(), parcel.Topic("other", uuid.NewString(), parcel.EventPickup, ""), []byte(`{}`)); err == nil {
		t.Fatal("a vendor posted for another store")
	}
	hubtest.Eventually(t, wait, "traffic shows messages, latency and the error", func() error {
		r, err := request[dashboard.TrafficReply](t, admin, dashboard.ServiceTraffic, map[string]any{"since": 0})
		if err != nil {
			return err
		}
		if r.Hub != "test" || r.Every != 200 || r.Latency == "" {
			return fmt.Errorf("reply %+v", r)
		}
		var pub, dlv float64
		lat := false
		for _, s := range r.Samples {
			pub, dlv = max(pub, s.Published), max(dlv, s.Delivered)
			lat = lat || (s.P50 != nil && s.P99 != nil && *s.P50 > 0 && *s.P99 >= *s.P50)
		}
		if pub == 0 || dlv == 0 || !lat {
			return fmt.Errorf("%d samples: max published/s %v, delivered/s %v, latency %v", len(r.Samples), pub, dlv, lat)
		}
		if r.Totals.Errors[protocol.CodeForbidden] < 1 || r.Totals.Conns["vendor"] < 2 {
			return fmt.Errorf("totals %+v", r.Totals)
		}
		// Asking since the last point returns nothing older.
		last := r.Samples[len(r.Samples)-1].T
		r2, err := request[dashboard.TrafficReply](t, admin, dashboard.ServiceTraffic, map[string]any{"since": last})
		if err != nil {
			return err
		}
		for _, s := range r2.Samples {
			if s.T <= last {
				return fmt.Errorf("asked since %d, got a point of %d", last, s.T)
			}
		}
		return nil
	})
}

// TestPageServed checks the HTTP side: the page at /, its files under
// /dashboard/, the security headers, revalidation, and 404s.
func TestPageServed(t *testing.T) {
	th := startHub(t, nil)
	get := func(path string, hdr map[string]string) (*http.Response, string) {
		req, _ := http.NewRequest("GET", strings.TrimSuffix(th.url(), "/")+path, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	resp, body := get("/", nil)
	if resp.StatusCode != 200 || !strings.Contains(body, `<script type="module" src="dashboard/app.js">`) {
		t.Fatalf("GET /: %d %q", resp.StatusCode, body)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("GET /: Content-Security-Policy %q", csp)
	}
	for path, ctype := range map[string]string{
		"/dashboard/app.js":    "text/javascript; charset=utf-8",
		"/dashboard/style.css": "text/css; charset=utf-8",
		"/dashboard/icon.svg":  "image/svg+xml",
	} {
		resp, _ := get(path, nil)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != ctype || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: %d %q", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		etag := resp.Header.Get("ETag")
		if again, _ := get(path, map[string]string{"If-None-Match": etag}); etag == "" || again.StatusCode != http.StatusNotModified {
			t.Errorf("GET %s again with its ETag %q: %d, want 304", path, etag, again.StatusCode)
		}
	}
	for _, path := range []string{"/nope", "/dashboard/nope.js", "/dashboard/../go.mod"} {
		if resp, _ := get(path, nil); resp.StatusCode != 404 {
			t.Errorf("GET %s: %d, want 404", path, resp.StatusCode)
		}
	}
	// The hub's own endpoints are still there.
	if resp, _ := get("/healthz", nil); resp.StatusCode != 200 {
		t.Errorf("GET /healthz: %d", resp.StatusCode)
	}
}
