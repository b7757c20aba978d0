package dashboard_test

import (
	"testing"

	"github.com/caps-hub/caps/internal/browsertest"
)

// browser is a headless Chromium for one test (internal/browsertest).
type browser = browsertest.Browser

func newBrowser(t *testing.T, w, h int) *browser {
	return browsertest.New(t, w, h, "the dashboard's browser tests")
}

func eval[T any](b *browser, expr string) T { return browsertest.Eval[T](b, expr) }

func js(s string) string { return browsertest.JS(s) }
