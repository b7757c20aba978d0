package webhook

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/internal/hubtest"
)

// BenchmarkEndToEnd measures events from the source stream to a loopback
// receiver's 2xx, for 1 and 3 endpoints of a store, with the engine
// syncing every write (the hub's default) and not.
//
//	go test ./internal/webhook -run '^$' -bench EndToEnd -benchtime 2000x
func BenchmarkEndToEnd(b *testing.B) {
	for _, sync := range []bool{true, false} {
		for _, endpoints := range []int{1, 3} {
			b.Run(fmt.Sprintf("sync=%v/endpoints=%d", sync, endpoints), func(b *testing.B) {
				benchEndToEnd(b, sync, endpoints)
			})
		}
	}
}

func benchEndToEnd(b *testing.B, sync bool, endpoints int) {
	ctx := context.Background()
	eng, err := engine.Start(ctx, engine.Config{DataDir: b.TempDir(), Name: "bench", SyncAlways: sync, Logger: testLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Close()
	if _, err := eng.EnsureStream(ctx, engine.StreamSpec{Name: testStream, Topics: []string{"test.ev.>"}}); err != nil {
		b.Fatal(err)
	}
	cfg := testConfig(eng)
	cfg.MaxInFlight = 16
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer s.Stop()
	var rcs []*receiver
	for range endpoints {
		rc := newReceiver(b, nil)
		_, secret, err := s.Create(ctx, NewEndpoint{Store: "shop", URL: rc.URL()})
		if err != nil {
			b.Fatal(err)
		}
		rc.setSecret(secret)
		rcs = append(rcs, rc)
	}
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		data := fmt.Sprintf(`{"id":"ev-%d","type":"order.delivered","store":"shop"}`, i)
		if _, err := eng.JS.PublishAsync(engine.Subject("test.ev.shop"), []byte(data)); err != nil {
			b.Fatal(err)
		}
	}
	<-eng.JS.PublishAsyncComplete()
	for _, rc := range rcs {
		hubtest.Until(b, 5*time.Minute, "every event delivered", func() bool { return len(rc.delivered()) == b.N })
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	b.ReportMetric(float64(b.N*endpoints)/time.Since(start).Seconds(), "deliveries/s")
}
