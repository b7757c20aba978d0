package dashboard

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Metric names the traffic charts read from the hub's registry (see
// docs/OPERATIONS.md for what each counts).
const (
	metricPublishes  = "caps_publishes_total"
	metricDeliveries = "caps_deliveries_total"
	metricErrors     = "caps_errors_total"
	metricSlow       = "caps_slow_consumers_total"
	metricConns      = "caps_connections"
)

// Sample is one point of the traffic charts: rates over the second before
// T, latency quantiles over the latency window before T.
type Sample struct {
	T         int64   `json:"t"`   // Unix milliseconds
	Published float64 `json:"pub"` // messages accepted per second
	Delivered float64 `json:"dlv"` // messages handed to subscribers per second
	Errors    float64 `json:"err"` // error frames sent per second
	// P50 and P99 are latency quantiles in milliseconds, nil when nothing
	// was measured in the window.
	P50   *float64 `json:"p50"`
	P99   *float64 `json:"p99"`
	Conns int      `json:"conns"` // connected clients
}

// Totals are the counters since the hub started.
type Totals struct {
	Published     float64            `json:"published"`
	Delivered     float64            `json:"delivered"`
	Errors        map[string]float64 `json:"errors"` // by code
	SlowConsumers float64            `json:"slow_consumers"`
	Conns         map[string]float64 `json:"conns"` // by role
}

// TrafficReply answers the traffic service.
type TrafficReply struct {
	Hub         string   `json:"hub"`
	Latency     string   `json:"latency"`      // the name of what the latency quantiles measure
	LatencyHelp string   `json:"latency_help"` // what that is
	Window      int64    `json:"window_ms"`    // over how long each quantile is computed
	Every       int64    `json:"every_ms"`     // sampling interval
	Samples     []Sample `json:"samples"`
	Totals      Totals   `json:"totals"`
}

// reading is the raw state of the counters at one instant.
type reading struct {
	at                  time.Time
	pub, dlv, errs      float64
	slow                float64
	errByCode, connRole map[string]float64
	conns               float64
	hist                histogram
}

// histogram is a cumulative Prometheus histogram: counts[i] observations
// were ≤ bounds[i]; the last bound is +Inf.
type histogram struct {
	bounds []float64
	counts []float64
}

// sampler turns the hub's counters into the traffic charts' points: one
// per interval, the last keep of them in a ring.
type sampler struct {
	g       prometheus.Gatherer
	latency string // histogram metric name
	every   time.Duration
	window  time.Duration
	keep    int

	mu      sync.Mutex
	history []reading // the readings the latency window needs
	samples []Sample  // ring of the last keep samples, oldest first
	last    reading
}

func newSampler(g prometheus.Gatherer, latency string, every, window time.Duration, keep int) *sampler {
	return &sampler{g: g, latency: latency, every: every, window: window, keep: keep}
}

// run samples every interval until ctx ends.
func (s *sampler) run(ctx context.Context) {
	t := time.NewTicker(s.every)
	defer t.Stop()
	s.take(time.Now())
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.take(now)
		}
	}
}

// take reads the counters and, from the second reading on, adds a sample.
func (s *sampler) take(now time.Time) (Sample, bool) {
	r := s.read(now)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.history = append(s.history, r)
	// Keep the readings back to one at least window old.
	cut := 0
	for i := range s.history {
		if now.Sub(s.history[i].at) >= s.window {
			cut = i
		}
	}
	s.history = s.history[cut:]
	prev := s.last
	s.last = r
	if prev.at.IsZero() {
		return Sample{}, false
	}
	dt := r.at.Sub(prev.at).Seconds()
	if dt <= 0 {
		return Sample{}, false
	}
	smp := Sample{
		T:         r.at.UnixMilli(),
		Published: rate(r.pub, prev.pub, dt),
		Delivered: rate(r.dlv, prev.dlv, dt),
		Errors:    rate(r.errs, prev.errs, dt),
		Conns:     int(r.conns),
	}
	base := s.history[0]
	if d := r.hist.minus(base.hist); d.total() > 0 {
		smp.P50 = ms(d.quantile(0.5))
		smp.P99 = ms(d.quantile(0.99))
	}
	s.samples = append(s.samples, smp)
	if len(s.samples) > s.keep {
		s.samples = append(s.samples[:0], s.samples[len(s.samples)-s.keep:]...)
	}
	return smp, true
}

