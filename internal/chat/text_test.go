package chat

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
	"github.com/caps-hub/caps/protocol/classroom"
)

// textSock is a person with nc: a raw TCP connection typing lines, whose
// output (CR LF turned into LF) waits to be read in an output.
type textSock struct {
	t      *testing.T
	c      net.Conn
	out    *output
	closed chan struct{}
}

func dialTextSock(t *testing.T, addr string) *textSock {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ts := &textSock{t: t, c: c, out: newOutput(), closed: make(chan struct{})}
	go func() {
		defer close(ts.closed)
		rd := bufio.NewReader(c)
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				return
			}
			ts.out.Write([]byte(strings.TrimSuffix(line, "\r\n") + "\n"))
		}
	}()
	t.Cleanup(func() { c.Close(); <-ts.closed })
	return ts
}

func (ts *textSock) send(lines ...string) {
	ts.t.Helper()
	for _, l := range lines {
		if _, err := ts.c.Write([]byte(l + "\r\n")); err != nil {
			ts.t.Fatalf("write %q: %v", l, err)
		}
	}
}

const textHelpLast = "* @@TEXT            send TEXT starting with @"

// sync returns once everything sent before has been handled: @help is
// answered after the lines before it.
func (ts *textSock) sync() {
	ts.t.Helper()
	before := count(ts.out.String(), textHelpLast)
	ts.send("@help")
	ts.out.waitFor(ts.t, "@help", func(s string) bool { return count(s, textHelpLast) > before })
}

func (ts *textSock) waitClosed() {
	ts.t.Helper()
	select {
	case <-ts.closed:
	case <-time.After(wait):
		ts.t.Fatalf("the hub did not close the connection:\n%s", ts.out)
	}
}

// classroomChat is a classroom JSON client that chats with generic events.
type classroomChat struct {
	t   *testing.T
	c   net.Conn
	dec *classroom.Decoder
}

func dialClassroomChat(t *testing.T, addr string) *classroomChat {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// It speaks at once, as a classroom client must on a hub without an
	// app that presumes silent ones to be something (the parcel app): an
	// event the hub refuses, whose error says the connection is served.
	if _, err := c.Write(classroom.Encode("no spaces in topics", nil)); err != nil {
		t.Fatal(err)
	}
	cc := &classroomChat{t: t, c: c, dec: classroom.NewDecoder(c, 0)}
	c.SetReadDeadline(time.Now().Add(wait))
	raw, err := cc.dec.Next()
	if o, _ := classroom.Parse(raw); err != nil || o.Event != "error" || !strings.Contains(string(o.Payload), protocol.CodeBadTopic) {
		t.Fatalf("classroom client: want a bad_topic error first, got %q %v", raw, err)
	}
	return cc
}

func (cc *classroomChat) say(payload string) {
	cc.t.Helper()
	if _, err := cc.c.Write(classroom.Encode(ClassroomChatEvent, []byte(payload))); err != nil {
		cc.t.Fatal(err)
	}
}

// next returns the next message event's payload, skipping other events.
func (cc *classroomChat) next() classroomLine {
	cc.t.Helper()
	for {
		cc.c.SetReadDeadline(time.Now().Add(wait))
		raw, err := cc.dec.Next()
		if err != nil {
			cc.t.Fatalf("classroom client: %v", err)
		}
		o, err := classroom.Parse(raw)
		if err != nil {
			cc.t.Fatalf("bad object %q", raw)
		}
		if o.Event == "error" {
			cc.t.Fatalf("classroom client got an error: %s", o.Payload)
		}
		var l classroomLine
		if o.Event == ClassroomChatEvent && json.Unmarshal(o.Payload, &l) == nil && l.From != "" {
			return l
		}
	}
}

// dashboardChat does what the dashboard's chat panel (web/dashboard/chat.js)
// does, over the same WebSocket protocol: a chat client of its own on /ws,
// subscribed to a room's messages (with history) and presence, publishing
// whole Messages with their id.
type dashboardChat struct {
	t    *testing.T
	name string
	conn *client.Conn
	got  chan Message
}

