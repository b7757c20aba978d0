package hub_test

import (
	"context"
	"encoding/json"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// nats.go and nats-server keep a few process-wide goroutines alive.
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*Server).startGoRoutine.func1"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).Start.func1"),
		goleak.IgnoreTopFunction("time.Sleep"),
	)
}

// startHub runs a hub with an embedded engine in a temp dir until the test ends.
func startHub(t *testing.T, mod func(*hub.Config)) *hub.Hub {
	t.Helper()
	cfg := hub.Config{Addr: "127.0.0.1:0", HTTPAddr: "off", DataDir: t.TempDir(), Quiet: true, Name: "test"}
	if mod != nil {
		mod(&cfg)
	}
	h := hub.New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	select {
	case <-h.Ready():
	case err := <-done:
		t.Fatalf("hub did not start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("hub did not start in 30s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("hub run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("hub did not stop in 20s")
		}
	})
	return h
}

// rawConn is a test client speaking frames by hand.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	rd *protocol.Reader
}

func dialRaw(t *testing.T, h *hub.Hub) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", h.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, rd: protocol.NewReader(c, 0)}
}

func (r *rawConn) send(f *protocol.Frame) {
	r.t.Helper()
	if _, err := r.c.Write(f.Encode()); err != nil {
		r.t.Fatalf("write %s: %v", f.Op, err)
	}
}

func (r *rawConn) next() *protocol.Frame {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := r.rd.Next()
	if err != nil {
		r.t.Fatalf("read: %v", err)
	}
	cp := *f
	cp.Topic = append([]byte(nil), f.Topic...)
	cp.Key = append([]byte(nil), f.Key...)
	cp.Group = append([]byte(nil), f.Group...)
	cp.Payload = append([]byte(nil), f.Payload...)
	return &cp
}

// nextOp skips PINGs.
func (r *rawConn) nextOp() *protocol.Frame {
	for {
		f := r.next()
		if f.Op != protocol.OpPing {
			return f
		}
	}
}

func (r *rawConn) hello(role, name string) protocol.Welcome {
	r.t.Helper()
	b, _ := json.Marshal(protocol.Hello{Version: protocol.Version, Role: role, Name: name})
	r.send(&protocol.Frame{Op: protocol.OpHello, Payload: b})
	f := r.nextOp()
	if f.Op != protocol.OpWelcome {
		r.t.Fatalf("want WELCOME, got %s", f)
	}
	var w protocol.Welcome
	if err := json.Unmarshal(f.Payload, &w); err != nil {
		r.t.Fatal(err)
	}
	return w
}

func TestPubSubRaw(t *testing.T) {
	h := startHub(t, nil)
	sub := dialRaw(t, h)
	sub.hello("client", "sub")
	sub.send(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("news.*")})
	ok := sub.nextOp()
	if ok.Op != protocol.OpOK || ok.ID != 1 || ok.Seq == 0 {
		t.Fatalf("want OK with sid, got %s", ok)
	}
	pub := dialRaw(t, h)
	pub.hello("client", "pub")
	pub.send(&protocol.Frame{Op: protocol.OpPub, ID: 7, Topic: []byte("news.today"), Payload: []byte("hello")})
	if f := pub.nextOp(); f.Op != protocol.OpOK || f.ID != 7 {
		t.Fatalf("want OK 7, got %s", f)
	}
	m := sub.nextOp()
	if m.Op != protocol.OpMsg || m.ID != ok.Seq || string(m.Topic) != "news.today" || string(m.Payload) != "hello" {
		t.Fatalf("bad delivery %s", m)
	}
}
