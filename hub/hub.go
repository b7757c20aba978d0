// Package hub is the CAPS server: listeners, sessions, the router and
// permissions, on top of NATS JetStream. It is embeddable:
//
//	h := hub.New(hub.Config{Addr: ":3000", DataDir: "/var/lib/caps"})
//	err := h.Run(ctx) // until ctx is cancelled, then drains and returns
//
// or, to do something once it accepts connections, as net/http's Server:
//
//	if err := h.Start(ctx); err != nil { … } // returns once ready
//	defer h.Shutdown(drainCtx)
//
// Applications plug in through App and Host (app.go); examples/ holds one
// written outside this module's internals.
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

// Hub is one CAPS server process. Create it with New; start it with Run, or
// with Start and Shutdown.
type Hub struct {
	cfg Config
	log *slog.Logger
	eng *engine.Engine

	// Set by Start before any connection is accepted, then read-only.
	stored          []storedTopics
	policy          RolePolicy
	identifyHooks   []IdentifyHook
	pubHooks        []patternHook[PublishHook]
	storeHooks      []patternHook[StoreHook] // hub/storehook.go
	orderKeys       []orderKeyHook           // hub/pipeline.go
	workers         *workers                 // hub/workers.go: run the pipeline's tasks
	loadHooks       []patternHook[LoadHook]  // hub/dispatch.go
	httpShutdown    []func()                 // hub/httpauth.go
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
	registry *durableRegistry // durables per identity (durable_limits.go)
	names    *names           // exclusive names and resume tokens (names.go)
	perms    sharedPerms      // compiled permissions, shared between sessions (perm_share.go)
	// sharedDurables are the durable names some role is granted (set by
	// Start once the apps have granted theirs): no other session may use
	// them for a durable of its own.
	sharedDurables []string
	metrics        *Metrics
	events         *eventLog

	ready     chan struct{}
	addr      atomic.Value // net.Addr
	textAddr  atomic.Value // net.Addr of the text-only port
	httpAddr  atomic.Value // net.Addr
	mu        sync.Mutex
	sessions  map[string]*Session
	identSubs counts // subscriptions per identity (Config.MaxSubsPerIdentity)
	// connsByAddr counts the CAPS port's connections per remote IP
	// address (Config.MaxConnsPerAddr); silent the classroom connections
	// that have never sent a byte (Config.ClassroomMaxSilent).
	connsByAddr counts
	silent      atomic.Int64
	conns       sync.WaitGroup
	nconns      atomic.Int64
	stopping    atomic.Bool
	engineOK    atomic.Bool
	httpExtra   []func(mux *http.ServeMux)
	hosts       *hostSet // names /ws may be reached by (set in Start)

	run running
}

// running is what Start leaves for Shutdown.
type running struct {
	mu       sync.Mutex
	started  bool
	stopOnce sync.Once
	stopped  chan struct{} // closed once Shutdown has finished
	stopErr  error

	ln             net.Listener
	httpSrv        *http.Server
	acceptDone     chan struct{}
	textLn         net.Listener // the text-only port, if any
	textAcceptDone chan struct{}
	stopApps       context.CancelFunc
	stopBackground context.CancelFunc
	background     sync.WaitGroup
}

// New returns a hub configured by cfg. Nothing starts until Start or Run.
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
		workers:  newWorkers(),
	}
	h.run.stopped = make(chan struct{})
	h.names = &names{h: h, exclusive: map[string]bool{}, held: map[*Session]uint64{}, mine: map[string]bool{}}
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

// TextAddr is the text-only port's address, or nil when there is none
// (valid after Ready).
func (h *Hub) TextAddr() net.Addr {
	a, _ := h.textAddr.Load().(net.Addr)
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
// Call it before Start.
func (h *Hub) HandleHTTP(fn func(mux *http.ServeMux)) { h.httpExtra = append(h.httpExtra, fn) }

// Run starts the hub, serves until ctx is cancelled, then shuts down
// gracefully within Config.ShutdownTimeout (Shutdown): it stops accepting,
// tells clients (BYE), drains their queues, flushes the engine and returns.
// Sessions still open at the deadline are closed; that is not an error.
func (h *Hub) Run(ctx context.Context) error {
	if err := h.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), h.cfg.ShutdownTimeout)
	defer cancel()
	if err := h.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// Start starts the engine, the apps and the listeners, and returns once the
