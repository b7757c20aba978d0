package cluster_test

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/chat"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// hubApps are the applications of one hub of the tests: what `caps hub`
// serves (the parcel dispatcher and chat) plus the tests' own stored topics.
type hubApps struct {
	parcel *parcel.Dispatcher
	host   *hostApp
	list   []hub.App
}

func newHubApps() hubApps {
	d := parcel.NewDispatcher(parcel.Options{})
	h := &hostApp{}
	return hubApps{parcel: d, host: h, list: []hub.App{d, chat.NewApp(chat.AppConfig{}), storeApp{}, h}}
}

// hostApp keeps the hub's Host, for tests that look at the engine.
type hostApp struct{ *hub.Host }

func (a *hostApp) Setup(_ context.Context, h *hub.Host) error { a.Host = h; return nil }

// capture is an io.Writer collecting the lines a vendor or driver prints.
type capture struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (c *capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *capture) count(sub string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Count(c.buf.String(), sub)
}

// flowParcelsVendorAToDriverB: the vendor is on hub A and the only drivers
// are on hub B; every order is delivered, exactly once.
func flowParcelsVendorAToDriverB(t *testing.T, r *rig) {
	byHub := runParcels(t, r, []parcelVendor{{"acme", r.a}}, []*runningHub{r.b, r.b}, 6)
	if byHub[r.a.name] != 0 || byHub[r.b.name] != 6 {
		t.Errorf("deliveries by the drivers' hubs: %v, want all 6 on %s", byHub, r.b.name)
	}
}

// flowParcels: a vendor on each hub, two drivers on each hub. Every order
// is picked up by exactly one driver, whichever hub it is on, delivered once,
// and thanked for once by its own vendor only.
func flowParcels(t *testing.T, r *rig) {
	byHub := runParcels(t, r, []parcelVendor{{"rosebud", r.a}, {"daisy", r.b}}, []*runningHub{r.a, r.b, r.a, r.b}, 10)
	t.Logf("deliveries by the drivers' hubs: %v", byHub)
}

type parcelVendor struct {
	store string
	h     *runningHub
}

// runParcels runs drivers (one per hub listed) until the vendors have seen
// all their orders delivered, checks that each order was stored, picked up,
// delivered and thanked for exactly once, and returns the deliveries per
// hub of the delivering driver.
func runParcels(t *testing.T, r *rig, vendors []parcelVendor, drivers []*runningHub, orders int) map[string]int {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	posted := map[string]string{} // order id → store
	vendorOut := map[string]*capture{}
	driverOut := map[string]*capture{}
	driverHub := map[string]string{}
	client := func(h *runningHub, out *capture) parcel.ClientConfig {
		return parcel.ClientConfig{Hub: []string{h.Addr()}, Timeout: flowTimeout, Out: out, Log: testLog(t, slog.LevelWarn)}
	}

	var wg sync.WaitGroup
	driverErrs := make(chan error, len(drivers))
	var ready sync.WaitGroup
	for i, h := range drivers {
		name := fmt.Sprintf("driver-%d-%s", i, h.name)
		out := &capture{}
		driverOut[name], driverHub[name] = out, h.name
		cfg := parcel.DriverConfig{ClientConfig: client(h, out), Name: name,
			PickupDelay: 5 * time.Millisecond, DeliverDelay: 10 * time.Millisecond, Capacity: 2}
		ready.Add(1)
		var once sync.Once
		cfg.OnReady = func() { once.Do(ready.Done) }
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := parcel.RunDriver(ctx, cfg)
			once.Do(ready.Done) // failed before it was ready
			driverErrs <- err
		}()
	}
	ready.Wait() // every driver takes part from the first order on
	vendorErrs := make(chan error, len(vendors))
	for _, v := range vendors {
		out := &capture{}
		vendorOut[v.store] = out
		cfg := parcel.VendorConfig{ClientConfig: client(v.h, out), Store: v.store, Orders: orders, Interval: 5 * time.Millisecond}
		cfg.OnPosted = func(p parcel.Parcel, _ time.Time) {
			mu.Lock()
			posted[p.OrderID] = v.store
			mu.Unlock()
		}
		go func() { vendorErrs <- parcel.RunVendor(ctx, cfg) }()
	}
	for range vendors {
		select {
		case err := <-vendorErrs:
			if err != nil {
				t.Fatalf("vendor: %v", err)
			}
		case <-time.After(flowTimeout):
			mu.Lock()
			var ids []string
			for id := range posted {
				ids = append(ids, id)
			}
			mu.Unlock()
			if a, err := r.b.apps.parcel.Audit(context.Background(), ids); err != nil {
				t.Logf("audit: %v", err)
			} else {
				for _, id := range ids {
					var steps []string
					if o := a.Orders[id]; o != nil {
						for _, st := range o.Timeline {
							steps = append(steps, fmt.Sprintf("%s/%s/%s", st.Status, st.By, st.Hub))
						}
					}
					t.Logf("order %s: events %v, timeline %v", id, a.Events[id], steps)
				}
			}
			for store, out := range vendorOut {
				t.Logf("vendor %s printed %d thank-yous", store, out.count("Thank you"))
			}
			consumers := []string{hub.ConsumerName(parcel.DriversDurable, parcel.PickupPattern)}
			for _, v := range vendors {
				consumers = append(consumers, hub.ConsumerName(parcel.VendorDurable(v.store), parcel.MailboxPattern(v.store)))
			}
			for _, name := range consumers {
				if c, err := r.b.apps.host.JetStream().Consumer(context.Background(), parcel.StreamName, name); err == nil {
					ci := c.CachedInfo()
					t.Logf("consumer %s: pending %d, ack pending %d, redelivered %d, waiting %d, delivered %+v, ack floor %+v",
						ci.Name, ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.NumWaiting, ci.Delivered, ci.AckFloor)
				}
			}
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			for _, g := range strings.Split(string(buf[:n]), "\n\n") {
				if strings.Contains(g, "durable") {
					t.Logf("%s", g)
				}
			}
			t.Fatalf("the vendors did not see all their orders delivered in %s", flowTimeout)
		}
	}
	cancel()
	wg.Wait()
	close(driverErrs)
	for err := range driverErrs {
		if err != nil {
			t.Errorf("driver: %v", err)
		}
	}

	mu.Lock()
	defer mu.Unlock()
	if len(posted) != len(vendors)*orders {
		t.Fatalf("%d orders posted, want %d", len(posted), len(vendors)*orders)
	}
	var ids []string
	for id := range posted {
		ids = append(ids, id)
	}
	// The engine's record, read through hub B, of orders posted on either hub.
	a, err := r.b.apps.parcel.Audit(context.Background(), ids)
	if err != nil {
		t.Fatal(err)
	}
	byHub := map[string]int{}
	for _, id := range ids {
		for _, ev := range []string{parcel.EventPickup, parcel.EventInTransit, parcel.EventDelivered} {
			if n := a.Events[id][ev]; n != 1 {
				t.Errorf("order %s: %d %s events stored, want 1", id, n, ev)
			}
		}
		if o := a.Orders[id]; o == nil || o.Status != parcel.StatusDelivered {
			t.Errorf("order %s: record %+v, want delivered", id, o)
		}
		picked, delivered := 0, 0
		for name, out := range driverOut {
			picked += out.count("picked up " + id)
			d := out.count("delivered " + id)
			delivered += d
			byHub[driverHub[name]] += d
		}
		if picked != 1 || delivered != 1 {
			t.Errorf("order %s: drivers printed picked up %d times and delivered %d times, want 1 and 1", id, picked, delivered)
		}
		for store, out := range vendorOut {
			want := 0
			if store == posted[id] {
				want = 1
			}
			if n := out.count("Thank you for delivering " + id); n != want {
				t.Errorf("vendor %s thanked for %s (of %s) %d times, want %d", store, id, posted[id], n, want)
			}
		}
	}
	return byHub
}

