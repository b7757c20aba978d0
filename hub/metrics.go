package hub

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the hub's Prometheus metrics, in a registry of its own so
// that several hubs can live in one process (tests, benchmarks).
// docs/OPERATIONS.md lists them.
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
	tlsErrors     *prometheus.CounterVec
	publishes     *prometheus.CounterVec
	// The two children of publishes, looked up once: WithLabelValues hashes
	// and locks on every call, and observePublish runs for every publish.
	publishedLive, publishedStored prometheus.Counter
	storeLatency                   prometheus.Histogram
	// deliveryLatency is what a subscriber waits: from a durable message
	// being stored to its hand-over to a session (the dashboard charts it).
	deliveryLatency prometheus.Histogram
	// The HTTP port's connections (hub/httpguard.go).
	httpConns   prometheus.Gauge
	httpRefused *prometheus.CounterVec
	// expiredSessions counts sessions closed when their token expired.
	expiredSessions prometheus.Counter
	// connsRefused counts connections refused at a limit (session.go).
	connsRefused *prometheus.CounterVec
	// panics counts panics contained to one session (contain.go).
	panics *prometheus.CounterVec
	// scrapeOnly holds what costs an engine request to collect (the
	// streams): served at /metrics, not gathered by Host.Gatherer, which
	// the dashboard reads every second.
	scrapeOnly *prometheus.Registry
	syncs      *syncMetrics
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
		errors:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "caps_errors_total", Help: "Error frames sent, by code (forbidden, rate_limited, slow_consumer, unauthorized…)."}, []string{"code"}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{Name: "caps_slow_consumers_total", Help: "Clients disconnected for not reading fast enough."}),
		tlsErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caps_tls_handshake_errors_total",
			Help: "Failed TLS handshakes: plaintext (a client without TLS) or handshake (certificate, version…).",
		}, []string{"reason"}),
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caps_publishes_total", Help: "Messages accepted from clients and apps, by kind: stored (acknowledged by the engine) or live.",
		}, []string{"kind"}),
		storeLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "caps_store_publish_seconds",
			Help:    "Time for the engine to acknowledge a stored publish (includes the fsync with --sync-always).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12), // 100µs … ~2.4s
		}),
		deliveryLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "caps_delivery_latency_seconds",
			Help: "Time from a durable message being stored (the engine's timestamp) to its delivery to a subscriber: " +
				"includes waiting for a subscriber with room (a free driver) and redeliveries.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2.5, 14), // 200µs … ~30s
		}),
		httpConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "caps_http_connections", Help: "Open connections on the HTTP port (WebSocket sessions included).",
		}),
		httpRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caps_http_connections_refused_total",
			Help: "HTTP connections over a limit, by limit: total (--http-max-conns) or per_address (--http-max-conns-per-addr); they get health checks only, or are closed.",
		}, []string{"limit"}),
		expiredSessions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caps_sessions_expired_total", Help: "Sessions closed because their token expired.",
		}),
		connsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caps_connections_refused_total",
			Help: "Connections to the CAPS port refused (too_many_conns), by limit: total (--max-conns), per_address (--max-conns-per-addr) or classroom_silent (--classroom-max-silent).",
		}, []string{"limit"}),
		panics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caps_panics_total",
			Help: "Panics contained to one session's operation or connection, by where: an app's hook or service, the classroom router, a session's read loop (a bug: each is logged with its stack).",
		}, []string{"where"}),
	}
	m.publishedLive, m.publishedStored = m.publishes.WithLabelValues("live"), m.publishes.WithLabelValues("stored")
	m.syncs = registerSyncMetrics(r)
	r.MustRegister(m.conns, m.framesIn, m.framesOut, m.bytesIn, m.bytesOut, m.deliveries, m.errors, m.slowConsumers,
		m.tlsErrors, m.publishes, m.storeLatency, m.deliveryLatency, m.httpConns, m.httpRefused, m.expiredSessions, m.connsRefused, m.panics,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observe adds the metrics computed from the hub's state at scrape time.
func (m *Metrics) observe(h *Hub) {
	m.Registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "caps_sockets_open", Help: "Open client connections, including those still in their handshake.",
		}, func() float64 { return float64(h.nconns.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "caps_classroom_silent_connections",
			Help: "Classroom connections that have sent nothing yet (presumed drivers): at most --classroom-max-silent, each for at most --classroom-silent-timeout.",
		}, func() float64 { return float64(h.silent.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "caps_engine_ready", Help: "1 while the engine (NATS JetStream) is reachable, else 0 (publishes are refused).",
		}, func() float64 {
			if h.EngineReady() {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "caps_jetstream_available",
			Help: "1 while JetStream answers (it does not on the minority side of a partition), else 0 (stored publishes fail).",
		}, func() float64 {
			if h.eng != nil && h.eng.JetStreamAvailable() {
				return 1
			}
			return 0
		}),
		newQueueCollector(h),
	)
	m.scrapeOnly = prometheus.NewRegistry()
	m.scrapeOnly.MustRegister(newStreamCollector(h))
}

// streamCollector reports what every stream and bucket of the engine holds
// against its limits, read from the engine at scrape time. On a cluster
// every hub reports the same streams: do not sum them over hubs.
type streamCollector struct {
	h                                       *Hub
	bytes, msgs, subjects, maxBytes, maxAge *prometheus.Desc
	consumers                               *prometheus.Desc
}

func newStreamCollector(h *Hub) *streamCollector {
	l := []string{"stream"}
	return &streamCollector{
		h:        h,
		bytes:    prometheus.NewDesc("caps_stream_bytes", "Bytes stored in a stream or bucket (KV_<bucket>).", l, nil),
		msgs:     prometheus.NewDesc("caps_stream_messages", "Messages stored in a stream or bucket.", l, nil),
		subjects: prometheus.NewDesc("caps_stream_subjects", "Distinct subjects (topics, keys) in a stream or bucket: for CHAT_ROOMS, rooms with history.", l, nil),
		maxBytes: prometheus.NewDesc("caps_stream_max_bytes", "A stream's or bucket's byte limit (absent when it has none).", l, nil),
		maxAge:   prometheus.NewDesc("caps_stream_max_age_seconds", "How long a stream or bucket keeps a message (absent when for ever).", l, nil),
		consumers: prometheus.NewDesc("caps_stream_consumers",
			"Consumers of a stream: durables (limited by --max-durables) and the short-lived ones reading a history.", l, nil),
	}
}

func (c *streamCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.bytes
	ch <- c.msgs
	ch <- c.subjects
	ch <- c.maxBytes
	ch <- c.maxAge
	ch <- c.consumers
}

func (c *streamCollector) Collect(ch chan<- prometheus.Metric) {
	if c.h.eng == nil || !c.h.EngineReady() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), streamScrapeTimeout)
	defer cancel()
	list := c.h.eng.JS.ListStreams(ctx)
	for info := range list.Info() {
		name := info.Config.Name
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(info.State.Bytes), name)
		ch <- prometheus.MustNewConstMetric(c.msgs, prometheus.GaugeValue, float64(info.State.Msgs), name)
		ch <- prometheus.MustNewConstMetric(c.subjects, prometheus.GaugeValue, float64(info.State.NumSubjects), name)
		ch <- prometheus.MustNewConstMetric(c.consumers, prometheus.GaugeValue, float64(info.State.Consumers), name)
		if info.Config.MaxBytes > 0 {
			ch <- prometheus.MustNewConstMetric(c.maxBytes, prometheus.GaugeValue, float64(info.Config.MaxBytes), name)
		}
		if info.Config.MaxAge > 0 {
			ch <- prometheus.MustNewConstMetric(c.maxAge, prometheus.GaugeValue, info.Config.MaxAge.Seconds(), name)
		}
	}
	if err := list.Err(); err != nil {
		c.h.log.Debug("metrics: list streams", "err", err)
	}
}

