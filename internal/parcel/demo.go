package parcel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/caps-hub/caps/hub"
)

// DemoConfig configures the one-command demo.
type DemoConfig struct {
	// Vendors and Drivers to run (defaults 2 and 3).
	Vendors, Drivers int
	// Orders is the total across all vendors, shared out as evenly as
	// possible (default 10).
	Orders int
	// Interval between one vendor's orders (default 5s); PickupDelay and
	// DeliverDelay as for drivers (the classroom's 1s and 3s by default).
	Interval, PickupDelay, DeliverDelay time.Duration
	// Capacity of each driver (default 5).
	Capacity int
	// FailRate is the share of delivery attempts the drivers fail (0 to 1):
	// failed orders are offered again, and returned after their last
	// attempt, so the demo shows every path.
	FailRate float64
	// MaxAttempts bounds each order's delivery attempts (default 3).
	MaxAttempts int
	// PINEvery asks for proof of delivery on every PINEvery-th order of
	// each vendor (0: none). The simulated customer at the door tells the
	// driver the PIN: the demo reads it where the store would (the order's
	// secrets), never from the events drivers receive.
	PINEvery int
	// Timeout ends a demo that has not finished (0: enough for the orders
	// at the pace asked for, plus a minute).
	Timeout time.Duration
	// HTTPAddr for the embedded hub ("off", the default, serves none).
	HTTPAddr string
	// Apps are served by the embedded hub besides the parcel dispatcher
	// (the caps demo command adds the dashboard when HTTP is on).
	Apps []hub.App
	// Events prints the hub's EVENT lines too.
	Events bool
	// EventLog is where the logger writes its JSON lines (default: a file in
	// the demo's temporary directory, removed at the end).
	EventLog string
	// Out receives the live flow and the summary (default os.Stdout).
	Out io.Writer
	// Log receives diagnostics, the hub's included (default: discard).
	Log *slog.Logger
}

// DemoSummary is the outcome of a demo.
type DemoSummary struct {
	Posted    int // orders the hub accepted
	Delivered int // orders delivered and thanked for
	// WithPIN counts the delivered orders that needed the customer's PIN.
	WithPIN int
	// Returned orders failed on every attempt and went back to the store.
	Returned int
	// FailedAttempts counts the failed delivery attempts of every order.
	FailedAttempts int
	Lost           int // posted but neither delivered nor returned
	Duplicates     int // deliveries or thank-yous beyond the first for an order
	P50, P99       time.Duration
	Took           time.Duration
}

// OK reports whether every order was delivered (or, after failed attempts,
// returned) exactly once.
func (s DemoSummary) OK() bool {
	return s.Posted > 0 && s.Delivered+s.Returned == s.Posted && s.Lost == 0 && s.Duplicates == 0
}

var (
	demoStores  = []string{"acme-flowers", "rosebud", "daisy-chain", "petal-pushers", "bloom-and-co", "thorn-and-stem", "lily-pad", "the-tulip"}
	demoDrivers = []string{"dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj", "olivia", "peggy", "rupert"}
)

func demoName(list []string, i int, prefix string) string {
	if i < len(list) {
		return list[i]
	}
	return fmt.Sprintf("%s-%d", prefix, i+1)
}

