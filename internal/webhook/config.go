package webhook

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Service. Every hub of a cluster must run with the same
// values: the streams and consumers they describe are shared.
type Config struct {
	// Engine is the hub's engine; required: an *engine.Engine, or an app's
	// view of it (HostEngine).
	Engine Engine
	// Source feeds the service with events; without it (Source.Map nil) the
	// service manages endpoints and delivers tasks written by other hubs,
	// but reads no events itself.
	Source Source
	// Registerer receives the service's metrics (nil: not exported).
	Registerer prometheus.Registerer
	// Logger gets the service's logs (nil: slog.Default()).
	Logger *slog.Logger
	// HubName names this hub in logs and in the delivery log.
	HubName string

	// AllowHTTP lists the hosts (names or IP addresses, as written in the
	// URL) to which plain http is allowed; every other URL must be https.
	AllowHTTP []string
	// AllowPrivate lists the networks a delivery may connect to although
	// they are loopback, private, link-local or otherwise internal
	// addresses, which are refused by default (see the package doc: SSRF).
	AllowPrivate []netip.Prefix
	// TLS is the client TLS configuration for https deliveries (nil: the
	// system's roots). Tests set RootCAs to trust their receivers.
	TLS *tls.Config

	// RetryWindow is how long a delivery is retried, and how long an
	// endpoint may fail without a success before it is disabled (default 72h).
	RetryWindow time.Duration
	// BackoffBase is the wait before the first retry; each further retry
	// waits twice as long, up to BackoffMax, each wait randomised by ±20 %
	// (defaults 5s and 2h).
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// RequestTimeout bounds one attempt, from dialling to the end of the
	// response's headers (default 10s).
	RequestTimeout time.Duration
	// MaxInFlight bounds the attempts in flight to one endpoint, across all
	// hubs (default 4).
	MaxInFlight int

	// MaxEndpointsPerStore caps a store's endpoints (default 10).
	MaxEndpointsPerStore int
	// MaxEndpoints caps the endpoints of all stores together (default 1000).
	MaxEndpoints int
	// MaxURLLength caps an endpoint URL, in bytes (default 1024).
	MaxURLLength int
	// MaxPending caps the deliveries waiting for one endpoint; an endpoint
	// whose backlog reaches it is disabled (default 10000).
	MaxPending int64
	// MaxQueueBytes caps the deliveries stream; when it is full the endpoint
	// with the largest backlog is disabled (default 1 GiB).
	MaxQueueBytes int64
	// MaxEventBytes caps one event's JSON body (default 64 KiB); larger
	// source events are not delivered (logged and counted as invalid).
	MaxEventBytes int
	// LogSize is how many attempts each endpoint's delivery log keeps
	// (default 100); LogMaxAge how long (default 30 days).
	LogSize   int
	LogMaxAge time.Duration
	// EventTypes, when set, are the only event types an endpoint's filter
	// may name.
	EventTypes []string

	// StatsInterval is how often the pending gauge is refreshed (default 10s).
	StatsInterval time.Duration
}

// Source says where events come from: a durable JetStream consumer on an
// application's stream, and how its messages become events.
type Source struct {
	// Stream is the application's stream, e.g. CAPS_PARCELS.
	Stream string
	// Subjects are the consumer's filter subjects (NATS subjects, with the
	// engine's prefix: engine.Subject("parcel.>")); empty means all.
	Subjects []string
	// Durable names the consumer, shared by every hub (default "caps-webhooks").
	Durable string
	// AckWait is how long a source message may be handled before JetStream
	// hands it to another hub (default 30s).
	AckWait time.Duration
	// Map turns a source message into an event and the store whose
	// endpoints receive it; ok false skips the message. Map must be pure:
	// a message handed again (after a crash) must give the same event, and
	// Event.ID must be the same every time (it is the webhook-id and the
	// de-duplication key). Leaving Event.ID empty uses the message's
	// stream sequence; a zero Event.Time uses the time it was stored.
	Map func(msg jetstream.Msg) (ev Event, store string, ok bool)
}

// Defaults.
const (
	DefaultRetryWindow          = 72 * time.Hour
	DefaultBackoffBase          = 5 * time.Second
	DefaultBackoffMax           = 2 * time.Hour
	DefaultRequestTimeout       = 10 * time.Second
	DefaultMaxInFlight          = 4
	DefaultMaxEndpointsPerStore = 10
	DefaultMaxEndpoints         = 1000
	DefaultMaxURLLength         = 1024
	DefaultMaxPending           = 10000
	DefaultMaxQueueBytes        = 1 << 30
	DefaultMaxEventBytes        = 64 << 10
	DefaultLogSize              = 100
	DefaultLogMaxAge            = 30 * 24 * time.Hour
	DefaultSourceDurable        = "caps-webhooks"
	DefaultSourceAckWait        = 30 * time.Second
)

