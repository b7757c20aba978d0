package parcel

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/internal/engine"
)

// BenchmarkOrderStore measures what the order store's engine operations
// cost with many orders in the stream (CAPS_BENCH_ORDERS, default 100,000,
// each a pickup and an assignment): a transition written with the expected
// last sequence of the order's wildcard (parcel.*.<id>.>, what the
// dispatcher does), the same check on the message's own subject, a write
// with no check, and the read of an order's last event by its wildcard.
// The engine does not fsync (--sync-always=false), so the numbers are the
// lookups' CPU, not the disk's.
//
//	go test ./internal/parcel -run '^$' -bench OrderStore -benchtime 2000x
func BenchmarkOrderStore(b *testing.B) {
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("CAPS_BENCH_ORDERS")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	eng, err := engine.Start(ctx, engine.Config{DataDir: b.TempDir(), Name: "bench", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Close()
	spec := streamSpec(Options{MaxBytes: 8 << 30})
	if _, err := eng.EnsureStream(ctx, engine.StreamSpec{Name: spec.Name, Topics: spec.Topics, MaxBytes: spec.MaxBytes,
		Discard: spec.Discard, MaxMsgsPerSubject: spec.MaxMsgsPerSubject, MaxMsgSize: spec.MaxMsgSize}); err != nil {
		b.Fatal(err)
	}
	stream, err := eng.JS.Stream(ctx, StreamName)
	if err != nil {
		b.Fatal(err)
	}
	save := func(ctx context.Context, m *nats.Msg) (*jetstream.PubAck, error) { return eng.Store(ctx, m) }
	st := &orderStore{save: save, put: save,
		stream: stream, cache: newRecordCache(16)}

	// Fill: n orders of 20 stores, each created and assigned.
	start := time.Now()
	ids := make([]string, n)
	for i := range n {
		ids[i] = uuid.NewString()
		store := fmt.Sprintf("store-%d", i%20)
		r := &Record{Store: store, OrderID: ids[i], Customer: "Customer " + strconv.Itoa(i), Address: strconv.Itoa(i) + " Bench Street",
			Status: StatusCreated, Event: EventPickup, Attempt: 1, MaxAttempts: 3, By: store, Hub: "bench", Time: time.Now(), Created: time.Now()}
		for _, ev := range []string{EventPickup, EventAssigned} {
			r.Event = ev
			if ev == EventAssigned {
				r.Status, r.Driver = StatusAssigned, "driver-"+strconv.Itoa(i%50)
			}
			m := &nats.Msg{Subject: engine.Subject(topicOf(r)), Data: marshalJSON(r)}
			if _, err := eng.JS.PublishMsgAsync(m); err != nil {
				b.Fatal(err)
			}
		}
		if i%4096 == 0 {
			<-eng.JS.PublishAsyncComplete()
		}
	}
	<-eng.JS.PublishAsyncComplete()
	info, _ := stream.Info(ctx)
	b.Logf("filled %d orders (%d events, %d MB) in %s", n, info.State.Msgs, info.State.Bytes>>20, time.Since(start).Round(time.Millisecond))

	storeOf := func(i int) string { return "store-" + strconv.Itoa(i%20) }
	lastOf := func(i int) (*Record, uint64) {
		r, seq, err := st.last(ctx, ids[i], storeOf(i), true)
		if err != nil {
			b.Fatal(err)
		}
		return r, seq
	}
	// Each op moves a different order on: among the most recent ones (the
	// orders in flight, in blocks the engine caches), or spread over the
	// whole stream (old orders, in blocks it no longer caches).
	recent := func(i int) int { return n - 1 - i%n }
	spread := func(i int) int { return (i * 7919) % n }
	next := 0 // orders are used once: each op needs one not yet moved on
	take := func(pick func(int) int, count int) []int {
		out := make([]int, count)
		for i := range out {
			out[i] = pick(next + i)
		}
		next += count
		return out
	}
	// write stores a transition of the orders picked, expecting their last
	// sequence on expect(order) ("": no expectation).
	write := func(pick func(int) int, expect func(r *Record) string) func(*testing.B) {
		return func(b *testing.B) {
			orders := take(pick, b.N)
			msgs := make([]*nats.Msg, b.N)
			for i, j := range orders {
				r, seq := lastOf(j)
				r.Event, r.Status = EventInTransit, StatusInTransit
				h := nats.Header{nats.MsgIdHdr: []string{eventIDFor(r, seq)}}
				if e := expect(r); e != "" {
					h[jetstream.ExpectedLastSubjSeqHeader] = []string{strconv.FormatUint(seq, 10)}
					h[jetstream.ExpectedLastSubjSeqSubjHeader] = []string{engine.Subject(e)}
				}
				msgs[i] = &nats.Msg{Subject: engine.Subject(topicOf(r)), Data: marshalJSON(r), Header: h}
			}
			b.ResetTimer()
			for _, m := range msgs {
				if _, err := eng.Store(ctx, m); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	ofStore := func(r *Record) string { return orderPattern(r.Store, r.OrderID) }
	anyStore := func(r *Record) string { return orderPattern("*", r.OrderID) }
	none := func(*Record) string { return "" }
	b.Run("write/recent/expect-order", write(recent, ofStore))
	b.Run("write/recent/expect-order-any-store", write(recent, anyStore))
	b.Run("write/recent/unchecked", write(recent, none))
	b.Run("write/old/expect-order", write(spread, ofStore))
	b.Run("write/old/unchecked", write(spread, none))
	read := func(pick func(int) int, store bool) func(*testing.B) {
		return func(b *testing.B) {
			for i := range b.N {
				j := pick(i)
				s := ""
				if store {
					s = storeOf(j)
				}
				if _, _, err := st.last(ctx, ids[j], s, true); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	b.Run("read/recent/last-of-order", read(recent, true))
	b.Run("read/recent/last-of-order-any-store", read(recent, false))
	b.Run("read/old/last-of-order", read(spread, true))
}
