package chat

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/charmbracelet/x/vt"
	"github.com/creack/pty"
)

// screen is a terminal emulator fed by what the program writes to a
// pseudo-terminal, so a test reads the screen a person would see.
type screen struct {
	mu      sync.Mutex
	emu     *vt.Emulator
	ptm     *os.File
	stopped atomic.Bool
}

func newScreen(t *testing.T, cols, rows int) (*screen, *os.File) {
	t.Helper()
	ptm, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	if err := pty.Setsize(ptm, &pty.Winsize{Cols: uint16(cols), Rows: uint16(rows)}); err != nil {
		t.Fatal(err)
	}
	s := &screen{emu: vt.NewEmulator(cols, rows), ptm: ptm}
	shown, answered := make(chan struct{}), make(chan struct{})
	go func() { // program → screen
		defer close(shown)
		buf := make([]byte, 32<<10)
		for {
			n, err := ptm.Read(buf)
			if n > 0 {
				s.mu.Lock()
				s.emu.Write(buf[:n])
				s.mu.Unlock()
			}
			if err != nil {
				return
			}
		}
	}()
	go func() { // the terminal's answers to the program's queries → program
		defer close(answered)
		buf := make([]byte, 4096)
		for {
			n, err := s.emu.Read(buf)
			if n > 0 {
				ptm.Write(buf[:n])
			}
			if err != nil || s.stopped.Load() {
				return
			}
		}
	}()
	t.Cleanup(func() {
		tty.Close()
		ptm.Close()
		<-shown
		// The emulator's Close races with a Read in progress (vt v0.1.0):
		// end the answering loop first, by asking the emulator something.
		s.stopped.Store(true)
		s.mu.Lock()
		s.emu.Write([]byte("\x1b[c"))
		s.mu.Unlock()
		<-answered
		s.emu.Close()
	})
	return s, tty
}

func (s *screen) text() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.emu.String()
}

func (s *screen) typeKeys(t *testing.T, keys string) {
	t.Helper()
	if _, err := s.ptm.WriteString(keys); err != nil {
		t.Fatalf("type %q: %v", keys, err)
	}
}

// waitFor waits until the screen shows every one of texts.
func (s *screen) waitFor(t *testing.T, texts ...string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		scr := s.text()
		missing := ""
		for _, x := range texts {
			if !strings.Contains(scr, x) {
				missing = x
				break
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the screen never showed %q; it shows:\n%s", missing, scr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The full-screen client on a pseudo-terminal: what is typed is sent and
// shown, what others say arrives, up recalls the last line, the status line
// tells the connection state through a lost connection, and /quit ends it.
func TestFullScreenClient(t *testing.T) {
	h := startHub(t, AppConfig{}, nil)
	addr := h.Addr().String()
	px := startProxy(t, addr)
	bob := startLines(t, addr, "bob", "lobby")
	bob.send("before you came")
	bob.out.waitLine(t, "[lobby] bob: before you came")

	scr, tty := newScreen(t, 100, 24)
	done := make(chan error, 1)
	go func() {
		done <- RunTUI(context.Background(), ClientConfig{
			Hubs: []string{px.addr()}, Name: "alice", Room: "lobby",
			reconnectMin: 20 * time.Millisecond, reconnectMax: 200 * time.Millisecond,
		}, tty, tty)
	}()
	scr.waitFor(t, "alice @ "+px.addr(), "connected", "[lobby] > ", "bob: before you came (history)", "* alice joined")
	bob.out.waitLine(t, "[lobby] * alice joined")

	scr.typeKeys(t, "hello from the terminal\r")
	scr.waitFor(t, "alice: hello from the terminal")
	bob.out.waitLine(t, "[lobby] alice: hello from the terminal")

	bob.send("hi alice")
	scr.waitFor(t, "bob: hi alice")

	// Up brings the last line back; enter sends it again.
	scr.typeKeys(t, "\x1b[A")
	scr.waitFor(t, "[lobby] > hello from the terminal")
	scr.typeKeys(t, "\r")
	bob.out.waitFor(t, "the repeated line", func(s string) bool {
		return count(s, "[lobby] alice: hello from the terminal") == 2
	})

	// The connection drops: the status line says so, and what was said
	// meanwhile appears once it is back.
	px.cut()
	scr.waitFor(t, "reconnecting…")
	bob.out.waitLine(t, "[lobby] * alice left")
	bob.send("said while you were away")
	bob.out.waitLine(t, "[lobby] bob: said while you were away")
	px.restore()
	scr.waitFor(t, "bob: said while you were away (missed)")
	if st := statusLine(scr.text()); !strings.Contains(st, "connected") || strings.Contains(st, "reconnecting") {
		t.Errorf("status line after the reconnect: %q", st)
	}

	scr.typeKeys(t, "/who\r")
	scr.waitFor(t, "* in lobby (2): alice, bob")

	scr.typeKeys(t, "/quit\r")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RunTUI: %v", err)
		}
	case <-time.After(wait):
		t.Fatalf("/quit did not end the program; screen:\n%s", scr.text())
	}
	bob.out.waitFor(t, "alice to leave", func(s string) bool { return count(s, "[lobby] * alice left") == 2 })
	bob.end()
}

// statusLine finds the status line (the one naming the hub) on a screen.
func statusLine(scr string) string {
	for _, l := range strings.Split(scr, "\n") {
		if strings.Contains(l, " @ ") {
			return l
		}
	}
	return ""
}

// A full-screen client whose name is taken fails before taking the screen.
func TestFullScreenNameTaken(t *testing.T) {
	h := startHub(t, AppConfig{}, nil)
	addr := h.Addr().String()
	alice := startLines(t, addr, "alice", "lobby")
	_, tty := newScreen(t, 80, 24)
	err := RunTUI(context.Background(), ClientConfig{Hubs: []string{addr}, Name: "alice", Room: "lobby"}, tty, tty)
	if err == nil || !strings.Contains(err.Error(), "name alice is in use") {
		t.Fatalf("got %v, want name alice is in use", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	alice.end()
}
