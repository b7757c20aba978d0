package hub_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

// talkApp is a stand-in for an app serving text clients (chat is the real
// one): guests are visitor-<n>; once ready a client hears talk.>; "say X"
// publishes X on talk.<name>, "name N" renames (as a first line, before
// the client is ready), "quit" leaves, anything else comes back as "? line".
type talkApp struct {
	n     atomic.Int64
	taken []string // names a connect hook refuses as taken
}

func (a *talkApp) Setup(_ context.Context, h *hub.Host) error {
	h.OnConnect(func(_ context.Context, s hub.SessionInfo) error {
		if slices.Contains(a.taken, s.Name) {
			return hub.Reject(protocol.CodeNameTaken, s.Name+" is taken")
		}
		return nil
	})
	return nil
}

func (a *talkApp) TextRole() string { return protocol.RoleClient }

func (a *talkApp) TextGuest(context.Context, int) (string, error) {
	return fmt.Sprintf("visitor-%d", a.n.Add(1)), nil
}

func (a *talkApp) TextOpen(_ context.Context, t *hub.TextConn) hub.TextHandler {
	t.Print("hello " + t.Info().Name)
	return &talker{t: t}
}

type talker struct{ t *hub.TextConn }

func (k *talker) Ready(ctx context.Context) {
	if _, err := k.t.Subscribe(ctx, "talk.>", 0); err != nil {
		k.t.Print("! " + err.Error())
	}
	k.t.Print("ready as " + k.t.Info().Name)
}

func (k *talker) First(line string) bool { return strings.HasPrefix(line, "name ") }

func (k *talker) Line(ctx context.Context, line string) bool {
	cmd, arg, _ := strings.Cut(line, " ")
	switch cmd {
	case "say":
		if err := k.t.Publish(ctx, "talk."+k.t.Info().Name, "", []byte(arg)); err != nil {
			k.t.Print("! " + err.Error())
		}
	case "name":
		if err := k.t.Rename(arg); err != nil {
			k.t.Print("! " + err.Error())
			return false
		}
		k.t.Print("renamed " + arg)
	case "quit":
		k.t.Print("bye")
		return true
	default:
		k.t.Print("? " + line)
	}
	return false
}

func (k *talker) Render(topic string, payload []byte, _ bool) []string {
	return []string{topic + ": " + string(payload)}
}

// textClient is a person with nc, as a test drives one.
type textClient struct {
	t  *testing.T
	c  net.Conn
	rd *bufio.Reader
}

func dialText(t *testing.T, addr net.Addr) *textClient {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &textClient{t: t, c: c, rd: bufio.NewReader(c)}
}

func (c *textClient) send(s string) {
	c.t.Helper()
	if _, err := c.c.Write([]byte(s)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// line reads the next line, without its CR LF.
func (c *textClient) line() string {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	s, err := c.rd.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read a line (so far %q): %v", s, err)
	}
	if !strings.HasSuffix(s, "\r\n") {
		c.t.Fatalf("line %q does not end with CR LF", s)
	}
	return strings.TrimSuffix(s, "\r\n")
}

// expect reads lines until want, and fails if the connection ends first.
func (c *textClient) expect(want string) {
	c.t.Helper()
	var seen []string
	for {
		l := c.line()
		if l == want {
			return
		}
		seen = append(seen, l)
		if len(seen) > 100 {
			c.t.Fatalf("no %q in %q", want, seen)
		}
	}
}

// expectLines reads exactly the lines want, in order.
func (c *textClient) expectLines(want ...string) {
	c.t.Helper()
	for _, w := range want {
		if l := c.line(); l != w {
			c.t.Fatalf("got %q, want %q", l, w)
		}
	}
}

// object reads one classroom object (no strings with braces in it).
func (c *textClient) object() string {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b []byte
	depth := 0
	for {
		ch, err := c.rd.ReadByte()
		if err != nil {
			c.t.Fatalf("read an object (so far %q): %v", b, err)
		}
		b = append(b, ch)
		switch ch {
		case '{':
			depth++
		case '}':
			if depth--; depth == 0 {
				return string(b)
			}
		}
	}
}

// expectClosed reads until the hub closes the connection.
func (c *textClient) expectClosed() {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, c.rd); err != nil {
		c.t.Fatalf("want the hub to close the connection, got %v", err)
	}
}

func startTalkHub(t *testing.T, mod func(*hub.Config)) *hub.Hub {
	return startHub(t, func(c *hub.Config) {
		c.Apps = append(c.Apps, &talkApp{})
		if mod != nil {
			mod(c)
		}
	})
}

