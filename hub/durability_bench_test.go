package hub_test

import (
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/protocol"
)

// BenchmarkStoredPublish measures what durability costs: publishes to a
// stored topic, each waiting for its OK (the engine's acknowledgement), with
// the embedded engine fsyncing every message (sync=always, the default) or
// leaving it to the OS page cache and NATS's periodic sync (sync=interval).
// conns publishers run at once; each waits for one OK before its next
// publish, as the CAPS vendor and driver do. docs/OPERATIONS.md has the
// numbers.
//
//	go test ./hub -run XXX -bench StoredPublish -benchtime 3s
func BenchmarkStoredPublish(b *testing.B) {
	for _, sync := range []bool{true, false} {
		for _, conns := range []int{1, 16, 64} {
			name := fmt.Sprintf("sync=%s/conns=%d", map[bool]string{true: "always", false: "interval"}[sync], conns)
			b.Run(name, func(b *testing.B) { benchStoredPublish(b, sync, conns) })
		}
	}
}

func benchStoredPublish(b *testing.B, syncAlways bool, conns int) {
	h := benchHub(b, hub.Config{SyncAlways: &syncAlways, PubRate: -1, Apps: []hub.App{storeApp{}}})
	pubs := make([]*benchConn, conns)
	for i := range pubs {
		pubs[i] = dialBench(b, h, fmt.Sprintf("pub%d", i))
	}
	payload := []byte(`{"store":"1-206-flowers","orderID":"6f1c1d4e-2a7b-4c53-9a43-1f6b0b3c9d10","customer":"Ada Lovelace","address":"1 Main St"}`)
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i, c := range pubs {
		n := b.N / conns
		if i < b.N%conns {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 1; j <= n; j++ {
				f := &protocol.Frame{Op: protocol.OpPub, ID: uint64(j), Topic: []byte("store.bench"), Payload: payload}
				if _, err := c.c.Write(f.Encode()); err != nil {
					errs <- err
					return
				}
				r, err := c.next()
				if err != nil {
					errs <- err
					return
				}
				if r.Op != protocol.OpOK {
					errs <- fmt.Errorf("want OK, got %s", r)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "acked/s")
	b.ReportMetric(float64(elapsed.Microseconds())*float64(conns)/float64(b.N), "µs/ack")
}

// benchHub runs a hub (embedded engine in a temp dir) for a benchmark.
func benchHub(tb testing.TB, cfg hub.Config) *hub.Hub {
	tb.Helper()
	cfg.Name = "bench"
	return hubtest.Start(tb, cfg).Hub
}

type benchConn struct {
	c  net.Conn
	rd *protocol.Reader
}

func dialBench(tb testing.TB, h *hub.Hub, name string) *benchConn {
	tb.Helper()
	c, err := net.Dial("tcp", h.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	bc := &benchConn{c: c, rd: protocol.NewReader(c, 0)}
	hello, _ := json.Marshal(protocol.Hello{Version: protocol.Version, Role: "client", Name: name})
	c.Write((&protocol.Frame{Op: protocol.OpHello, Payload: hello}).Encode())
	if f, err := bc.next(); err != nil || f.Op != protocol.OpWelcome {
		tb.Fatalf("handshake: %v %v", f, err)
	}
	return bc
}

// next returns the next frame that is not a PING.
func (bc *benchConn) next() (*protocol.Frame, error) {
	for {
		bc.c.SetReadDeadline(time.Now().Add(30 * time.Second))
		f, err := bc.rd.Next()
		if err != nil || f.Op != protocol.OpPing {
			return f, err
		}
	}
}
