package hub

import (
	"crypto/tls"
	"io"
	"log/slog"
	"time"
)

// Config is the hub's configuration. The zero value of each field means its
// default, as documented on the field.
type Config struct {
	// Addr is the TCP address for CAPS clients (default ":3000").
	Addr string
	// HTTPAddr serves /healthz, /readyz, /metrics, /ws and the dashboard
	// (default ":8080"; "off" disables it).
	HTTPAddr string
	// DataDir holds the embedded engine's store. Required unless NATSURLs is set.
	DataDir string
	// NATSURLs, when set, joins an external NATS cluster instead of embedding one.
	NATSURLs string
	// Replicas for streams and buckets (0 = 3 on a cluster of 3+, else 1).
	Replicas int
	// Name identifies this hub in logs, events and WELCOME (default: host name).
	Name string

	// SyncAlways makes the embedded engine fsync before acknowledging (default
	// true: an acknowledged publish survives kill -9 and power loss).
	SyncAlways *bool
	// EngineCluster makes the embedded engine a NATS cluster member.
	EngineCluster EngineCluster

	// TLS, when set, serves TCP and HTTP over TLS.
	TLS *tls.Config

	// Auth authenticates HELLOs; nil runs the hub open (identities are self-declared).
	Auth Authenticator
	// Classroom allows the classroom JSON dialect: ClassroomAuto (the
	// default: only when Auth is nil), ClassroomOn or ClassroomOff.
	Classroom string
	// ClassroomGrace is how long a classroom connection may stay silent
	// before it is taken for what an app presumes of silent ones — the
	// parcel app: a driver (default 6s, longer than the classroom vendor's
	// 5 s interval, so that a vendor is not mistaken for a driver before its
	// first order).
	ClassroomGrace time.Duration
	// Text serves plain-text clients (nc, telnet) when an app gives their
	// lines a meaning (chat): TextAuto (the default: with Auth, a client
	// shows a token first), TextOn (with Auth, a client without a token is
	// a guest) or TextOff.
	Text string
	// TextAddr, when set, is a TCP address where only text clients are
	// served, greeted as soon as they connect (the client port cannot
	// greet: a classroom driver would choke on it).
	TextAddr string
	// ClassroomMaxSilent bounds the classroom connections that have sent
	// nothing yet (default half of MaxConns, at most 1000): one more
	// silent connection is closed at the handshake deadline, so silent
	// sockets cannot take every place from clients that speak.
	// ClassroomSilentTimeout closes a classroom connection that has sent
	// nothing for that long (default 1h).
	ClassroomMaxSilent     int
	ClassroomSilentTimeout time.Duration
	// AllowedOrigins for WebSocket upgrades (host patterns); empty allows same-origin only,
	// "*" allows any origin.
	AllowedOrigins []string

	// HTTPMaxConns bounds the HTTP port's open connections (WebSocket
	// sessions included), HTTPMaxConnsPerAddr those from one IP address
	// (defaults 10000 and 256). Over them a connection gets health checks
	// only, while a small headroom lasts, and is closed otherwise.
	HTTPMaxConns        int
	HTTPMaxConnsPerAddr int
	// HTTPIdleTimeout closes keep-alive HTTP connections idle this long (default 30s).
	HTTPIdleTimeout time.Duration
	// HTTPRequestTimeout is how long an HTTP request may take to be read,
	// and its answer to be written (default 30s; a request's header has
	// at most 5s of it). A WebSocket session is not bound by it.
	HTTPRequestTimeout time.Duration
	// HTTPHosts are host names (or "*.domain" patterns; "*" for any) a
	// browser may reach /ws by, besides IP addresses, localhost, this
	// machine's host name and the TLS certificate's names: a page served
	// under any other name is refused (DNS rebinding).
	HTTPHosts []string
	// MetricsAccess says who may read /metrics: MetricsOpen, MetricsToken
	// (a bearer token of an admin or logger; needs Auth) or MetricsOff.
	// Default: MetricsToken with Auth, else MetricsOpen.
	MetricsAccess string

	// ClientsMaxAge and ClientsMaxBytes bound CAPS_CLIENTS, the stream of
	// connection events, to which every connect and disconnect adds a
	// record; the oldest go first (defaults 7 days and 64 MiB).
	ClientsMaxAge   time.Duration
	ClientsMaxBytes int64

	MaxConns int // concurrent connections (default 20000)
	// MaxConnsPerAddr bounds the CAPS port's connections from one IP
	// address (default 256; WebSocket sessions: HTTPMaxConnsPerAddr).
	MaxConnsPerAddr  int
	MaxFrame         int           // largest frame accepted (default 1 MiB)
	MaxSubs          int           // subscriptions per connection (default 1000)
	MaxPending       int           // outbound bytes queued per connection before it is a slow consumer (default 8 MiB)
	PubRate          int           // publishes and requests per second per connection (default 5000; <0 unlimited)
	PubBurst         int           // burst for PubRate (default PubRate)
	HandshakeTimeout time.Duration // default 5s
	Heartbeat        time.Duration // ping interval when idle; dead after 2× (default 10s)
	AckWait          time.Duration // durable redelivery when not acknowledged (default 30s)
	MaxInFlight      int           // unacknowledged durable deliveries per session (default 64)

	// MaxDurablesPerIdentity bounds the durables one identity (role and
	// name) has created and the engine still keeps, across the cluster
	// (default 32); MaxDurables the durables (consumers) of one stream
	// (default 10000). DurableIdle is how long the engine keeps a durable
	// of a session's own with no member (default 24h; shared ones, a work
	// queue or a mailbox, 30 days). docs/SECURITY.md.
	MaxDurablesPerIdentity int
	MaxDurables            int
	DurableIdle            time.Duration
	// MaxSubsPerIdentity bounds the subscriptions of all the sessions of
	// one identity on this hub together (default 10000; MaxSubs bounds
	// one connection's).
	MaxSubsPerIdentity int
	ShutdownTimeout    time.Duration // drain deadline on shutdown (default 10s)

	// Quiet turns off the EVENT lines.
	Quiet bool
	// EventOut receives EVENT lines (default os.Stdout).
	EventOut io.Writer
	// Logger for operational logs (default slog.Default()).
	Logger *slog.Logger

	// Apps are the applications served on this hub (parcel dispatcher, chat…).
	Apps []App
}