// TestTextOnTheClientPort: text clients, CAPS frames and the classroom's
// JSON on one port, each told by its first bytes; text clients talk with
// each other and with native clients.
func TestTextOnTheClientPort(t *testing.T) {
	h := startTalkHub(t, nil)
	native := dialRaw(t, h)
	native.hello("client", "native")
	native.send(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("talk.>")})
	if f := native.nextOp(); f.Op != protocol.OpOK {
		t.Fatalf("sub: %s", f)
	}

	a := dialText(t, h.Addr())
	a.send("say hi\r\n") // a plain first line: ready first, then said
	a.expectLines("hello visitor-1", "ready as visitor-1", "talk.visitor-1: hi")
	if f := native.nextOp(); f.Op != protocol.OpMsg || string(f.Topic) != "talk.visitor-1" || string(f.Payload) != "hi" {
		t.Fatalf("native got %s", f)
	}

	// A first line that renames is handled before the client is ready:
	// nobody hears of it under its guest name.
	b := dialText(t, h.Addr())
	b.send("name bob\nsay yo\n")
	b.expectLines("hello visitor-2", "renamed bob", "ready as bob", "talk.bob: yo")
	a.expectLines("talk.bob: yo")
	native.send(&protocol.Frame{Op: protocol.OpPub, ID: 2, Topic: []byte("talk.native"), Payload: []byte("from frames")})
	a.expectLines("talk.native: from frames")
	b.expectLines("talk.native: from frames")

	// '{' followed by what no JSON object has is a person typing.
	d := dialText(t, h.Addr())
	d.send("{hello}\n")
	d.expectLines("hello visitor-3", "ready as visitor-3", "? {hello}")
	// '{"' is still the classroom's.
	c := dialClassroom(t, h)
	c.sync()

	// A telnet client negotiating first: refused options, then text.
	e := dialText(t, h.Addr())
	e.send("\xff\xfd\x01\xff\xfb\x1fsay telnet\r\n")
	got := make([]byte, 6)
	e.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(e.rd, got); err != nil || string(got) != "\xff\xfc\x01\xff\xfe\x1f" {
		t.Fatalf("telnet answers %q %v, want WONT ECHO, DONT NAWS", got, err)
	}
	e.expect("talk.visitor-4: telnet")

	// "quit" ends the session with the app's last words.
	b.send("quit\n")
	b.expect("bye")
	b.expectClosed()
}

// TestTextHTTPOnTheClientPort: a browser or probe gets an HTTP answer
// saying where HTTP is, not a chat session.
func TestTextHTTPOnTheClientPort(t *testing.T) {
	h := startTalkHub(t, nil)
	c := dialText(t, h.Addr())
	c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if l := c.line(); l != "HTTP/1.1 400 Bad Request" {
		t.Fatalf("status line %q", l)
	}
	c.expect("Content-Type: application/problem+json")
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, _ := io.ReadAll(c.rd)
	var p struct {
		Status int
		Detail string
	}
	body := rest[strings.Index(string(rest), "{"):]
	if err := json.Unmarshal(body, &p); err != nil || p.Status != 400 || !strings.Contains(p.Detail, "HTTP port") {
		t.Fatalf("problem %q: %v", body, err)
	}
}

// TestTextPort: on the text-only port the hub speaks first; a newcomer
// who says nothing is made ready after a moment.
func TestTextPort(t *testing.T) {
	h := startTalkHub(t, func(c *hub.Config) { c.TextAddr = "127.0.0.1:0" })
	b := dialText(t, h.TextAddr())
	b.expectLines("hello visitor-1")
	b.send("name carol\n")
	b.expectLines("renamed carol", "ready as carol")
	a := dialText(t, h.TextAddr())
	a.expectLines("hello visitor-2", "ready as visitor-2") // without sending a byte
	// Well after the moment a silent client is made ready, one that spoke
	// early still talks.
	b.send("say hi\n")
	a.expectLines("talk.carol: hi")
	b.expectLines("talk.carol: hi")
}

// TestTextGuestNameTaken: a guest name a connect hook finds taken is
// replaced by the next.
func TestTextGuestNameTaken(t *testing.T) {
	app := &talkApp{taken: []string{"visitor-1", "visitor-2"}}
	h := startHub(t, func(c *hub.Config) { c.Apps = []hub.App{app} })
	a := dialText(t, h.Addr())
	a.send("hi\n")
	a.expectLines("hello visitor-3")
}