// withDefaults fills in zero fields and refuses values that make no sense.
func (c Config) withDefaults() (Config, error) {
	if c.Engine == nil {
		return c, errors.New("webhook: Config.Engine is required")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defInt := func(n *int, v int) {
		if *n == 0 {
			*n = v
		}
	}
	def(&c.RetryWindow, DefaultRetryWindow)
	def(&c.BackoffBase, DefaultBackoffBase)
	def(&c.BackoffMax, DefaultBackoffMax)
	def(&c.RequestTimeout, DefaultRequestTimeout)
	def(&c.LogMaxAge, DefaultLogMaxAge)
	def(&c.StatsInterval, 10*time.Second)
	defInt(&c.MaxInFlight, DefaultMaxInFlight)
	defInt(&c.MaxEndpointsPerStore, DefaultMaxEndpointsPerStore)
	defInt(&c.MaxEndpoints, DefaultMaxEndpoints)
	defInt(&c.MaxURLLength, DefaultMaxURLLength)
	defInt(&c.MaxEventBytes, DefaultMaxEventBytes)
	defInt(&c.LogSize, DefaultLogSize)
	if c.MaxPending == 0 {
		c.MaxPending = DefaultMaxPending
	}
	if c.MaxQueueBytes == 0 {
		c.MaxQueueBytes = DefaultMaxQueueBytes
	}
	if c.Source.Durable == "" {
		c.Source.Durable = DefaultSourceDurable
	}
	def(&c.Source.AckWait, DefaultSourceAckWait)
	switch {
	case c.RetryWindow < 0, c.BackoffBase < 0, c.BackoffMax < c.BackoffBase, c.RequestTimeout < 0, c.LogMaxAge < 0,
		c.StatsInterval < 0, c.Source.AckWait < 0:
		return c, errors.New("webhook: durations must be positive, and BackoffMax at least BackoffBase")
	case c.MaxInFlight < 1 || c.MaxInFlight > 1000:
		return c, fmt.Errorf("webhook: MaxInFlight %d is outside 1-1000", c.MaxInFlight)
	case c.MaxEndpointsPerStore < 1, c.MaxEndpoints < 1, c.MaxURLLength < 16, c.MaxPending < 1,
		c.MaxQueueBytes < 1<<10, c.MaxEventBytes < 256, c.LogSize < 1:
		return c, errors.New("webhook: limits must be positive (MaxURLLength ≥ 16, MaxQueueBytes ≥ 1 KiB, MaxEventBytes ≥ 256)")
	case c.Source.Map != nil && c.Source.Stream == "":
		return c, errors.New("webhook: Source.Map needs Source.Stream")
	}
	hosts := make([]string, 0, len(c.AllowHTTP))
	for _, h := range c.AllowHTTP {
		hosts = append(hosts, strings.ToLower(strings.Trim(strings.TrimSpace(h), "[]")))
	}
	c.AllowHTTP = hosts
	return c, nil
}

// ParseHosts splits a comma-separated flag value such as
// "--webhook-allow-http receiver.lan,10.0.0.7" into host names.
func ParseHosts(s string) []string {
	var out []string
	for _, h := range strings.Split(s, ",") {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	return out
}

// ParsePrefixes parses a comma-separated list of networks or addresses
// ("10.0.0.0/8,127.0.0.1") for Config.AllowPrivate; an address alone is a
// network of one.
func ParsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, p := range ParseHosts(s) {
		if !strings.Contains(p, "/") {
			a, err := netip.ParseAddr(strings.Trim(p, "[]"))
			if err != nil {
				return nil, fmt.Errorf("%q is neither an address nor a network (CIDR)", p)
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		pf, err := netip.ParsePrefix(p)
		if err != nil {
			return nil, fmt.Errorf("%q is neither an address nor a network (CIDR): %w", p, err)
		}
		if pf.Addr().Is4In6() && pf.Bits() >= 96 {
			pf = netip.PrefixFrom(pf.Addr().Unmap(), pf.Bits()-96)
		}
		out = append(out, pf.Masked())
	}
	return out, nil
}