// hub accepts connections (Ready is closed then), or with the reason it
// could not: it does not block while the hub runs. ctx bounds the start
// (an external engine slow to answer, an app's setup); once started, the
// hub runs until Shutdown, whatever becomes of ctx. A hub starts once.
func (h *Hub) Start(ctx context.Context) (err error) {
	h.run.mu.Lock()
	defer h.run.mu.Unlock()
	if h.run.started {
		return errors.New("hub: started twice")
	}
	h.run.started = true
	// On failure, undo what was started, in reverse order.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
			h.run.stopOnce.Do(func() { close(h.run.stopped) })
		}
	}()

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
		// Concurrent stored publishes share syncs to disk (group sync);
		// the engine uses it where it can (embedded, unclustered, Linux).
		GroupSync: true,
		OnSync:    h.metrics.syncs.observe,
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
	undo = append(undo, eng.Close)
	h.engineOK.Store(true)
	h.watchEngine()

	// The apps' background work (loops started in Setup) lives until
	// Shutdown; while the hub starts, ctx ending stops it too.
	appCtx, stopApps := context.WithCancel(context.WithoutCancel(ctx))
	h.run.stopApps = stopApps
	undo = append(undo, stopApps)
	abort := context.AfterFunc(ctx, stopApps)
	host := &Host{h: h}
	if err := h.setupCore(appCtx, host); err != nil {
		return err
	}
	for _, app := range h.cfg.Apps {
		if err := app.Setup(appCtx, host); err != nil {
			return fmt.Errorf("app setup: %w", err)
		}
	}
	if !abort() {
		return fmt.Errorf("hub start: %w", ctx.Err())
	}
	h.sharedDurables = h.policy.sharedDurables()

	ln, err := net.Listen("tcp", h.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", h.cfg.Addr, err)
	}
	undo = append(undo, func() { ln.Close() })
	transport := transportTCP
	if h.cfg.TLS != nil {
		ln = tls.NewListener(ln, h.cfg.TLS)
		transport = transportTLS
	}
	h.addr.Store(ln.Addr())
	h.run.ln = ln

	if h.cfg.TextAddr != "" {
		// The text-only port: people with nc or telnet, greeted at once.
		if !h.textAllowed() {
			return fmt.Errorf("text port %s: %w", h.cfg.TextAddr, h.errTextOff())
		}
		tl, err := net.Listen("tcp", h.cfg.TextAddr)
		if err != nil {
			return fmt.Errorf("listen text %s: %w", h.cfg.TextAddr, err)
		}
		undo = append(undo, func() { tl.Close() })
		if h.cfg.TLS != nil {
			tl = tls.NewListener(tl, h.cfg.TLS)
		}
		h.textAddr.Store(tl.Addr())
		h.run.textLn = tl
	}

	if h.cfg.HTTPAddr != "off" {
		h.hosts = newHostSet(h.cfg.HTTPHosts, h.cfg.TLS)
		hl, err := net.Listen("tcp", h.cfg.HTTPAddr)
		if err != nil {
			return fmt.Errorf("listen http %s: %w", h.cfg.HTTPAddr, err)
		}
		hl = newConnLimiter(hl, h.cfg.HTTPMaxConns, h.cfg.HTTPMaxConnsPerAddr, h.metrics)
		if h.cfg.TLS != nil {
			hl = tls.NewListener(hl, h.cfg.TLS)
		}
		h.httpAddr.Store(hl.Addr())
		srv := &http.Server{
			Handler:     guardHTTP(h.httpHandler()),
			ConnContext: connContext,
			// A request has a few seconds for its header and
			// HTTPRequestTimeout in all; an idle keep-alive connection is
			// closed after HTTPIdleTimeout. The deadlines end when /ws
			// takes the connection over (net/http clears them on Hijack):
			// a session lives by its heartbeats.
			ReadHeaderTimeout: min(httpReadHeaderTimeout, h.cfg.HTTPRequestTimeout),
			ReadTimeout:       h.cfg.HTTPRequestTimeout,
			WriteTimeout:      h.cfg.HTTPRequestTimeout,
			IdleTimeout:       h.cfg.HTTPIdleTimeout,
			MaxHeaderBytes:    16 << 10,
			// Accept errors (EMFILE…) are logged by http.Server, which backs off.
			ErrorLog: slog.NewLogLogger(h.log.Handler(), slog.LevelWarn),
		}
		for _, fn := range h.httpShutdown {
			srv.RegisterOnShutdown(fn)
		}
		h.run.httpSrv = srv
		go func() {
			if err := srv.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
				h.log.Error("http server", "err", err)
			}
		}()
	}

	bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	h.run.stopBackground = stopBackground
	h.run.background.Add(3)
	go func() { defer h.run.background.Done(); h.heartbeats(bgCtx) }()
	go func() { defer h.run.background.Done(); h.events.flushLoop(bgCtx) }()
	go func() { defer h.run.background.Done(); h.names.refreshLoop(bgCtx) }()

	h.log.Info("hub listening", "addr", ln.Addr().String(), "http", h.HTTPAddr(), "text", h.TextAddr(), "tls", h.cfg.TLS != nil,
		"engine", map[bool]string{true: "embedded", false: "external"}[eng.Embedded()], "data", h.cfg.DataDir)
	h.run.acceptDone = make(chan struct{})
	go func() { defer close(h.run.acceptDone); h.acceptLoop(ln, transport, h.pickDialect) }()
	if tl := h.run.textLn; tl != nil {
		h.run.textAcceptDone = make(chan struct{})
		go func() { defer close(h.run.textAcceptDone); h.acceptLoop(tl, transport, h.openText) }()
	}
	close(h.ready)
	return nil
}

