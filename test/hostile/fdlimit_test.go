//go:build linux

package hostile_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/protocol"
)

// fdChildEnv runs TestFileLimitChild as the hub of TestAtTheFileLimit.
const fdChildEnv = "CAPS_HOSTILE_FD_CHILD"

// Before: the connection limits (20000 + 10000 by default) could exceed
// the open-file limit, so a busy hub hit EMFILE before any limit refused
// anyone clearly, and /readyz became unreachable. Now a hub fits its limits
// to the open-file limit: at its limit it refuses with too_many_conns and
// still answers health checks. And when the process is out of file
// descriptors all the same, accept backs off instead of spinning, and
// serves again once descriptors are free.
//
// The hub runs in a child process (this test binary again) with an
// open-file limit of 400, so that this process's limit is not touched.
func TestAtTheFileLimit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestFileLimitChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), fdChildEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	var out strings.Builder
	expect := func(prefix string) string {
		t.Helper()
		for lines.Scan() {
			out.WriteString(lines.Text() + "\n")
			if rest, ok := strings.CutPrefix(lines.Text(), prefix); ok {
				return strings.TrimSpace(rest)
			}
		}
		t.Fatalf("the child hub ended before %q:\n%s\n%s", prefix, out.String(), stderr.String())
		return ""
	}
	defer func() {
		stdin.Close()
		go io.Copy(io.Discard, stdout)
		if err := cmd.Wait(); err != nil {
			t.Errorf("the child hub: %v\n%s\n%s", err, out.String(), stderr.String())
		}
	}()
	addrs := strings.Fields(expect("ADDRS "))
	tcp, httpAddr := addrs[0], addrs[1]

	// Connect until refused: a clear too_many_conns, well before 400.
	var refused *protocol.Frame
	var fillers []*wire
	for i := 0; i < 400 && refused == nil; i++ {
		w := dial(t, tcp)
		fillers = append(fillers, w)
		if f := w.helloFrame(protocol.RoleClient, "filler", ""); f.Op == protocol.OpErr {
			refused = f
		}
	}
	if refused == nil || string(refused.Topic) != protocol.CodeTooManyConns {
		t.Fatalf("400 connections to a hub that may open 400 files: last answer %v, want too_many_conns", refused)
	}
	if status, body := get(t, "http://"+httpAddr+"/readyz", ""); status != http.StatusOK {
		t.Errorf("/readyz with the CAPS port full: %d %s", status, body)
	}
	for _, w := range fillers {
		w.c.Close()
	}
	hubtest.Until(t, wait, "the connections to close", func() bool {
		status, body := get(t, "http://"+httpAddr+"/metrics", "")
		v, ok := sample(body, "caps_sockets_open")
		return status == http.StatusOK && ok && v == 0
	})

	// Out of descriptors all the same (the child opens files until EMFILE):
	// a connection waits in the backlog while accept fails, backing off.
	fmt.Fprintln(stdin, "exhaust")
	expect("EXHAUSTED")
	late := dial(t, tcp)
	late.send(helloFrameOf(protocol.RoleClient, "late"))
	res := expect("BACKOFF ")
	t.Log("child: BACKOFF", res)
	if !strings.HasPrefix(res, "ok") {
		t.Errorf("accept errors: %s", res)
	}
	expect("FREED")
	late.until("WELCOME once descriptors are free", func(f *protocol.Frame) bool { return f.Op == protocol.OpWelcome })
}

// helloFrameOf is a HELLO frame.
func helloFrameOf(role, name string) *protocol.Frame {
	return &protocol.Frame{Op: protocol.OpHello, Payload: fmt.Appendf(nil, `{"version":1,"role":%q,"name":%q}`, role, name)}
}

// TestFileLimitChild is the hub of TestAtTheFileLimit (skipped otherwise).
// It talks to its parent in lines: ADDRS, then on "exhaust" it holds every
// descriptor it can (EXHAUSTED), judges the accept errors its hub logs
// (BACKOFF ok|…), frees them (FREED) and ends when its input closes.
func TestFileLimitChild(t *testing.T) {
	if os.Getenv(fdChildEnv) == "" {
		t.Skip("the child process of TestAtTheFileLimit")
	}
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	rl.Cur = 400
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	accepts := &acceptLog{}
	tg := startTarget(t, setup{hub: func(c *hub.Config) { c.Logger = slog.New(accepts) }})
	fmt.Printf("ADDRS %s %s\n", tg.tcp, tg.http)
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() {
		return
	}
	var files []*os.File
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			break
		}
		files = append(files, f)
	}
	fmt.Println("EXHAUSTED")
	// Six failed accepts in a row take 5+10+20+40+80 ms with the back-off,
	// microseconds without. However slow the machine, a loop that backs off
	// fails at most once per step of a doubling delay (capped at 1 s).
	hubtest.Until(t, wait, "accept to fail", func() bool { return accepts.count() >= 6 })
	n, elapsed := accepts.count(), accepts.span()
	bound := 2 + math.Log2(max(float64(elapsed)/float64(5*time.Millisecond), 1)) + elapsed.Seconds()
	if float64(n) > bound {
		fmt.Printf("BACKOFF spinning: %d accept errors in %v (at most %.0f with the back-off)\n", n, elapsed, bound)
	} else {
		fmt.Printf("BACKOFF ok: %d accept errors in %v\n", n, elapsed)
	}
	for _, f := range files {
		f.Close()
	}
	fmt.Println("FREED")
	for in.Scan() {
	}
}

// acceptLog counts the hub's "accept" warnings (failed accepts).
type acceptLog struct {
	mu    sync.Mutex
	times []time.Time
}

func (l *acceptLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *acceptLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *acceptLog) WithGroup(string) slog.Handler            { return l }
func (l *acceptLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "accept" {
		l.mu.Lock()
		l.times = append(l.times, r.Time)
		l.mu.Unlock()
	}
	return nil
}

func (l *acceptLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.times)
}

// span is the time from the first failed accept to the last.
func (l *acceptLog) span() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.times) < 2 {
		return 0
	}
	return l.times[len(l.times)-1].Sub(l.times[0])
}
