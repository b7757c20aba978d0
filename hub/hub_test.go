package hub_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/protocol"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, hubtest.LeakOptions()...)
}

// startHub runs a hub with an embedded engine in a temp dir until the test ends.
func startHub(t *testing.T, mod func(*hub.Config)) *hub.Hub {
	t.Helper()
	var cfg hub.Config
	if mod != nil {
		mod(&cfg)
	}
	return hubtest.Start(t, cfg).Hub
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

func TestHandshakeTimeout(t *testing.T) {
	h := startHub(t, func(c *hub.Config) { c.HandshakeTimeout = 200 * time.Millisecond })
	r := dialRaw(t, h)
	f := r.next() // send nothing
	if f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeHandshakeTime || f.Flags&protocol.FlagFatal == 0 {
		t.Fatalf("want fatal handshake_timeout, got %s", f)
	}
	r.expectClosed()
}

func TestFrameBeforeHelloRefused(t *testing.T) {
	h := startHub(t, nil)
	r := dialRaw(t, h)
	r.send(&protocol.Frame{Op: protocol.OpPub, Topic: []byte("a"), Payload: []byte("x")})
	f := r.next()
	if f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeHandshake {
		t.Fatalf("want handshake error, got %s", f)
	}
	r.expectClosed()
}

func TestOversizedFrameRejected(t *testing.T) {
	h := startHub(t, func(c *hub.Config) { c.MaxFrame = 1024 })
	r := dialRaw(t, h)
	r.hello("client", "big")
	r.send(&protocol.Frame{Op: protocol.OpPub, Topic: []byte("a"), Payload: make([]byte, 4096)})
	f := r.nextOp()
	if f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeFrameTooLarge || f.Flags&protocol.FlagFatal == 0 {
		t.Fatalf("want fatal frame_too_large, got %s", f)
	}
	r.expectClosed()
	// The hub is still up.
	ok := dialRaw(t, h)
	ok.hello("client", "after")
}

func TestGarbageRejected(t *testing.T) {
	h := startHub(t, nil)
	r := dialRaw(t, h)
	r.hello("client", "junk")
	// A plausible length followed by an unknown op.
	r.c.Write([]byte{0, 0, 0, 9, 0xEE, 0, 0, 0, 0, 0, 0, 0, 0})
	f := r.nextOp()
	if f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeBadFrame {
		t.Fatalf("want bad_frame, got %s", f)
	}
	r.expectClosed()
	// Non-protocol bytes as the very first thing: refused, hub stays up.
	g := dialRaw(t, h)
	g.c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	if f := g.next(); f.Op != protocol.OpErr {
		t.Fatalf("want an error for HTTP bytes, got %s", f)
	}
	ok := dialRaw(t, h)
	ok.hello("client", "after")
}

func TestHeartbeatDropsSilentPeer(t *testing.T) {
	h := startHub(t, func(c *hub.Config) { c.Heartbeat = 100 * time.Millisecond })
	r := dialRaw(t, h)
	w := r.hello("client", "silent")
	if w.HeartbeatMS != 100 {
		t.Fatalf("welcome heartbeat %d", w.HeartbeatMS)
	}
	// Read (so PINGs arrive) but never answer them.
	deadline := time.Now().Add(5 * time.Second)
	pings := 0
	for time.Now().Before(deadline) {
		f := r.next()
		switch f.Op {
		case protocol.OpPing:
			pings++
			continue
		case protocol.OpErr:
			if string(f.Topic) != protocol.CodeHeartbeat {
				t.Fatalf("want heartbeat_timeout, got %s", f)
			}
			if pings == 0 {
				t.Fatal("dropped without being pinged first")
			}
			r.expectClosed()
			return
		}
		t.Fatalf("unexpected %s", f)
	}
	t.Fatal("silent peer was not dropped")
}

func TestShutdownSaysBye(t *testing.T) {
	h := hubtest.Start(t, hub.Config{})
	r := dialRaw(t, h.Hub)
	r.hello("client", "c1")
	stopped := make(chan struct{})
	go func() { defer close(stopped); h.Stop() }()
	if f := r.nextOp(); f.Op != protocol.OpBye {
		t.Fatalf("want BYE, got %s", f)
	}
	r.expectClosed()
	select {
	case <-stopped:
	case <-time.After(15 * time.Second):
		t.Fatal("hub did not stop")
	}
}

// TestStartAndShutdown: Start returns once the hub accepts connections;
// Shutdown drains, may be called again, and a hub starts once.
func TestStartAndShutdown(t *testing.T) {
	h := hub.New(hub.Config{Addr: "127.0.0.1:0", HTTPAddr: "off", DataDir: t.TempDir(), Quiet: true, Logger: slog.New(slog.DiscardHandler)})
	if err := h.Shutdown(context.Background()); err != nil {
		t.Fatalf("shutdown before start: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.Ready():
	default:
		t.Fatal("Start returned before the hub was ready")
	}
	r := dialRaw(t, h)
	r.hello("client", "c1")
	if err := h.Start(ctx); err == nil {
		t.Fatal("a second Start succeeded")
	}
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.Shutdown(ctx); err != nil {
				t.Errorf("shutdown: %v", err)
			}
		}()
	}
	if f := r.nextOp(); f.Op != protocol.OpBye {
		t.Fatalf("want BYE, got %s", f)
	}
	r.expectClosed()
	wg.Wait()
	if _, err := net.Dial("tcp", h.Addr().String()); err == nil {
		t.Fatal("the hub still accepts connections after Shutdown")
	}
}

