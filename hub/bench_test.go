package hub_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/protocol"
)

// Benchmarks over real loopback TCP against a real hub with its embedded
// engine: go test ./hub -run '^$' -bench . -benchmem

// perfHub runs a quiet hub without a publish rate limit for a benchmark.
func perfHub(b *testing.B, apps ...hub.App) *hub.Hub {
	b.Helper()
	sync := false // measure the hub, not the disk
	return hubtest.Start(b, hub.Config{Name: "bench", PubRate: -1, SyncAlways: &sync, Apps: apps}).Hub
}

// perfConn is a raw protocol connection for benchmarks (no client library,
// so that only the hub's costs show).
type perfConn struct {
	c  net.Conn
	rd *protocol.Reader
}

func dialPerf(b *testing.B, h *hub.Hub, name string) *perfConn {
	b.Helper()
	c, err := net.Dial("tcp", h.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	bc := &perfConn{c: c, rd: protocol.NewReader(c, 0)}
	hello, _ := json.Marshal(protocol.Hello{Version: protocol.Version, Role: protocol.RoleClient, Name: name})
	bc.write(b, &protocol.Frame{Op: protocol.OpHello, Payload: hello})
	if f := bc.next(b); f.Op != protocol.OpWelcome {
		b.Fatalf("want WELCOME, got %s", f)
	}
	return bc
}

func (bc *perfConn) write(b *testing.B, f *protocol.Frame) {
	if _, err := bc.c.Write(f.Encode()); err != nil {
		b.Fatal(err)
	}
}

// next returns the next frame other than PING.
func (bc *perfConn) next(b *testing.B) *protocol.Frame {
	bc.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		f, err := bc.rd.Next()
		if err != nil {
			b.Fatalf("read: %v", err)
		}
		if f.Op != protocol.OpPing {
			return f
		}
	}
}

func (bc *perfConn) subscribe(b *testing.B, pattern string) {
	bc.write(b, &protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte(pattern)})
	if f := bc.next(b); f.Op != protocol.OpOK {
		b.Fatalf("SUB: %s", f)
	}
}

// BenchmarkFanout: one publisher, N subscribers on one topic, all over
// loopback. One op is one published message delivered to every subscriber;
// allocs/op are the whole process's (hub, engine and the raw clients, whose
// readers allocate nothing).
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("subs=%d", n), func(b *testing.B) {
			h := perfHub(b)
			topic := fmt.Sprintf("bench.fanout.%d", n)
			var got atomic.Int64
			var wg sync.WaitGroup
			subs := make([]*perfConn, n)
			for i := range subs {
				subs[i] = dialPerf(b, h, fmt.Sprintf("sub%d", i))
				subs[i].subscribe(b, topic)
			}
			pub := dialPerf(b, h, "pub")
			frame := (&protocol.Frame{Op: protocol.OpPub, Topic: []byte(topic), Payload: make([]byte, 128)}).Encode()
			const batch = 64
			buf := make([]byte, 0, batch*len(frame))
			for i := 0; i < batch; i++ {
				buf = append(buf, frame...)
			}
			// Readers count data messages; a probe (non-empty first byte)
			// only tells that the subscription is live end to end.
			var ready atomic.Int64
			for _, s := range subs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					live := false
					s.c.SetReadDeadline(time.Now().Add(5 * time.Minute))
					for k := 0; k < b.N; {
						f, err := s.rd.Next()
						if err != nil {
							return
						}
						if f.Op != protocol.OpMsg {
							continue
						}
						if f.Payload[0] != 0 {
							if !live {
								live = true
								ready.Add(1)
							}
							continue
						}
						got.Add(1)
						k++
					}
				}()
			}
			probe := (&protocol.Frame{Op: protocol.OpPub, Topic: []byte(topic), Payload: []byte("probe")}).Encode()
			for ready.Load() < int64(n) {
				pub.c.Write(probe)
				time.Sleep(time.Millisecond)
			}
			want := int64(b.N) * int64(n)
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			b.ResetTimer()
			// Publish in batches, at most 8192 messages ahead of the slowest
			// subscriber so that no one is a slow consumer.
			for sent := 0; sent < b.N; {
				k := min(batch, b.N-sent)
				for int64(sent+k)*int64(n)-got.Load() > 8192*int64(n) {
					time.Sleep(50 * time.Microsecond)
				}
				if _, err := pub.c.Write(buf[:k*len(frame)]); err != nil {
					b.Fatal(err)
				}
				sent += k
			}
			wg.Wait()
			b.StopTimer()
			if got.Load() != want {
				b.Fatalf("delivered %d of %d", got.Load(), want)
			}
			b.ReportMetric(float64(want)/b.Elapsed().Seconds(), "deliveries/s")
		})
	}
}

