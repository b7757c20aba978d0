package parcel

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// orderMetrics count order transitions and time the stages of an order's
// life, from the hub's clock in the order's timeline. Each hub counts the
// transitions it recorded, so a cluster's totals are the sum over hubs.
type orderMetrics struct {
	transitions *prometheus.CounterVec
	handovers   prometheus.Counter
	stages      *prometheus.HistogramVec
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
			Help: "Order transitions recorded by this hub, by the status reached (pickup, assigned, in-transit, delivered).",
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
	}
	for _, c := range []prometheus.Collector{m.transitions, m.handovers, m.stages} {
		if err := r.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
		}
	}
	// Make every series visible from the start, at zero.
	for _, s := range []Status{StatusPickup, StatusAssigned, StatusInTransit, StatusDelivered} {
		m.transitions.WithLabelValues(string(s))
	}
	return m, nil
}

// record counts the transition o has just made (its last step) and times
// the stage it ends.
func (m *orderMetrics) record(o *Order) {
	if m == nil || len(o.Timeline) == 0 {
		return
	}
	last := o.Timeline[len(o.Timeline)-1]
	m.transitions.WithLabelValues(string(last.Status)).Inc()
	posted := o.At(StatusPickup)
	observe := func(stage string, from time.Time) {
		if !from.IsZero() && !last.Time.Before(from) {
			m.stages.WithLabelValues(stage).Observe(last.Time.Sub(from).Seconds())
		}
	}
	switch last.Status {
	case StatusAssigned:
		assigned := 0
		for _, st := range o.Timeline {
			if st.Status == StatusAssigned {
				assigned++
			}
		}
		if assigned > 1 {
			m.handovers.Inc()
			return
		}
		observe(stageWaitDriver, posted)
	case StatusInTransit:
		observe(stageToTransit, posted)
	case StatusDelivered:
		observe(stageTotal, posted)
		observe(stageTransit, o.At(StatusInTransit))
	}
}
