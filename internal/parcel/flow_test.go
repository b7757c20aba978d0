package parcel_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caps-hub/caps/internal/parcel"
)

// fleet runs vendors and drivers against a hub and remembers what they
// posted and printed.
type fleet struct {
	t       *testing.T
	th      *testHub
	r       runner
	mu      sync.Mutex
	posted  map[string]string // order id → store
	vendors map[string]*capture
	drivers map[string]*capture
}

func newFleet(t *testing.T, th *testHub) *fleet {
	f := &fleet{t: t, th: th, posted: map[string]string{}, vendors: map[string]*capture{}, drivers: map[string]*capture{}}
	f.r.t = t
	return f
}

func (f *fleet) vendor(ctx context.Context, store string, orders int, interval time.Duration) <-chan error {
	out := &capture{}
	f.mu.Lock()
	f.vendors[store] = out
	f.mu.Unlock()
	cfg := parcel.VendorConfig{ClientConfig: f.th.client(), Store: store, Orders: orders, Interval: interval}
	cfg.Out = out
	cfg.OnPosted = func(p parcel.Parcel, _ time.Time) {
		f.mu.Lock()
		f.posted[p.OrderID] = store
		f.mu.Unlock()
	}
	return goRun(&f.r, func() error { return parcel.RunVendor(ctx, cfg) })
}

func (f *fleet) driver(ctx context.Context, cfg parcel.DriverConfig) <-chan error {
	out := &capture{}
	f.mu.Lock()
	f.drivers[cfg.Name] = out
	f.mu.Unlock()
	base := f.th.client()
	base.Options = cfg.Options
	base.OnReady = cfg.OnReady
	if cfg.Log != nil {
		base.Log = cfg.Log
	}
	cfg.ClientConfig = base
	cfg.Out = out
	return goRun(&f.r, func() error { return parcel.RunDriver(ctx, cfg) })
}

// waitVendor waits for a vendor to finish, and on failure tells what every
// order's state is.
func (f *fleet) waitVendor(ch <-chan error, timeout time.Duration, what string) {
	f.t.Helper()
	select {
	case err := <-ch:
		if err == nil {
			return
		}
		f.t.Errorf("%s: %v", what, err)
	case <-time.After(timeout):
		f.t.Errorf("%s did not finish in %s", what, timeout)
	}
	a, err := f.th.d.Audit(context.Background(), f.postedIDs())
	if err != nil {
		f.t.Fatal(err)
	}
	for _, id := range f.postedIDs() {
		var steps []string
		if o := a.Orders[id]; o != nil {
			for _, st := range o.Timeline {
				steps = append(steps, fmt.Sprintf("%s/%s@%s", st.Status, st.By, st.Time.Format("15:04:05.000")))
			}
		}
		f.t.Logf("order %s (%s): events %v, timeline %s", id, f.posted[id], a.Events[id], strings.Join(steps, " "))
	}
	f.t.FailNow()
}

func (f *fleet) postedIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	ids := make([]string, 0, len(f.posted))
	for id := range f.posted {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// checkExactlyOnce asserts that every posted order was delivered exactly
// once: one of each event stored, its record delivered, one driver line of
// each kind, and one thank-you printed by its own vendor and by no other.
func (f *fleet) checkExactlyOnce(ctx context.Context) {
	t := f.t
	t.Helper()
	ids := f.postedIDs()
	a, err := f.th.d.Audit(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		store := f.posted[id]
		for _, ev := range []string{parcel.EventPickup, parcel.EventInTransit, parcel.EventDelivered} {
			if n := a.Events[id][ev]; n != 1 {
				t.Errorf("order %s: %d %s events stored, want 1", id, n, ev)
			}
		}
		if o := a.Orders[id]; o == nil || o.Status != parcel.StatusDelivered {
			t.Errorf("order %s: record %+v, want delivered", id, o)
		}
		for s, out := range f.vendors {
			want := 0
			if s == store {
				want = 1
			}
			if n := out.count(thankYou(s, id)); n != want {
				t.Errorf("vendor %s printed the thank-you for %s (of %s) %d times, want %d", s, id, store, n, want)
			}
			// Another store's order id never shows up in a vendor's output.
			if s != store && out.count(id) != 0 {
				t.Errorf("vendor %s saw order %s of store %s", s, id, store)
			}
		}
		picked, delivered := 0, 0
		for _, out := range f.drivers {
			picked += out.count("picked up " + id)
			delivered += out.count("delivered " + id)
		}
		if picked != 1 || delivered != 1 {
			t.Errorf("order %s: drivers printed picked up %d times, delivered %d times; want 1 and 1", id, picked, delivered)
		}
	}
}

func TestEveryOrderDeliveredExactlyOnceToItsVendor(t *testing.T) {
	th := startHub(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFleet(t, th)

	var drivers []<-chan error
	for i := range 4 {
		drivers = append(drivers, f.driver(ctx, parcel.DriverConfig{
			Name: fmt.Sprintf("driver-%d", i), PickupDelay: 5 * time.Millisecond, DeliverDelay: 10 * time.Millisecond, Capacity: 2,
		}))
	}
	var vendors []<-chan error
	for _, store := range []string{"acme", "rosebud", "daisy_chain"} {
		vendors = append(vendors, f.vendor(ctx, store, 6, 5*time.Millisecond))
	}
	for i, ch := range vendors {
		wait(t, ch, 60*time.Second, fmt.Sprintf("vendor %d", i))
	}
	if n := len(f.postedIDs()); n != 18 {
		t.Fatalf("%d orders posted, want 18", n)
	}
	cancel()
	for i, ch := range drivers {
		wait(t, ch, 30*time.Second, fmt.Sprintf("driver %d", i))
	}
	f.checkExactlyOnce(context.Background())

	// Several drivers shared the load.
	busy := 0
	for _, out := range f.drivers {
		if out.count("delivered ") > 0 {
			busy++
		}
	}
	if busy < 2 {
		t.Errorf("only %d driver(s) delivered anything", busy)
	}
	for _, out := range f.vendors {
		for _, l := range out.Lines() {
			if !strings.HasPrefix(l, "VENDOR[") {
				t.Errorf("unexpected vendor line %q", l)
			}
		}
	}
}
