package hub

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caps-hub/caps/internal/engine"
)

// syncMetrics describe the engine's group sync (internal/engine/store_sync.go):
// how many stored publishes share one sync to disk, how long a sync takes,
// and how many failed (each failure refused the publishes waiting for it).
type syncMetrics struct {
	waiters prometheus.Histogram
	seconds prometheus.Histogram
	errors  prometheus.Counter
}

func registerSyncMetrics(r *prometheus.Registry) *syncMetrics {
	m := &syncMetrics{
		waiters: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "caps_store_sync_publishes",
			Help:    "Stored publishes made durable by one sync to disk (group sync; --sync-always with the embedded engine).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 9), // 1 … 256
		}),
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "caps_store_sync_seconds",
			Help:    "Time one sync to disk of the data directory's file system takes (group sync).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12), // 100µs … ~2.4s
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caps_store_sync_errors_total",
			Help: "Syncs to disk that failed; the publishes waiting for them were refused (unavailable).",
		}),
	}
	r.MustRegister(m.waiters, m.seconds, m.errors)
	return m
}

// observe records a sync round; background rounds (no publish waiting)
// count in the time and errors only.
func (m *syncMetrics) observe(i engine.SyncInfo) {
	if i.Waiters > 0 {
		m.waiters.Observe(float64(i.Waiters))
	}
	m.seconds.Observe(i.Took.Seconds())
	if i.Err != nil {
		m.errors.Inc()
	}
}
