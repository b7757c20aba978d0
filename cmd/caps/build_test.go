package main

import (
	"bufio"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The caps binary, built once per test run for the tests that run it as a
// separate process.
var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// buildCaps builds ./cmd/caps into a temporary directory (once) and returns its path.
func buildCaps(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "caps-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "caps")
		out, err := exec.Command("go", "build", "-o", buildPath, ".").CombinedOutput()
		if err != nil {
			buildErr = err
			buildPath = string(out)
		}
	})
	if buildErr != nil {
		t.Fatalf("build caps: %v\n%s", buildErr, buildPath)
	}
	return buildPath
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// lineWatcher collects a process's output lines and lets a test wait for one.
type lineWatcher struct {
	mu    sync.Mutex
	lines []string
	cond  *sync.Cond
	done  bool
}

func watchLines(r io.Reader) *lineWatcher {
	w := &lineWatcher{}
	w.cond = sync.NewCond(&w.mu)
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			w.mu.Lock()
			w.lines = append(w.lines, sc.Text())
			w.cond.Broadcast()
			w.mu.Unlock()
		}
		w.mu.Lock()
		w.done = true
		w.cond.Broadcast()
		w.mu.Unlock()
	}()
	return w
}

// drained waits until the reader has ended (the process closed its end) and
// every line is read. exec.Cmd.Wait closes the pipes once the process has
// exited, so calling it before this can lose the last lines a process wrote
// just before exiting (TestHubKill9 saw a vendor's last thank-you lost so).
func (w *lineWatcher) drained() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for !w.done {
		w.cond.Wait()
	}
}

// waitFor waits until a line containing s appears, or fails the test.
func (w *lineWatcher) waitFor(t *testing.T, s string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() { w.mu.Lock(); w.cond.Broadcast(); w.mu.Unlock() })
	defer timer.Stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		for _, l := range w.lines {
			if strings.Contains(l, s) {
				return l
			}
		}
		if w.done || time.Now().After(deadline) {
			t.Fatalf("no line containing %q within %s; got:\n%s", s, timeout, strings.Join(w.lines, "\n"))
		}
		w.cond.Wait()
	}
}

// all returns the lines seen so far.
func (w *lineWatcher) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.lines...)
}
