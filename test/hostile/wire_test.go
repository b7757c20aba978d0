// Package hostile_test is the hostile-client suite: each test is one attack
// on a hub, or one limit a client can run into, tried from outside as an
// attacker would — raw CAPS frames over TCP, HTTP and WebSocket requests —
// against a real hub running the same applications as `caps hub` (parcel,
// chat, dashboard) on a real embedded engine. Each test checks that the
// attack is refused with a clear error (an ERR code, an HTTP status with a
// problem document), that what it aimed at (the disk, other clients, a
// name) is unharmed, and where there is one, the metric that counts it.
//
// Layout, for whoever adds an attack:
//
//   - wire_test.go: the raw protocol — dial, HELLO, PUB/SUB builders, and
//     reading until an expected frame within a deadline;
//   - hub_test.go: hubs (open or with tokens) and /metrics;
//   - one file per surface: chat_test.go, disk_test.go, http_test.go,
//     auth_test.go. A test's comment says what was tried and what it did
//     before the fix.
//
// Tests are lean (a hub per test, limits set small so they are reached in
// milliseconds) and wait with hubtest.Eventually/Until, never a sleep.
package hostile_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/protocol"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, hubtest.LeakOptions()...)
}

// wait bounds how long a test waits for what should happen at once.
const wait = 10 * time.Second

// wire is a raw CAPS connection, driven frame by frame.
type wire struct {
	t      testing.TB
	c      net.Conn
	rd     *protocol.Reader
	nextID uint64
	// held are frames read while waiting for another, kept for the next
	// wait: an answer and a delivery may arrive in either order.
	held []*protocol.Frame
}

// dial opens a TCP connection to a hub's CAPS port; it is closed when the
// test ends.
func dial(t testing.TB, addr string) *wire {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &wire{t: t, c: c, rd: protocol.NewReader(c, 0)}
}

// send writes one frame.
func (w *wire) send(f *protocol.Frame) {
	w.t.Helper()
	w.c.SetWriteDeadline(time.Now().Add(wait))
	if _, err := w.c.Write(f.Encode()); err != nil {
		w.t.Fatalf("write %s: %v", f.Op, err)
	}
}

// id returns a fresh correlation id.
func (w *wire) id() uint64 {
	w.nextID++
	return w.nextID
}

// hello sends HELLO and returns the WELCOME, failing the test on an ERR.
func (w *wire) hello(role, name, token string) protocol.Welcome {
	w.t.Helper()
	f := w.helloFrame(role, name, token)
	if f.Op != protocol.OpWelcome {
		w.t.Fatalf("HELLO as %s %q: got %s", role, name, f)
	}
	var wel protocol.Welcome
	if err := json.Unmarshal(f.Payload, &wel); err != nil {
		w.t.Fatalf("WELCOME: %v", err)
	}
	return wel
}

// helloFrame sends HELLO and returns the hub's answer, WELCOME or ERR.
func (w *wire) helloFrame(role, name, token string) *protocol.Frame {
	w.t.Helper()
	b, _ := json.Marshal(protocol.Hello{Version: 1, Role: role, Name: name, Token: token})
	w.send(&protocol.Frame{Op: protocol.OpHello, Payload: b})
	return w.until("an answer to HELLO", func(f *protocol.Frame) bool {
		return f.Op == protocol.OpWelcome || f.Op == protocol.OpErr
	})
}

// pub publishes payload (and a message id key, if given) asking for an
// answer, and returns the correlation id to wait for with answer.
func (w *wire) pub(topic string, key string, payload []byte) uint64 {
	w.t.Helper()
	id := w.id()
	w.send(&protocol.Frame{Op: protocol.OpPub, ID: id, Topic: []byte(topic), Key: []byte(key), Payload: payload})
	return id
}

// pubJSON publishes v as JSON.
func (w *wire) pubJSON(topic, key string, v any) uint64 {
	w.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		w.t.Fatal(err)
	}
	return w.pub(topic, key, b)
}

