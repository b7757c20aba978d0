package hub_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/protocol"
)

// Many sessions storing at once (so the engine shares syncs between them):
// each publish is answered OK with a sequence of its own, a retried key is
// still recognised and answered with the first sequence, and the sync
// metrics account for every stored publish.
func TestStoredPublishesFromManySessions(t *testing.T) {
	h := startHub(t, withStore)
	const sessions, each = 40, 6
	conns := make([]*rawConn, sessions)
	for i := range conns {
		conns[i] = dialRaw(t, h)
		conns[i].hello("client", fmt.Sprintf("w%d", i))
	}
	type result struct {
		key string
		seq uint64
		err error
	}
	results := make(chan result, sessions*each)
	for i, c := range conns {
		go func() {
			for j := 1; j <= each; j++ {
				key := fmt.Sprintf("w%d-%d", i, j)
				f := &protocol.Frame{Op: protocol.OpPub, ID: uint64(j), Topic: []byte(fmt.Sprintf("store.w%d", i)), Key: []byte(key), Payload: []byte(`{"n":1}`)}
				if _, err := c.c.Write(f.Encode()); err != nil {
					results <- result{key: key, err: err}
					return
				}
				r, err := nextNotPing(c)
				var seq uint64
				switch {
				case err != nil:
				case r.Op != protocol.OpOK || r.ID != uint64(j) || r.Seq == 0:
					err = fmt.Errorf("want OK %d with a sequence, got %s", j, r)
				default:
					seq = r.Seq
				}
				results <- result{key, seq, err}
				if err != nil {
					return
				}
			}
		}()
	}
	bySeq := map[uint64]string{}
	byKey := map[string]uint64{}
	for range sessions * each {
		r := <-results
		if r.err != nil {
			t.Fatalf("%s: %v", r.key, r.err)
		}
		if other, dup := bySeq[r.seq]; dup {
			t.Fatalf("sequence %d answered to %s and %s", r.seq, other, r.key)
		}
		bySeq[r.seq], byKey[r.key] = r.key, r.seq
	}

	conns[0].send(&protocol.Frame{Op: protocol.OpPub, ID: 99, Topic: []byte("store.w0"), Key: []byte("w0-1"), Payload: []byte(`{"n":1}`)})
	if f := conns[0].nextOp(); f.Op != protocol.OpOK || f.Seq != byKey["w0-1"] {
		t.Fatalf("a retried key: %s, want OK with sequence %d", f, byKey["w0-1"])
	}

	hubtest.Eventually(t, 10*time.Second, "every stored publish waiting for a sync", func() error {
		stored := metric(t, h, "caps_publishes_total", "kind", "stored")
		synced := histogramSum(t, h, "caps_store_sync_publishes")
		if stored < sessions*each+1 || synced != stored {
			return fmt.Errorf("%v stored publishes, %v made durable by syncs", stored, synced)
		}
		return nil
	})
}

func nextNotPing(c *rawConn) (*protocol.Frame, error) {
	for {
		c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		f, err := c.rd.Next()
		if err != nil || f.Op != protocol.OpPing {
			return f, err
		}
	}
}

// histogramSum returns the sum of the samples of histogram name.
func histogramSum(t *testing.T, h *hub.Hub, name string) float64 {
	t.Helper()
	mfs, err := h.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetHistogram().GetSampleSum()
		}
	}
	return 0
}

// hostApp keeps its Host, for tests of the app API.
type hostApp struct{ host chan *hub.Host }

func (a hostApp) Setup(ctx context.Context, x *hub.Host) error {
	if err := x.AddStream(ctx, hub.StreamSpec{Name: "APP_STORE", Topics: []string{"app.>"}}); err != nil {
		return err
	}
	a.host <- x
	return nil
}

// An app's Host.Store waits for the group sync like a client's publish, and
// Host.Sync and Host.WaitDurable answer.
func TestHostStoreIsSynced(t *testing.T) {
	app := hostApp{host: make(chan *hub.Host, 1)}
	h := startHub(t, func(c *hub.Config) { c.Apps = append(c.Apps, app) })
	x := <-app.host
	ctx := context.Background()
	before := histogramSum(t, h, "caps_store_sync_publishes")
	m := nats.NewMsg(hub.Subject("app.x"))
	m.Header.Set(nats.MsgIdHdr, "app-1")
	m.Data = []byte("kept")
	ack, err := x.Store(ctx, m)
	if err != nil || ack.Sequence == 0 {
		t.Fatalf("Host.Store: %+v, %v", ack, err)
	}
	if after := histogramSum(t, h, "caps_store_sync_publishes"); after != before+1 {
		t.Fatalf("%v stores waited for a sync, want %v", after, before+1)
	}
	if err := x.Sync(ctx); err != nil {
		t.Fatalf("Host.Sync: %v", err)
	}
	if err := x.WaitDurable(ctx, time.Now()); err != nil {
		t.Fatalf("Host.WaitDurable: %v", err)
	}
}
