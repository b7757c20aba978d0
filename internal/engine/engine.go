// Package engine gives the hub its message engine: NATS with JetStream,
// either embedded in the hub process (the default: an in-process connection,
// the file store under the data directory, no NATS port opened) or an
// external NATS cluster reached by URL. After Start the two are the same:
// the hub only ever sees a *nats.Conn and a jetstream.JetStream.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// SubjectPrefix is prepended to every CAPS topic to form its NATS subject,
// so CAPS traffic never collides with anything else on a shared cluster.
const SubjectPrefix = "caps.t."

// Subject returns the NATS subject for a CAPS topic or pattern.
func Subject(topic string) string { return SubjectPrefix + topic }

// Topic returns the CAPS topic of a NATS subject (the subject itself if it
// does not carry the prefix).
func Topic(subject string) string { return strings.TrimPrefix(subject, SubjectPrefix) }

// Config says where the engine lives.
type Config struct {
	// DataDir holds the embedded server's JetStream store. Required when URLs is empty.
	DataDir string
	// URLs is a comma-separated list of external NATS servers. Empty means embedded.
	URLs string
	// Name names this hub's connection (and the embedded server).
	Name string
	// Replicas is the replica count for streams and buckets; 0 picks 3 when the
	// cluster has at least 3 servers with JetStream, else 1.
	Replicas int
	// SyncAlways makes the embedded server fsync every write before it
	// acknowledges it (see docs/OPERATIONS.md for the measured cost). When false
	// the store syncs every SyncInterval.
	SyncAlways   bool
	SyncInterval time.Duration

	// GroupSync keeps SyncAlways's promise for an embedded, unclustered
	// engine on Linux by sharing syncs: the server writes without fsync, and
	// Store answers once a sync of the data directory's file system that
	// started after the write has finished (store_sync.go). Elsewhere, or
	// without SyncAlways, it changes nothing.
	GroupSync bool
	// OnSync, if set, is told of every sync round (metrics).
	OnSync func(SyncInfo)
	// syncFS replaces the group sync's syncfs (tests).
	syncFS func() error

	// Cluster makes the embedded server a member of a NATS cluster, so a
	// multi-machine deployment needs only the caps binary.
	Cluster ClusterConfig

	// HealthInterval is how often JetStream's health is checked once the
	// engine is ready (default 2s); see JetStreamAvailable.
	HealthInterval time.Duration

	// ConnectTimeout bounds the wait for an external engine at start (0 = wait until ctx ends).
	ConnectTimeout time.Duration

	Logger *slog.Logger
}

// ClusterConfig configures the embedded server as a cluster member.
type ClusterConfig struct {
	Name   string   // cluster name, the same on every member
	Listen string   // host:port for routes from other members
	Routes []string // nats-route://host:port of the other members
	Client string   // host:port to accept NATS clients (other hubs, tools); empty = none
}

func (c ClusterConfig) enabled() bool { return c.Listen != "" }

// Engine is a live connection to NATS with JetStream.
type Engine struct {
	NC *nats.Conn
	// Live is a second connection for live (not stored) traffic, with echo
	// off: what the hub publishes on it reaches every other subscriber —
	// other hubs, other connections of this hub — but never the
	// subscriptions on Live itself. The hub delivers its own live publishes
	// to its local subscribers directly and uses Live to reach the rest.
	Live *nats.Conn
	JS   jetstream.JetStream
	// Replicas is the replica count new streams and buckets get: Config.Replicas,
	// or the one chosen from the cluster size when that was 0.
	Replicas int

	// autoReplicas: Replicas was chosen here, not by the operator, so existing
	// streams keep the replica count they have (a hub that starts while part
	// of the cluster is down must not scale every stream down).
	autoReplicas bool

	// jsOK is JetStream's health as the monitor last saw it: false when the
	// meta leader has not answered for a while (no quorum: this side of a
	// network partition is the minority, or most servers are down).
	jsOK        atomic.Bool
	stopMonitor context.CancelFunc
	// sync makes stored publishes durable when the server does not fsync
	// them itself (GroupSync); nil otherwise.
	sync        *groupSync
	closeSync   func() error
	monitorDone chan struct{}

	srv    *server.Server // nil when external
	shared bool           // see Shared
	urls   string         // external servers, for messages
	routes []string       // the embedded member's routes, for messages
	log    *slog.Logger
}

