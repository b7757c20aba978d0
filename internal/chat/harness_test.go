package chat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
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
	// nats.go and nats-server keep a few process-wide goroutines alive.
	goleak.VerifyTestMain(m, hubtest.LeakOptions()...)
}

// wait is how long a test waits for something that should happen at once.
const wait = 15 * time.Second

// testHub is a hub running the chat app on loopback.
type testHub struct {
	*hubtest.Hub
	app *App
}

// startHub runs a hub with the chat app. Its heartbeat is short enough for
// tests yet long enough that a loaded machine does not miss one; the test of
// silent clients shortens it further.
func startHub(t *testing.T, acfg AppConfig, mod func(*hub.Config)) *testHub {
	t.Helper()
	app := NewApp(acfg)
	off := false
	cfg := hub.Config{
		Heartbeat: 2 * time.Second, SyncAlways: &off, Apps: []hub.App{app},
		ShutdownTimeout: 5 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	return &testHub{Hub: hubtest.Start(t, cfg), app: app}
}

func (th *testHub) stop() { th.Stop() }

// output is a goroutine-safe buffer whose readers can wait for a line.
type output struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{}
}

func newOutput() *output { return &output{changed: make(chan struct{})} }

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n, err := o.b.Write(p)
	close(o.changed)
	o.changed = make(chan struct{})
	return n, err
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

func (o *output) lines() []string {
	return strings.Split(strings.TrimRight(o.String(), "\n"), "\n")
}

// waitFor waits until cond holds on the text written so far.
func (o *output) waitFor(t *testing.T, what string, cond func(string) bool) {
	t.Helper()
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		o.mu.Lock()
		s, ch := o.b.String(), o.changed
		o.mu.Unlock()
		if cond(s) {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s; output so far:\n%s", what, s)
		}
	}
}

// waitLine waits for an exact line.
func (o *output) waitLine(t *testing.T, line string) {
	t.Helper()
	o.waitFor(t, quote(line), func(s string) bool { return hasLine(s, line) })
}

func hasLine(s, line string) bool {
	for _, l := range strings.Split(s, "\n") {
		if l == line {
			return true
		}
	}
	return false
}

func count(s, line string) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		if l == line {
			n++
		}
	}
	return n
}

func quote(s string) string { b, _ := json.Marshal(s); return string(b) }

// lineClient is a line-mode chat client driven through a pipe.
type lineClient struct {
	t    *testing.T
	name string
	in   *io.PipeWriter
	out  *output
	err  *output
	done chan error
}

func startLines(t *testing.T, addr, name, room string) *lineClient {
	t.Helper()
	lc := tryLines(t, addr, name, room)
	lc.out.waitLine(t, "* connected to "+addr+" as "+name)
	if room != "" {
		lc.out.waitLine(t, "["+room+"] * "+name+" joined")
	}
	return lc
}

// tryLines starts a line client without waiting for it to get going.
func tryLines(t *testing.T, addr, name, room string) *lineClient {
	t.Helper()
	pr, pw := io.Pipe()
	lc := &lineClient{t: t, name: name, in: pw, out: newOutput(), err: newOutput(), done: make(chan error, 1)}
	cfg := ClientConfig{
		Hubs: []string{addr}, Name: name, Room: room,
		reconnectMin: 20 * time.Millisecond, reconnectMax: 200 * time.Millisecond,
	}
	go func() {
		lc.done <- RunLines(context.Background(), cfg, pr, lc.out, lc.err)
		pr.Close()
	}()
	t.Cleanup(func() {
		pw.Close()
		select {
		case <-lc.done:
		case <-time.After(wait):
			t.Errorf("%s did not end", name)
		}
	})
	return lc
}

func (lc *lineClient) send(lines ...string) {
	lc.t.Helper()
	for _, l := range lines {
		if _, err := io.WriteString(lc.in, l+"\n"); err != nil {
			lc.t.Fatalf("%s: write %q: %v", lc.name, l, err)
		}
	}
}

// sync makes sure every line sent before it has been handled and its output
// printed: /help is answered locally, after everything queued before it.
func (lc *lineClient) sync() {
	lc.t.Helper()
	before := count(lc.out.String(), "* //TEXT            send TEXT starting with a slash")
	lc.send("/help")
	lc.out.waitFor(lc.t, lc.name+" to handle /help", func(s string) bool {
		return count(s, "* //TEXT            send TEXT starting with a slash") > before
	})
}