// queueCollector reports the sessions' outbound queues: their total, the
// largest, and how close the largest is to the slow-consumer limit.
type queueCollector struct {
	h                    *Hub
	total, largest, fill *prometheus.Desc
	frames               *prometheus.Desc
}

func newQueueCollector(h *Hub) *queueCollector {
	return &queueCollector{
		h:       h,
		total:   prometheus.NewDesc("caps_outbound_queued_bytes", "Bytes queued to clients and not yet written, over all sessions.", nil, nil),
		frames:  prometheus.NewDesc("caps_outbound_queued_frames", "Frames queued to clients and not yet written, over all sessions.", nil, nil),
		largest: prometheus.NewDesc("caps_outbound_queued_bytes_max", "Bytes queued to the session with the longest outbound queue.", nil, nil),
		fill:    prometheus.NewDesc("caps_outbound_queue_fill_max", "Longest outbound queue as a fraction of --max-pending (1 = cut off as a slow consumer).", nil, nil),
	}
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.total
	ch <- c.frames
	ch <- c.largest
	ch <- c.fill
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	var total, frames, largest int
	for _, s := range c.h.allSessions() {
		s.mu.Lock()
		n, f := s.outBytes, len(s.out)
		s.mu.Unlock()
		total += n
		frames += f
		largest = max(largest, n)
	}
	ch <- prometheus.MustNewConstMetric(c.total, prometheus.GaugeValue, float64(total))
	ch <- prometheus.MustNewConstMetric(c.frames, prometheus.GaugeValue, float64(frames))
	ch <- prometheus.MustNewConstMetric(c.largest, prometheus.GaugeValue, float64(largest))
	ch <- prometheus.MustNewConstMetric(c.fill, prometheus.GaugeValue, float64(largest)/float64(c.h.cfg.MaxPending))
}

// observePublish records one accepted publish.
func (m *Metrics) observePublish(stored bool, took time.Duration) {
	if stored {
		m.publishedStored.Inc()
		m.storeLatency.Observe(took.Seconds())
		return
	}
	m.publishedLive.Inc()
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(prometheus.Gatherers{m.Registry, m.scrapeOnly}, promhttp.HandlerOpts{Registry: m.Registry})
}

// Metrics returns the registry where an app registers its own collectors
// (the parcel dispatcher's order counts and latencies), served with the
// hub's at /metrics. Names should start with "caps_".
func (x *Host) Metrics() prometheus.Registerer { return x.h.metrics.Registry }
