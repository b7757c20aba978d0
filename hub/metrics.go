package hub

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the hub's Prometheus metrics, in a registry of its own so
// that several hubs can live in one process (tests, benchmarks).
type Metrics struct {
	Registry      *prometheus.Registry
	conns         *prometheus.GaugeVec
	framesIn      prometheus.Counter
	framesOut     prometheus.Counter
	bytesIn       prometheus.Counter
	bytesOut      prometheus.Counter
	deliveries    prometheus.Counter
	errors        *prometheus.CounterVec
	slowConsumers prometheus.Counter
}

func newMetrics() *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		conns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "caps_connections", Help: "Connected clients by role.",
		}, []string{"role"}),
		framesIn:      prometheus.NewCounter(prometheus.CounterOpts{Name: "caps_frames_in_total", Help: "Frames received from clients."}),
		framesOut:     prometheus.NewCounter(prometheus.CounterOpts{Name: "caps_frames_out_total", Help: "Frames written to clients."}),
		bytesIn:       prometheus.NewCounter(prometheus.CounterOpts{Name: "caps_bytes_in_total", Help: "Frame bytes received from clients."}),
		bytesOut:      prometheus.NewCounter(prometheus.CounterOpts{Name: "caps_bytes_out_total", Help: "Bytes written to clients."}),
		deliveries:    prometheus.NewCounter(prometheus.CounterOpts{Name: "caps_deliveries_total", Help: "Messages queued to subscribers."}),
		errors:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "caps_errors_total", Help: "Error frames sent, by code."}, []string{"code"}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{Name: "caps_slow_consumers_total", Help: "Clients disconnected for not reading fast enough."}),
	}
	r.MustRegister(m.conns, m.framesIn, m.framesOut, m.bytesIn, m.bytesOut, m.deliveries, m.errors, m.slowConsumers,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}
