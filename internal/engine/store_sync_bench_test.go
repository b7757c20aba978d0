package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// What each way of making a stored publish durable costs, against the
// embedded engine in a temporary directory (on the same disk as a hub's
// data). Numbers and their reading: docs/PERFORMANCE.md, "Group commit: what
// nats-server 2.15 offers".
//
//	go test ./internal/engine -run '^$' -bench 'DiskFsync|Store|AtomicBatch' -benchtime 2s

// BenchmarkDiskFsync: what the disk allows — 200-byte appends to one file,
// each followed by an fsync, one at a time.
func BenchmarkDiskFsync(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "appends"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rec := make([]byte, 200)
	b.ResetTimer()
	for range b.N {
		if _, err := f.Write(rec); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "fsyncs/s")
}

// storeMode is one way of making a stored publish durable.
type storeMode struct {
	name        string
	syncAlways  bool
	groupSync   bool
	persistMode jetstream.PersistModeType
}

var storeModes = []storeMode{
	{name: "fsync/plain", syncAlways: true},                                            // (a) the server fsyncs each write
	{name: "fsync/group", syncAlways: true, groupSync: true},                           // what CAPS does: shared syncfs
	{name: "async-persist", syncAlways: true, persistMode: jetstream.AsyncPersistMode}, // (c)
	{name: "nosync/plain"}, // (d) SyncAlways=false
}

// BenchmarkStore: writers concurrent publishers, each storing 200-byte
// messages (each with its own message id) one after the other through
// Engine.Store, waiting for each acknowledgement. Reports acknowledged
// stores/s, the p50/p99 time to each acknowledgement, and, with group sync,
// how many stores shared a sync round.
func BenchmarkStore(b *testing.B) {
	for _, mode := range storeModes {
		for _, writers := range []int{1, 8, 16, 32, 128} {
			b.Run(fmt.Sprintf("%s/writers=%d", mode.name, writers), func(b *testing.B) {
				benchStore(b, mode, writers)
			})
		}
	}
}

func benchStore(b *testing.B, mode storeMode, writers int) {
	ctx := context.Background()
	var rounds, waiters atomic.Int64
	e, err := Start(ctx, Config{DataDir: b.TempDir(), Name: "bench", Logger: quiet(),
		SyncAlways: mode.syncAlways, GroupSync: mode.groupSync,
		OnSync: func(i SyncInfo) {
			if i.Waiters > 0 {
				rounds.Add(1)
				waiters.Add(int64(i.Waiters))
			}
		}})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	if mode.persistMode == jetstream.AsyncPersistMode {
		// EnsureStream does not offer it (it acknowledges before writing).
		_, err = e.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "B", Subjects: []string{Subject("b.>")},
			Storage: jetstream.FileStorage, PersistMode: jetstream.AsyncPersistMode, Duplicates: 2 * time.Minute})
	} else {
		_, err = e.EnsureStream(ctx, StreamSpec{Name: "B", Topics: []string{"b.>"}})
	}
	if err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 200)
	lat := make([][]time.Duration, writers)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	b.ResetTimer()
	for w := range writers {
		n := b.N / writers
		if w < b.N%writers {
			n++
		}
		lat[w] = make([]time.Duration, 0, n)
		wg.Go(func() {
			subj := Subject("b." + strconv.Itoa(w))
			for i := range n {
				m := &nats.Msg{Subject: subj, Data: payload,
					Header: nats.Header{nats.MsgIdHdr: []string{strconv.Itoa(w) + "-" + strconv.Itoa(i)}}}
				t := time.Now()
				if _, err := e.Store(ctx, m); err != nil {
					errs <- err
					return
				}
				lat[w] = append(lat[w], time.Since(t))
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	reportLatency(b, slices.Concat(lat...))
	if r := rounds.Load(); r > 0 {
		b.ReportMetric(float64(waiters.Load())/float64(r), "stores/sync")
	}
}

func reportLatency(b *testing.B, all []time.Duration) {
	slices.Sort(all)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "acks/s")
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
	}
}

// BenchmarkAtomicBatch: one writer committing atomic batches of a fixed size,
// one after the other, the server fsyncing (SyncAlways): what a batch costs,
// and how many messages it takes to pay for it. (CAPS does not use them;
// see atomic_batch_test.go.)
func BenchmarkAtomicBatch(b *testing.B) {
	for _, size := range []int{2, 4, 8, 16, 32, 64, 128} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			e := batchEngine(b)
			var lat []time.Duration
			b.ResetTimer()
			for sent := 0; sent < b.N; {
				k := min(size, b.N-sent)
				msgs := make([]*nats.Msg, k)
				for i := range msgs {
					sent++
					msgs[i] = batchMsg("a.x", strconv.Itoa(sent))
				}
				t := time.Now()
				if _, err := publishAtomicBatch(e.NC, msgs); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t))
			}
			b.StopTimer()
			b.ReportMetric(float64(len(lat))/b.Elapsed().Seconds(), "commits/s")
			reportLatency(b, lat)
		})
	}
}
