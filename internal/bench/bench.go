// Package bench is the load generator behind `caps bench`. It runs the same
// load shape against a CAPS hub and straight against NATS, in one process and
// one run, so that the ratio CAPS/NATS is measured under the same conditions
// on the same machine.
//
// Scenarios:
//
//   - pubsub:  one publisher → one subscriber; msgs/s and MB/s.
//   - fanout:  one publisher → N subscribers on one topic; deliveries/s.
//   - latency: a constant-rate schedule; end-to-end latency percentiles from
//     each message's intended send time (coordinated omission corrected).
//   - orders:  full parcel lifecycles (pickup → in-transit → delivered),
//     stored, with acknowledgements; lifecycles/s.
//   - conns:   N idle authenticated connections; hub memory per connection
//     and the time to connect them all.
//
// Every loop is bounded by Options.Duration (plus a bounded drain), and every
// target is on the loopback interface.
package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/caps-hub/caps/hub"
)

// Scenario names, in the order `all` runs them.
var Scenarios = []string{"pubsub", "fanout", "latency", "orders", "conns"}

// Options configure a bench run. The zero value of a field means its default.
type Options struct {
	// Targets to measure: "caps" (an embedded hub, the default), "nats" (an
	// embedded nats-server on loopback), "caps://host:port", "nats://host:port".
	Targets []string
	// VsNATS adds the embedded NATS target when no nats target is given.
	VsNATS bool

	Duration time.Duration // length of each measured run (default 5s)
	Runs     int           // runs per target; the median is reported (default 1)

	Size    int // pubsub/fanout payload bytes (default 128)
	Subs    int // fanout subscribers (default 100)
	Rate    int // latency: messages per second on the schedule (default 10000)
	Vendors int // orders: vendor connections (default 4)
	Drivers int // orders: driver connections (default 8)
	Conns   int // conns: idle connections (default 1000)
	// Window bounds messages published but not yet received by the slowest
	// subscriber (pubsub, fanout), so neither system is measured while
	// dropping or disconnecting a slow consumer (default 8192, at most 4 MiB of payload).
	Window int
	// OrdersWindow bounds each vendor's orders not yet delivered (default 32).
	OrdersWindow int

	// Embedded hub settings.
	HubApps    func() []hub.App // applications of the embedded hub (as `caps hub` wires them)
	SyncAlways bool             // fsync every stored message (embedded hub and embedded NATS alike)
	Events     bool             // embedded hub prints EVENT lines (to io.Discard) instead of running quiet
	CPUProfile string           // write a CPU profile of the whole run here
	MemProfile string           // write an allocation profile at the end of the run here
	// HubProcess, when set, starts the hub of the conns scenario in a child
	// process, so that its memory is measured without the clients'. It gets
	// the listen addresses, the data dir and the auth file, and returns when
	// the hub is ready (or ctx ends); stop ends it.
	HubProcess func(ctx context.Context, p HubProcessSpec) (stop func(), err error)
	// MetricsURL is the /metrics URL of an external CAPS target (conns).
	MetricsURL string
	// Token authenticates to an external CAPS target (conns, and any scenario
	// against a hub that runs with --auth).
	Token string

	Logger *slog.Logger
}

// HubProcessSpec tells HubProcess how to start the hub.
type HubProcessSpec struct {
	Addr, HTTPAddr, DataDir, AuthFile string
	SyncAlways                        bool
}