// perfStoredApp stores bench.stored.> so that publishes to it go through JetStream.
type perfStoredApp struct{}

func (perfStoredApp) Setup(ctx context.Context, x *hub.Host) error {
	return x.AddStream(ctx, hub.StreamSpec{Name: "BENCH_STORED", Topics: []string{"bench.stored.>"}, MaxAge: time.Hour})
}

// BenchmarkStoredPublishPipelined: publishes to a stored topic, each answered with an
// OK once the engine has it, 128 in flight from one connection. One op is
// one stored message. topics=1: all on one topic, which the hub stores in
// the order sent, one after another; topics=64: spread over 64 topics,
// which the hub stores concurrently (pipeline.go). sync=always: the engine
// syncs to disk before an OK (group sync), as by default.
func BenchmarkStoredPublishPipelined(b *testing.B) {
	for _, syncAlways := range []bool{false, true} {
		for _, topics := range []int{1, 64} {
			for _, keyed := range []bool{false, true} {
				name := fmt.Sprintf("sync=%v/topics=%d/keyed=%v", map[bool]string{true: "always", false: "interval"}[syncAlways], topics, keyed)
				b.Run(name, func(b *testing.B) { benchStoredPublishPipelined(b, syncAlways, topics, keyed) })
			}
		}
	}
}

