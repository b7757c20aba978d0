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
	"net/url"
	"os"
	"path/filepath"
	"strings"
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

	// Cluster makes the embedded server a member of a NATS cluster, so a
	// multi-machine deployment needs only the caps binary.
	Cluster ClusterConfig

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
	NC       *nats.Conn
	JS       jetstream.JetStream
	Replicas int

	srv *server.Server // nil when external
	log *slog.Logger
}

// Embedded reports whether the NATS server runs inside this process.
func (e *Engine) Embedded() bool { return e.srv != nil }

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
	e := &Engine{log: log}
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
	if cfg.URLs == "" {
		srv, err := startEmbedded(cfg, log)
		if err != nil {
			return nil, err
		}
		e.srv = srv
		opts = append(opts, nats.InProcessServer(srv))
	} else {
		urls = cfg.URLs
		opts = append(opts, nats.RetryOnFailedConnect(true))
	}
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		e.shutdownServer()
		return nil, fmt.Errorf("connect to engine %s: %w", redact(urls), err)
	}
	e.NC = nc
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
	e.Replicas = cfg.Replicas
	if e.Replicas <= 0 {
		e.Replicas = 1
		if n := e.clusterSize(cfg); n >= 3 {
			e.Replicas = 3
		}
	}
	log.Info("engine ready", "embedded", e.Embedded(), "replicas", e.Replicas)
	return e, nil
}

func startEmbedded(cfg Config, log *slog.Logger) (*server.Server, error) {
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
		DontListen:         !cfg.Cluster.enabled() || cfg.Cluster.Client == "",
		NoSigs:             true,
		NoLog:              true,
		SyncAlways:         cfg.SyncAlways,
		SyncInterval:       cfg.SyncInterval,
		JetStreamMaxMemory: 256 << 20,
		MaxPayload:         8 << 20,
	}
	if cfg.Cluster.enabled() {
		host, port, err := splitHostPort(cfg.Cluster.Listen)
		if err != nil {
			return nil, fmt.Errorf("cluster listen: %w", err)
		}
		o.Cluster.Name = cfg.Cluster.Name
		o.Cluster.Host, o.Cluster.Port = host, port
		for _, r := range cfg.Cluster.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("route %q: %w", r, err)
			}
			o.Routes = append(o.Routes, u)
		}
		if cfg.Cluster.Client != "" {
			h, p, err := splitHostPort(cfg.Cluster.Client)
			if err != nil {
				return nil, fmt.Errorf("cluster client listen: %w", err)
			}
			o.Host, o.Port = h, p
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

// waitReady waits until JetStream answers, logging a clear line while it does not.
func (e *Engine) waitReady(ctx context.Context, limit time.Duration) error {
	if limit > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, limit)
		defer cancel()
	}
	last := time.Time{}
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := e.JS.AccountInfo(actx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Since(last) > 5*time.Second {
			e.log.Warn("waiting for the engine (NATS with JetStream) to be ready", "err", err)
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("engine not ready: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// clusterSize returns how many NATS servers the engine's cluster has, as
// far as this connection knows (configured plus discovered URLs).
func (e *Engine) clusterSize(cfg Config) int {
	if e.srv != nil {
		if !e.srv.JetStreamIsClustered() {
			return 1
		}
		return len(cfg.Cluster.Routes) + 1
	}
	return max(len(e.NC.Servers()), 1)
}

// Ready reports whether the engine connection is up.
func (e *Engine) Ready() bool { return e.NC != nil && e.NC.IsConnected() }

// Close drains the connection and stops the embedded server.
func (e *Engine) Close() {
	if e.NC != nil {
		if err := e.NC.Drain(); err != nil {
			e.NC.Close()
		}
		deadline := time.Now().Add(5 * time.Second)
		for !e.NC.IsClosed() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		e.NC.Close()
	}
	e.shutdownServer()
}

func (e *Engine) shutdownServer() {
	if e.srv != nil {
		e.srv.Shutdown()
		e.srv.WaitForShutdown()
	}
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
