package webhook

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Delivery results, the values of caps_webhook_deliveries_total's label
// and of Attempt.Result.
const (
	ResultDelivered = "delivered" // 2xx
	ResultRetry     = "retry"     // failed; retried later
	ResultGaveUp    = "gave_up"   // failed past the retry window; dropped
	ResultDisabled  = "disabled"  // failed, and the endpoint was disabled (410, or failing too long)
	ResultDropped   = "dropped"   // not attempted: the endpoint was deleted or disabled
)

// Reasons an endpoint is disabled, the values of
// caps_webhook_endpoints_disabled_total's label.
const (
	reasonFailing = "failing" // no success for longer than the retry window
	reasonGone    = "gone"    // 410 Gone
	reasonBacklog = "backlog" // its pending deliveries reached MaxPending, or filled the queue
)

// metrics are the service's Prometheus metrics (docs/OPERATIONS.md lists them).
type metrics struct {
	deliveries *prometheus.CounterVec
	attempt    prometheus.Histogram
	pending    prometheus.Gauge
	endpoints  *prometheus.GaugeVec
	disabled   *prometheus.CounterVec
	events     *prometheus.CounterVec
}

func newMetrics(r prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caps_webhook_deliveries_total",
			Help: "Webhook delivery attempts by result: delivered, retry, gave_up, disabled, dropped.",
		}, []string{"result"}),
		attempt: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "caps_webhook_attempt_seconds",
			Help:    "Duration of one webhook delivery attempt, from dialling to the end of the response.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 10), // 5ms … ~19s
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "caps_webhook_pending",
			Help: "Webhook deliveries waiting or in flight, all endpoints (refreshed periodically).",
		}),
		endpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "caps_webhook_endpoints",
			Help: "Webhook endpoints by state: enabled or disabled.",
		}, []string{"state"}),
		disabled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caps_webhook_endpoints_disabled_total",
			Help: "Webhook endpoints this hub disabled, by reason: failing, gone (410), backlog (a queue cap).",
		}, []string{"reason"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caps_webhook_events_total",
			Help: "Source events by result: queued (for at least one endpoint), ignored (no endpoint wants it), invalid (refused, see the log).",
		}, []string{"result"}),
	}
	for _, r := range []string{ResultDelivered, ResultRetry, ResultGaveUp, ResultDisabled, ResultDropped} {
		m.deliveries.WithLabelValues(r)
	}
	for _, r := range []string{reasonFailing, reasonGone, reasonBacklog} {
		m.disabled.WithLabelValues(r)
	}
	for _, r := range []string{"queued", "ignored", "invalid"} {
		m.events.WithLabelValues(r)
	}
	if r == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.deliveries, m.attempt, m.pending, m.endpoints, m.disabled, m.events} {
		if err := r.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("webhook metrics: a service is already registered with this registry: %w", err)
			}
			return nil, fmt.Errorf("webhook metrics: %w", err)
		}
	}
	return m, nil
}