// Shutdown stops a started hub gracefully, as net/http's Server.Shutdown
// does: it stops accepting, tells every client (BYE) and lets their queues
// drain until ctx ends, then closes what is left; it stops the apps,
// flushes the engine and closes it. It returns ctx's error when the drain
// was cut short. It may be called more than once and from several
// goroutines: every call waits until the hub has stopped.
func (h *Hub) Shutdown(ctx context.Context) error {
	h.run.mu.Lock()
	started := h.run.started
	h.run.mu.Unlock()
	if !started {
		return nil
	}
	h.run.stopOnce.Do(func() {
		defer close(h.run.stopped)
		h.run.stopErr = h.shutdown(ctx)
	})
	<-h.run.stopped
	return h.run.stopErr
}

func (h *Hub) shutdown(ctx context.Context) error {
	r := &h.run
	h.log.Info("hub shutting down")
	h.stopping.Store(true)
	r.ln.Close()
	<-r.acceptDone
	if r.textLn != nil {
		r.textLn.Close()
		<-r.textAcceptDone
	}
	if r.httpSrv != nil {
		_ = r.httpSrv.Shutdown(ctx)
	}
	drained := h.closeSessions(ctx)
	h.workers.close()
	h.durables.stopAll()
	h.router.stopAll()
	r.stopBackground()
	r.background.Wait()
	h.events.flush()
	for _, nc := range []*natsConn{h.eng.Live, h.eng.NC} {
		if err := nc.FlushWithContext(ctx); err != nil {
			h.log.Warn("flush engine", "err", err)
		}
	}
	r.stopApps()
	h.eng.Close()
	h.log.Info("hub stopped")
	return drained
}

// acceptLoop accepts connections and runs each on its own goroutine,
// readied by open. The goroutine is serveConnAs itself: every frame between
// its start and the session's read loop stays on the stack of an idle
// connection for its whole life (see serveConnAs).
func (h *Hub) acceptLoop(ln net.Listener, transport string, open func(*Session, *bufio.Reader) func() error) {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if h.stopping.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Temporary errors (EMFILE…): back off instead of spinning.
			delay = min(max(delay*2, 5*time.Millisecond), acceptBackoffMax)
			h.log.Warn("accept", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		h.conns.Add(1)
		go h.serveConnAs(c, transport, open, &h.conns)
	}
}

// closeSessions says BYE to every session, lets their queues drain and waits
// for them to end, forcing them closed at the deadline (and then returning
// ctx's error).
func (h *Hub) closeSessions(ctx context.Context) error {
	for _, s := range h.allSessions() {
		s.closeWith(s.dialect.bye("hub shutting down"), "", errShutdown)
	}
	done := make(chan struct{})
	go func() { h.conns.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		for _, s := range h.allSessions() {
			s.conn.Close()
		}
		<-done
		return ctx.Err()
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
			if exp := s.expires; !exp.IsZero() && now >= exp.UnixNano() {
				if s.fail(protocol.CodeAuth, "token expired at "+exp.UTC().Format(time.RFC3339)) {
					h.metrics.expiredSessions.Inc()
					h.log.Info("session closed: token expired", "id", s.info.ID, "role", s.info.Role, "name", s.info.Name, "expired", exp)
				}
				continue
			}
			if !s.heartbeats {
				continue // a dialect without heartbeats (the classroom's): TCP keepalive finds dead peers
			}
			if now-s.lastRecv.Load() > 2*hb {
				s.fail(protocol.CodeHeartbeat, fmt.Sprintf("no traffic for %s", time.Duration(2*hb)))
				continue
			}
			if now-s.lastSent.Load() > hb {
				s.send(ping)
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

// setupCore declares the hub's own stream (connection events) and bucket
// (durables per identity).
func (h *Hub) setupCore(ctx context.Context, x *Host) error {
	h.setupClassroom(x)
	if err := h.setupDurables(ctx); err != nil {
		return err
	}
	if err := h.setupNames(ctx); err != nil {
		return err
	}
	return x.AddStream(ctx, StreamSpec{
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
	t := time.NewTicker(eventFlushInterval)
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