// since returns the samples after t (Unix ms) and the current totals.
func (s *sampler) since(t int64) ([]Sample, Totals) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Sample
	for _, smp := range s.samples {
		if smp.T > t {
			out = append(out, smp)
		}
	}
	return out, s.totalsLocked()
}

func (s *sampler) totalsLocked() Totals {
	r := s.last
	return Totals{Published: r.pub, Delivered: r.dlv, Errors: r.errByCode, SlowConsumers: r.slow, Conns: r.connRole}
}

// read gathers the registry once.
func (s *sampler) read(now time.Time) reading {
	r := reading{at: now, errByCode: map[string]float64{}, connRole: map[string]float64{}}
	mfs, err := s.g.Gather()
	if err != nil && len(mfs) == 0 {
		return r
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case metricPublishes:
			r.pub = sum(mf)
		case metricDeliveries:
			r.dlv = sum(mf)
		case metricSlow:
			r.slow = sum(mf)
		case metricErrors:
			for _, m := range mf.GetMetric() {
				v := value(m)
				r.errs += v
				r.errByCode[label(m, "code")] += v
			}
		case metricConns:
			for _, m := range mf.GetMetric() {
				v := value(m)
				r.conns += v
				if v > 0 {
					r.connRole[label(m, "role")] += v
				}
			}
		case s.latency:
			r.hist = mergeHistograms(mf)
		}
	}
	return r
}

func sum(mf *dto.MetricFamily) float64 {
	var t float64
	for _, m := range mf.GetMetric() {
		t += value(m)
	}
	return t
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// mergeHistograms adds up every series of a histogram family (all label
// values) into one histogram.
func mergeHistograms(mf *dto.MetricFamily) histogram {
	var h histogram
	for _, m := range mf.GetMetric() {
		hm := m.GetHistogram()
		if hm == nil {
			continue
		}
		if h.bounds == nil {
			for _, b := range hm.GetBucket() {
				h.bounds = append(h.bounds, b.GetUpperBound())
				h.counts = append(h.counts, 0)
			}
			h.bounds = append(h.bounds, math.Inf(1))
			h.counts = append(h.counts, 0)
		}
		if len(hm.GetBucket())+1 != len(h.bounds) {
			continue // series with other buckets: cannot be added up
		}
		for i, b := range hm.GetBucket() {
			h.counts[i] += float64(b.GetCumulativeCount())
		}
		h.counts[len(h.counts)-1] += float64(hm.GetSampleCount())
	}
	return h
}

// minus returns the observations made between base and h.
func (h histogram) minus(base histogram) histogram {
	if len(base.counts) != len(h.counts) {
		return h
	}
	d := histogram{bounds: h.bounds, counts: make([]float64, len(h.counts))}
	for i := range h.counts {
		d.counts[i] = max(h.counts[i]-base.counts[i], 0)
	}
	return d
}

func (h histogram) total() float64 {
	if len(h.counts) == 0 {
		return 0
	}
	return h.counts[len(h.counts)-1]
}

// quantile estimates the q-quantile by linear interpolation inside the
// bucket it falls in, as Prometheus's histogram_quantile does; in the +Inf
// bucket it answers the largest finite bound.
func (h histogram) quantile(q float64) float64 {
	total := h.total()
	if total == 0 {
		return math.NaN()
	}
	rank := q * total
	for i, c := range h.counts {
		if c < rank {
			continue
		}
		if math.IsInf(h.bounds[i], 1) {
			if i == 0 {
				return math.NaN()
			}
			return h.bounds[i-1]
		}
		lower, below := 0.0, 0.0
		if i > 0 {
			lower, below = h.bounds[i-1], h.counts[i-1]
		}
		inBucket := c - below
		if inBucket <= 0 {
			return h.bounds[i]
		}
		return lower + (h.bounds[i]-lower)*(rank-below)/inBucket
	}
	return h.bounds[len(h.bounds)-1]
}

func rate(now, before, dt float64) float64 {
	if now < before { // a counter reset: count from zero
		before = 0
	}
	return (now - before) / dt
}

// ms converts seconds to milliseconds, rounded to a microsecond; nil for NaN.
func ms(sec float64) *float64 {
	if math.IsNaN(sec) {
		return nil
	}
	v := math.Round(sec*1e6) / 1e3
	return &v
}