// Embedded reports whether the NATS server runs inside this process.
func (e *Engine) Embedded() bool { return e.srv != nil }

// Shared reports whether anything outside this process can reach the
// engine: an external NATS, or an embedded server in a cluster (its routes
// and its client port). An embedded server that is not clustered opens no
// port, so the only connections it has are this process's.
func (e *Engine) Shared() bool { return e.shared }

// Server returns the embedded server, or nil.
func (e *Engine) Server() *server.Server { return e.srv }

// Start brings the engine up: it starts the embedded server or connects to
// the external one, then waits until JetStream answers.
func Start(ctx context.Context, cfg Config) (*Engine, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.Name == "" {
		cfg.Name = "caps"
	}
	if cfg.HealthInterval <= 0 {
		cfg.HealthInterval = 2 * time.Second
	}
	e := &Engine{log: log, shared: cfg.URLs != "" || cfg.Cluster.enabled()}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectBufSize(-1), // never buffer publishes while down: the hub must refuse them
		nats.PingInterval(5 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("engine disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("engine reconnected", "url", nc.ConnectedUrlRedacted()) }),
	}
	var urls string
	groupSync := cfg.URLs == "" && cfg.GroupSync && cfg.SyncAlways && !cfg.Cluster.enabled() && groupSyncSupported
	if cfg.URLs == "" {
		serverSyncs := cfg.SyncAlways && !groupSync
		srv, err := startEmbedded(cfg, serverSyncs, log)
		if err != nil {
			return nil, err
		}
		e.srv = srv
		if groupSync {
			syncFS, closeFn := cfg.syncFS, func() error { return nil }
			if syncFS == nil {
				// The store directory, not the data directory: it is where
				// everything the server writes lives, should it be a mount.
				if syncFS, closeFn, err = dirSyncer(filepath.Join(cfg.DataDir, "jetstream")); err != nil {
					e.shutdownServer()
					return nil, err
				}
			}
			e.sync, e.closeSync = newGroupSync(syncFS, cfg.OnSync), closeFn
		}
		e.routes = cfg.Cluster.Routes
		opts = append(opts, nats.InProcessServer(srv))
	} else {
		urls = cfg.URLs
		e.urls = redact(urls)
		opts = append(opts, nats.RetryOnFailedConnect(true))
	}
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("connect to engine %s: %w", redact(urls), err)
	}
	e.NC = nc
	live, err := nats.Connect(urls, append(opts, nats.Name(cfg.Name+" live"), nats.NoEcho())...)
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("connect to engine %s (live traffic): %w", redact(urls), err)
	}
	e.Live = live
	js, err := jetstream.New(nc)
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	e.JS = js
	if err := e.waitReady(ctx, cfg.ConnectTimeout); err != nil {
		e.Close()
		return nil, err
	}
	e.autoReplicas = cfg.Replicas <= 0
	e.Replicas = cfg.Replicas
	if e.autoReplicas {
		size, how := e.clusterSize(ctx, cfg)
		e.Replicas = 1
		if size >= 3 {
			e.Replicas = 3
		}
		log.Info("engine cluster size", "servers", size, "counted_by", how, "replicas", e.Replicas)
		if size == 2 {
			log.Warn("the NATS cluster has only 2 servers: streams get 1 replica (3 need 3 servers); a 2-server JetStream cluster stops when either server stops")
		}
	}
	e.jsOK.Store(true)
	monCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	e.stopMonitor = stop
	e.monitorDone = make(chan struct{})
	go e.monitor(monCtx, cfg.HealthInterval)
	log.Info("engine ready", "embedded", e.Embedded(), "replicas", e.Replicas, "group_sync", e.sync != nil)
	return e, nil
}