// benchStoredPublishPipelined: keyed publishes carry a message id each,
// which the hub scopes to the publisher (msgid.go).
func benchStoredPublishPipelined(b *testing.B, syncAlways bool, topics int, keyed bool) {
	h := hubtest.Start(b, hub.Config{Name: "bench", PubRate: -1, SyncAlways: &syncAlways, Apps: []hub.App{perfStoredApp{}}}).Hub
	pub := dialPerf(b, h, "pub")
	const inflight = 128
	payload := make([]byte, 128)
	names := make([][]byte, topics)
	for i := range names {
		names[i] = fmt.Appendf(nil, "bench.stored.t%d", i)
	}
	var out, key []byte
	b.ReportAllocs()
	b.ResetTimer()
	acked := 0
	for sent := 0; sent < b.N; {
		out = out[:0]
		for k := 0; k < inflight/2 && sent < b.N && sent-acked < inflight; k++ {
			sent++
			f := protocol.Frame{Op: protocol.OpPub, ID: uint64(sent), Topic: names[sent%topics], Payload: payload}
			if keyed {
				f.Key = strconv.AppendInt(key[:0], int64(sent), 10)
			}
			out = f.Append(out)
		}
		if len(out) > 0 {
			if _, err := pub.c.Write(out); err != nil {
				b.Fatal(err)
			}
		}
		for sent-acked >= inflight/2 || (sent == b.N && acked < sent) {
			f := pub.next(b)
			if f.Op != protocol.OpOK {
				b.Fatalf("PUB: %s", f)
			}
			acked++
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkDurableQueue: a stored topic consumed by a durable work queue
// shared by 8 workers (each up to 16 unacknowledged), every message
// acknowledged on receipt; a publisher keeps 128 stored publishes in
// flight. One op is one message stored, handed to a worker and
// acknowledged: the durable path (pull, pick a member, hand out, ack).
func BenchmarkDurableQueue(b *testing.B) {
	h := perfHub(b, perfStoredApp{})
	const workers = 8
	var got atomic.Int64
	opts, _ := json.Marshal(protocol.SubOptions{MaxInFlight: 16})
	for i := range workers {
		w := dialPerf(b, h, fmt.Sprintf("worker%d", i))
		w.write(b, &protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("bench.stored.q"), Key: []byte("workers"),
			Flags: protocol.FlagManualAck | protocol.FlagDeliverAll, Payload: opts})
		if f := w.next(b); f.Op != protocol.OpOK {
			b.Fatalf("SUB: %s", f)
		}
		go func() { // ends when the connection closes, at the benchmark's cleanup
			w.c.SetReadDeadline(time.Now().Add(5 * time.Minute))
			var acks []byte
			for {
				f, err := w.rd.Next()
				if err != nil {
					return
				}
				if f.Op != protocol.OpMsg {
					continue
				}
				ack := protocol.Frame{Op: protocol.OpAck, ID: f.ID, Seq: f.Seq}
				acks = ack.Append(acks[:0])
				if _, err := w.c.Write(acks); err != nil {
					return
				}
				got.Add(1)
			}
		}()
	}
	pub := dialPerf(b, h, "pub")
	const inflight = 128
	payload := make([]byte, 128)
	var out []byte
	b.ReportAllocs()
	b.ResetTimer()
	acked := 0
	for sent := 0; sent < b.N; {
		out = out[:0]
		for k := 0; k < inflight/2 && sent < b.N && sent-acked < inflight; k++ {
			sent++
			f := protocol.Frame{Op: protocol.OpPub, ID: uint64(sent), Topic: []byte("bench.stored.q"), Payload: payload}
			out = f.Append(out)
		}
		if len(out) > 0 {
			if _, err := pub.c.Write(out); err != nil {
				b.Fatal(err)
			}
		}
		for sent-acked >= inflight/2 || (sent == b.N && acked < sent) {
			if f := pub.next(b); f.Op != protocol.OpOK {
				b.Fatalf("PUB: %s", f)
			}
			acked++
		}
	}
	for got.Load() < int64(b.N) {
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkStoredDelivery: a stored publish and a live subscriber of its
// topic on the same hub. A stored message reaches the subscriber from the
// engine (the engine forwards it as it stores it), its OK comes once it is
// on disk: ok-µs and delivered-µs are the mean times from the PUB to each.
// They are why stored topics are not delivered locally after the OK
// (docs/PERFORMANCE.md): that would add the wait for the disk to every
// delivery.
func BenchmarkStoredDelivery(b *testing.B) {
	for _, syncAlways := range []bool{true, false} {
		b.Run(fmt.Sprintf("sync=%s", map[bool]string{true: "always", false: "interval"}[syncAlways]), func(b *testing.B) {
			h := hubtest.Start(b, hub.Config{Name: "bench", PubRate: -1, SyncAlways: &syncAlways, Apps: []hub.App{perfStoredApp{}}}).Hub
			sub := dialPerf(b, h, "sub")
			sub.subscribe(b, "bench.stored.>")
			pub := dialPerf(b, h, "pub")
			arrived := make(chan time.Time, 1)
			go func() {
				for {
					f, err := sub.rd.Next()
					if err != nil {
						return
					}
					if f.Op == protocol.OpMsg {
						arrived <- time.Now()
					}
				}
			}()
			payload := make([]byte, 128)
			var okTotal, deliveredTotal time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				pub.write(b, &protocol.Frame{Op: protocol.OpPub, ID: uint64(i + 1), Topic: []byte("bench.stored.x"), Payload: payload})
				if f := pub.next(b); f.Op != protocol.OpOK {
					b.Fatalf("PUB: %s", f)
				}
				okTotal += time.Since(start)
				select {
				case at := <-arrived:
					deliveredTotal += at.Sub(start)
				case <-time.After(10 * time.Second):
					b.Fatal("the stored message did not arrive")
				}
			}
			b.ReportMetric(float64(okTotal.Microseconds())/float64(b.N), "ok-µs")
			b.ReportMetric(float64(deliveredTotal.Microseconds())/float64(b.N), "delivered-µs")
		})
	}
}
