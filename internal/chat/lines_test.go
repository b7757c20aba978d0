package chat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

// Three people, two rooms: messages reach exactly the members of their
// room, presence is announced, /who and /rooms see everyone, and /quit or
// the end of input ends a client cleanly.
func TestRoomsMessagesAndPresence(t *testing.T) {
	h := startHub(t, AppConfig{}, nil)
	addr := h.Addr().String()
	alice := startLines(t, addr, "alice", "lobby")
	bob := startLines(t, addr, "bob", "lobby")
	alice.out.waitLine(t, "[lobby] * bob joined")
	carol := startLines(t, addr, "carol", "dev")

	alice.send("hello lobby")
	alice.out.waitLine(t, "[lobby] alice: hello lobby")
	bob.out.waitLine(t, "[lobby] alice: hello lobby")
	carol.send("hello dev")
	carol.out.waitLine(t, "[dev] carol: hello dev")
	carol.sync()
	if strings.Contains(carol.out.String(), "hello lobby") {
		t.Errorf("carol is not in lobby but saw its message:\n%s", carol.out)
	}
	for _, c := range []*lineClient{alice, bob} {
		c.sync()
		if strings.Contains(c.out.String(), "hello dev") || strings.Contains(c.out.String(), "carol joined") {
			t.Errorf("%s is not in dev but heard from it:\n%s", c.name, c.out)
		}
	}

	// carol joins lobby too: she sees its history, lobby sees her arrive,
	// and plain text now goes to lobby, her current room.
	carol.send("/join lobby")
	carol.out.waitLine(t, "[lobby] -- history --")
	carol.out.waitLine(t, "[lobby] alice: hello lobby")
	alice.out.waitLine(t, "[lobby] * carol joined")
	bob.out.waitLine(t, "[lobby] * carol joined")
	carol.send("hi all")
	alice.out.waitLine(t, "[lobby] carol: hi all")
	bob.out.waitLine(t, "[lobby] carol: hi all")

	carol.send("/who")
	carol.out.waitLine(t, "* in lobby (3): alice, bob, carol")
	carol.send("/who dev")
	carol.out.waitLine(t, "* in dev (1): carol")
	bob.send("/rooms")
	bob.out.waitLine(t, "* rooms: dev (1), lobby (3)")

	alice.send("/me waves")
	bob.out.waitLine(t, "[lobby] * alice waves")
	carol.out.waitLine(t, "[lobby] * alice waves")

	// /join of a room one is in switches to it.
	carol.send("/join dev", "back in dev")
	carol.out.waitLine(t, "* now talking in dev")
	carol.out.waitLine(t, "[dev] carol: back in dev")

	bob.send("/leave")
	bob.out.waitLine(t, "* left lobby; /join ROOM to talk again")
	alice.out.waitLine(t, "[lobby] * bob left")
	carol.out.waitLine(t, "[lobby] * bob left")
	bob.send("anyone?")
	bob.err.waitLine(t, "! you are in no room: /join ROOM first")

	carol.end() // end of input
	alice.out.waitLine(t, "[lobby] * carol left")
	alice.send("/quit")
	alice.exit()
	// The hub ends alice's session just after she has gone.
	bob.ask(t, "/rooms", "* no room has anyone in it")
	bob.end()

	// Every line anyone printed about lobby was one of these forms.
	for _, c := range []*lineClient{alice, bob, carol} {
		for _, l := range c.out.lines() {
			if strings.HasPrefix(l, "[lobby] ") && !lobbyLine(l) {
				t.Errorf("%s printed an unexpected line %q", c.name, l)
			}
		}
	}
}

func lobbyLine(l string) bool {
	rest := strings.TrimPrefix(l, "[lobby] ")
	switch {
	case rest == "-- history --":
	case strings.HasPrefix(rest, "* ") && (strings.HasSuffix(rest, " joined") || strings.HasSuffix(rest, " left") || strings.HasSuffix(rest, " waves")):
	case strings.Contains(rest, ": "):
	default:
		return false
	}
	return true
}