// end closes the input and waits for a clean exit.
func (lc *lineClient) end() {
	lc.t.Helper()
	lc.in.Close()
	lc.exit()
}

func (lc *lineClient) exit() {
	lc.t.Helper()
	select {
	case err := <-lc.done:
		if err != nil {
			lc.t.Fatalf("%s ended with %v", lc.name, err)
		}
		lc.done <- nil // for the cleanup
	case <-time.After(wait):
		lc.t.Fatalf("%s did not end", lc.name)
	}
}

// rawChat is a chat client speaking frames by hand, to die in ways the
// client library never would.
type rawChat struct {
	t       *testing.T
	c       net.Conn
	rd      *protocol.Reader
	session string
	resume  string // the WELCOME's resume token
}

func dialRaw(t *testing.T, addr, name string) *rawChat {
	t.Helper()
	return dialRawResume(t, addr, name, "")
}

// dialRawResume connects as a client that had a session before, whose
// resume token was resume.
func dialRawResume(t *testing.T, addr, name, resume string) *rawChat {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := &rawChat{t: t, c: c, rd: protocol.NewReader(c, 0)}
	hello, _ := json.Marshal(protocol.Hello{Version: protocol.Version, Role: protocol.RoleChat, Name: name, Resume: resume})
	r.send(&protocol.Frame{Op: protocol.OpHello, Payload: hello})
	f := r.next()
	if f.Op != protocol.OpWelcome {
		t.Fatalf("expected WELCOME, got %s %s %s", f.Op, f.Topic, f.Payload)
	}
	var w protocol.Welcome
	if err := json.Unmarshal(f.Payload, &w); err != nil {
		t.Fatal(err)
	}
	r.session, r.resume = w.Session, w.Resume
	return r
}

func (r *rawChat) send(f *protocol.Frame) {
	r.t.Helper()
	if _, err := r.c.Write(f.Encode()); err != nil {
		r.t.Fatalf("write %s: %v", f.Op, err)
	}
}

func (r *rawChat) next() *protocol.Frame {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(wait))
	f, err := r.rd.Next()
	if err != nil {
		r.t.Fatalf("read: %v", err)
	}
	return f
}

// join subscribes to a room and waits for the OK.
func (r *rawChat) join(room string) {
	r.t.Helper()
	r.send(&protocol.Frame{Op: protocol.OpSub, ID: 7, Topic: []byte(RoomTopic(room))})
	for {
		f := r.next()
		switch f.Op {
		case protocol.OpOK:
			if f.ID == 7 {
				return
			}
		case protocol.OpErr:
			r.t.Fatalf("join %s: %s %s", room, f.Topic, f.Payload)
		}
	}
}

// ask sends a command again and again until its answer is want: for what
// the hub does just after a client has gone (the client does not wait for
// the hub to finish with its session).
func (lc *lineClient) ask(t *testing.T, cmd, want string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !hasLine(lc.out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s never answered %q:\n%s", lc.name, cmd, want, lc.out)
		}
		lc.send(cmd)
		lc.sync()
	}
}

// startFree starts a client under a name whose previous holder has just
// gone, retrying while the hub has not yet finished with that session.
func startFree(t *testing.T, addr, name, room string) *lineClient {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		lc := tryLines(t, addr, name, room)
		for !hasLine(lc.out.String(), "* connected to "+addr+" as "+name) {
			select {
			case err := <-lc.done:
				lc.done <- nil
				var pe *protocol.Error
				if !errors.As(err, &pe) || pe.Code != protocol.CodeNameTaken || time.Now().After(deadline) {
					t.Fatalf("%s: %v", name, err)
				}
				lc = nil
			case <-time.After(10 * time.Millisecond):
				if time.Now().After(deadline) {
					t.Fatalf("%s never connected:\n%s", name, lc.out)
				}
			}
			if lc == nil {
				break
			}
		}
		if lc != nil {
			return lc
		}
	}
}

// proxy forwards TCP connections to a hub and can cut them all, to make a
// client lose its connection while the hub and everyone else carry on.
type proxy struct {
	t      *testing.T
	ln     net.Listener
	target string

	mu    sync.Mutex
	down  bool
	conns []net.Conn
	wg    sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		p.mu.Unlock()
		if down {
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() { defer p.wg.Done(); io.Copy(up, c); up.Close() }()
		go func() { defer p.wg.Done(); io.Copy(c, up); c.Close() }()
	}
}

// cut drops every connection and refuses new ones until restore.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}