// TestStartFailsCleanly: a hub that cannot listen says why, and leaves
// nothing running (goleak checks the goroutines, the engine is closed).
func TestStartFailsCleanly(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	h := hub.New(hub.Config{Addr: busy.Addr().String(), HTTPAddr: "off", DataDir: t.TempDir(), Quiet: true, Logger: slog.New(slog.DiscardHandler)})
	err = h.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "listen") {
		t.Fatalf("Start on a busy port: %v", err)
	}
	if err := h.Shutdown(context.Background()); err != nil {
		t.Fatalf("shutdown after a failed start: %v", err)
	}
}

func TestQueueGroupEachMessageOnce(t *testing.T) {
	h := startHub(t, nil)
	const members, msgs = 3, 300
	var conns []*rawConn
	for i := 0; i < members; i++ {
		r := dialRaw(t, h)
		r.hello("client", "worker"+string(rune('a'+i)))
		r.send(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("jobs.>"), Group: []byte("workers")})
		if f := r.nextOp(); f.Op != protocol.OpOK {
			t.Fatalf("sub: %s", f)
		}
		conns = append(conns, r)
	}
	pub := dialRaw(t, h)
	pub.hello("client", "boss")
	for i := 0; i < msgs; i++ {
		pub.send(&protocol.Frame{Op: protocol.OpPub, Topic: []byte("jobs.x"), Payload: []byte{byte(i), byte(i >> 8)}})
	}
	pub.send(&protocol.Frame{Op: protocol.OpPub, ID: 99, Topic: []byte("jobs.x"), Payload: []byte("end")})
	if f := pub.nextOp(); f.Op != protocol.OpOK {
		t.Fatalf("pub: %s", f)
	}
	seen := map[string]int{}
	results := make(chan []string, members)
	for _, r := range conns {
		go func(r *rawConn) {
			var got []string
			r.c.SetReadDeadline(time.Now().Add(3 * time.Second))
			for {
				f, err := r.rd.Next()
				if err != nil {
					break
				}
				if f.Op == protocol.OpMsg {
					got = append(got, string(f.Payload))
				}
			}
			results <- got
		}(r)
	}
	active := 0
	for i := 0; i < members; i++ {
		got := <-results
		if len(got) > 0 {
			active++
		}
		for _, p := range got {
			seen[p]++
		}
	}
	if len(seen) != msgs+1 {
		t.Fatalf("want %d distinct messages, got %d", msgs+1, len(seen))
	}
	for p, n := range seen {
		if n != 1 {
			t.Fatalf("message %q delivered %d times", p, n)
		}
	}
	if active < 2 {
		t.Fatalf("load not shared: only %d of %d members got messages", active, members)
	}
}

// expectClosed waits for the hub to close the connection.
func (r *rawConn) expectClosed() {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := r.rd.Next()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				r.t.Fatal("connection not closed by the hub")
			}
			return
		}
		if f.Op != protocol.OpPing {
			r.t.Fatalf("unexpected frame before close: %s", f)
		}
	}
}
