package chat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

// startNATS runs a NATS server with JetStream on loopback for several hubs
// to share.
func startNATS(t *testing.T) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true, ServerName: "shared",
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server did not start")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// Two hubs on one engine: people on either share rooms, presence, /who,
// /rooms, private messages and the rule of one name at a time.
func TestTwoHubs(t *testing.T) {
	ns := startNATS(t)
	on := func(name string) func(*hub.Config) {
		return func(c *hub.Config) { c.NATSURLs, c.DataDir, c.Name = ns.ClientURL(), "", name }
	}
	east := startHub(t, AppConfig{}, on("east"))
	west := startHub(t, AppConfig{}, on("west"))
	alice := startLines(t, east.Addr().String(), "alice", "lobby")
	bob := startLines(t, west.Addr().String(), "bob", "lobby")
	alice.out.waitLine(t, "[lobby] * bob joined")

	alice.send("hello from east")
	bob.out.waitLine(t, "[lobby] alice: hello from east")
	bob.send("hello from west", "/msg alice only you")
	alice.out.waitLine(t, "[lobby] bob: hello from west")
	alice.out.waitLine(t, "[dm] bob: only you")
	alice.send("/who")
	alice.out.waitLine(t, "* in lobby (2): alice, bob")
	bob.send("/join dev", "/rooms")
	bob.out.waitLine(t, "* rooms: dev (1), lobby (2)")

	imp := tryLines(t, west.Addr().String(), "alice", "lobby")
	err := <-imp.done
	imp.done <- nil
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.CodeNameTaken {
		t.Fatalf("alice on the other hub: got %v, want name_taken", err)
	}

	bob.end()
	alice.out.waitLine(t, "[lobby] * bob left")
	alice.end()
}

// Two hubs on one engine: text clients on either get guest names of their
// own, and the lobby reaches a classroom client once, whichever hub bridged it.
func TestTwoHubsText(t *testing.T) {
	ns := startNATS(t)
	on := func(name string) func(*hub.Config) {
		return func(c *hub.Config) { c.NATSURLs, c.DataDir, c.Name = ns.ClientURL(), "", name }
	}
	east := startHub(t, AppConfig{}, on("east"))
	west := startHub(t, AppConfig{}, on("west"))
	class := dialClassroomChat(t, west.Addr().String())
	names := map[string]bool{}
	var socks []*textSock
	for i, h := range []*testHub{east, west, east, west} {
		g := dialTextSock(t, h.Addr().String())
		g.send(fmt.Sprintf("line %d", i))
		g.out.waitFor(t, "a guest name", func(s string) bool { return strings.Contains(s, "you are guest-") })
		name := strings.TrimPrefix(strings.Split(g.out.String(), "\n")[0], "* welcome to CAPS chat, you are ")
		if names[name] {
			t.Fatalf("two guests named %s", name)
		}
		names[name] = true
		socks = append(socks, g)
	}
	got := map[string]bool{}
	for range socks {
		l := class.next()
		if got[l.Text] || !strings.HasPrefix(l.Text, "line ") || !names[l.From] {
			t.Fatalf("classroom client got %+v (after %v)", l, got)
		}
		got[l.Text] = true
	}
	// Nothing came twice: the next line it gets is a new one.
	socks[0].send("the end")
	if l := class.next(); l.Text != "the end" {
		t.Fatalf("classroom client got %+v, want the end", l)
	}
}

// A hub that dies leaves records nobody refreshes; another hub sweeps them
// away once they are stale and tells the rooms, once.
func TestDeadHubRecordsSwept(t *testing.T) {
	h := startHub(t, AppConfig{PresenceTTL: 600 * time.Millisecond}, nil)
	addr := h.Addr().String()
	alice := startLines(t, addr, "alice", "lobby")

	// What a crashed hub leaves behind: ghost's name and membership.
	kv := h.app.store.kv
	ctx := context.Background()
	for key, rec := range map[string]record{
		nameKey("ghost"):            {Name: "ghost", Session: "s-dead", Hub: "crashed"},
		memberKey("lobby", "ghost"): {Name: "ghost", Room: "lobby", Session: "s-dead", Hub: "crashed"},
	} {
		b, _ := json.Marshal(rec)
		if _, err := kv.Put(ctx, key, b); err != nil {
			t.Fatal(err)
		}
	}
	alice.out.waitLine(t, "[lobby] * ghost left")
	alice.ask(t, "/who", "* in lobby (1): alice")
	// The name is free again.
	ghost := startLines(t, addr, "ghost", "lobby")
	alice.out.waitLine(t, "[lobby] * ghost joined")
	alice.sync()
	if n := count(alice.out.String(), "[lobby] * ghost left"); n != 1 {
		t.Errorf("ghost's departure was announced %d times", n)
	}
	ghost.end()
	alice.end()
}