// RunDemo starts a hub with an embedded engine in a temporary directory,
// then vendors, drivers and a logger in this process, each with its own
// connection over loopback TCP; it prints the live flow, waits until every
// order is delivered (or the timeout), checks what the engine stored, and
// prints a summary. The error is nil only when every order was delivered
// exactly once.
func RunDemo(ctx context.Context, cfg DemoConfig) (DemoSummary, error) {
	cfg.withDefaults()
	out := SyncWriter(cfg.Out)
	start := time.Now()
	dir, err := os.MkdirTemp("", "caps-demo-")
	if err != nil {
		return DemoSummary{}, fmt.Errorf("demo: %w", err)
	}
	defer os.RemoveAll(dir)

	disp := NewDispatcher(Options{MaxAttempts: cfg.MaxAttempts})
	h, err := startDemoHub(ctx, cfg, dir, out, disp)
	if err != nil {
		return DemoSummary{}, err
	}
	defer stopDemoHub(h)
	addr := h.Addr().String()
	fmt.Fprintf(out, "DEMO: hub on %s; %d vendors, %d drivers, %d orders, one every %s per vendor\n",
		addr, cfg.Vendors, cfg.Drivers, cfg.Orders, cfg.Interval)
	if ha := h.HTTPAddr(); ha != nil {
		fmt.Fprintf(out, "DEMO: dashboard at http://%s/\n", ha)
	}

	run := newDemoRun(ctx, cfg, ClientConfig{Hub: []string{addr}, Out: out, Log: cfg.Log, Timeout: 30 * time.Second})
	run.pin = func(ctx context.Context, id string) (string, error) {
		s, err := disp.Secrets(ctx, id)
		if err != nil {
			return "", err
		}
		return s.PIN, nil
	}
	defer run.stop()
	logPath := cfg.EventLog
	if logPath == "" {
		logPath = filepath.Join(dir, "events.jsonl")
	}
	if err := run.startListeners(logPath); err != nil {
		return DemoSummary{}, err
	}
	if cfg.FailRate > 0 {
		// A returned order is never thanked for: its vendor would wait for
		// it to the end. The demo ends the vendors once every order posted
		// is finished.
		go run.endWhenSettled(disp)
	}
	run.runVendors()
	timedOut := errors.Is(run.ctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
	run.stop()

	ids, thanks, errs := run.outcome()
	auditCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	audit, err := disp.Audit(auditCtx, ids)
	if err != nil {
		return DemoSummary{}, fmt.Errorf("demo: %w", err)
	}
	sum := summarize(ids, thanks, audit)
	sum.Took = time.Since(start)
	fmt.Fprintf(out, "DEMO: posted %d, delivered %d, lost %d, duplicates %d\n", sum.Posted, sum.Delivered, sum.Lost, sum.Duplicates)
	fmt.Fprintf(out, "DEMO: outcomes: delivered %d (%d with the customer's PIN), returned %d; failed attempts %d\n",
		sum.Delivered, sum.WithPIN, sum.Returned, sum.FailedAttempts)
	fmt.Fprintf(out, "DEMO: pickup→delivered p50 %s, p99 %s; %d orders in %s\n",
		sum.P50.Round(time.Millisecond), sum.P99.Round(time.Millisecond), sum.Posted, sum.Took.Round(100*time.Millisecond))
	return sum, demoVerdict(ctx, cfg, sum, errs, timedOut)
}

// withDefaults fills in the zero fields.
func (cfg *DemoConfig) withDefaults() {
	if cfg.Vendors <= 0 {
		cfg.Vendors = 2
	}
	if cfg.Drivers <= 0 {
		cfg.Drivers = 3
	}
	if cfg.Orders <= 0 {
		cfg.Orders = 10
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.Capacity <= 0 {
		cfg.Capacity = 5
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "off"
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Timeout <= 0 {
		perVendor := (cfg.Orders + cfg.Vendors - 1) / cfg.Vendors
		rounds := cfg.Orders/(cfg.Drivers*cfg.Capacity) + 2
		cfg.Timeout = time.Duration(perVendor)*cfg.Interval + time.Duration(rounds)*(cfg.PickupDelay+cfg.DeliverDelay) + time.Minute
	}
}

// startDemoHub starts the demo's hub on loopback, its engine in dir.
func startDemoHub(ctx context.Context, cfg DemoConfig, dir string, out io.Writer, disp *Dispatcher) (*hub.Hub, error) {
	h := hub.New(hub.Config{
		Addr: "127.0.0.1:0", HTTPAddr: cfg.HTTPAddr, DataDir: dir, Name: "demo",
		Quiet: !cfg.Events, EventOut: out, Logger: cfg.Log,
		Apps: append([]hub.App{disp}, cfg.Apps...),
	})
	if err := h.Start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("demo: hub: %w", err)
	}
	return h, nil
}

// stopDemoHub shuts the demo's hub down, draining for as long as a hub
// does by default.
func stopDemoHub(h *hub.Hub) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = h.Shutdown(ctx)
}

// demoRun is the demo's clients: a logger and drivers that listen until
// the end, vendors that post until their orders are delivered.
type demoRun struct {
	cfg  DemoConfig
	base ClientConfig
	// ctx ends the vendors (the timeout, or the first client that fails);
	// listeners run until stop.
	ctx           context.Context
	cancel        context.CancelFunc
	listenCtx     context.Context
	stopListeners context.CancelFunc
	listeners     sync.WaitGroup

	// pin is the customer at the door, telling the driver the PIN.
	pin func(ctx context.Context, orderID string) (string, error)

	mu      sync.Mutex
	errs    []error
	posted  map[string]time.Time
	thanked map[string]int
}

func newDemoRun(ctx context.Context, cfg DemoConfig, base ClientConfig) *demoRun {
	r := &demoRun{cfg: cfg, base: base, posted: map[string]time.Time{}, thanked: map[string]int{}}
	r.ctx, r.cancel = context.WithTimeout(ctx, cfg.Timeout)
	r.listenCtx, r.stopListeners = context.WithCancel(context.WithoutCancel(ctx))
	return r
}

// fail records a client's error and stops the vendors.
func (r *demoRun) fail(err error) {
	if err != nil {
		r.mu.Lock()
		r.errs = append(r.errs, err)
		r.mu.Unlock()
		r.cancel()
	}
}

// startListeners starts the logger (first, so that it sees everything) and
// the drivers, and waits until they are subscribed.
func (r *demoRun) startListeners(logPath string) error {
	logFile, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("demo: event log: %w", err)
	}
	ready := make(chan struct{}, r.cfg.Drivers+1)
	lc := LoggerConfig{ClientConfig: r.base, Name: "logger"}
	lc.Out = logFile
	lc.OnReady = func() { ready <- struct{}{} }
	r.listen(func(ctx context.Context) error {
		defer logFile.Close()
		return RunLogger(ctx, lc)
	})
	for i := range r.cfg.Drivers {
		dc := DriverConfig{
			ClientConfig: r.base, Name: demoName(demoDrivers, i, "driver"),
			PickupDelay: r.cfg.PickupDelay, DeliverDelay: r.cfg.DeliverDelay, Capacity: r.cfg.Capacity,
			FailRate: r.cfg.FailRate, PIN: r.pin,
		}
		dc.OnReady = func() { ready <- struct{}{} }
		r.listen(func(ctx context.Context) error { return RunDriver(ctx, dc) })
	}
	for range r.cfg.Drivers + 1 {
		select {
		case <-ready:
		case <-r.ctx.Done():
		}
	}
	return nil
}

