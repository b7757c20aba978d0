package hub

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/caps-hub/caps/internal/engine"
)

// TestHistoryWorkIsBounded: the last n messages of a pattern are found
// without reading the stream — at most 2n messages are read whatever its
// size and wherever the pattern's messages lie — and the history leaves no
// consumer behind. (sendHistory read every stored message of the pattern
// to keep the last n: on a big stream, a stall any subscriber could cause;
// and it left an ordered consumer per request for five minutes.)
func TestHistoryWorkIsBounded(t *testing.T) {
	off := false
	h := New(Config{Addr: "127.0.0.1:0", HTTPAddr: "off", DataDir: t.TempDir(), Quiet: true, Name: "history-test",
		SyncAlways: &off, Logger: slog.New(slog.DiscardHandler), Apps: []App{storeApp{}}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h.Shutdown(sctx)
	})
	// 1000 messages on store.old, then 3000 on store.noise.N (a pattern
	// store.noise.* dense at the end, store.old all at the start, store.>
	// everything) and, every 100th, one on store.rare.
	publish := func(topic string, i int) {
		if _, err := h.eng.JS.PublishAsync(engine.Subject(topic), fmt.Appendf(nil, "%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 1000 {
		publish("store.old", i)
	}
	for i := range 3000 {
		publish(fmt.Sprintf("store.noise.%d", i%7), i)
		if i%100 == 0 {
			publish("store.rare", i)
		}
	}
	select {
	case <-h.eng.JS.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("publishes not acknowledged")
	}
	for _, tc := range []struct {
		pattern string
		n       int
		last    string // payload of the newest message of the pattern
	}{
		{"store.old", 5, "999"},
		{"store.noise.*", 5, "2999"},
		{"store.>", 10, "2999"},
		{"store.rare", 3, "2900"},
		{"store.old", 1000, "999"},
		{"store.none", 5, ""},
	} {
		msgs, err := h.lastStored(ctx, "LOCK_TEST", tc.pattern, tc.n)
		if err != nil {
			t.Fatalf("%s: %v", tc.pattern, err)
		}
		if len(msgs) > 2*tc.n {
			t.Errorf("%s, n=%d: read %d messages, more than 2n", tc.pattern, tc.n, len(msgs))
		}
		if tc.last == "" {
			if len(msgs) != 0 {
				t.Errorf("%s: %d messages, want none", tc.pattern, len(msgs))
			}
			continue
		}
		if len(msgs) < tc.n {
			t.Errorf("%s: %d messages, want at least %d", tc.pattern, len(msgs), tc.n)
			continue
		}
		if got := string(msgs[len(msgs)-1].Data()); got != tc.last {
			t.Errorf("%s: newest %s, want %s", tc.pattern, got, tc.last)
		}
	}
	info, err := h.eng.JS.Stream(ctx, "LOCK_TEST")
	if err != nil {
		t.Fatal(err)
	}
	if n := info.CachedInfo().State.Consumers; n != 0 {
		t.Errorf("%d consumers left behind", n)
	}
}
