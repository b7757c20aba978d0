package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/auth"
	"github.com/caps-hub/caps/internal/parcel"
)

// EnvHubSpec carries a HubProcessSpec (JSON) to a child hub process.
const EnvHubSpec = "CAPS_BENCH_HUB_SPEC"

// ChildHub returns an Options.HubProcess that runs argv (a program that
// calls ServeHubFromEnv, such as `caps bench serve-hub`) with the spec in
// its environment, and waits until the hub answers /readyz.
func ChildHub(argv []string) func(ctx context.Context, spec HubProcessSpec) (func(), error) {
	return func(ctx context.Context, spec HubProcessSpec) (func(), error) {
		b, _ := json.Marshal(spec)
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), EnvHubSpec+"="+string(b))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		stop := func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(20 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			if _, err := httpGet(ctx, "http://"+spec.HTTPAddr+"/readyz"); err == nil {
				return stop, nil
			}
			select {
			case err := <-exited:
				return nil, fmt.Errorf("hub process exited: %v", err)
			case <-ctx.Done():
				stop()
				return nil, ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				stop()
				return nil, errors.New("hub process not ready after 60s")
			}
		}
	}
}

// ServeHubFromEnv runs the hub described by $CAPS_BENCH_HUB_SPEC until ctx
// ends: the hub a benchmark measures, with the parcel dispatcher, no
// publish rate limit, quiet, and /debug/gc plus /debug/pprof/ on its HTTP port.
func ServeHubFromEnv(ctx context.Context, log *slog.Logger) error {
	var spec HubProcessSpec
	if err := json.Unmarshal([]byte(os.Getenv(EnvHubSpec)), &spec); err != nil {
		return fmt.Errorf("%s: %w", EnvHubSpec, err)
	}
	cfg := hub.Config{
		Addr: spec.Addr, HTTPAddr: spec.HTTPAddr, DataDir: spec.DataDir, Name: "bench",
		Quiet: true, PubRate: -1, SyncAlways: &spec.SyncAlways, MaxConns: 1 << 20, MaxConnsPerAddr: 1 << 20, Logger: log,
		MetricsAccess: hub.MetricsOpen, // read by the conns scenario, without a token
		Apps:          []hub.App{parcel.NewDispatcher(parcel.Options{})},
	}
	if spec.AuthFile != "" {
		a, err := auth.Load(spec.AuthFile)
		if err != nil {
			return err
		}
		cfg.Auth = a
	}
	raiseFileLimit(1 << 20)
	h := hub.New(cfg)
	h.HandleHTTP(func(mux *http.ServeMux) {
		mux.HandleFunc("/debug/gc", func(w http.ResponseWriter, _ *http.Request) {
			runtime.GC()
			debug.FreeOSMemory()
			w.Write([]byte("ok\n"))
		})
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	})
	return h.Run(ctx)
}
