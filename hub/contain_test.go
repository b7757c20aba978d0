package hub

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/caps-hub/caps/protocol"
)

// TestSessionPanicIsContained: a panic in a session's read loop (a dialect's
// bug) closes that session with a fatal "internal" error, cleans it up like
// any disconnect, is counted, and the hub serves on.
func TestSessionPanicIsContained(t *testing.T) {
	h := New(quietConfig(t, "contain-test"))
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h.Shutdown(ctx)
	})
	hubSide, clientSide := net.Pipe()
	defer clientSide.Close()
	s := h.newSession(hubSide, transportTCP)
	if err := s.establish(Identity{Role: protocol.RoleClient, Name: "victim"}, ""); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.endSession(s, h.runSession(s, func() error {
			if _, err := s.subscribe(s.ctx, subRequest{Pattern: "a.b"}, nil); err != nil {
				return err
			}
			panic("a bug in a dialect")
		}))
	}()
	clientSide.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := protocol.NewReader(clientSide, 0).Next()
	if err != nil || f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeInternal || f.Flags&protocol.FlagFatal == 0 {
		t.Fatalf("the session got %v %v, want a fatal ERR internal", f, err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the session was not cleaned up")
	}
	if n := h.identSubs.get(s.identKey); n != 0 {
		t.Errorf("the session's subscription is still counted (%d)", n)
	}
	if v := testutil.ToFloat64(h.metrics.panics.WithLabelValues(inSession)); v != 1 {
		t.Errorf("caps_panics_total{where=session} = %v", v)
	}
	// The hub serves on.
	c, err := net.Dial("tcp", h.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write((&protocol.Frame{Op: protocol.OpHello, Payload: []byte(`{"version":1,"role":"client","name":"next"}`)}).Encode())
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if f, err := protocol.NewReader(c, 0).Next(); err != nil || f.Op != protocol.OpWelcome {
		t.Fatalf("after the panic: %v %v", f, err)
	}
}
