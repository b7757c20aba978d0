package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/caps-hub/caps/internal/hubtest"
)

// process is a caps client command running as its own process.
type process struct {
	cmd    *exec.Cmd
	out    *lineWatcher // stdout: the lines people read
	errs   *lineWatcher // stderr: logs
	exited chan error
}

func startProcess(t *testing.T, bin string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	stdout, _ := cmd.StdoutPipe()
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, out: watchLines(stdout), errs: watchLines(stderr), exited: make(chan error, 1)}
	go func() {
		p.out.drained()
		p.errs.drained()
		p.exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// waitExit waits for the process to end and returns its exit error.
func (p *process) waitExit(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-p.exited:
		p.exited <- err // for the cleanup
		return err
	case <-time.After(timeout):
		t.Fatalf("%v did not exit within %s; stdout:\n%s\nstderr:\n%s", p.cmd.Args, timeout,
			strings.Join(p.out.all(), "\n"), strings.Join(p.errs.all(), "\n"))
		return nil
	}
}

// stop asks the process to end (SIGTERM) and expects a clean exit.
func (p *process) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.waitExit(t, 30*time.Second); err != nil {
		t.Errorf("%v: exit after SIGTERM: %v; stderr:\n%s", p.cmd.Args, err, strings.Join(p.errs.all(), "\n"))
	}
}

// logLine is a line of caps logger's output.
type logLine struct {
	Event   string `json:"event"`
	Topic   string `json:"topic"`
	Payload struct {
		Store   string `json:"store"`
		OrderID string `json:"orderID"`
		Role    string `json:"role"`
		Name    string `json:"name"`
	} `json:"payload"`
}

