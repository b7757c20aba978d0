// Package hubtest runs real hubs for tests and benchmarks: loopback
// listeners, an embedded engine in a temporary directory, started and
// stopped with the test. Every package's end-to-end tests use it, so there
// is one way to bring a hub up and down.
package hubtest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/caps-hub/caps/hub"
)

// Hub is a running hub and the means to stop it.
type Hub struct {
	*hub.Hub
	stop func()
}

// Stop shuts the hub down gracefully and reports a failed shutdown to the
// test. It is idempotent and also runs when the test ends.
func (h *Hub) Stop() { h.stop() }

// Start runs a hub configured by cfg until Stop or the end of the test.
// Empty fields get test defaults: Addr 127.0.0.1:0, HTTP off, a temporary
// data directory (unless NATSURLs is set), EVENT lines off, logs discarded,
// name "test".
func Start(tb testing.TB, cfg hub.Config) *Hub {
	tb.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "off"
	}
	if cfg.DataDir == "" && cfg.NATSURLs == "" {
		cfg.DataDir = tb.TempDir()
	}
	if cfg.EventOut == nil {
		cfg.Quiet = true
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Name == "" {
		cfg.Name = "test"
	}
	h := hub.New(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := h.Start(ctx); err != nil {
		tb.Fatalf("hub did not start: %v", err)
	}
	var once sync.Once
	th := &Hub{Hub: h}
	th.stop = func() {
		once.Do(func() {
			// As Run does: drain for the hub's ShutdownTimeout, then close
			// what is left (not an error); a hub that does not stop at all is.
			drain := cfg.ShutdownTimeout
			if drain <= 0 {
				drain = 10 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), drain)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- h.Shutdown(ctx) }()
			select {
			case err := <-done:
				if err != nil && !errors.Is(err, context.DeadlineExceeded) {
					tb.Errorf("hub shutdown: %v", err)
				}
			case <-time.After(drain + stopTimeout):
				buf := make([]byte, 4<<20)
				tb.Errorf("hub did not stop in %s; goroutines:\n%s", drain+stopTimeout, buf[:runtime.Stack(buf, true)])
			}
		})
	}
	tb.Cleanup(th.stop)
	return th
}

// How long a test hub may take to start (a loaded machine, a cluster
// electing its first leader), and to stop once its sessions are drained or
// closed.
const (
	startTimeout = 60 * time.Second
	stopTimeout  = 30 * time.Second
)

// LeakOptions are the goroutines goleak must not blame on a test: the
// process-wide ones nats-server and nats.go keep for their lifetime.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*Server).startGoRoutine.func1"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).Start.func1"),
		goleak.IgnoreTopFunction("time.Sleep"),
	}
}

// Cutter dials TCP (use Dial as client.Options.Dialer) and can cut every
// connection it made without a goodbye, as a dead process or a network
// failure would.
type Cutter struct {
	mu    sync.Mutex
	conns []net.Conn
}

// Dial connects to addr and remembers the connection.
func (k *Cutter) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		k.mu.Lock()
		k.conns = append(k.conns, c)
		k.mu.Unlock()
	}
	return c, err
}

// Cut closes every connection made so far.
func (k *Cutter) Cut() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range k.conns {
		c.Close()
	}
	k.conns = nil
}

// Eventually polls check until it returns nil, and fails the test with what
// and check's last error once timeout has passed. Tests wait for conditions
// with it (or Until) instead of sleeping and hoping: it is the one polling
// helper of the project's tests.
func Eventually(tb testing.TB, timeout time.Duration, what string, check func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Until is Eventually for a condition that has nothing to explain.
func Until(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	Eventually(tb, timeout, what, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	})
}

var errNotYet = errors.New("condition not met")
