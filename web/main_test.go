package web_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/caps-hub/caps/internal/hubtest"
)

func TestMain(m *testing.M) {
	// nats.go and nats-server keep a few process-wide goroutines alive.
	goleak.VerifyTestMain(m, hubtest.LeakOptions()...)
}