func (o *Options) withDefaults() error {
	if o.Duration <= 0 {
		o.Duration = 5 * time.Second
	}
	if o.Runs <= 0 {
		o.Runs = 1
	}
	if o.Size <= 0 {
		o.Size = 128
	}
	if o.Size < 9 {
		o.Size = 9 // a mark byte and a time stamp
	}
	if o.Subs <= 0 {
		o.Subs = 100
	}
	if o.Rate <= 0 {
		o.Rate = 10000
	}
	if o.Vendors <= 0 {
		o.Vendors = 4
	}
	if o.Drivers <= 0 {
		o.Drivers = 8
	}
	if o.Conns <= 0 {
		o.Conns = 1000
	}
	if o.Window <= 0 {
		o.Window = 8192
	}
	if o.OrdersWindow <= 0 {
		o.OrdersWindow = 32
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if len(o.Targets) == 0 {
		o.Targets = []string{"caps"}
	}
	for _, t := range o.Targets {
		if _, err := parseTarget(t); err != nil {
			return err
		}
	}
	if o.VsNATS && !slices.ContainsFunc(o.Targets, func(t string) bool { k, _ := parseTarget(t); return k.kind == kindNATS }) {
		o.Targets = append(o.Targets, "nats")
	}
	return nil
}

// Result is what one scenario measured on one target (medians over runs).
type Result struct {
	Scenario string `json:"scenario"`
	Target   string `json:"target"`
	// Rate is messages/s (pubsub, latency), deliveries/s (fanout),
	// lifecycles/s (orders) or connections/s (conns).
	Rate  float64   `json:"rate"`
	Unit  string    `json:"unit"`
	Rates []float64 `json:"rates,omitempty"` // every run's rate, when Runs > 1
	MBps  float64   `json:"mb_s,omitempty"`

	P50us  float64 `json:"p50_us,omitempty"`
	P90us  float64 `json:"p90_us,omitempty"`
	P99us  float64 `json:"p99_us,omitempty"`
	P999us float64 `json:"p999_us,omitempty"`
	MaxUs  float64 `json:"max_us,omitempty"`

	Count uint64 `json:"count"` // messages, deliveries, lifecycles or connections measured
	// CPUPerOpUs is this process's CPU time (user + system) during the run
	// divided by Count, for a target in this process (an embedded hub or
	// nats-server, with its clients). Unlike a rate it hardly moves with
	// what else the machine runs, so it compares CAPS and NATS on a busy
	// machine too.
	CPUPerOpUs float64 `json:"cpu_us_per_op,omitempty"`
	Lost       uint64  `json:"lost,omitempty"`    // published but never received within the drain
	Seconds    float64 `json:"seconds,omitempty"` // measured time

	// conns
	Conns           int     `json:"conns,omitempty"`
	ConnectSeconds  float64 `json:"connect_s,omitempty"`
	HeapPerConnB    float64 `json:"heap_per_conn_bytes,omitempty"`  // Go heap + stacks in use, delta / conns
	StackPerConnB   float64 `json:"stack_per_conn_bytes,omitempty"` // of which goroutine stacks
	RSSPerConnB     float64 `json:"rss_per_conn_bytes,omitempty"`   // resident set delta / conns
	MemoryNote      string  `json:"memory_note,omitempty"`          // how memory was measured
	HubGoroutinesPC float64 `json:"goroutines_per_conn,omitempty"`  // goroutines delta / conns

	// Filled in on the CAPS row when a NATS target ran in the same run.
	NATSRate  float64 `json:"nats_rate,omitempty"`
	Ratio     float64 `json:"ratio,omitempty"` // Rate / NATSRate
	NATSP50us float64 `json:"nats_p50_us,omitempty"`
	NATSP99us float64 `json:"nats_p99_us,omitempty"`
	P99Ratio  float64 `json:"p99_ratio,omitempty"` // P99us / NATSP99us
	// NATSCPUPerOpUs is the NATS row's CPUPerOpUs; CPURatio is
	// NATSCPUPerOpUs / CPUPerOpUs, read like Ratio (above 1: CAPS uses less).
	NATSCPUPerOpUs float64 `json:"nats_cpu_us_per_op,omitempty"`
	CPURatio       float64 `json:"cpu_ratio,omitempty"`

	Err string `json:"error,omitempty"`
}

// Run runs the scenarios ("all" for every one) and returns one Result per
// scenario and target, CAPS rows carrying the NATS comparison.
func Run(ctx context.Context, opts Options, scenarios []string) ([]Result, error) {
	if err := opts.withDefaults(); err != nil {
		return nil, err
	}
	list, err := expand(scenarios)
	if err != nil {
		return nil, err
	}
	env := newEnv(&opts)
	defer env.close()
	stopProfiles, err := startProfiles(&opts)
	if err != nil {
		return nil, err
	}
	defer stopProfiles()

	var out []Result
	for _, sc := range list {
		rows, err := env.runScenario(ctx, sc)
		if err != nil {
			return out, err
		}
		out = append(out, rows...)
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
	}
	return out, nil
}

func expand(scenarios []string) ([]string, error) {
	if len(scenarios) == 0 {
		return nil, errors.New("name a scenario: " + strings.Join(Scenarios, ", ") + " or all")
	}
	var out []string
	for _, s := range scenarios {
		if s == "all" {
			out = append(out, Scenarios...)
			continue
		}
		if !slices.Contains(Scenarios, s) {
			return nil, fmt.Errorf("unknown scenario %q (want %s or all)", s, strings.Join(Scenarios, ", "))
		}
		out = append(out, s)
	}
	return out, nil
}

// runScenario runs sc on every target Runs times (targets interleaved, so
// that drift in the machine's speed affects them alike) and combines medians.
func (e *env) runScenario(ctx context.Context, sc string) ([]Result, error) {
	o := e.opts
	runs := make([][]Result, len(o.Targets))
	for r := 0; r < o.Runs; r++ {
		for i, t := range o.Targets {
			if sc == "conns" && r > 0 {
				continue // one connection storm is enough, and it is slow
			}
			tg, err := e.target(ctx, t, sc)
			if err != nil {
				return nil, err
			}
			if tg == nil {
				continue // scenario does not apply to this target
			}
			o.Logger.Info("bench run", "scenario", sc, "target", tg.name, "run", r+1)
			cpu0, cpuOK := processCPU()
			res, err := e.runOne(ctx, sc, tg)
			if cpu1, ok := processCPU(); cpuOK && ok && tg.embedded && sc != "conns" && res.Count > 0 {
				res.CPUPerOpUs = float64((cpu1-cpu0)/time.Nanosecond) / 1e3 / float64(res.Count)
			}
			res.Scenario, res.Target = sc, tg.name
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				res.Err = err.Error()
			}
			runs[i] = append(runs[i], res)
		}
	}
	var rows []Result
	for _, rs := range runs {
		if len(rs) > 0 {
			rows = append(rows, median(rs))
		}
	}
	compare(rows)
	return rows, nil
}

