package client_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
)

// Benchmarks of the client library against a real hub over loopback:
// go test ./client -run '^$' -bench . -benchmem
// allocs/op are the whole process's: hub and clients.

func benchHubAddr(b *testing.B) string {
	b.Helper()
	sync := false
	return hubtest.Start(b, hub.Config{Name: "bench", PubRate: -1, SyncAlways: &sync}).Addr().String()
}

func benchDial(b *testing.B, addr, name string) *client.Conn {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, []string{addr}, client.Options{Name: name, NoReconnect: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// BenchmarkPublishAsync: fire-and-forget publishes nobody subscribes to.
func BenchmarkPublishAsync(b *testing.B) {
	c := benchDial(b, benchHubAddr(b), "pub")
	payload := make([]byte, 128)
	b.ReportAllocs()
	for b.Loop() {
		if err := c.PublishAsync("bench.client.publish.nobody.listens", payload); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.Flush(context.Background()); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkPubSub: one client publishes, another receives through its
// handler. One op is one message delivered.
func BenchmarkPubSub(b *testing.B) {
	addr := benchHubAddr(b)
	sub := benchDial(b, addr, "sub")
	pub := benchDial(b, addr, "pub")
	const topic = "bench.client.pubsub.topic"
	var got atomic.Int64
	ctx := context.Background()
	if _, err := sub.Subscribe(ctx, topic, func(*client.Msg) { got.Add(1) }, client.Buffer(1<<16)); err != nil {
		b.Fatal(err)
	}
	for got.Load() == 0 { // live end to end
		pub.PublishAsync(topic, []byte("probe"))
		pub.Flush(ctx)
		time.Sleep(time.Millisecond)
	}
	base := got.Load()
	payload := make([]byte, 128)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for int64(i)-(got.Load()-base) > 4096 {
			time.Sleep(50 * time.Microsecond)
		}
		if err := pub.PublishAsync(topic, payload); err != nil {
			b.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for got.Load()-base < int64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("delivered %d of %d", got.Load()-base, b.N)
		}
		time.Sleep(50 * time.Microsecond)
	}
}