func dialDashboardChat(t *testing.T, httpAddr net.Addr, name string) *dashboardChat {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		c, _, err := websocket.Dial(ctx, addr, nil)
		if err != nil {
			return nil, err
		}
		return websocket.NetConn(context.Background(), c, websocket.MessageBinary), nil
	}
	conn, err := client.Dial(ctx, []string{"ws://" + httpAddr.String() + "/ws"}, client.Options{
		Role: protocol.RoleChat, Name: name, Dialer: dialer, NoReconnect: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	d := &dashboardChat{t: t, name: name, conn: conn, got: make(chan Message, 256)}
	keep := func(m *client.Msg) {
		if msg, err := decode(m.Payload); err == nil {
			d.got <- msg
		}
	}
	if _, err := conn.Subscribe(ctx, RoomTopic(Lobby), keep, client.History(50)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Subscribe(ctx, PresenceTopic(Lobby), keep); err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *dashboardChat) say(text string) {
	d.t.Helper()
	m := Message{ID: uuid.NewString(), From: d.name, Room: Lobby, Text: text, Kind: KindMsg, Time: time.Now().UTC()}
	body, _ := json.Marshal(m)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := d.conn.Publish(ctx, RoomTopic(Lobby), body, client.WithMsgID(m.ID)); err != nil {
		d.t.Fatalf("dashboard publish: %v", err)
	}
}

// waitFor returns the first message (or presence event) match accepts.
func (d *dashboardChat) waitFor(what string, match func(Message) bool) Message {
	d.t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case m := <-d.got:
			if match(m) {
				return m
			}
		case <-deadline:
			d.t.Fatalf("the dashboard never got %s", what)
		}
	}
}

func (d *dashboardChat) waitText(from, text string) {
	d.t.Helper()
	d.waitFor(from+": "+text, func(m Message) bool { return m.Kind == KindMsg && m.From == from && m.Text == text })
}

var classroomName = regexp.MustCompile(`^classroom-[0-9a-f]{8}$`)

// TestTextChatFourWays: people on nc, caps chat (line mode), the dashboard
// (its WebSocket protocol) and a classroom JSON client are all in the
// lobby, and each hears the others, in its own form.
func TestTextChatFourWays(t *testing.T) {
	h := startHub(t, AppConfig{}, func(c *hub.Config) { c.HTTPAddr = "127.0.0.1:0" })
	addr := h.Addr().String()
	alice := startLines(t, addr, "alice", Lobby)
	nora := dialTextSock(t, addr)
	nora.send("@nickname nora")
	nora.out.waitLine(t, "* you are now nora")
	nora.out.waitLine(t, "[lobby] * nora joined")
	alice.out.waitLine(t, "[lobby] * nora joined")
	dana := dialDashboardChat(t, h.HTTPAddr(), "dana")
	nora.out.waitLine(t, "[lobby] * dana joined")
	class := dialClassroomChat(t, addr)

	nora.send("hello from nc")
	alice.out.waitLine(t, "[lobby] nora: hello from nc")
	dana.waitText("nora", "hello from nc")
	if l := class.next(); l != (classroomLine{From: "nora", Text: "hello from nc", Kind: KindMsg}) {
		t.Fatalf("classroom got %+v", l)
	}

	alice.send("hi from caps chat")
	nora.out.waitLine(t, "[lobby] alice: hi from caps chat")
	dana.waitText("alice", "hi from caps chat")
	if l := class.next(); l.From != "alice" || l.Text != "hi from caps chat" {
		t.Fatalf("classroom got %+v", l)
	}

	dana.say("hi from the dashboard")
	nora.out.waitLine(t, "[lobby] dana: hi from the dashboard")
	alice.out.waitLine(t, "[lobby] dana: hi from the dashboard")
	if l := class.next(); l.From != "dana" || l.Text != "hi from the dashboard" {
		t.Fatalf("classroom got %+v", l)
	}

	class.say(`{"text":"hi from the classroom"}`)
	m := dana.waitFor("the classroom's line", func(m Message) bool { return m.Text == "hi from the classroom" })
	if !classroomName.MatchString(m.From) {
		t.Fatalf("the classroom client speaks as %q", m.From)
	}
	nora.out.waitLine(t, "[lobby] "+m.From+": hi from the classroom")
	alice.out.waitLine(t, "[lobby] "+m.From+": hi from the classroom")
	class.say(`"a plain string too"`)
	nora.out.waitLine(t, "[lobby] "+m.From+": a plain string too")

	// Private messages between nc and caps chat, the renamed name included.
	alice.send("/msg nora psst")
	nora.out.waitLine(t, "[dm] alice: psst")
	nora.send("@dm alice back at you")
	nora.out.waitLine(t, "[dm -> alice] nora: back at you")
	alice.out.waitLine(t, "[dm] nora: back at you")
	// The classroom client heard nothing of them, nor of its own line.
	nora.send("last")
	if l := class.next(); l.From != "nora" || l.Text != "last" {
		t.Fatalf("classroom got %+v, want nora's last line", l)
	}
}

