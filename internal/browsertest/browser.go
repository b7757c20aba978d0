// Package browsertest drives a headless Chromium for the tests of the
// pages the hub serves (the dashboard, the customer tracking page): start
// it, run actions, wait for a condition in the page, take screenshots for
// the README. Chromium errors and uncaught exceptions of the page fail the
// test.
package browsertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"go.uber.org/goleak"

	"github.com/caps-hub/caps/internal/hubtest"
)

// LeakOptions are hubtest's, and chromedp's: its allocator reaps the
// browser process in the background. For a TestMain's goleak check.
func LeakOptions() []goleak.Option {
	return append(hubtest.LeakOptions(), goleak.IgnoreAnyFunction("github.com/chromedp/chromedp.(*ExecAllocator).Allocate.func2"))
}

// Wait is how long an action or a condition may take.
const Wait = 30 * time.Second

// Browser is a headless Chromium for one test. Tests that use it are
// skipped, saying why, when no Chromium is installed (.ci/run installs
// Debian's).
type Browser struct {
	t      *testing.T
	ctx    context.Context
	mu     sync.Mutex
	errors []string // uncaught exceptions and console errors of the page
}

func chromiumPath() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// New starts Chromium with a window of w×h CSS pixels; the test is skipped,
// saying whose tests (what) need it, when none is installed.
func New(t *testing.T, w, h int, what string) *Browser {
	t.Helper()
	path := chromiumPath()
	if path == "" {
		t.Skip("chromium is not installed: " + what + " need it (apt-get install chromium; .ci/run does)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.WindowSize(w, h),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	b := &Browser{t: t, ctx: ctx}
	if err := chromedp.Do(ctx); err != nil {
		cancelCtx()
		cancelAlloc()
		t.Fatalf("start chromium (%s): %v", path, err)
	}
	b.watchConsole()
	t.Cleanup(func() {
		cancelCtx()
		cancelAlloc()
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, e := range b.errors {
			t.Errorf("page: %s", e)
		}
	})
	return b
}

// watchConsole records the page's uncaught exceptions and console errors:
// each fails the test at its end.
func (b *Browser) watchConsole() {
	msgs := chromedp.Console(b.ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			// Failed connections while a hub is down are the browser's
			// network log, not the page's errors.
			if (m.IsException() || m.Type == chromedp.ConsoleError) && m.Source != "network" {
				b.Fail(m.String())
			}
		}
	}()
}

// Fail records msg as an error of the page: it fails the test at its end.
func (b *Browser) Fail(msg string) {
	b.mu.Lock()
	b.errors = append(b.errors, msg)
	b.mu.Unlock()
}

// Tab opens another tab (with its own sessionStorage) in the same browser.
func (b *Browser) Tab() *Browser {
	ctx, cancel := chromedp.NewContext(b.ctx)
	b.t.Cleanup(cancel)
	nb := &Browser{t: b.t, ctx: ctx}
	if err := chromedp.Do(ctx); err != nil {
		b.t.Fatal(err)
	}
	nb.watchConsole()
	b.t.Cleanup(func() {
		nb.mu.Lock()
		defer nb.mu.Unlock()
		for _, e := range nb.errors {
			b.t.Errorf("page: %s", e)
		}
	})
	return nb
}

// Do runs actions with the test's patience.
func (b *Browser) Do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, Wait)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

// Until evaluates a JavaScript expression until it is true.
func (b *Browser) Until(what, expr string) {
	b.t.Helper()
	deadline := time.Now().Add(Wait)
	for {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		cancel()
		if err == nil && ok {
			if testing.Verbose() {
				b.t.Logf("%s: after %s", what, time.Since(deadline.Add(-Wait)).Round(time.Millisecond))
			}
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("waiting for %s (%s): %v", what, expr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Eval evaluates expr.
func Eval[T any](b *Browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, Wait)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// Screenshot saves what the window shows as a PNG into $CAPS_DASHBOARD_SHOTS/name, when
// that variable names a directory (the README's pictures are made so).
func (b *Browser) Screenshot(name string) {
	b.t.Helper()
	dir := os.Getenv("CAPS_DASHBOARD_SHOTS")
	if dir == "" {
		return
	}
	ctx, cancel := context.WithTimeout(b.ctx, Wait)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Fatalf("screenshot: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("wrote %s (%d KB)", filepath.Join(dir, name), len(png)/1024)
}

// JS quotes s as a JavaScript string literal.
func JS(s string) string { return fmt.Sprintf("%q", s) }