func readLog(t *testing.T, path string) []logLine {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	// The logger may be writing its next line as the file is read: only
	// whole lines are its output so far.
	b = b[:bytes.LastIndexByte(b, '\n')+1]
	var out []logLine
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var l logLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("logger wrote a line that is not JSON: %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

func countLines(lines []string, s string) int {
	n := 0
	for _, l := range lines {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

// TestParcelProcesses runs the hub, a logger, two vendors and three drivers
// as separate processes, with a fourth driver that takes the first order and
// is killed with SIGKILL before it reports in-transit.
func TestParcelProcesses(t *testing.T) {
	bin := buildCaps(t)
	t0 := time.Now()
	addr, hub, events := startHubProcess(t, bin, t.TempDir())
	t.Logf("hub up after %s", time.Since(t0))
	logPath := filepath.Join(t.TempDir(), "events.jsonl")

	logger := startProcess(t, bin, "logger", "--hub", addr, "--out", logPath)
	logger.errs.waitFor(t, "logger recording", 30*time.Second)

	// The only driver at first, so it gets the first pickup; it never
	// reports in-transit.
	slowpoke := startProcess(t, bin, "driver", "--hub", addr, "--name", "slowpoke", "--pickup-delay", "1h", "--capacity", "1")
	slowpoke.errs.waitFor(t, "driver ready", 30*time.Second)

	vendors := map[string]*process{}
	for _, store := range []string{"acme-flowers", "rosebud"} {
		vendors[store] = startProcess(t, bin, "vendor", "--hub", addr, "--store", store, "--orders", "3", "--interval", "100ms", "--seed", "7")
	}
	events.waitFor(t, `"event":"pickup"`, 30*time.Second)

	// Find the first order in the logger's file and watch slowpoke take it.
	first := firstPickup(t, logPath)
	hubtest.Eventually(t, 30*time.Second, "slowpoke to hold "+first, func() error {
		out, _ := exec.Command(bin, "track", first, "--hub", addr).CombinedOutput()
		if strings.Contains(string(out), "assigned (driver slowpoke)") {
			return nil
		}
		return fmt.Errorf("track says:\n%s", out)
	})
	t.Logf("slowpoke holds the first order after %s", time.Since(t0))
	if err := slowpoke.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}

	var drivers []*process
	for _, name := range []string{"dave", "erin", "frank"} {
		drivers = append(drivers, startProcess(t, bin, "driver", "--hub", addr, "--name", name,
			"--pickup-delay", "20ms", "--deliver-delay", "50ms", "--capacity", "2"))
	}
	for store, v := range vendors {
		if err := v.waitExit(t, 60*time.Second); err != nil {
			t.Fatalf("vendor %s: %v\nstderr:\n%s", store, err, strings.Join(v.errs.all(), "\n"))
		}
	}
	t.Logf("vendors done after %s", time.Since(t0))

	var seen logTally
	hubtest.Eventually(t, 10*time.Second, "the logger to record 6 deliveries", func() error {
		seen = tallyLog(t, logPath)
		if n := len(seen.byEvent["delivered"]); n != 6 {
			return fmt.Errorf("%d orders delivered of %d posted", n, len(seen.orders))
		}
		return nil
	})
	t.Run("the logger saw every order's three events once each", func(t *testing.T) {
		if len(seen.orders) != 6 {
			t.Fatalf("logger saw %d orders, want 6", len(seen.orders))
		}
		if seen.connected < 7 {
			t.Errorf("logger saw %d client.connected events, want at least 7", seen.connected)
		}
		for id := range seen.orders {
			for _, ev := range []string{"pickup", "in-transit", "delivered"} {
				if n := seen.byEvent[ev][id]; n != 1 {
					t.Errorf("order %s: logger saw %d %s events, want 1", id, n, ev)
				}
			}
		}
	})
	t.Run("each order thanked for once, by its own vendor only", func(t *testing.T) {
		for id, store := range seen.orders {
			for s, v := range vendors {
				want := 0
				if s == store {
					want = 1
				}
				if n := countLines(v.out.all(), "VENDOR["+s+"]: Thank you for delivering "+id); n != want {
					t.Errorf("vendor %s thanked for %s (%s) %d times, want %d", s, id, store, n, want)
				}
			}
		}
	})
	t.Run("each order picked up and delivered by one driver, once", func(t *testing.T) {
		for id := range seen.orders {
			picked, delivered := 0, 0
			for _, d := range drivers {
				picked += countLines(d.out.all(), "]: picked up "+id)
				delivered += countLines(d.out.all(), "]: delivered "+id)
			}
			if picked != 1 || delivered != 1 {
				t.Errorf("order %s: picked up %d times, delivered %d times; want 1 and 1", id, picked, delivered)
			}
		}
		if n := len(slowpoke.out.all()); n != 0 {
			t.Errorf("slowpoke printed %d lines", n)
		}
	})
	t.Run("track shows the first order's hand-over", func(t *testing.T) {
		out, err := exec.Command(bin, "track", first, "--hub", addr).CombinedOutput()
		if err != nil {
			t.Fatalf("track %s: %v\n%s", first, err, out)
		}
		for _, want := range []string{"status    delivered (driver ", "assigned    slowpoke", "in-transit", "delivered"} {
			if !strings.Contains(strings.Join(strings.Fields(string(out)), "    "), strings.Join(strings.Fields(want), "    ")) {
				t.Errorf("track output lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("track of an order the hub does not know", func(t *testing.T) {
		out, err := exec.Command(bin, "track", uuid.NewString(), "--hub", addr).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "no such order") || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
			t.Errorf("track of an unknown order: err %v, output %q; want a one-line \"no such order\" and a non-zero exit", err, out)
		}
	})

	t.Logf("checked after %s", time.Since(t0))
	for _, d := range drivers {
		d.stop(t)
	}
	logger.stop(t)
	t.Logf("stopped after %s", time.Since(t0))
	_ = hub.Process.Signal(syscall.SIGTERM)
}

// firstPickup returns the order id of the first pickup the logger recorded.
func firstPickup(t *testing.T, logPath string) string {
	t.Helper()
	var first string
	hubtest.Until(t, 30*time.Second, "the logger to record a pickup", func() bool {
		for _, l := range readLog(t, logPath) {
			if l.Event == "pickup" {
				first = l.Payload.OrderID
				return true
			}
		}
		return false
	})
	return first
}

// logTally is what the logger recorded: orders (id → store), parcel events
// by event and order, and connection events.
type logTally struct {
	orders    map[string]string
	byEvent   map[string]map[string]int
	connected int
}

func tallyLog(t *testing.T, logPath string) logTally {
	l := logTally{orders: map[string]string{}, byEvent: map[string]map[string]int{}}
	for _, line := range readLog(t, logPath) {
		switch line.Event {
		case "pickup", "in-transit", "delivered":
			if line.Event == "pickup" {
				l.orders[line.Payload.OrderID] = line.Payload.Store
			}
			if l.byEvent[line.Event] == nil {
				l.byEvent[line.Event] = map[string]int{}
			}
			l.byEvent[line.Event][line.Payload.OrderID]++
		case "client.connected":
			l.connected++
		}
	}
	return l
}

func TestVendorGivesUpOnAnUnreachableHub(t *testing.T) {
	bin := buildCaps(t)
	addr := freeAddr(t) // nothing listens there
	v := startProcess(t, bin, "vendor", "--hub", addr, "--store", "acme", "--timeout", "500ms")
	err := v.waitExit(t, 30*time.Second)
	if err == nil {
		t.Fatal("vendor exited 0 with no hub")
	}
	lines := v.errs.all()
	if len(lines) == 0 || !strings.Contains(lines[len(lines)-1], "hub unreachable") {
		t.Errorf("want a last line saying the hub is unreachable, got:\n%s", strings.Join(lines, "\n"))
	}
}

func TestDemoCommand(t *testing.T) {
	bin := buildCaps(t)
	p := startProcess(t, bin, "demo", "--orders", "20", "--interval", "20ms", "--pickup-delay", "10ms", "--deliver-delay", "20ms")
	if err := p.waitExit(t, 120*time.Second); err != nil {
		t.Fatalf("demo: %v\nstdout:\n%s\nstderr:\n%s", err, strings.Join(p.out.all(), "\n"), strings.Join(p.errs.all(), "\n"))
	}
	out := p.out.all()
	summary := p.out.waitFor(t, "DEMO: posted", time.Second)
	if !strings.Contains(summary, "posted 20, delivered 20, lost 0, duplicates 0") {
		t.Errorf("summary %q", summary)
	}
	// Every 4th order of each vendor (--pin-every 4) needs the customer's
	// PIN, which the simulated customer gives the driver: delivered too.
	if s := p.out.waitFor(t, "DEMO: outcomes:", time.Second); !strings.Contains(s, "delivered 20 (4 with the customer's PIN), returned 0; failed attempts 0") {
		t.Errorf("outcomes %q", s)
	}
	p.out.waitFor(t, "p50", time.Second)
	if n := countLines(out, "]: Thank you for delivering "); n != 20 {
		t.Errorf("%d thank-you lines, want 20", n)
	}
	if n := countLines(out, "]: delivered "); n != 20 {
		t.Errorf("%d driver delivered lines, want 20", n)
	}
}

// TestDemoFailRate: with --fail-rate the demo's drivers fail attempts, the
// hub offers failed orders again and they are returned after their last
// attempt; the summary counts each outcome, and the demo still exits 0
// when every order was delivered or returned exactly once.
func TestDemoFailRate(t *testing.T) {
	bin := buildCaps(t)
	p := startProcess(t, bin, "demo", "--orders", "16", "--interval", "20ms", "--pickup-delay", "10ms", "--deliver-delay", "20ms",
		"--fail-rate", "0.6", "--max-attempts", "2")
	if err := p.waitExit(t, 120*time.Second); err != nil {
		t.Fatalf("demo: %v\nstdout:\n%s\nstderr:\n%s", err, strings.Join(p.out.all(), "\n"), strings.Join(p.errs.all(), "\n"))
	}
	if s := p.out.waitFor(t, "DEMO: posted", time.Second); !strings.Contains(s, "posted 16, ") || !strings.Contains(s, "lost 0, duplicates 0") {
		t.Errorf("summary %q", s)
	}
	var delivered, withPIN, returned, failed int
	line := p.out.waitFor(t, "DEMO: outcomes:", time.Second)
	if _, err := fmt.Sscanf(line, "DEMO: outcomes: delivered %d (%d with the customer's PIN), returned %d; failed attempts %d", &delivered, &withPIN, &returned, &failed); err != nil {
		t.Fatalf("outcomes %q: %v", line, err)
	}
	// At 60 % per attempt, 16 orders with none failing, or none returned
	// (0.36 each), are each below one chance in a thousand.
	// Every 4th order of each vendor needs the PIN: 4 of the 16.
	if delivered+returned != 16 || failed == 0 || returned == 0 || failed < returned*2 || withPIN > 4 {
		t.Errorf("outcomes %q", line)
	}
	if n := countLines(p.out.all(), "]: Thank you for delivering "); n != delivered {
		t.Errorf("%d thank-you lines, want %d", n, delivered)
	}
}