// startEmbedded starts the embedded server; syncAlways: it fsyncs every
// write itself (else the engine's group sync or the sync interval does).
func startEmbedded(cfg Config, syncAlways bool, log *slog.Logger) (*server.Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("embedded engine needs a data directory")
	}
	store := filepath.Join(cfg.DataDir, "jetstream")
	if err := os.MkdirAll(store, 0o750); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	o := &server.Options{
		ServerName:         cfg.Name,
		JetStream:          true,
		StoreDir:           store,
		DontListen:         !cfg.Cluster.enabled(),
		NoSigs:             true,
		NoLog:              true,
		SyncAlways:         syncAlways,
		SyncInterval:       cfg.SyncInterval,
		JetStreamMaxMemory: 256 << 20,
		MaxPayload:         8 << 20,
	}
	if cfg.Cluster.enabled() {
		host, port, err := splitHostPort(cfg.Cluster.Listen)
		if err != nil {
			return nil, fmt.Errorf("cluster listen: %w", err)
		}
		// JetStream clustering needs the same cluster name on every member and
		// a unique server name each (the hub name); the store is this hub's own.
		o.Cluster.Name = cfg.Cluster.Name
		if o.Cluster.Name == "" {
			o.Cluster.Name = "caps"
		}
		o.Cluster.Host, o.Cluster.Port = host, port
		for _, r := range cfg.Cluster.Routes {
			u, err := parseRoute(r)
			if err != nil {
				return nil, err
			}
			o.Routes = append(o.Routes, u)
		}
		if cfg.Cluster.Client != "" {
			h, p, err := splitHostPort(cfg.Cluster.Client)
			if err != nil {
				return nil, fmt.Errorf("cluster client listen: %w", err)
			}
			o.Host, o.Port = h, p
		} else {
			// nats-server starts routing only once its client listener is up
			// (DontListen would leave the member unrouted forever), so a member
			// without a client address listens on a random loopback port that
			// it does not announce to the cluster's clients.
			o.Host, o.Port = "127.0.0.1", server.RANDOM_PORT
			o.Cluster.NoAdvertise = true
		}
	}
	srv, err := server.NewServer(o)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		return nil, errors.New("embedded nats did not start in 30s")
	}
	log.Debug("embedded nats started", "store", store, "cluster", cfg.Cluster.enabled())
	return srv, nil
}

// waitReady waits until JetStream answers, saying every few seconds, in
// words an operator can act on, what it is waiting for.
func (e *Engine) waitReady(ctx context.Context, limit time.Duration) error {
	if limit > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, limit)
		defer cancel()
	}
	start := time.Now()
	var last time.Time
	var lastErr error
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := e.JS.AccountInfo(actx)
		cancel()
		if err == nil {
			if !last.IsZero() {
				e.log.Info("engine ready after waiting", "waited", time.Since(start).Round(time.Millisecond))
			}
			return nil
		}
		if e.NC.IsClosed() {
			// nats.go gives up for good on some refusals (the same
			// authorization error twice): waiting longer cannot help.
			return fmt.Errorf("the connection to NATS at %s was closed: %v", e.urls, e.NC.LastError())
		}
		if ctx.Err() != nil {
			if lastErr == nil {
				lastErr = err
			}
			return fmt.Errorf("engine not ready after %s: %s (last error: %v)", time.Since(start).Round(time.Second), e.notReadyReason(lastErr), lastErr)
		}
		lastErr = err // the attempt's own error, not the end of ctx
		// A cluster elects its leader in a few seconds at every start: say
		// something only when the wait is longer than that, then every 5s.
		if time.Since(start) >= 3*time.Second && time.Since(last) >= 5*time.Second {
			e.log.Warn("waiting for the engine: "+e.notReadyReason(err)+"; retrying",
				"waited", time.Since(start).Round(time.Second), "err", err)
			last = time.Now()
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Server-side JetStream error codes the engine reacts to (nats-server's
// server/errors.json; nats.go names only some of them).
const (
	errCodeClusterNoPeers        = 10005 // no suitable peers for placement
	errCodeClusterNotAvail       = 10008 // JetStream system temporarily unavailable (no meta leader)
	errCodeInsufficientResources = 10023
	errCodeReplicasNotSupported  = 10074 // replicas > 1 on a server that is not clustered
	errCodeMessageTooLarge       = 10054 // a message over the stream's MaxMsgSize
	errCodeStoreFailed           = 10077 // a store refused: "maximum bytes exceeded", "message too large"…
)

func apiErrorCode(err error) jetstream.ErrorCode {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode
	}
	return 0
}

// electionRule is when a JetStream cluster has a leader. A brand-new cluster
// (empty stores) elects its first one only once every server named in the
// routes has joined, as observed with nats-server 2.15: two of three fresh
// servers wait for the third.
const electionRule = "a new cluster elects its first leader once all its servers are up and connected to each other by routes, " +
	"an established one once more than half of them are"

// notReadyReason says in a sentence why JetStream did not answer.
func (e *Engine) notReadyReason(err error) string {
	clustered := e.srv != nil && e.srv.JetStreamIsClustered()
	switch {
	case !e.NC.IsConnected() && e.srv == nil:
		why := ""
		if le := e.NC.LastError(); le != nil {
			why = " (" + le.Error() + ")" // TLS, authorization…
		}
		return fmt.Sprintf("no NATS server reachable at %s%s: is nats-server running there, with -js, and the address, TLS and credentials right?", e.urls, why)
	case !e.NC.IsConnected():
		return "the embedded NATS server does not accept the hub's connection yet"
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount),
		errors.Is(err, nats.ErrNoResponders):
		return "NATS answers but JetStream does not: start nats-server with JetStream (-js, or jetstream {} in its config) and enable it for this account"
	case clustered:
		return fmt.Sprintf("the JetStream cluster has no leader yet: %s (this member is connected to %d other member(s) so far; its routes: %s)",
			electionRule, e.routedPeers(), strings.Join(e.routes, ", "))
	case apiErrorCode(err) == errCodeClusterNotAvail:
		return "the JetStream cluster has no leader yet: " + electionRule
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return "JetStream did not answer in time; if it is a cluster, it may have no leader: " + electionRule
	}
	return "JetStream is not ready: " + err.Error()
}