func (e *env) runOne(ctx context.Context, sc string, tg *target) (Result, error) {
	switch sc {
	case "pubsub":
		return e.throughput(ctx, tg, 1)
	case "fanout":
		return e.throughput(ctx, tg, e.opts.Subs)
	case "latency":
		return e.latency(ctx, tg)
	case "orders":
		return e.orders(ctx, tg)
	case "conns":
		return e.conns(ctx, tg)
	}
	return Result{}, fmt.Errorf("unknown scenario %q", sc)
}

// median returns the run whose rate is the median, with every rate listed.
func median(rs []Result) Result {
	ok := make([]Result, 0, len(rs))
	for _, r := range rs {
		if r.Err == "" {
			ok = append(ok, r)
		}
	}
	if len(ok) == 0 {
		return rs[len(rs)-1]
	}
	slices.SortFunc(ok, func(a, b Result) int {
		switch {
		case a.Rate < b.Rate:
			return -1
		case a.Rate > b.Rate:
			return 1
		}
		return 0
	})
	m := ok[len(ok)/2]
	if len(rs) > 1 {
		m.Rates = nil
		for _, r := range rs {
			m.Rates = append(m.Rates, r.Rate)
		}
		// Latency percentiles: medians of each, not of the median-rate run.
		if m.P99us > 0 {
			m.P50us = medianOf(ok, func(r Result) float64 { return r.P50us })
			m.P90us = medianOf(ok, func(r Result) float64 { return r.P90us })
			m.P99us = medianOf(ok, func(r Result) float64 { return r.P99us })
			m.P999us = medianOf(ok, func(r Result) float64 { return r.P999us })
			m.MaxUs = medianOf(ok, func(r Result) float64 { return r.MaxUs })
		}
		if m.CPUPerOpUs > 0 {
			m.CPUPerOpUs = medianOf(ok, func(r Result) float64 { return r.CPUPerOpUs })
		}
	}
	return m
}

func medianOf(rs []Result, f func(Result) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

// compare fills the NATS columns of the CAPS rows of one scenario.
func compare(rows []Result) {
	var nats *Result
	for i := range rows {
		if strings.HasPrefix(rows[i].Target, "nats") && rows[i].Err == "" {
			nats = &rows[i]
			break
		}
	}
	if nats == nil {
		return
	}
	for i := range rows {
		r := &rows[i]
		if !strings.HasPrefix(r.Target, "caps") || r.Err != "" {
			continue
		}
		if nats.Rate > 0 {
			r.NATSRate = nats.Rate
			r.Ratio = r.Rate / nats.Rate
		}
		if nats.P99us > 0 {
			r.NATSP50us, r.NATSP99us = nats.P50us, nats.P99us
			r.P99Ratio = r.P99us / nats.P99us
		}
		if nats.CPUPerOpUs > 0 && r.CPUPerOpUs > 0 {
			r.NATSCPUPerOpUs = nats.CPUPerOpUs
			r.CPURatio = nats.CPUPerOpUs / r.CPUPerOpUs
		}
	}
}
