package bench

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/parcel"
)

type targetKind int

const (
	kindCAPS targetKind = iota
	kindNATS
)

type targetSpec struct {
	kind targetKind
	addr string // host:port (caps) or URL (nats); empty = embedded
}

// parseTarget accepts "caps", "nats", "caps://host:port", "nats://host:port".
func parseTarget(s string) (targetSpec, error) {
	switch s {
	case "caps", "":
		return targetSpec{kind: kindCAPS}, nil
	case "nats":
		return targetSpec{kind: kindNATS}, nil
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return targetSpec{}, fmt.Errorf("target %q: want caps, nats, caps://host:port or nats://host:port", s)
	}
	switch u.Scheme {
	case "caps", "tcp":
		return targetSpec{kind: kindCAPS, addr: u.Host}, nil
	case "nats":
		return targetSpec{kind: kindNATS, addr: s}, nil
	}
	return targetSpec{}, fmt.Errorf("target %q: scheme must be caps:// or nats://", s)
}

// target is a running system under test.
type target struct {
	name     string
	kind     targetKind
	addr     string // caps: host:port; nats: URL
	embedded bool
	token    string
	hub      *hub.Hub // embedded CAPS hub, when in this process
}

// env owns the embedded servers, started on first use and shared by every
// scenario of a run.
type env struct {
	opts *Options
	log  *slog.Logger
	dir  string

	capsHub  *target
	stopHub  func()
	natsSrv  *server.Server
	natsTg   *target
	cleanups []func()
}

func newEnv(o *Options) *env { return &env{opts: o, log: o.Logger} }

func (e *env) tempDir() (string, error) {
	if e.dir == "" {
		d, err := os.MkdirTemp("", "caps-bench-")
		if err != nil {
			return "", fmt.Errorf("temp dir: %w", err)
		}
		e.dir = d
	}
	return e.dir, nil
}

func (e *env) close() {
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
	if e.stopHub != nil {
		e.stopHub()
	}
	if e.natsSrv != nil {
		e.natsSrv.Shutdown()
		e.natsSrv.WaitForShutdown()
	}
	if e.dir != "" {
		os.RemoveAll(e.dir)
	}
}

// target returns the running target for spec s, starting embedded servers
// on first use. It returns nil when the scenario does not apply to it.
func (e *env) target(ctx context.Context, s string, scenario string) (*target, error) {
	spec, err := parseTarget(s)
	if err != nil {
		return nil, err
	}
	if scenario == "conns" {
		if spec.kind == kindNATS {
			return nil, nil // memory per connection is a question about the hub
		}
		if spec.addr == "" {
			return &target{name: "caps (embedded)", kind: kindCAPS, embedded: true}, nil // conns starts its own
		}
	}
	switch {
	case spec.kind == kindCAPS && spec.addr != "":
		return &target{name: "caps://" + spec.addr, kind: kindCAPS, addr: spec.addr, token: e.opts.Token}, nil
	case spec.kind == kindNATS && spec.addr != "":
		return &target{name: spec.addr, kind: kindNATS, addr: spec.addr}, nil
	case spec.kind == kindCAPS:
		if e.capsHub == nil {
			tg, stop, err := e.startHub(ctx, hubSpec{})
			if err != nil {
				return nil, err
			}
			e.capsHub, e.stopHub = tg, stop
		}
		return e.capsHub, nil
	default:
		if e.natsTg == nil {
			if err := e.startNATS(); err != nil {
				return nil, err
			}
		}
		return e.natsTg, nil
	}
}

type hubSpec struct {
	auth     hub.Authenticator
	httpAddr string
}

// startHub runs a CAPS hub in this process, in a temp dir, the way a
// benchmark wants it: quiet (unless Events), no publish rate limit.
func (e *env) startHub(ctx context.Context, hs hubSpec) (*target, func(), error) {
	root, err := e.tempDir()
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp(root, "hub-")
	if err != nil {
		return nil, nil, err
	}
	sync := e.opts.SyncAlways
	cfg := hub.Config{
		Addr:       "127.0.0.1:0",
		HTTPAddr:   "off",
		DataDir:    dir,
		Name:       "bench",
		Quiet:      !e.opts.Events,
		PubRate:    -1,
		SyncAlways: &sync,
		Auth:       hs.auth,
		Logger:     e.log,
		MaxConns:   1 << 20,
		// Every connection comes from this machine.
		MaxConnsPerAddr: 1 << 20,
		// The bench reads the hub's memory from /metrics, without a token.
		MetricsAccess: hub.MetricsOpen,
	}
	if hs.httpAddr != "" {
		cfg.HTTPAddr = hs.httpAddr
	}
	if e.opts.Events {
		cfg.EventOut = discardWriter{}
	}
	if e.opts.HubApps != nil {
		cfg.Apps = e.opts.HubApps()
	} else {
		cfg.Apps = []hub.App{parcel.NewDispatcher(parcel.Options{})}
	}
	h := hub.New(cfg)
	if err := h.Start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, fmt.Errorf("embedded hub: %w", err)
	}
	stop := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := h.Shutdown(sctx); err != nil {
			e.log.Warn("embedded hub did not drain in 30s", "err", err)
		}
	}
	tg := &target{name: "caps (embedded)", kind: kindCAPS, addr: h.Addr().String(), embedded: true, hub: h}
	return tg, stop, nil
}

// startNATS runs a nats-server with JetStream on a random loopback port.
func (e *env) startNATS() error {
	root, err := e.tempDir()
	if err != nil {
		return err
	}
	o := &server.Options{
		ServerName: "bench-nats",
		Host:       "127.0.0.1",
		Port:       -1,
		JetStream:  true,
		StoreDir:   filepath.Join(root, "nats"),
		NoSigs:     true,
		NoLog:      true,
		SyncAlways: e.opts.SyncAlways,
		MaxPayload: 8 << 20,
		// As the hub's embedded engine: a generous memory limit, file storage.
		JetStreamMaxMemory: 256 << 20,
	}
	srv, err := server.NewServer(o)
	if err != nil {
		return fmt.Errorf("embedded nats: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		return fmt.Errorf("embedded nats did not start in 30s")
	}
	e.natsSrv = srv
	e.natsTg = &target{name: "nats (embedded)", kind: kindNATS, addr: srv.ClientURL(), embedded: true}
	return nil
}

type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// startProfiles starts the CPU profile and arranges the heap profile.
func startProfiles(o *Options) (func(), error) {
	var stops []func()
	if o.CPUProfile != "" {
		f, err := os.Create(o.CPUProfile)
		if err != nil {
			return nil, fmt.Errorf("cpu profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, fmt.Errorf("cpu profile: %w", err)
		}
		stops = append(stops, func() { pprof.StopCPUProfile(); f.Close() })
	}
	if o.MemProfile != "" {
		path := o.MemProfile
		stops = append(stops, func() {
			f, err := os.Create(path)
			if err != nil {
				o.Logger.Error("mem profile", "err", err)
				return
			}
			defer f.Close()
			runtime.GC()
			if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
				o.Logger.Error("mem profile", "err", err)
			}
		})
	}
	return func() {
		for _, s := range stops {
			s()
		}
	}, nil
}