// chatter follows a chat client's events.
type chatter struct {
	c      *chat.Client
	mu     sync.Mutex
	events []chat.Event
}

func joinChat(t *testing.T, name, room string, hubs ...string) *chatter {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := chat.NewClient(ctx, chat.ClientConfig{Hubs: hubs, Name: name, Room: room})
	if err != nil {
		t.Fatalf("chat %s on %v: %v", name, hubs, err)
	}
	ch := &chatter{c: c}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case e := <-c.Events():
				ch.mu.Lock()
				ch.events = append(ch.events, e)
				ch.mu.Unlock()
			case <-c.Done():
				return
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return ch
}

// waitEvent waits for an event that matches, describing it as what.
func (ch *chatter) waitEvent(t *testing.T, what string, match func(chat.Event) bool) {
	t.Helper()
	hubtest.Until(t, flowTimeout, ch.c.Name()+" to see "+what, func() bool {
		ch.mu.Lock()
		defer ch.mu.Unlock()
		return slices.ContainsFunc(ch.events, match)
	})
}

func said(from, text string, history bool) func(chat.Event) bool {
	return func(e chat.Event) bool {
		return e.Kind == chat.EventMessage && e.Msg.From == from && e.Msg.Text == text && e.History == history
	}
}

// flowChat: a room spans the hubs: messages, presence, the member list and
// history are the same whichever hub a person is on.
func flowChat(t *testing.T, r *rig) {
	ctx, cancel := context.WithTimeout(context.Background(), flowTimeout)
	defer cancel()
	alice := joinChat(t, "alice", "cluster", r.a.Addr())
	bob := joinChat(t, "bob", "cluster", r.b.Addr())
	alice.waitEvent(t, "bob join", func(e chat.Event) bool {
		return e.Kind == chat.EventPresence && e.Msg.Kind == chat.KindJoin && e.Msg.From == "bob"
	})
	if err := alice.c.Say(ctx, "hello from A"); err != nil {
		t.Fatal(err)
	}
	bob.waitEvent(t, "alice's message from hub A", said("alice", "hello from A", false))
	if err := bob.c.Say(ctx, "hello from B"); err != nil {
		t.Fatal(err)
	}
	alice.waitEvent(t, "bob's message from hub B", said("bob", "hello from B", false))

	who, err := alice.c.Who(ctx, "cluster")
	if err != nil {
		t.Fatal(err)
	}
	onHub := map[string]string{}
	for _, m := range who.Members {
		onHub[m.Name] = m.Hub
	}
	if onHub["alice"] != r.a.name || onHub["bob"] != r.b.name {
		t.Errorf("who in cluster, asked on hub A: %+v; want alice on %s and bob on %s", who.Members, r.a.name, r.b.name)
	}
	// A newcomer on hub B gets the history written on both hubs.
	carol := joinChat(t, "carol", "cluster", r.b.Addr())
	carol.waitEvent(t, "history from hub A", said("alice", "hello from A", true))
	carol.waitEvent(t, "history from hub B", said("bob", "hello from B", true))
}