// EngineCluster configures the embedded NATS server as a member of a cluster.
type EngineCluster struct {
	Name   string
	Listen string
	Routes []string
	Client string
}

func (c *Config) withDefaults() {
	if c.Addr == "" {
		c.Addr = ":3000"
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = ":8080"
	}
	if c.Classroom == "" {
		c.Classroom = ClassroomAuto
	}
	if c.Text == "" {
		c.Text = TextAuto
	}
	if c.ClassroomGrace <= 0 {
		c.ClassroomGrace = 6 * time.Second
	}
	if c.HTTPMaxConns <= 0 {
		c.HTTPMaxConns = 10000
	}
	if c.HTTPMaxConnsPerAddr <= 0 {
		c.HTTPMaxConnsPerAddr = 256
	}
	if c.HTTPIdleTimeout <= 0 {
		c.HTTPIdleTimeout = 30 * time.Second
	}
	if c.HTTPRequestTimeout <= 0 {
		c.HTTPRequestTimeout = 30 * time.Second
	}
	if c.MetricsAccess == "" {
		c.MetricsAccess = MetricsOpen
		if c.Auth != nil {
			c.MetricsAccess = MetricsToken
		}
	}
	if c.ClientsMaxAge <= 0 {
		c.ClientsMaxAge = 7 * 24 * time.Hour
	}
	if c.ClientsMaxBytes <= 0 {
		c.ClientsMaxBytes = 64 << 20
	}
	if c.MaxConns <= 0 {
		c.MaxConns = 20000
	}
	if c.MaxConnsPerAddr <= 0 {
		c.MaxConnsPerAddr = 256
	}
	if c.ClassroomMaxSilent <= 0 {
		c.ClassroomMaxSilent = min(1000, max(c.MaxConns/2, 1))
	}
	if c.ClassroomSilentTimeout <= 0 {
		c.ClassroomSilentTimeout = time.Hour
	}
	if c.MaxFrame <= 0 {
		c.MaxFrame = 1 << 20
	}
	if c.MaxSubs <= 0 {
		c.MaxSubs = 1000
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 8 << 20
	}
	if c.PubRate == 0 {
		c.PubRate = 5000
	}
	if c.PubBurst <= 0 {
		c.PubBurst = max(c.PubRate, 1)
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 5 * time.Second
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 10 * time.Second
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 64
	}
	if c.MaxDurablesPerIdentity <= 0 {
		c.MaxDurablesPerIdentity = 32
	}
	if c.MaxDurables <= 0 {
		c.MaxDurables = 10000
	}
	if c.DurableIdle <= 0 {
		c.DurableIdle = 24 * time.Hour
	}
	if c.MaxSubsPerIdentity <= 0 {
		c.MaxSubsPerIdentity = 10000
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.SyncAlways == nil {
		t := true
		c.SyncAlways = &t
	}
}

// fdReserve is the file descriptors kept beyond the connection limits for
// the engine's store, its connections and the listeners.
const fdReserve = 256

// fitFileLimit lowers the connection limits when together they allow more
// connections than the process may open files (nofile), keeping fdReserve
// for the engine and healthHeadroom for health checks: otherwise accept
// would fail on the file-descriptor limit (EMFILE) before any limit refused
// anyone with a clear error, and /healthz and /readyz would be out of reach.
// The CAPS and HTTP ports keep their shares of what is left.
func (h *Hub) fitFileLimit(nofile uint64) {
	c := &h.cfg
	httpOn := c.HTTPAddr != "off"
	conns, http := uint64(c.MaxConns), uint64(0)
	reserve := uint64(fdReserve)
	if httpOn {
		http = uint64(c.HTTPMaxConns)
		reserve += healthHeadroom
	}
	if conns+http+reserve <= nofile {
		return
	}
	if nofile < reserve+2 {
		h.log.Warn("the open-file limit is too low to serve clients: raise it (LimitNOFILE, ulimit -n)", "nofile", nofile, "needed", conns+http+reserve)
		return
	}
	avail := nofile - reserve
	maxConns := max(avail*conns/(conns+http), 1)
	c.MaxConns = int(maxConns)
	c.MaxConnsPerAddr = min(c.MaxConnsPerAddr, c.MaxConns)
	c.ClassroomMaxSilent = min(c.ClassroomMaxSilent, max(c.MaxConns/2, 1))
	if httpOn {
		c.HTTPMaxConns = int(max(avail-maxConns, 1))
		c.HTTPMaxConnsPerAddr = min(c.HTTPMaxConnsPerAddr, c.HTTPMaxConns)
	}
	h.log.Warn("the connection limits exceed the open-file limit: lowered to fit, so that a full hub refuses connections with too_many_conns and still answers health checks (raise LimitNOFILE / ulimit -n to allow more)",
		"nofile", nofile, "max_conns", c.MaxConns, "http_max_conns", c.HTTPMaxConns, "was_max_conns", conns, "was_http_max_conns", http)
}
