// Package hub is the CAPS server: listeners, sessions, the router and
// permissions, on top of NATS JetStream. It is embeddable:
//
//	h := hub.New(hub.Config{Addr: ":3000", DataDir: "/var/lib/caps"})
//	err := h.Run(ctx) // until ctx is cancelled, then drains and returns
package hub

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/protocol"
)

// Hub is one CAPS server process. Create it with New and start it with Run.
type Hub struct {
	cfg Config
	log *slog.Logger
	eng *engine.Engine

	// Set during Run before any connection is accepted, then read-only.
	streams         []engine.StreamSpec
	policy          RolePolicy
	pubHooks        []patternHook[PublishHook]
	deliverHooks    []patternHook[DeliverHook]
	subHooks        []patternHook[SubscribeHook]
	unsubHooks      []patternHook[UnsubscribeHook]
	connectHooks    []ConnectHook
	disconnectHooks []DisconnectHook
	services        map[string]RequestHandler
	eventNamers     []patternHook[func(string) string]
	privateEvents   [][]byte // topic patterns kept out of EVENT lines (Host.PrivateEvents)

	router   *router
	durables *durables
	metrics  *Metrics
	events   *eventLog

	ready     chan struct{}
	addr      atomic.Value // net.Addr
	httpAddr  atomic.Value // net.Addr
	mu        sync.Mutex
	sessions  map[string]*Session
	conns     sync.WaitGroup
	nconns    atomic.Int64
	stopping  atomic.Bool
	engineOK  atomic.Bool
	httpExtra []func(mux *http.ServeMux)
	hosts     *hostSet // names /ws may be reached by (set in Run)
}