// routedPeers counts the cluster members the embedded server has routes to.
func (e *Engine) routedPeers() int {
	rz, err := e.srv.Routez(&server.RoutezOptions{})
	if err != nil {
		return 0
	}
	peers := map[string]bool{}
	for _, r := range rz.Routes {
		peers[r.RemoteName] = true
	}
	return len(peers)
}

// clusterSize returns how many NATS servers the engine's JetStream cluster
// has, and how it counted them (for the log line).
//
//   - embedded, not clustered: 1;
//   - embedded cluster member: the size of the JetStream meta group the
//     embedded server reports (it knows its peers once a leader is elected);
//   - external: 1 when the server says it is not in a cluster; otherwise the
//     servers the connection knows, those given with --nats plus those the
//     cluster announces to clients (INFO connect_urls), counted once per
//     resolved IP address and port.
//
// The client view of an external cluster can miss a server that is down or
// not yet routed, and can count one server twice when it announces several
// interfaces; an operator who knows better passes --replicas.
func (e *Engine) clusterSize(ctx context.Context, cfg Config) (int, string) {
	if e.srv != nil {
		if !e.srv.JetStreamIsClustered() {
			return 1, "embedded server, not clustered"
		}
		if jsz, err := e.srv.Jsz(nil); err == nil && jsz.Meta != nil && jsz.Meta.Size > 0 {
			return jsz.Meta.Size, "JetStream meta group of the embedded server"
		}
		return len(cfg.Cluster.Routes) + 1, "configured routes"
	}
	if e.NC.ConnectedClusterName() == "" {
		return 1, "standalone NATS server (not in a cluster)"
	}
	n := countServers(ctx, e.NC.Servers())
	// Right after a cluster starts, the INFO the hub got may not list every
	// server yet: give gossip a moment to announce the rest.
	deadline := time.Now().Add(2 * time.Second)
	for n < 3 && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
		n = max(n, countServers(ctx, e.NC.Servers()))
	}
	return n, "NATS servers given and announced by the cluster, by resolved address"
}