// TestTextGuestsRenameAndCommands: guests get names of their own, a
// first "@nickname" is the only name the room hears, a later one is a
// rename everyone sees, and the classroom's @ commands work beside caps
// chat's / commands.
func TestTextGuestsRenameAndCommands(t *testing.T) {
	h := startHub(t, AppConfig{}, nil)
	addr := h.Addr().String()
	alice := startLines(t, addr, "alice", Lobby)

	g := dialTextSock(t, addr)
	g.send("hi")
	g.out.waitFor(t, "a guest name", func(s string) bool { return strings.Contains(s, "* welcome to CAPS chat, you are guest-") })
	guest := strings.TrimPrefix(strings.Split(g.out.String(), "\n")[0], "* welcome to CAPS chat, you are ")
	alice.out.waitLine(t, "[lobby] * "+guest+" joined")
	alice.out.waitLine(t, "[lobby] "+guest+": hi")

	carol := dialTextSock(t, addr)
	carol.send("@nickname carol", "here")
	alice.out.waitLine(t, "[lobby] carol: here")
	carol.out.waitLine(t, "[lobby] carol: here")
	other := strings.TrimPrefix(strings.Split(carol.out.String(), "\n")[0], "* welcome to CAPS chat, you are ")
	if other == guest || !strings.HasPrefix(other, "guest-") {
		t.Fatalf("second guest named %q, first %q", other, guest)
	}
	alice.sync()
	if strings.Contains(alice.out.String(), other) {
		t.Fatalf("the room heard of %s, renamed by its first line:\n%s", other, alice.out)
	}

	// A later rename: the room sees the new name join and the old one leave.
	g.send("/nick bob")
	g.out.waitLine(t, "* you are now bob")
	alice.out.waitLine(t, "[lobby] * bob joined")
	alice.out.waitLine(t, "[lobby] * "+guest+" left")
	g.send("@nickname alice")
	g.out.waitLine(t, "! name_taken: name alice is in use; choose another")
	alice.send("/who", "/msg bob hey")
	alice.out.waitLine(t, "* in lobby (3): alice, bob, carol")
	g.out.waitLine(t, "[dm] alice: hey")

	g.send("/join dev", "/rooms", "@list")
	g.out.waitLine(t, "[dev] * bob joined")
	g.out.waitLine(t, "* rooms: dev (1), lobby (3)")
	g.out.waitLine(t, "* in dev (1): bob")
	g.send("@all everyone!", "@me", "/leave", "@me waves", "@bogus", "@@bob hi")
	alice.out.waitLine(t, "[lobby] bob: everyone!")
	g.out.waitLine(t, "* you are bob, talking in dev (rooms: lobby, dev)")
	g.out.waitLine(t, "* left dev; now talking in lobby")
	alice.out.waitLine(t, "[lobby] * bob waves")
	g.out.waitLine(t, "! unknown command @bogus; @help lists them (@@ sends a line starting with @)")
	alice.out.waitLine(t, "[lobby] bob: @bob hi")
	g.sync()
	for _, want := range []string{"* /join ROOM        join ROOM (or switch to it) and talk there", "* @dm NAME TEXT     send TEXT to NAME only"} {
		if !hasLine(g.out.String(), want) {
			t.Errorf("@help lacks %q", want)
		}
	}
	g.send("@quit")
	g.out.waitLine(t, "* bye, bob")
	g.waitClosed()
	alice.out.waitLine(t, "[lobby] * bob left")
	// The name is free again, for caps chat too.
	startFree(t, addr, "bob", "")
}