// New returns a hub configured by cfg. Nothing starts until Run.
func New(cfg Config) *Hub {
	cfg.withDefaults()
	if cfg.Name == "" {
		cfg.Name, _ = os.Hostname()
		if cfg.Name == "" {
			cfg.Name = "caps"
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	out := cfg.EventOut
	if out == nil {
		out = os.Stdout
	}
	h := &Hub{
		cfg:      cfg,
		log:      log.With("hub", cfg.Name),
		policy:   defaultPolicy(),
		services: map[string]RequestHandler{},
		ready:    make(chan struct{}),
		sessions: map[string]*Session{},
		metrics:  newMetrics(),
		events:   &eventLog{w: bufio.NewWriter(out), quiet: cfg.Quiet},
	}
	h.router = newRouter(h)
	h.durables = newDurables(h)
	h.metrics.observe(h)
	return h
}

// Ready is closed once the hub accepts connections.
func (h *Hub) Ready() <-chan struct{} { return h.ready }

// Addr is the TCP listener's address (valid after Ready).
func (h *Hub) Addr() net.Addr {
	a, _ := h.addr.Load().(net.Addr)
	return a
}

// HTTPAddr is the HTTP listener's address, or nil when HTTP is off (valid after Ready).
func (h *Hub) HTTPAddr() net.Addr {
	a, _ := h.httpAddr.Load().(net.Addr)
	return a
}

// Metrics returns the hub's metrics.
func (h *Hub) Metrics() *Metrics { return h.metrics }

// HandleHTTP adds routes to the hub's HTTP server (the dashboard uses it).
// Call it before Run.
func (h *Hub) HandleHTTP(fn func(mux *http.ServeMux)) { h.httpExtra = append(h.httpExtra, fn) }

// Run starts the engine, the apps and the listeners, serves until ctx is
// cancelled, then shuts down gracefully: it stops accepting, tells clients
// (BYE), drains their queues, flushes the engine and returns.
func (h *Hub) Run(ctx context.Context) error {
	switch h.cfg.MetricsAccess {
	case MetricsOpen, MetricsOff:
	case MetricsToken:
		if h.cfg.Auth == nil {
			return fmt.Errorf("metrics access %q needs authentication (--auth): without it there are no tokens to check", MetricsToken)
		}
	default:
		return fmt.Errorf("metrics access %q: want %s, %s or %s", h.cfg.MetricsAccess, MetricsOpen, MetricsToken, MetricsOff)
	}
	h.checkFileLimit()
	if h.cfg.Auth == nil {
		h.log.Warn("AUTHENTICATION IS OFF: any client may connect as any role and name; run with --auth FILE in production")
	}
	eng, err := engine.Start(ctx, engine.Config{
		DataDir:    h.cfg.DataDir,
		URLs:       h.cfg.NATSURLs,
		Name:       h.cfg.Name,
		Replicas:   h.cfg.Replicas,
		SyncAlways: *h.cfg.SyncAlways,
		Cluster: engine.ClusterConfig{
			Name: h.cfg.EngineCluster.Name, Listen: h.cfg.EngineCluster.Listen,
			Routes: h.cfg.EngineCluster.Routes, Client: h.cfg.EngineCluster.Client,
		},
		Logger: h.log,
	})
	if err != nil {
		return fmt.Errorf("start engine: %w", err)
	}
	h.eng = eng
	h.engineOK.Store(true)
	h.watchEngine()
	defer eng.Close()
	// The apps' background work (loops started in Setup) lives as long as
	// this run: also when Run fails after their Setup (a port in use), their
	// context ends when Run returns, before the engine closes.
	appCtx, stopApps := context.WithCancel(ctx)
	defer stopApps()

	host := &Host{h: h}
	if err := h.setupCore(appCtx, host); err != nil {
		return err
	}
	for _, app := range h.cfg.Apps {
		if err := app.Setup(appCtx, host); err != nil {
			return fmt.Errorf("app setup: %w", err)
		}
	}

	ln, err := net.Listen("tcp", h.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", h.cfg.Addr, err)
	}
	if h.cfg.TLS != nil {
		ln = tls.NewListener(ln, h.cfg.TLS)
	}
	h.addr.Store(ln.Addr())

	var httpSrv *http.Server
	if h.cfg.HTTPAddr != "off" {
		h.hosts = newHostSet(h.cfg.HTTPHosts, h.cfg.TLS)
		hl, err := net.Listen("tcp", h.cfg.HTTPAddr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("listen http %s: %w", h.cfg.HTTPAddr, err)
		}
		hl = newConnLimiter(hl, h.cfg.HTTPMaxConns, h.cfg.HTTPMaxConnsPerAddr, h.metrics)
		if h.cfg.TLS != nil {
			hl = tls.NewListener(hl, h.cfg.TLS)
		}
		h.httpAddr.Store(hl.Addr())
		httpSrv = &http.Server{
			Handler:     guardHTTP(h.httpHandler()),
			ConnContext: connContext,
			// A request has a few seconds for its header and
			// HTTPRequestTimeout in all; an idle keep-alive connection is
			// closed after HTTPIdleTimeout. The deadlines end when /ws
			// takes the connection over (net/http clears them on Hijack):
			// a session lives by its heartbeats.
			ReadHeaderTimeout: min(5*time.Second, h.cfg.HTTPRequestTimeout),
			ReadTimeout:       h.cfg.HTTPRequestTimeout,
			WriteTimeout:      h.cfg.HTTPRequestTimeout,
			IdleTimeout:       h.cfg.HTTPIdleTimeout,
			MaxHeaderBytes:    16 << 10,
			// Accept errors (EMFILE…) are logged by http.Server, which backs off.
			ErrorLog: slog.NewLogLogger(h.log.Handler(), slog.LevelWarn),
		}
		go func() {
			if err := httpSrv.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
				h.log.Error("http server", "err", err)
			}
		}()
	}

	runCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBackground()
	var bg sync.WaitGroup
	bg.Add(2)
	go func() { defer bg.Done(); h.heartbeats(runCtx) }()
	go func() { defer bg.Done(); h.events.flushLoop(runCtx) }()

	h.log.Info("hub listening", "addr", ln.Addr().String(), "http", h.HTTPAddr(), "tls", h.cfg.TLS != nil,
		"engine", map[bool]string{true: "embedded", false: "external"}[eng.Embedded()], "data", h.cfg.DataDir)
	close(h.ready)

	acceptDone := make(chan struct{})
	go func() { defer close(acceptDone); h.acceptLoop(ln) }()

	<-ctx.Done()
	h.log.Info("hub shutting down")
	h.stopping.Store(true)
	ln.Close()
	<-acceptDone
	shutCtx, cancel := context.WithTimeout(context.Background(), h.cfg.ShutdownTimeout)
	defer cancel()
	if httpSrv != nil {
		_ = httpSrv.Shutdown(shutCtx)
	}
	h.closeSessions(shutCtx)
	h.durables.stopAll()
	h.router.stopAll()
	stopBackground()
	bg.Wait()
	h.events.flush()
	if err := eng.NC.FlushWithContext(shutCtx); err != nil {
		h.log.Warn("flush engine", "err", err)
	}
	h.log.Info("hub stopped")
	return nil
}

func (h *Hub) acceptLoop(ln net.Listener) {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if h.stopping.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Temporary errors (EMFILE…): back off instead of spinning.
			delay = min(max(delay*2, 5*time.Millisecond), time.Second)
			h.log.Warn("accept", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		h.conns.Add(1)
		go func() {
			defer h.conns.Done()
			h.serveConn(c, "caps")
		}()
	}
}

// closeSessions says BYE to every session, lets their queues drain and waits
// for them to end, forcing them closed at the deadline.
func (h *Hub) closeSessions(ctx context.Context) {
	for _, s := range h.allSessions() {
		s.closeWith(&protocol.Frame{Op: protocol.OpBye, Payload: []byte("hub shutting down")}, errShutdown)
	}
	done := make(chan struct{})
	go func() { h.conns.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		for _, s := range h.allSessions() {
			s.conn.Close()
		}
		<-done
	}
}

var errShutdown = errors.New("hub shutting down")

func (h *Hub) allSessions() []*Session {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*Session, 0, len(h.sessions))
	for _, s := range h.sessions {
		out = append(out, s)
	}
	return out
}

