package hub

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/caps-hub/caps/protocol"
)

// storeApp stores "store.>", so that it may be subscribed durably.
type storeApp struct{}

func (storeApp) Setup(ctx context.Context, x *Host) error {
	return x.AddStream(ctx, StreamSpec{Name: "LOCK_TEST", Topics: []string{"store.>"}})
}

// frameConn is a client speaking frames by hand (package hub's tests cannot
// use the external tests' helpers).
type frameConn struct {
	t  *testing.T
	c  net.Conn
	rd *protocol.Reader
}

// quietConfig is an internal test's hub: loopback, no HTTP, no EVENT lines
// or logs, its data in a temporary directory.
func quietConfig(t *testing.T, name string) Config {
	return Config{Addr: "127.0.0.1:0", HTTPAddr: "off", DataDir: t.TempDir(), Quiet: true, Name: name,
		Logger: slog.New(slog.DiscardHandler)}
}

// startInternal starts h until the test ends; a shutdown that fails fails
// the test.
func startInternal(t *testing.T, h *Hub) {
	t.Helper()
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := h.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
}

func dialFrames(t *testing.T, h *Hub, name string) *frameConn {
	t.Helper()
	c, err := net.Dial("tcp", h.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fc := &frameConn{t: t, c: c, rd: protocol.NewReader(c, 0)}
	b, _ := json.Marshal(protocol.Hello{Version: protocol.Version, Role: protocol.RoleClient, Name: name})
	fc.send(&protocol.Frame{Op: protocol.OpHello, Payload: b})
	if f := fc.next(10 * time.Second); f.Op != protocol.OpWelcome {
		t.Fatalf("want WELCOME, got %s", f)
	}
	return fc
}

func (fc *frameConn) send(f *protocol.Frame) {
	fc.t.Helper()
	if _, err := fc.c.Write(f.Encode()); err != nil {
		fc.t.Fatal(err)
	}
}

// next returns the next frame other than PING, failing the test after wait.
func (fc *frameConn) next(wait time.Duration) *protocol.Frame {
	fc.t.Helper()
	fc.c.SetReadDeadline(time.Now().Add(wait))
	for {
		f, err := fc.rd.Next()
		if err != nil {
			fc.t.Fatalf("read: %v", err)
		}
		if f.Op != protocol.OpPing {
			return f
		}
	}
}

// TestSlowConsumerCreationBlocksOnlyItsDurable: while the engine call that
// creates one durable's consumer hangs, a SUB to another durable is
// answered at once; a second SUB to the hanging one waits for it, and both
// are answered once it returns. (Creating consumers held a hub-wide lock
// across the engine call, for up to 10 s: every durable SUB on the hub
// waited behind one slow engine call.)
func TestSlowConsumerCreationBlocksOnlyItsDurable(t *testing.T) {
	cfg := quietConfig(t, "lock-test")
	cfg.Apps = []App{storeApp{}}
	h := New(cfg)
	stuck, release := make(chan struct{}), make(chan struct{})
	ensure := h.durables.ensure
	h.durables.ensure = func(ctx context.Context, c consumerSpec) error {
		if c.sb.Durable == "slow" {
			select {
			case stuck <- struct{}{}:
			default:
			}
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return ensure(ctx, c)
	}
	startInternal(t, h)

	slow1, slow2, fast := dialFrames(t, h, "slow1"), dialFrames(t, h, "slow2"), dialFrames(t, h, "fast")
	slow1.send(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("store.a"), Key: []byte("slow")})
	select {
	case <-stuck:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow durable's consumer creation did not start")
	}
	slow2.send(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("store.a"), Key: []byte("slow")})
	fast.send(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("store.b"), Key: []byte("fast")})
	// Far less than the engine call's own timeout: the fast one must not
	// wait for the slow one at all.
	if f := fast.next(5 * time.Second); f.Op != protocol.OpOK {
		t.Fatalf("fast durable: %s", f)
	}
	close(release)
	for _, c := range []*frameConn{slow1, slow2} {
		if f := c.next(10 * time.Second); f.Op != protocol.OpOK {
			t.Fatalf("slow durable: %s", f)
		}
	}
	// The two share one group: one consumer, created once.
	h.durables.mu.Lock()
	n := len(h.durables.groups)
	h.durables.mu.Unlock()
	if n != 2 {
		t.Fatalf("%d durable groups, want 2 (slow shared by both, fast)", n)
	}
}