// A client that comes back (naming its previous session) before the hub has
// noticed that the old connection is dead takes its name and rooms over
// quietly: the room hears neither a join nor a leave.
func TestResumeTakesOverQuietly(t *testing.T) {
	h := startHub(t, AppConfig{}, nil)
	addr := h.Addr().String()
	bob := startLines(t, addr, "bob", "lobby")

	old := dialRaw(t, addr, "alice")
	old.join("lobby")
	bob.out.waitLine(t, "[lobby] * alice joined")

	// A stranger may not take the name, resume or not: not with a made-up
	// session, not with alice's session id (loggers see it in connection
	// events), only with the resume token alice's WELCOME gave her.
	for _, resume := range []string{"not-a-session", old.session, old.session + ".forged"} {
		if _, err := tryDial(addr, "alice", resume); err == nil || !strings.Contains(err.Error(), "name_taken") {
			t.Fatalf("taking a live name with resume %q: got %v", resume, err)
		}
	}
	again := dialRawResume(t, addr, "alice", old.resume)
	again.join("lobby")
	old.c.Close()
	bob.send("/who")
	bob.out.waitLine(t, "* in lobby (2): alice, bob")
	// Once the hub has finished with the old session, nothing was announced.
	deadline := time.Now().Add(wait)
	for sessionListed(h, old.session) {
		if time.Now().After(deadline) {
			t.Fatal("the hub never ended the old session")
		}
		time.Sleep(5 * time.Millisecond)
	}
	bob.ask(t, "/rooms", "* rooms: lobby (2)")
	if n := count(bob.out.String(), "[lobby] * alice joined"); n != 1 {
		t.Errorf("alice's return was announced (%d joins)", n)
	}
	if strings.Contains(bob.out.String(), "[lobby] * alice left") {
		t.Errorf("the old connection's end was announced:\n%s", bob.out)
	}
	again.c.Close()
	bob.out.waitLine(t, "[lobby] * alice left")
	bob.end()
}

// tryDial attempts a raw chat handshake and returns the hub's refusal.
func tryDial(addr, name, resume string) (protocol.Welcome, error) {
	var w protocol.Welcome
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return w, err
	}
	defer c.Close()
	hello, _ := json.Marshal(protocol.Hello{Version: protocol.Version, Role: protocol.RoleChat, Name: name, Resume: resume})
	if _, err := c.Write((&protocol.Frame{Op: protocol.OpHello, Payload: hello}).Encode()); err != nil {
		return w, err
	}
	c.SetReadDeadline(time.Now().Add(wait))
	f, err := protocol.NewReader(c, 0).Next()
	if err != nil {
		return w, err
	}
	if f.Op == protocol.OpErr {
		return w, protocol.AsError(f)
	}
	return w, json.Unmarshal(f.Payload, &w)
}

func sessionListed(h *testHub, id string) bool {
	for _, s := range h.app.host.Sessions() {
		if s.ID == id {
			return true
		}
	}
	return false
}

// tokens is an authenticator for tests: token → identity.
type tokens map[string]hub.Identity

func (t tokens) Authenticate(h protocol.Hello) (hub.Identity, error) {
	id, ok := t[h.Token]
	if !ok {
		return id, errors.New("unknown token")
	}
	return id, nil
}

// With authentication the hub names people by their token: the chat takes
// the name it is given, refuses a token of another role, and /nick says why
// it cannot work.
func TestAuthenticatedNames(t *testing.T) {
	h := startHub(t, AppConfig{}, func(c *hub.Config) {
		c.Auth = tokens{
			"t-alice": {Role: protocol.RoleChat, Name: "alice"},
			"t-bob":   {Role: protocol.RoleChat, Name: "bob"},
			"t-shop":  {Role: protocol.RoleVendor, Name: "acme", Attrs: map[string]string{"store": "acme"}},
		}
	})
	addr := h.Addr().String()
	ctx := context.Background()
	start := func(token string) *lineClient {
		lc := &lineClient{t: t, name: token, out: newOutput(), err: newOutput(), done: make(chan error, 1)}
		var pr *io.PipeReader
		pr, lc.in = io.Pipe()
		go func() {
			lc.done <- RunLines(ctx, ClientConfig{Hubs: []string{addr}, Name: "whoever", Room: "lobby", Token: token}, pr, lc.out, lc.err)
		}()
		t.Cleanup(func() { lc.in.Close() })
		return lc
	}
	alice := start("t-alice")
	alice.out.waitLine(t, "* connected to "+addr+" as alice")
	bob := start("t-bob")
	bob.out.waitLine(t, "[lobby] * bob joined")
	alice.send("hi, I am who my token says")
	bob.out.waitLine(t, "[lobby] alice: hi, I am who my token says")
	alice.send("/nick mallory")
	alice.err.waitLine(t, "! this hub names you by your token (you are alice); /nick cannot change that")

	shop := start("t-shop")
	if err := <-shop.done; err == nil || !strings.Contains(err.Error(), `the hub admits this token as vendor "acme"; chat needs a token for role chat`) {
		t.Errorf("a vendor's token: got %v", err)
	}
	alice.end()
	bob.end()
}