// sub subscribes to pattern (with options, if any) and returns the
// correlation id to wait for with answer (an OK carries the sid in Seq).
func (w *wire) sub(pattern string, opts *protocol.SubOptions) uint64 {
	w.t.Helper()
	id := w.id()
	f := &protocol.Frame{Op: protocol.OpSub, ID: id, Topic: []byte(pattern)}
	if opts != nil {
		f.Payload, _ = json.Marshal(opts)
	}
	w.send(f)
	return id
}

// until returns the first frame match accepts — one held from an earlier
// wait, or read now, answering PINGs on the way — and fails the test if
// none comes within wait or the connection ends. Frames it passes over are
// held for later waits.
func (w *wire) until(what string, match func(*protocol.Frame) bool) *protocol.Frame {
	w.t.Helper()
	f, err := w.read(time.Now().Add(wait), match)
	if err != nil {
		w.t.Fatalf("waiting for %s: %v", what, err)
	}
	return f
}

// read is until without failing: it returns the connection's error (EOF
// once the hub closed it, a timeout at the deadline).
func (w *wire) read(deadline time.Time, match func(*protocol.Frame) bool) (*protocol.Frame, error) {
	for i, f := range w.held {
		if match(f) {
			w.held = append(w.held[:i], w.held[i+1:]...)
			return f, nil
		}
	}
	w.c.SetReadDeadline(deadline)
	defer w.c.SetReadDeadline(time.Time{})
	for {
		f, err := w.rd.Next()
		if err != nil {
			return nil, err
		}
		if f.Op == protocol.OpPing {
			// Best effort: a hub closing the connection may ping first.
			w.c.SetWriteDeadline(time.Now().Add(wait))
			w.c.Write(pong)
			continue
		}
		cp := *f // out of the reader's buffer
		cp.Topic = append([]byte(nil), f.Topic...)
		cp.Key = append([]byte(nil), f.Key...)
		cp.Group = append([]byte(nil), f.Group...)
		cp.Payload = append([]byte(nil), f.Payload...)
		if match(&cp) {
			return &cp, nil
		}
		if len(w.held) >= maxHeld {
			return nil, fmt.Errorf("%d frames arrived without the one awaited", maxHeld)
		}
		w.held = append(w.held, &cp)
	}
}

var pong = (&protocol.Frame{Op: protocol.OpPong}).Encode()

// maxHeld bounds the frames a connection holds for later waits.
const maxHeld = 10000

// answer waits for the OK or ERR answering correlation id.
func (w *wire) answer(id uint64) *protocol.Frame {
	w.t.Helper()
	return w.until("the answer to request "+itoa(id), func(f *protocol.Frame) bool {
		return (f.Op == protocol.OpOK || f.Op == protocol.OpErr) && f.ID == id
	})
}

// ok waits for the answer to id and fails the test unless it is OK.
func (w *wire) ok(what string, id uint64) *protocol.Frame {
	w.t.Helper()
	f := w.answer(id)
	if f.Op != protocol.OpOK {
		w.t.Fatalf("%s: got %s, want OK", what, f)
	}
	return f
}

// refused waits for the answer to id and fails the test unless it is an
// ERR with code; it returns the error.
func (w *wire) refused(what string, id uint64, code string) *protocol.Error {
	w.t.Helper()
	f := w.answer(id)
	e := protocol.AsError(f)
	if f.Op != protocol.OpErr || e.Code != code {
		w.t.Fatalf("%s: got %s, want ERR %s", what, f, code)
	}
	return e
}

// closedWith waits for the hub to end the connection with a fatal ERR of
// code, and then for the connection to close.
func (w *wire) closedWith(what, code string) *protocol.Error {
	w.t.Helper()
	f := w.until(what, func(f *protocol.Frame) bool { return f.Op == protocol.OpErr && f.Flags&protocol.FlagFatal != 0 })
	e := protocol.AsError(f)
	if e.Code != code {
		w.t.Fatalf("%s: closed with %s, want %s", what, f, code)
	}
	if _, err := w.read(time.Now().Add(wait), func(*protocol.Frame) bool { return false }); !isClosed(err) {
		w.t.Fatalf("%s: the connection stayed open after the fatal error (%v)", what, err)
	}
	return e
}

func isClosed(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	return err != nil
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