// tokenAuth accepts the token "t-<role>" as the identity <role> "tokened".
type tokenAuth struct{}

func (tokenAuth) Authenticate(hl protocol.Hello) (hub.Identity, error) {
	role, ok := strings.CutPrefix(hl.Token, "t-")
	if !ok {
		return hub.Identity{}, errors.New("unknown token")
	}
	return hub.Identity{Role: role, Name: "tokened"}, nil
}

// TestTextAuth: with authentication, a text client shows a token first
// ("@token TOKEN"), for the role text clients have, or is refused; with
// --text on it may stay a guest; with --text off there is no text dialect.
func TestTextAuth(t *testing.T) {
	h := startTalkHub(t, func(c *hub.Config) { c.Auth = tokenAuth{}; c.TextAddr = "127.0.0.1:0" })
	for _, tc := range []struct{ send, want string }{
		{"say hi\n", "! unauthorized: this hub needs a token first: send @token TOKEN as your first line"},
		{"@token nope\n", "! unauthorized: unknown token"},
		{"@token t-admin\n", "! unauthorized: this token is for role admin; text clients have role client"},
	} {
		c := dialText(t, h.Addr())
		c.send(tc.send)
		c.expectLines(tc.want)
		c.expectClosed()
	}
	c := dialText(t, h.Addr())
	c.send("@token t-client\nname other\n@token t-client\n")
	c.expectLines("hello tokened", "! forbidden: you are named by your token (tokened)", "ready as tokened",
		"* you are signed in already, as tokened")
	// The text port asks at once.
	p := dialText(t, h.TextAddr())
	p.expectLines("* this hub needs a token: type @token TOKEN")
	p.send("\r\n@token t-client\n")
	p.expectLines("hello tokened")

	t.Run("on", func(t *testing.T) {
		h := startTalkHub(t, func(c *hub.Config) { c.Auth = tokenAuth{}; c.Text = hub.TextOn })
		c := dialText(t, h.Addr())
		c.send("say hi\n")
		c.expectLines("hello visitor-1")
	})
	t.Run("off", func(t *testing.T) {
		h := startTalkHub(t, func(c *hub.Config) { c.Text = hub.TextOff })
		r := dialRaw(t, h)
		r.c.Write([]byte("say hi\n"))
		if f := r.next(); f.Op != protocol.OpErr || f.Flags&protocol.FlagFatal == 0 {
			t.Fatalf("text to a hub without the dialect: want a fatal ERR frame, got %s", f)
		}
		bad := hub.New(hub.Config{Addr: "127.0.0.1:0", HTTPAddr: "off", DataDir: t.TempDir(), Quiet: true,
			Text: hub.TextOff, TextAddr: "127.0.0.1:0", Apps: []hub.App{&talkApp{}}})
		if err := bad.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "--text off") {
			bad.Shutdown(context.Background())
			t.Fatalf("a text port with the dialect off: %v", err)
		}
	})
}

// TestTextAfterSilence: a person who connects and waits before typing is
// taken for a silent classroom client (here, a worker) until their first
// bytes show text; then the connection is a text one, and the work it was
// handed goes to another worker at once.
func TestTextAfterSilence(t *testing.T) {
	h := startHub(t, func(c *hub.Config) {
		c.Apps = []hub.App{workApp{}, &talkApp{}}
		c.ClassroomGrace = 100 * time.Millisecond
		c.HandshakeTimeout = 150 * time.Millisecond
	})
	boss := dialRaw(t, h)
	boss.hello("admin", "boss")
	person := dialText(t, h.Addr())
	publishWork(t, boss, 1, "s1")
	// Presumed a worker, it is handed the item, in the classroom's JSON.
	if o := person.object(); !strings.HasPrefix(o, `{"event":"work.todo.s1"`) || !strings.Contains(o, `"w1"`) {
		t.Fatalf("the silent connection got %q", o)
	}
	other := dialRaw(t, h)
	other.hello("driver", "other")
	other.send(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("work.todo.*"), Key: []byte("workers"), Flags: protocol.FlagManualAck})
	if f := other.nextOp(); f.Op != protocol.OpOK {
		t.Fatalf("sub: %s", f)
	}
	person.send("say sorry, I was away\n")
	person.expectLines("hello visitor-1", "ready as visitor-1", "talk.visitor-1: sorry, I was away")
	if f := other.nextOp(); f.Op != protocol.OpMsg || !strings.Contains(string(f.Payload), `"w1"`) {
		t.Fatalf("the other worker got %s, want w1 at once", f)
	}
}