// countServers counts distinct servers among NATS URLs, resolving host
// names so that "nats://a:4222" and the announced "10.0.0.1:4222" count once.
func countServers(ctx context.Context, urls []string) int {
	seen := map[string]bool{}
	n := 0
	for _, raw := range urls {
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			continue
		}
		host, port := u.Hostname(), u.Port()
		if port == "" {
			port = "4222"
		}
		addrs := []string{host}
		if net.ParseIP(host) == nil {
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			if ips, err := net.DefaultResolver.LookupHost(rctx, host); err == nil && len(ips) > 0 {
				addrs = ips
			}
			cancel()
		}
		dup := false
		for _, a := range addrs {
			k := net.JoinHostPort(a, port)
			dup = dup || seen[k]
			seen[k] = true
		}
		if !dup {
			n++
		}
	}
	return max(n, 1)
}

// monitor asks the JetStream meta leader for account info every
// healthInterval. Two failures in a row mark JetStream unavailable (logged
// once); one success marks it available again.
func (e *Engine) monitor(ctx context.Context, every time.Duration) {
	defer close(e.monitorDone)
	t := time.NewTicker(every)
	defer t.Stop()
	fails := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		actx, cancel := context.WithTimeout(ctx, max(every, 2*time.Second))
		_, err := e.JS.AccountInfo(actx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			fails = 0
			if !e.jsOK.Swap(true) {
				e.log.Info("engine: JetStream available again")
			}
			continue
		}
		fails++
		if fails >= 2 && e.jsOK.Swap(false) {
			e.log.Warn("engine: JetStream unavailable: stored publishes fail (clients are told \"unavailable\") and durable deliveries pause until it returns; "+
				e.notReadyReason(err), "err", err)
		}
	}
}

// Ready reports whether the engine connection is up.
func (e *Engine) Ready() bool {
	return e.NC != nil && e.NC.IsConnected() && e.Live != nil && e.Live.IsConnected()
}

// JetStream returns the engine's JetStream context (the JS field), for
// code that takes the engine as an interface (webhook.Engine).
func (e *Engine) JetStream() jetstream.JetStream { return e.JS }

// JetStreamAvailable reports whether JetStream answered recently: false on
// the minority side of a network partition, or while the cluster has no
// leader. Connected (Ready) but not available means stored publishes fail.
func (e *Engine) JetStreamAvailable() bool { return e.Ready() && e.jsOK.Load() }

// Close drains the connection and stops the embedded server. Stores in
// flight are answered (after a last sync); later ones fail.
func (e *Engine) Close() {
	if e.stopMonitor != nil {
		e.stopMonitor()
		<-e.monitorDone
	}
	for _, nc := range []*nats.Conn{e.Live, e.NC} {
		if nc == nil {
			continue
		}
		if err := nc.Drain(); err != nil {
			nc.Close()
		}
		deadline := time.Now().Add(5 * time.Second)
		for !nc.IsClosed() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		nc.Close()
	}
	if e.sync != nil {
		e.sync.close()
	}
	e.shutdownServer()
	if e.closeSync != nil {
		// What the server wrote as it stopped (its state files), on disk too.
		if err := e.sync.syncFS(); err != nil {
			e.log.Warn("engine: sync to disk at close failed", "err", err)
		}
		_ = e.closeSync()
		e.closeSync = nil
	}
}

func (e *Engine) shutdownServer() {
	if e.srv != nil {
		e.srv.Shutdown()
		e.srv.WaitForShutdown()
	}
}

// parseRoute accepts "host:port" or "nats-route://host:port" (any scheme).
func parseRoute(r string) (*url.URL, error) {
	r = strings.TrimSpace(r)
	if !strings.Contains(r, "://") {
		r = "nats-route://" + r
	}
	u, err := url.Parse(r)
	if err != nil || u.Hostname() == "" || u.Port() == "" {
		return nil, fmt.Errorf("route %q: want host:port or nats-route://host:port", r)
	}
	return u, nil
}

func splitHostPort(hp string) (string, int, error) {
	i := strings.LastIndex(hp, ":")
	if i < 0 {
		return "", 0, fmt.Errorf("%q is not host:port", hp)
	}
	var port int
	if _, err := fmt.Sscanf(hp[i+1:], "%d", &port); err != nil {
		return "", 0, fmt.Errorf("%q: bad port", hp)
	}
	host := strings.Trim(hp[:i], "[]")
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

func redact(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}