// testLog is a logger writing to the test's log from level on.
func testLog(t *testing.T, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// flowFairDispatch: across hubs, a driver with parcels in its van (on hub
// A) waits behind idle ones (on hub B), and idle drivers of capacity 1 and 5
// on different hubs take turns: each hub pulls from the drivers' queue with
// the priority of its least-loaded drivers.
func flowFairDispatch(t *testing.T, r *rig) {
	ctx, cancel := context.WithTimeout(context.Background(), flowTimeout)
	defer cancel()
	vendor, err := client.Dial(ctx, []string{r.a.Addr()}, client.Options{Role: protocol.RoleVendor, Name: "fair-shop"})
	if err != nil {
		t.Fatal(err)
	}
	defer vendor.Close()
	status := func(id string, s parcel.Status) func() bool {
		return func() bool {
			o, _, err := r.b.apps.parcel.Order(ctx, id)
			return err == nil && o.Status == s
		}
	}
	post := func(n int, until parcel.Status) {
		for i := range n {
			id := uuid.NewString()
			body := fmt.Sprintf(`{"store":"fair-shop","orderID":%q,"customer":"Customer %d","address":"%d Fair Street"}`, id, i, i)
			if _, err := vendor.Publish(ctx, parcel.Topic("fair-shop", id, parcel.EventPickup, ""), []byte(body)); err != nil {
				t.Fatal(err)
			}
			hubtest.Until(t, flowTimeout, "order "+id+" "+string(until), status(id, until))
		}
	}
	// waiting waits until n pull requests wait on the drivers' queue: every
	// hub with drivers has asked.
	waiting := func(n int) {
		hubtest.Until(t, flowTimeout, fmt.Sprintf("%d pull requests on the drivers' queue", n), func() bool {
			c, err := r.a.apps.host.JetStream().Consumer(ctx, parcel.StreamName, hub.ConsumerName(parcel.DriversDurable, parcel.PickupPattern))
			return err == nil && c.CachedInfo().NumWaiting >= n
		})
	}
	drivers := map[string]*capture{}
	var wg sync.WaitGroup
	defer wg.Wait()
	dctx, stopDrivers := context.WithCancel(ctx)
	defer stopDrivers()
	start := func(h *runningHub, name string, capacity int, deliver time.Duration) (stop func()) {
		out := &capture{}
		drivers[name] = out
		ready, done := make(chan struct{}), make(chan struct{})
		cfg := parcel.DriverConfig{ClientConfig: parcel.ClientConfig{Hub: []string{h.Addr()}, Timeout: flowTimeout, Out: out,
			Log: testLog(t, slog.LevelError), OnReady: func() { close(ready) }},
			Name: name, Capacity: capacity, PickupDelay: time.Millisecond, DeliverDelay: deliver, Grace: time.Millisecond}
		ctx, cancel := context.WithCancel(dctx)
		wg.Add(1)
		go func() { defer wg.Done(); defer close(done); _ = parcel.RunDriver(ctx, cfg) }()
		<-ready
		return func() { cancel(); <-done }
	}
	// The van, alone at first on hub A, keeps two parcels on the road.
	start(r.a, "van-a", 5, time.Hour)
	post(2, parcel.StatusInTransit)
	start(r.b, "solo-b", 1, time.Millisecond)
	stopSecond := start(r.b, "solo-b2", 1, time.Millisecond)
	waiting(2)
	post(6, parcel.StatusDelivered)
	onB := drivers["solo-b"].count("delivered ") + drivers["solo-b2"].count("delivered ")
	if onB != 6 {
		t.Errorf("the idle drivers on hub B delivered %d of 6 orders; the busy van on hub A took the others", onB)
	}
	// An idle driver of capacity 5 on hub A, one of capacity 1 on hub B:
	// they take turns.
	stopSecond()
	before := drivers["solo-b"].count("delivered ")
	start(r.a, "idle-a", 5, time.Millisecond)
	post(8, parcel.StatusDelivered)
	a, b := drivers["idle-a"].count("delivered "), drivers["solo-b"].count("delivered ")-before
	t.Logf("idle drivers: capacity 5 on hub A delivered %d, capacity 1 on hub B %d", a, b)
	if a < 2 || b < 2 {
		t.Errorf("of 8 orders at low load, the capacity-5 driver on hub A delivered %d and the capacity-1 driver on hub B %d", a, b)
	}
}