func (h *Hub) sessionByID(id string) *Session {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sessions[id]
}

func (h *Hub) sessionInfos() []SessionInfo {
	ss := h.allSessions()
	out := make([]SessionInfo, 0, len(ss))
	for _, s := range ss {
		out = append(out, s.infoSnapshot())
	}
	return out
}

// heartbeats pings idle sessions and drops those silent for two intervals,
// and closes sessions whose token has expired (within a quarter of an
// interval of the expiry). One ticker for the whole hub instead of a timer
// per connection.
func (h *Hub) heartbeats(ctx context.Context) {
	t := time.NewTicker(h.cfg.Heartbeat / 4)
	defer t.Stop()
	ping := (&protocol.Frame{Op: protocol.OpPing}).Encode()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now().UnixNano()
		hb := int64(h.cfg.Heartbeat)
		for _, s := range h.allSessions() {
			if exp := s.ident.Expires; !exp.IsZero() && now >= exp.UnixNano() {
				if s.fail(0, protocol.CodeAuth, "token expired at "+exp.UTC().Format(time.RFC3339)) {
					h.metrics.expiredSessions.Inc()
					h.log.Info("session closed: token expired", "id", s.info.ID, "role", s.info.Role, "name", s.info.Name, "expired", exp)
				}
				continue
			}
			if s.legacy != nil {
				continue // classroom clients have no heartbeats; TCP keepalive finds dead ones (hub/legacy.go)
			}
			if now-s.lastRecv.Load() > 2*hb {
				s.fail(0, protocol.CodeHeartbeat, fmt.Sprintf("no traffic for %s", time.Duration(2*hb)))
				continue
			}
			if now-s.lastSent.Load() > hb {
				s.sendRaw(ping)
			}
		}
	}
}

// watchEngine tracks whether the engine is reachable, for /readyz and for
// refusing publishes while it is not.
func (h *Hub) watchEngine() {
	nc := h.eng.NC
	nc.SetDisconnectErrHandler(func(_ *natsConn, err error) {
		h.engineOK.Store(false)
		if h.stopping.Load() {
			return
		}
		h.log.Warn("engine unavailable: refusing publishes until it returns", "err", err)
	})
	nc.SetReconnectHandler(func(_ *natsConn) {
		h.engineOK.Store(true)
		h.log.Info("engine available again")
	})
}

// EngineReady reports whether the engine is reachable.
func (h *Hub) EngineReady() bool { return h.engineOK.Load() && h.eng != nil && h.eng.Ready() }

// setupCore declares the hub's own stream: connection events.
func (h *Hub) setupCore(ctx context.Context, x *Host) error {
	h.setupLegacy(x)
	return x.AddStream(ctx, engine.StreamSpec{
		Name: "CAPS_CLIENTS", Topics: []string{"client.>"},
		MaxAge: h.cfg.ClientsMaxAge, MaxBytes: h.cfg.ClientsMaxBytes, MaxMsgSize: clientEventMaxSize,
	})
}

// clientEventMaxSize bounds one connection event in CAPS_CLIENTS (they are
// a few hundred bytes; only the hub writes them).
const clientEventMaxSize = 16 << 10

type eventLog struct {
	mu    sync.Mutex
	w     *bufio.Writer
	quiet bool
	// Reused by writeEvent (eventline.go), guarded by mu.
	line    []byte
	scratch bytes.Buffer
}

func (e *eventLog) write(line []byte) {
	if e.quiet {
		return
	}
	e.mu.Lock()
	e.w.Write(line)
	e.mu.Unlock()
}

func (e *eventLog) flush() {
	e.mu.Lock()
	e.w.Flush()
	e.mu.Unlock()
}

// flushLoop flushes EVENT lines often enough to read live without a write
// syscall per event.
func (e *eventLog) flushLoop(ctx context.Context) {
	if e.quiet {
		return
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			e.flush()
		}
	}
}
