package webhook

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/internal/hubtest"
)

// The kill -9 test runs the dispatcher (engine included, as in a hub) in a
// child process: this test binary again, told so by these variables.
const (
	childEnv    = "CAPS_WEBHOOK_CHILD" // the data directory
	childURL    = "CAPS_WEBHOOK_CHILD_URL"
	childEvents = "CAPS_WEBHOOK_CHILD_EVENTS"
)

// runChild is the child process: an embedded engine on the data directory,
// a webhook service with one endpoint (created on the first run, printed
// as "ENDPOINT <secret>"), then the events published (the same ids on
// every run: the source stream drops repeats) while deliveries go on,
// until SIGTERM or SIGKILL.
func runChild() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	n, _ := strconv.Atoi(os.Getenv(childEvents))
	eng, err := engine.Start(ctx, engine.Config{DataDir: os.Getenv(childEnv), Name: "child", SyncAlways: true, Logger: testLogger()})
	if err != nil {
		return fail(err)
	}
	defer eng.Close()
	if _, err := eng.EnsureStream(ctx, engine.StreamSpec{Name: testStream, Topics: []string{"test.ev.>"}}); err != nil {
		return fail(err)
	}
	cfg := testConfig(eng)
	cfg.Registerer = prometheus.NewRegistry()
	cfg.RequestTimeout = time.Second
	s, err := New(cfg)
	if err != nil {
		return fail(err)
	}
	if err := s.Start(ctx); err != nil {
		return fail(err)
	}
	defer s.Stop()
	eps, err := s.List(ctx, "shop")
	if err != nil {
		return fail(err)
	}
	if len(eps) == 0 {
		_, secret, err := s.Create(ctx, NewEndpoint{Store: "shop", URL: os.Getenv(childURL)})
		if err != nil {
			return fail(err)
		}
		fmt.Println("ENDPOINT", secret)
	}
	fmt.Println("PUBLISHING")
	for i := range n {
		data := fmt.Sprintf(`{"id":"ev-%03d","type":"order.delivered","store":"shop"}`, i)
		if _, err := eng.PublishStored(ctx, natsMsg(engine.Subject("test.ev.shop"), data, fmt.Sprintf("ev-%03d", i))); err != nil {
			return fail(err)
		}
	}
	fmt.Println("PUBLISHED")
	<-ctx.Done()
	return 0
}

// startChild runs the child on dataDir and returns it with its stdout lines.
func startChild(t *testing.T, dataDir, url string, events int) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+dataDir, childURL+"="+url, childEvents+"="+strconv.Itoa(events))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		io.Copy(io.Discard, out)
	}()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, lines
}

func waitLine(t *testing.T, lines <-chan string, prefix string) string {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the child exited before printing %q", prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-timeout:
			t.Fatalf("the child did not print %q in 60s", prefix)
		}
	}
}

// A kill -9 of the process running the dispatcher, while events are being
// published and delivered, loses nothing: restarted on the same data
// directory it delivers every event, and the repeats (attempts the dead
// process made but did not record) carry the same webhook-id.
func TestKill9LosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("runs child processes")
	}
	const events = 150
	var slowdown sync.Once
	pace := make(chan struct{})
	rc := newReceiver(t, func(*http.Request) int {
		// Answer slowly at first, so the kill finds deliveries in flight.
		select {
		case <-pace:
		case <-time.After(20 * time.Millisecond):
		}
		return http.StatusOK
	})
	data := t.TempDir()

	first, lines := startChild(t, data, rc.URL(), events)
	secret := strings.TrimPrefix(waitLine(t, lines, "ENDPOINT "), "ENDPOINT ")
	rc.setSecret(secret)
	hubtest.Until(t, 60*time.Second, "some deliveries before the kill", func() bool { return len(rc.delivered()) >= 20 })
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.Wait()
	before := len(rc.delivered())
	slowdown.Do(func() { close(pace) })

	second, lines := startChild(t, data, rc.URL(), events)
	waitLine(t, lines, "PUBLISHED")
	ids := make([]string, events)
	for i := range ids {
		ids[i] = fmt.Sprintf("ev-%03d", i)
	}
	rc.waitDelivered(t, 60*time.Second, ids)
	rc.checkCalls(t)
	dups := 0
	for _, n := range rc.delivered() {
		dups += n - 1
	}
	t.Logf("%d events delivered before the kill, all %d after the restart; %d delivered twice (same webhook-id)", before, events, dups)
	if len(rc.delivered()) != events {
		t.Errorf("%d distinct events delivered, want %d", len(rc.delivered()), events)
	}
	second.Process.Signal(syscall.SIGTERM)
	if err := second.Wait(); err != nil {
		t.Errorf("the child did not stop cleanly on SIGTERM: %v", err)
	}
	_ = netip.Addr{}
}
