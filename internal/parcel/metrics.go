package parcel

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// orderMetrics count order transitions and refusals, and time the stages
// of an order's life by the hub's clock in its events. Each hub counts the
// transitions it recorded, so a cluster's totals are the sum over hubs.
type orderMetrics struct {
	transitions *prometheus.CounterVec
	handovers   prometheus.Counter
	stages      *prometheus.HistogramVec
	refusals    *prometheus.CounterVec
	stored      prometheus.Gauge
	committed   prometheus.Gauge
}

// Stages of an order timed by caps_order_stage_seconds.
const (
	stageWaitDriver = "pickup_to_assigned"      // posted until first handed to a driver
	stageToTransit  = "pickup_to_in_transit"    // posted until on its way
	stageTransit    = "in_transit_to_delivered" // on its way until delivered
	stageTotal      = "pickup_to_delivered"     // the whole order
)

func newOrderMetrics(r prometheus.Registerer) (*orderMetrics, error) {
	m := &orderMetrics{
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caps_order_transitions_total",
			Help: "Order transitions recorded by this hub, by the status reached (created, assigned, in-transit, delivered, failed, returned, cancelled).",
		}, []string{"status"}),
		handovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caps_order_handovers_total",
			Help: "Orders handed from one driver to another (the first vanished or did not acknowledge in time).",
		}),
		stages: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "caps_order_stage_seconds",
			Help:    "Time between two points of an order's life, by stage: " + stageWaitDriver + ", " + stageToTransit + ", " + stageTransit + ", " + stageTotal + ".",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 16), // 10ms … ~5.5min
		}, []string{"stage"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caps_order_refusals_total",
			Help: "Order events this hub refused, by rule (" + RuleStoreFull + ": a new order refused because the order store is nearly full).",
		}, []string{"rule"}),
		stored: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "caps_order_store_bytes",
			Help: "Bytes the parcel stream holds (every hub's orders), as last measured.",
		}),
		committed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "caps_order_store_committed_bytes",
			Help: "Bytes the parcel stream holds plus what the orders in flight will still store; new orders are refused at 90% of --parcel-max-bytes.",
		}),
	}
	for _, c := range []prometheus.Collector{m.transitions, m.handovers, m.stages, m.refusals, m.stored, m.committed} {
		if err := r.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
		}
	}
	// Make every series visible from the start, at zero.
	for _, s := range Statuses {
		m.transitions.WithLabelValues(string(s))
	}
	m.refusals.WithLabelValues(RuleStoreFull)
	return m, nil
}

// record counts the transition from prev (nil: unknown to this hub, or a
// new order) to next, and times the stage it ends.
func (m *orderMetrics) record(prev, next *Record) {
	if m == nil {
		return
	}
	m.transitions.WithLabelValues(string(next.Status)).Inc()
	observe := func(stage string, from time.Time) {
		if !from.IsZero() && !next.Time.Before(from) {
			m.stages.WithLabelValues(stage).Observe(next.Time.Sub(from).Seconds())
		}
	}
	switch next.Event {
	case EventAssigned:
		if prev != nil && prev.Status == StatusAssigned {
			m.handovers.Inc()
			return
		}
		if prev != nil && prev.Attempt == 1 {
			observe(stageWaitDriver, next.Created)
		}
	case EventInTransit:
		observe(stageToTransit, next.Created)
	case EventDelivered:
		observe(stageTotal, next.Created)
		if prev != nil && prev.Status == StatusInTransit {
			observe(stageTransit, prev.Time)
		}
	}
}

// refused counts a refusal by its rule.
func (m *orderMetrics) refused(rule string) {
	if m != nil {
		m.refusals.WithLabelValues(rule).Inc()
	}
}

// usage records the order store's size.
func (m *orderMetrics) usage(stored, committed int64) {
	if m != nil {
		m.stored.Set(float64(stored))
		m.committed.Set(float64(committed))
	}
}