func (r *demoRun) listen(fn func(context.Context) error) {
	r.listeners.Add(1)
	go func() { defer r.listeners.Done(); r.fail(fn(r.listenCtx)) }()
}

// runVendors runs the vendors, the orders shared out evenly, until each
// has had its orders delivered (or the run ends).
func (r *demoRun) runVendors() {
	var vendors sync.WaitGroup
	for i := range r.cfg.Vendors {
		n := r.cfg.Orders / r.cfg.Vendors
		if i < r.cfg.Orders%r.cfg.Vendors {
			n++
		}
		if n == 0 {
			continue
		}
		vc := VendorConfig{
			ClientConfig: r.base, Store: demoName(demoStores, i, "store"),
			Interval: r.cfg.Interval, Orders: n, PINEvery: r.cfg.PINEvery,
			OnPosted: func(p Parcel, at time.Time) {
				r.mu.Lock()
				r.posted[p.OrderID] = at
				r.mu.Unlock()
			},
			OnThanked: func(id string, _ time.Time) {
				r.mu.Lock()
				r.thanked[id]++
				r.mu.Unlock()
			},
		}
		vendors.Add(1)
		go func() { defer vendors.Done(); r.fail(RunVendor(r.ctx, vc)) }()
	}
	vendors.Wait()
}

