package parcel_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/internal/parcel"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, hubtest.LeakOptions()...)
}

// testHub is a hub with the parcel dispatcher, on a real data directory and
// a real loopback port, that a test may stop and start again.
type testHub struct {
	t    *testing.T
	h    *hubtest.Hub
	d    *parcel.Dispatcher
	dir  string
	addr string
	mod  func(*hub.Config)
	opts parcel.Options
}

// startHub runs a hub until the test ends.
func startHub(t *testing.T, mod func(*hub.Config)) *testHub {
	t.Helper()
	return startHubWith(t, parcel.Options{}, mod)
}

// startHubWith is startHub with the dispatcher's options.
func startHubWith(t *testing.T, opts parcel.Options, mod func(*hub.Config)) *testHub {
	t.Helper()
	th := &testHub{t: t, dir: t.TempDir(), addr: "127.0.0.1:0", mod: mod, opts: opts}
	th.start()
	return th
}

// start starts the hub again, on the same data directory and port.
func (th *testHub) start() {
	th.t.Helper()
	th.d = parcel.NewDispatcher(th.opts)
	cfg := hub.Config{Addr: th.addr, DataDir: th.dir, Logger: quietLog(), Apps: []hub.App{th.d}}
	if th.mod != nil {
		th.mod(&cfg)
	}
	th.h = hubtest.Start(th.t, cfg)
	th.addr = th.h.Addr().String() // the same port after a restart
}

// stop shuts the hub down gracefully and waits for it.
func (th *testHub) stop() { th.h.Stop() }

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