// A newcomer gets the room's last 50 messages, after a history marker, and
// then the live conversation.
func TestHistoryOnJoin(t *testing.T) {
	h := startHub(t, AppConfig{Rate: 1e6, Burst: 1e6}, nil)
	addr := h.Addr().String()
	alice := startLines(t, addr, "alice", "lobby")
	for i := 1; i <= 60; i++ {
		alice.send(fmt.Sprintf("message %d", i))
	}
	alice.out.waitLine(t, "[lobby] alice: message 60")

	dave := startLines(t, addr, "dave", "lobby")
	dave.out.waitLine(t, "[lobby] alice: message 60")
	alice.send("live one")
	dave.out.waitLine(t, "[lobby] alice: live one")

	out := dave.out.lines()
	var got []string
	header := -1
	for i, l := range out {
		if l == "[lobby] -- history --" {
			header = i
		}
		if strings.HasPrefix(l, "[lobby] alice: ") {
			if header < 0 {
				t.Fatalf("message before the history marker:\n%s", dave.out)
			}
			got = append(got, strings.TrimPrefix(l, "[lobby] alice: "))
		}
	}
	if len(got) != 51 || got[0] != "message 11" || got[49] != "message 60" || got[50] != "live one" {
		t.Errorf("dave saw %d messages %q…%q; want the last 50 (11…60) then the live one", len(got), first(got), last(got))
	}
	for i := 0; i < 50 && i < len(got); i++ {
		if got[i] != fmt.Sprintf("message %d", i+11) {
			t.Fatalf("history out of order at %d: %q", i, got[i])
		}
	}
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

func last(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[len(s)-1]
}

// A private message reaches its recipient and no one else: not the room,
// not a logger watching everything, not a generic client subscribing to
// every private topic.
func TestPrivateMessages(t *testing.T) {
	h := startHub(t, AppConfig{}, nil)
	addr := h.Addr().String()
	ctx := context.Background()
	var mu sync.Mutex
	seen := map[string][]string{}
	watch := func(role, name, pattern string) {
		c, err := client.Dial(ctx, []string{addr}, client.Options{Role: role, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Subscribe(ctx, pattern, func(m *client.Msg) {
			mu.Lock()
			seen[name] = append(seen[name], m.Topic+" "+string(m.Payload))
			mu.Unlock()
		}); err != nil {
			t.Fatalf("%s subscribe %s: %v", name, pattern, err)
		}
	}
	watch(protocol.RoleLogger, "logger", ">")
	watch(protocol.RoleClient, "snoop", ">")
	snoop, err := client.Dial(ctx, []string{addr}, client.Options{Name: "snoop2"})
	if err != nil {
		t.Fatal(err)
	}
	defer snoop.Close()
	if _, err := snoop.Subscribe(ctx, "chat.dm.>", func(*client.Msg) {}); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("a generic client subscribing to every private message: got %v, want forbidden", err)
	}
	for _, name := range []string{"bob", "alice"} {
		if _, err := snoop.Subscribe(ctx, DMTopic(name), func(*client.Msg) {}); err == nil || !strings.Contains(err.Error(), "forbidden") {
			t.Errorf("a generic client subscribing to %s's private messages: got %v, want forbidden", name, err)
		}
	}

	alice := startLines(t, addr, "alice", "lobby")
	bob := startLines(t, addr, "bob", "lobby")
	carol := startLines(t, addr, "carol", "lobby")

	alice.send("/msg bob the secret is 42")
	bob.out.waitLine(t, "[dm] alice: the secret is 42")
	alice.out.waitLine(t, "[dm -> bob] alice: the secret is 42")
	bob.send("/msg alice /me nods")
	alice.out.waitLine(t, "[dm] * bob nods")
	alice.send("/msg nobody hello?")
	alice.err.waitLine(t, "! not_found: nobody is not online")
	alice.send("/msg bob")
	alice.err.waitLine(t, "! usage: /msg NAME TEXT")

	// Something public afterwards, so we know the logger was listening.
	alice.send("public now")
	carol.out.waitLine(t, "[lobby] alice: public now")
	deadline := time.Now().Add(wait)
	for {
		mu.Lock()
		got := strings.Join(seen["logger"], "\n")
		mu.Unlock()
		if strings.Contains(got, "public now") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the logger never saw the room message; it saw:\n%s", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	carol.sync()
	mu.Lock()
	defer mu.Unlock()
	if got := strings.Join(seen["logger"], "\n"); strings.Contains(got, "secret") || strings.Contains(got, "nods") {
		t.Errorf("the logger saw a private message:\n%s", got)
	}
	if !strings.Contains(strings.Join(seen["logger"], "\n"), `"kind":"join"`) {
		t.Errorf("the logger did not see presence events: %q", seen["logger"])
	}
	if got := strings.Join(seen["snoop"], "\n"); strings.Contains(got, "secret") || strings.Contains(got, "nods") {
		t.Errorf("a generic client read private messages:\n%s", got)
	}
	if strings.Contains(carol.out.String(), "secret") || strings.Contains(carol.out.String(), "nods") {
		t.Errorf("carol saw a private message:\n%s", carol.out)
	}
	if n := strings.Count(bob.out.String(), "the secret is 42"); n != 1 {
		t.Errorf("bob saw the private message %d times", n)
	}
}

// Two clients may not hold one name; the second is told why, and the name
// is free again once its holder leaves. Bad names never get as far as the hub.
func TestNameClash(t *testing.T) {
	h := startHub(t, AppConfig{}, nil)
	addr := h.Addr().String()
	alice := startLines(t, addr, "alice", "lobby")

	imp := tryLines(t, addr, "alice", "lobby")
	select {
	case err := <-imp.done:
		var pe *protocol.Error
		if !errors.As(err, &pe) || pe.Code != protocol.CodeNameTaken || !strings.Contains(err.Error(), "name alice is in use") {
			t.Fatalf("second alice: got %v, want name_taken: name alice is in use", err)
		}
		imp.done <- nil
	case <-time.After(wait):
		t.Fatal("the second alice was not refused")
	}
	alice.sync()
	if strings.Contains(alice.out.String(), "joined") && count(alice.out.String(), "[lobby] * alice joined") != 1 {
		t.Errorf("the refused client was announced:\n%s", alice.out)
	}

	bad := tryLines(t, addr, "al ice", "lobby")
	if err := <-bad.done; err == nil || !strings.Contains(err.Error(), `bad name "al ice"`) {
		t.Errorf("bad name: got %v", err)
	}
	bad.done <- nil

	// /nick to a taken name is refused and changes nothing.
	bob := startLines(t, addr, "bob", "lobby")
	bob.send("/nick alice")
	bob.err.waitFor(t, "nick refused", func(s string) bool { return strings.Contains(s, "name_taken: name alice is in use") })
	bob.send("still bob")
	alice.out.waitLine(t, "[lobby] bob: still bob")

	// /nick to a free name: the room sees the new name arrive and the old leave.
	bob.send("/nick robert")
	bob.out.waitLine(t, "* you are now robert")
	alice.out.waitLine(t, "[lobby] * robert joined")
	alice.out.waitLine(t, "[lobby] * bob left")
	bob.send("call me robert")
	alice.out.waitLine(t, "[lobby] robert: call me robert")
	alice.send("/who")
	alice.out.waitLine(t, "* in lobby (2): alice, robert")

	alice.end()
	bob.out.waitLine(t, "[lobby] * alice left")
	again := startFree(t, addr, "alice", "lobby") // the name is free again
	again.end()
	bob.end()
}

// Flooding gets an error and the others are unaffected; an over-long
// message is refused with the limit.
func TestLimits(t *testing.T) {
	// A rate so low that only the burst gets through, however fast the machine.
	h := startHub(t, AppConfig{Rate: 0.001, Burst: 5, MaxText: 100}, nil)
	addr := h.Addr().String()
	alice := startLines(t, addr, "alice", "lobby")
	bob := startLines(t, addr, "bob", "lobby")

	alice.send(strings.Repeat("x", 101))
	alice.err.waitLine(t, "! bad_request: message is 101 characters long; the limit is 100")
	alice.send("bell \a")
	alice.err.waitLine(t, "! bad_request: message contains control character U+0007")

	for i := 1; i <= 8; i++ {
		alice.send(fmt.Sprintf("flood %d", i))
	}
	bob.out.waitLine(t, "[lobby] alice: flood 5")
	alice.err.waitFor(t, "3 rate_limited errors", func(s string) bool {
		return strings.Count(s, "! rate_limited: slow down: at most 0.001 messages per second (bursts of 5)") == 3
	})
	bob.send("bob is fine")
	alice.out.waitLine(t, "[lobby] bob: bob is fine")
	bob.sync()
	if strings.Contains(bob.out.String(), "flood 6") {
		t.Errorf("a refused message got through:\n%s", bob.out)
	}
	if bob.err.String() != "" {
		t.Errorf("bob got errors: %s", bob.err)
	}
}

// A client that drops is announced as gone: at once when its connection
// closes, within two heartbeats when it just goes silent.
func TestDroppedClientsLeave(t *testing.T) {
	h := startHub(t, AppConfig{}, func(c *hub.Config) { c.Heartbeat = 300 * time.Millisecond })
	addr := h.Addr().String()
	alice := startLines(t, addr, "alice", "lobby")

	zed := dialRaw(t, addr, "zed")
	zed.join("lobby")
	alice.out.waitLine(t, "[lobby] * zed joined")
	zed.c.Close() // abrupt: no BYE
	alice.out.waitLine(t, "[lobby] * zed left")

	yan := dialRaw(t, addr, "yan")
	yan.join("lobby")
	alice.out.waitLine(t, "[lobby] * yan joined")
	start := time.Now()
	// yan now never answers a PING: the hub drops it after 2×300ms.
	alice.out.waitLine(t, "[lobby] * yan left")
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a silent client was noticed after %v", d)
	}
	alice.send("/who")
	alice.out.waitLine(t, "* in lobby (1): alice")

	// Its name is free again.
	again := startFree(t, addr, "yan", "lobby")
	alice.out.waitLine(t, "[lobby] * yan joined")
	again.end()
	alice.end()
}

// The hub refuses what chat clients may not do, with clear errors.
func TestChatRules(t *testing.T) {
	h := startHub(t, AppConfig{}, nil)
	addr := h.Addr().String()
	ctx := context.Background()
	alice := startLines(t, addr, "alice", "lobby")

	mallory, err := client.Dial(ctx, []string{addr}, client.Options{Role: protocol.RoleChat, Name: "mallory"})
	if err != nil {
		t.Fatal(err)
	}
	defer mallory.Close()
	post := func(topic string, m Message) error {
		b, _ := json.Marshal(m)
		_, err := mallory.Publish(ctx, topic, b)
		return err
	}
	now := time.Now()
	cases := []struct {
		what, topic string
		m           Message
		code, text  string
	}{
		{"posing as someone", RoomTopic("lobby"), Message{ID: "1", From: "alice", Room: "lobby", Text: "hi", Kind: KindMsg, Time: now},
			protocol.CodeForbidden, `message says it is from "alice" but you are "mallory"`},
		{"not in the room", RoomTopic("lobby"), Message{ID: "2", From: "mallory", Room: "lobby", Text: "hi", Kind: KindMsg, Time: now},
			protocol.CodeForbidden, "you are not in room lobby"},
		{"forged presence kind", RoomTopic("lobby"), Message{ID: "3", From: "mallory", Room: "lobby", Kind: KindLeave, Time: now},
			protocol.CodeBadRequest, `kind "leave"`},
	}
	for _, c := range cases {
		err := post(c.topic, c.m)
		var pe *protocol.Error
		if !errors.As(err, &pe) || pe.Code != c.code || !strings.Contains(pe.Text, c.text) {
			t.Errorf("%s: got %v, want %s containing %q", c.what, err, c.code, c.text)
		}
	}
	if _, err := mallory.Publish(ctx, RoomTopic("lobby"), []byte("not json")); err == nil || !strings.Contains(err.Error(), "bad_request") {
		t.Errorf("non-JSON payload: got %v", err)
	}
	if _, err := mallory.Publish(ctx, PresenceTopic("lobby"), []byte(`{}`)); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("publishing presence: got %v", err)
	}
	if _, err := mallory.Subscribe(ctx, RoomTopic("*"), func(*client.Msg) {}); err == nil || !strings.Contains(err.Error(), "join rooms one at a time") {
		t.Errorf("lurking on every room: got %v", err)
	}
	if _, err := mallory.Subscribe(ctx, DMTopic("alice"), func(*client.Msg) {}); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("reading alice's private messages: got %v", err)
	}
	generic, err := client.Dial(ctx, []string{addr}, client.Options{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	defer generic.Close()
	if _, err := generic.Publish(ctx, RoomTopic("lobby"), []byte(`{}`)); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("a generic client posting in chat: got %v", err)
	}
	alice.send("/join bad.room", "/frobnicate")
	alice.err.waitLine(t, `! bad room "bad.room": 1-32 of A-Z a-z 0-9 _ -, starting with a letter or digit`)
	alice.err.waitLine(t, "! unknown command /frobnicate; /help lists them")
	alice.sync()
	if strings.Contains(alice.out.String(), "mallory") {
		t.Errorf("alice heard from mallory:\n%s", alice.out)
	}
	alice.end()
}

// A client that loses its connection comes back by itself and shows what
// was said while it was away.
func TestReconnectCatchesUp(t *testing.T) {
	h := startHub(t, AppConfig{}, nil)
	addr := h.Addr().String()
	px := startProxy(t, addr)
	alice := startLines(t, px.addr(), "alice", "lobby")
	bob := startLines(t, addr, "bob", "lobby")
	alice.out.waitLine(t, "[lobby] * bob joined")

	px.cut()
	alice.out.waitLine(t, "* connection lost; reconnecting…")
	bob.out.waitLine(t, "[lobby] * alice left")
	bob.send("while you were away")
	bob.out.waitLine(t, "[lobby] bob: while you were away")
	px.restore()
	alice.out.waitFor(t, "alice back", func(s string) bool { return count(s, "* connected to "+px.addr()+" as alice") == 2 })
	alice.out.waitLine(t, "[lobby] bob: while you were away")
	bob.out.waitFor(t, "alice back in lobby", func(s string) bool { return count(s, "[lobby] * alice joined") == 1 })
	bob.send("welcome back")
	alice.out.waitLine(t, "[lobby] bob: welcome back")
	alice.sync()
	if n := count(alice.out.String(), "[lobby] bob: while you were away"); n != 1 {
		t.Errorf("alice saw the missed message %d times", n)
	}
	alice.end()
	bob.end()
}

// Clients ride through a hub restart: they reconnect by themselves, the
// rooms work again, and the history is still there for a newcomer.
func TestHubRestart(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	same := func(c *hub.Config) { c.Addr, c.DataDir = addr, dir }

	h1 := startHub(t, AppConfig{}, same)
	alice := startLines(t, addr, "alice", "lobby")
	bob := startLines(t, addr, "bob", "lobby")
	alice.send("before the restart")
	bob.out.waitLine(t, "[lobby] alice: before the restart")

	h1.stop()
	alice.out.waitLine(t, "* connection lost; reconnecting…")
	bob.out.waitLine(t, "* connection lost; reconnecting…")
	startHub(t, AppConfig{}, same)
	for _, c := range []*lineClient{alice, bob} {
		c.out.waitFor(t, c.name+" back", func(s string) bool { return count(s, "* connected to "+addr+" as "+c.name) == 2 })
	}
	alice.ask(t, "/who", "* in lobby (2): alice, bob")
	bob.send("after the restart")
	alice.out.waitLine(t, "[lobby] bob: after the restart")

	carol := startLines(t, addr, "carol", "lobby")
	carol.out.waitLine(t, "[lobby] alice: before the restart")
	carol.out.waitLine(t, "[lobby] bob: after the restart")
	for _, c := range []*lineClient{alice, bob, carol} {
		c.end()
	}
}
