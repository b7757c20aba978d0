package parcel_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/parcel"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// nats.go and nats-server keep a few process-wide goroutines alive.
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*Server).startGoRoutine.func1"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).Start.func1"),
		goleak.IgnoreTopFunction("time.Sleep"),
	)
}

// testHub is a hub with the parcel dispatcher, on a real data directory and
// a real loopback port, that a test may stop and start again.
type testHub struct {
	t      *testing.T
	h      *hub.Hub
	d      *parcel.Dispatcher
	dir    string
	addr   string
	cancel context.CancelFunc
	done   chan error
	mod    func(*hub.Config)
}

// startHub runs a hub until the test ends. addr "" picks a free port.
func startHub(t *testing.T, mod func(*hub.Config)) *testHub {
	t.Helper()
	th := &testHub{t: t, dir: t.TempDir(), addr: "127.0.0.1:0", mod: mod}
	th.start()
	t.Cleanup(th.stop)
	return th
}

func (th *testHub) start() {
	th.t.Helper()
	th.d = parcel.NewDispatcher(parcel.Options{})
	cfg := hub.Config{
		Addr: th.addr, HTTPAddr: "off", DataDir: th.dir, Quiet: true, Name: "test",
		Logger: quietLog(), Apps: []hub.App{th.d},
	}
	if th.mod != nil {
		th.mod(&cfg)
	}
	th.h = hub.New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	th.cancel = cancel
	th.done = make(chan error, 1)
	go func() { th.done <- th.h.Run(ctx) }()
	select {
	case <-th.h.Ready():
	case err := <-th.done:
		th.t.Fatalf("hub did not start: %v", err)
	case <-time.After(30 * time.Second):
		th.t.Fatal("hub did not start in 30s")
	}
	th.addr = th.h.Addr().String() // the same port after a restart
}

// stop shuts the hub down gracefully and waits for it.
func (th *testHub) stop() {
	if th.cancel == nil {
		return
	}
	th.cancel()
	th.cancel = nil
	select {
	case err := <-th.done:
		if err != nil {
			th.t.Errorf("hub run: %v", err)
		}
	case <-time.After(30 * time.Second):
		th.t.Error("hub did not stop in 30s")
	}
}

func (th *testHub) client() parcel.ClientConfig {
	return parcel.ClientConfig{Hub: []string{th.addr}, Timeout: 20 * time.Second, Log: quietLog()}
}

func quietLog() *slog.Logger {
	if os.Getenv("CAPS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// capture collects the lines a client prints.
type capture struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines []string
}

func (c *capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf.Write(p)
	for {
		b := c.buf.Bytes()
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			break
		}
		c.lines = append(c.lines, string(b[:i]))
		c.buf.Next(i + 1)
	}
	return len(p), nil
}

func (c *capture) Lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines...)
}

// count returns how many lines contain s.
func (c *capture) count(s string) int {
	n := 0
	for _, l := range c.Lines() {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

// eventually waits for cond, failing the test after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runner runs client functions in goroutines and collects their results.
type runner struct {
	t  *testing.T
	wg sync.WaitGroup
}

// goRun runs fn until it returns; the result is delivered on the channel.
func goRun(r *runner, fn func() error) <-chan error {
	ch := make(chan error, 1)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		ch <- fn()
	}()
	return ch
}

// wait waits for a client's result.
func wait(t *testing.T, ch <-chan error, timeout time.Duration, what string) {
	t.Helper()
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(timeout):
		t.Fatalf("%s did not finish in %s", what, timeout)
	}
}

func thankYou(store, id string) string {
	return fmt.Sprintf("VENDOR[%s]: Thank you for delivering %s", store, id)
}