// TestTextLimitsAndHistory: a text client gets a room's history on
// joining and meets chat's limits, as readable lines.
func TestTextLimitsAndHistory(t *testing.T) {
	h := startHub(t, AppConfig{Rate: 1, Burst: 2, MaxText: 20, History: 3}, nil)
	addr := h.Addr().String()
	// Four messages in the lobby's history, stored as the hub (past the rate limit).
	for _, text := range []string{"one", "two", "three", "four"} {
		body, _ := json.Marshal(Message{ID: uuid.NewString(), From: "alice", Room: Lobby, Text: text, Kind: KindMsg, Time: time.Now().UTC()})
		if err := h.app.host.Publish(context.Background(), RoomTopic(Lobby), body); err != nil {
			t.Fatal(err)
		}
	}
	g := dialTextSock(t, addr)
	g.send("@nickname gus")
	g.out.waitLine(t, "[lobby] -- history --")
	for _, m := range []string{"two", "three", "four"} {
		g.out.waitLine(t, "[lobby] alice: "+m)
	}
	if hasLine(g.out.String(), "[lobby] alice: one") {
		t.Fatalf("history beyond its 3 messages:\n%s", g.out)
	}
	g.send(strings.Repeat("x", 21), "bad \x1b[31m red", "ok 1", "ok 2", "ok 3")
	g.out.waitLine(t, "! bad_request: message is 21 characters long; the limit is 20")
	g.out.waitLine(t, "! bad_request: message contains control character U+001B")
	g.out.waitLine(t, "[lobby] gus: ok 2")
	g.out.waitLine(t, "! rate_limited: slow down: at most 1 messages per second (bursts of 2)")
}

// chatToken accepts the token "tok-<name>" as the chat client <name>.
type chatToken struct{}

func (chatToken) Authenticate(hl protocol.Hello) (hub.Identity, error) {
	name, ok := strings.CutPrefix(hl.Token, "tok-")
	if !ok {
		return hub.Identity{}, hub.Reject(protocol.CodeAuth, "unknown token")
	}
	return hub.Identity{Role: protocol.RoleChat, Name: name}, nil
}

// TestTextWithTokens: on a hub with authentication a text client shows
// its token first and is the token's name, which it cannot change; on the
// text port it is asked for it and greeted at once.
func TestTextWithTokens(t *testing.T) {
	h := startHub(t, AppConfig{}, func(c *hub.Config) { c.Auth = chatToken{}; c.TextAddr = "127.0.0.1:0" })
	g := dialTextSock(t, h.Addr().String())
	g.send("@token tok-ann", "hello")
	g.out.waitLine(t, "* welcome to CAPS chat, ann")
	g.out.waitLine(t, "[lobby] ann: hello")
	g.send("@nickname bob", "@token tok-bob")
	g.out.waitLine(t, "! this hub names you by your token (you are ann); you cannot change that")
	g.out.waitLine(t, "* you are signed in already, as ann")

	p := dialTextSock(t, h.TextAddr().String())
	p.out.waitLine(t, "* this hub needs a token: type @token TOKEN")
	p.send("hello")
	p.out.waitLine(t, "! unauthorized: this hub needs a token first: send @token TOKEN as your first line")
	p.waitClosed()
}

// TestTextPortGreets: on the text port a newcomer is greeted with its
// guest name before it types anything, as the classroom server did.
func TestTextPortGreets(t *testing.T) {
	h := startHub(t, AppConfig{}, func(c *hub.Config) { c.TextAddr = "127.0.0.1:0" })
	g := dialTextSock(t, h.TextAddr().String())
	g.out.waitFor(t, "the greeting", func(s string) bool {
		return regexp.MustCompile(`(?m)^\* welcome to CAPS chat, you are guest-\d+$`).MatchString(s) &&
			hasLine(s, "* type a line to talk in lobby; @nickname NAME changes your name; @help lists the commands")
	})
}