// endWhenSettled ends the vendors once every order was posted and is
// finished (delivered and thanked for, or returned), as the engine has it.
func (r *demoRun) endWhenSettled(d *Dispatcher) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-tick.C:
		}
		r.mu.Lock()
		ids := slices.Collect(maps.Keys(r.posted))
		thanked := maps.Clone(r.thanked)
		r.mu.Unlock()
		if len(ids) < r.cfg.Orders {
			continue
		}
		a, err := d.Audit(r.ctx, ids)
		if err != nil {
			continue
		}
		settled := true
		for _, id := range ids {
			o := a.Orders[id]
			settled = settled && o != nil && (o.Status == StatusReturned || (o.Status == StatusDelivered && thanked[id] > 0))
		}
		if settled {
			r.cancel()
			return
		}
	}
}

// stop ends every client and waits for them.
func (r *demoRun) stop() {
	r.stopListeners()
	r.listeners.Wait()
	r.cancel()
}

// outcome returns the orders posted, the thank-yous and the clients'
// errors (a vendor stopped early says so; the summary tells why).
func (r *demoRun) outcome() (ids []string, thanked map[string]int, errs []error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids = slices.Collect(maps.Keys(r.posted))
	for _, err := range r.errs {
		if !errors.Is(err, ErrInterrupted) {
			errs = append(errs, err)
		}
	}
	return ids, maps.Clone(r.thanked), errs
}

// demoVerdict is RunDemo's error: nil only when every order was delivered
// exactly once.
func demoVerdict(ctx context.Context, cfg DemoConfig, sum DemoSummary, errs []error, timedOut bool) error {
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case len(errs) > 0:
		return fmt.Errorf("demo: %w", errors.Join(errs...))
	case timedOut:
		return fmt.Errorf("demo: not finished after %s: %d of %d orders delivered, %d returned", cfg.Timeout, sum.Delivered, cfg.Orders, sum.Returned)
	case sum.Posted < cfg.Orders:
		return fmt.Errorf("demo: only %d of %d orders were posted", sum.Posted, cfg.Orders)
	case !sum.OK():
		return fmt.Errorf("demo: %d lost, %d duplicates", sum.Lost, sum.Duplicates)
	}
	return nil
}

// summarize judges every posted order against what the engine stored: it
// was delivered when its record says so, the engine holds its delivered
// event and its vendor thanked for it; any event or thank-you beyond one
// is a duplicate.
func summarize(ids []string, thanked map[string]int, a *Audit) DemoSummary {
	s := DemoSummary{Posted: len(ids)}
	var lat []time.Duration
	for _, id := range ids {
		o := a.Orders[id]
		stored := a.Events[id][EventDelivered]
		attempts := 1
		switch {
		case o == nil:
		case o.Status == StatusDelivered && stored > 0 && thanked[id] > 0:
			s.Delivered++
			if o.RequirePIN {
				s.WithPIN++
			}
			lat = append(lat, o.At(StatusDelivered).Sub(o.At(StatusCreated)))
		case o.Status == StatusReturned && a.Events[id][EventReturned] > 0:
			s.Returned++
		}
		if o != nil {
			attempts = max(o.Attempt, 1)
		}
		s.FailedAttempts += a.Events[id][EventFailed]
		// One pickup and one in-transit per attempt (a failed attempt's
		// order is offered again as a pickup).
		s.Duplicates += max(0, stored-1) + max(0, thanked[id]-1) + max(0, a.Events[id][EventReturned]-1) +
			max(0, a.Events[id][EventPickup]-attempts) + max(0, a.Events[id][EventInTransit]-attempts)
	}
	s.Lost = s.Posted - s.Delivered - s.Returned
	s.P50, s.P99 = percentile(lat, 50), percentile(lat, 99)
	return s
}

// percentile returns the p-th percentile (nearest rank) of ds.
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := (p*len(s) + 99) / 100
	return s[max(rank, 1)-1]
}
