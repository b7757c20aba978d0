package hostile_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caps-hub/caps/internal/auth"
	"github.com/caps-hub/caps/internal/chat"
	"github.com/caps-hub/caps/protocol"
)

// chatMsg is a room message as a client writes it, plus whatever an
// attacker adds.
func chatMsg(id, from, room, text string, extra map[string]any) map[string]any {
	m := map[string]any{"id": id, "from": from, "room": room, "text": text, "kind": "msg", "time": time.Now().UTC()}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

// join makes w a member of room (chat role) and returns the sid.
func (w *wire) join(room string, history int) uint64 {
	w.t.Helper()
	var opts *protocol.SubOptions
	if history > 0 {
		opts = &protocol.SubOptions{History: history}
	}
	return w.ok("join "+room, w.sub(chat.RoomTopic(room), opts)).Seq
}

// Before: only a chat message's text was checked, so a message carrying a
// 1 MB field of its own was stored and replayed to every newcomer (15 of
// them grew the rooms' stream from 20 KB to 15 MB in a second). Now a
// payload is checked as a whole — a size bound, and no field a Message
// does not have — and nothing of the attack reaches the disk.
func TestChatPayloadWithExtraFieldRefused(t *testing.T) {
	tg := startTarget(t, setup{})
	alice := dial(t, tg.tcp)
	alice.hello(protocol.RoleChat, "alice", "")
	alice.join("lobby", 0)
	alice.ok("a normal message", alice.pubJSON(chat.RoomTopic("lobby"), "m-1", chatMsg("m-1", "alice", "lobby", "hello", nil)))
	before, _ := tg.metric(t, `caps_stream_bytes{stream="CHAT_ROOMS"}`)

	mallory := dial(t, tg.tcp)
	mallory.hello(protocol.RoleChat, "mallory", "")
	mallory.join("lobby", 0)
	pad := strings.Repeat("x", 1_000_000)
	for i := range 15 {
		id := fmt.Sprintf("pad-%d", i)
		e := mallory.refused("a message with a 1 MB extra field", mallory.pubJSON(chat.RoomTopic("lobby"), id,
			chatMsg(id, "mallory", "lobby", "hi", map[string]any{"pad": pad})), protocol.CodeTooLarge)
		if i == 0 && !strings.Contains(e.Text, "at most") {
			t.Errorf("the refusal does not say the limit: %v", e)
		}
	}
	// Small but not a Message: refused too, naming the field.
	e := mallory.refused("an unknown field", mallory.pubJSON(chat.RoomTopic("lobby"), "x-1",
		chatMsg("x-1", "mallory", "lobby", "hi", map[string]any{"avatar": "https://evil.example/x.png"})), protocol.CodeBadRequest)
	if !strings.Contains(e.Text, `unknown field "avatar"`) {
		t.Errorf("unknown field refused with %q", e.Text)
	}
	// Trailing bytes after the object are not a message either.
	b, _ := json.Marshal(chatMsg("x-2", "mallory", "lobby", "hi", nil))
	mallory.refused("bytes after the JSON object", mallory.pub(chat.RoomTopic("lobby"), "x-2", append(b, []byte(` {"more":1}`)...)), protocol.CodeBadRequest)

	after, _ := tg.metric(t, `caps_stream_bytes{stream="CHAT_ROOMS"}`)
	if after-before > 0 {
		t.Errorf("the rooms' stream grew by %.0f bytes during the attack", after-before)
	}
	if v, _ := tg.metric(t, `caps_errors_total{code="too_large"}`); v != 15 {
		t.Errorf(`caps_errors_total{code="too_large"} = %v, want 15`, v)
	}
	// A newcomer's history holds the one real message, nothing else.
	carol := dial(t, tg.tcp)
	carol.hello(protocol.RoleChat, "carol", "")
	sid := carol.join("lobby", 50)
	f := carol.until("history", func(f *protocol.Frame) bool { return f.Op == protocol.OpMsg && f.ID == sid })
	if f.Flags&protocol.FlagHistory == 0 || !strings.Contains(string(f.Payload), `"hello"`) || len(f.Payload) > 512 {
		t.Errorf("carol's first delivery: %s", f)
	}
	carol.ok("the next message", carol.pubJSON(chat.RoomTopic("lobby"), "c-1", chatMsg("c-1", "carol", "lobby", "after", nil)))
	f = carol.until("carol's own message", func(f *protocol.Frame) bool { return f.Op == protocol.OpMsg && f.ID == sid })
	if !strings.Contains(string(f.Payload), `"after"`) {
		t.Errorf("history held more than the real message; next delivery: %s", f)
	}
}

// Before: an admin token could post chat as anyone (the chat app let admins
// through unchecked), and publish presence events ("alice left") on
// chat.presence.*. And since Go's JSON decoder matches keys without regard
// to case and a browser does not, {"from":"alice","FROM":"mallory"} passed
// as mallory's and showed as alice's. Now the hub decides who said
// something, for every role.
func TestChatSenderCannotBeForged(t *testing.T) {
	withAuth, tok := withTokens(t,
		auth.Entry{Name: "alice", Role: protocol.RoleChat},
		auth.Entry{Name: "mallory", Role: protocol.RoleChat},
		auth.Entry{Name: "ops", Role: protocol.RoleAdmin},
	)
	tg := startTarget(t, setup{hub: withAuth})
	alice := dial(t, tg.tcp)
	alice.hello(protocol.RoleChat, "alice", tok["alice"])
	roomSID := alice.join("lobby", 0)
	presSID := alice.ok("presence", alice.sub(chat.PresenceTopic("lobby"), nil)).Seq
	dmSID := alice.ok("private messages", alice.sub(chat.DMTopic("alice"), nil)).Seq

	ops := dial(t, tg.tcp)
	ops.hello(protocol.RoleAdmin, "ops", tok["ops"])
	room := chat.RoomTopic("lobby")
	e := ops.refused("an admin posting as alice", ops.pubJSON(room, "f-1", chatMsg("f-1", "alice", "lobby", "I quit", nil)), protocol.CodeForbidden)
	if !strings.Contains(e.Text, `you are "ops"`) {
		t.Errorf("refusal: %q", e.Text)
	}
	ops.refused("an admin's private message as mallory", ops.pubJSON(chat.DMTopic("alice"), "f-2",
		map[string]any{"id": "f-2", "from": "mallory", "to": "alice", "text": "psst", "kind": "msg"}), protocol.CodeForbidden)
	ops.refused("an admin forging presence", ops.pubJSON(chat.PresenceTopic("lobby"), "",
		map[string]any{"id": "f-3", "from": "alice", "room": "lobby", "kind": "leave"}), protocol.CodeForbidden)
	ops.refused("an admin forging a join on a room", ops.pubJSON(room, "f-4",
		map[string]any{"id": "f-4", "from": "ops", "room": "lobby", "kind": "join"}), protocol.CodeBadRequest)
	// Under its own name an admin may speak.
	ops.ok("an admin under its own name", ops.pubJSON(room, "ops-1", chatMsg("ops-1", "ops", "lobby", "maintenance at noon", nil)))

	mallory := dial(t, tg.tcp)
	mallory.hello(protocol.RoleChat, "mallory", tok["mallory"])
	mallory.join("lobby", 0)
	e = mallory.refused("from twice, in two cases", mallory.pub(room, "f-5",
		[]byte(`{"id":"f-5","from":"alice","FROM":"mallory","room":"lobby","text":"I quit","kind":"msg"}`)), protocol.CodeBadRequest)
	if !strings.Contains(e.Text, `"FROM"`) {
		t.Errorf("refusal: %q", e.Text)
	}
	mallory.refused("from twice", mallory.pub(room, "f-6",
		[]byte(`{"id":"f-6","from":"alice","room":"lobby","text":"I quit","kind":"msg","from":"mallory"}`)), protocol.CodeBadRequest)
	mallory.ok("mallory as mallory", mallory.pubJSON(room, "end", chatMsg("end", "mallory", "lobby", "the end", nil)))

	// alice heard the admin and mallory under their own names, and nothing forged.
	var heard []string
	alice.until("mallory's last message", func(f *protocol.Frame) bool {
		switch f.ID {
		case roomSID, presSID, dmSID:
		default:
			return false
		}
		if f.Op != protocol.OpMsg {
			return false
		}
		var m chat.Message
		json.Unmarshal(f.Payload, &m)
		heard = append(heard, m.From+":"+m.Kind+":"+m.Text)
		return m.ID == "end"
	})
	for _, h := range heard {
		if strings.Contains(h, "I quit") || strings.Contains(h, "psst") || strings.HasPrefix(h, "alice:leave") {
			t.Errorf("alice heard a forged message: %s (all: %v)", h, heard)
		}
	}
	if !strings.Contains(strings.Join(heard, "\n"), "ops:msg:maintenance at noon") {
		t.Errorf("alice did not hear the admin: %v", heard)
	}
}

// An admin whose name a chat client holds right now may not post under it:
// the room would take it for that client's.
func TestChatAdminCannotUseAHeldName(t *testing.T) {
	tg := startTarget(t, setup{}) // open hub: anyone may claim admin
	alice := dial(t, tg.tcp)
	alice.hello(protocol.RoleChat, "alice", "")
	alice.join("lobby", 0)
	fake := dial(t, tg.tcp)
	fake.hello(protocol.RoleAdmin, "alice", "")
	e := fake.refused("an admin named like an online chat user", fake.pubJSON(chat.RoomTopic("lobby"), "f-1",
		chatMsg("f-1", "alice", "lobby", "I quit", nil)), protocol.CodeForbidden)
	if !strings.Contains(e.Text, "belongs to a chat client") {
		t.Errorf("refusal: %q", e.Text)
	}
}

// Rooms cost presence records while joined, and disk once they have
// messages: one client may be in only so many, and only so many may have
// messages at all. Before, both were unlimited.
func TestChatRoomLimits(t *testing.T) {
	tg := startTarget(t, setup{chat: chat.AppConfig{MaxRoomsPerClient: 3, MaxRooms: 2}})
	bob := dial(t, tg.tcp)
	bob.hello(protocol.RoleChat, "bob", "")
	r1 := bob.join("r1", 0)
	bob.join("r2", 0)
	bob.join("r3", 0)
	e := bob.refused("a fourth room", bob.sub(chat.RoomTopic("r4"), nil), protocol.CodeTooManyRooms)
	if !strings.Contains(e.Text, "leave one first") {
		t.Errorf("refusal: %q", e.Text)
	}
	bob.ok("first room's first message", bob.pubJSON(chat.RoomTopic("r1"), "1", chatMsg("1", "bob", "r1", "one", nil)))
	bob.ok("second room's first message", bob.pubJSON(chat.RoomTopic("r2"), "2", chatMsg("2", "bob", "r2", "two", nil)))
	bob.refused("a third room with messages", bob.pubJSON(chat.RoomTopic("r3"), "3", chatMsg("3", "bob", "r3", "three", nil)), protocol.CodeTooManyRooms)
	bob.ok("an existing room", bob.pubJSON(chat.RoomTopic("r1"), "4", chatMsg("4", "bob", "r1", "again", nil)))

	if v, _ := tg.metric(t, `caps_errors_total{code="too_many_rooms"}`); v != 2 {
		t.Errorf(`caps_errors_total{code="too_many_rooms"} = %v, want 2`, v)
	}
	if v, _ := tg.metric(t, `caps_stream_subjects{stream="CHAT_ROOMS"}`); v != 2 {
		t.Errorf(`caps_stream_subjects{stream="CHAT_ROOMS"} = %v, want 2 (rooms with messages)`, v)
	}
	// Leaving a room frees a place.
	bob.send(&protocol.Frame{Op: protocol.OpUnsub, ID: r1})
	bob.join("r4", 0)
}

// Names and memberships live in a bucket with a byte limit: a crowd of
// made-up names (on an open hub anyone may be any) fills it, then new
// names are refused with store_full while those present carry on.
func TestChatNamesBounded(t *testing.T) {
	tg := startTarget(t, setup{chat: chat.AppConfig{PresenceMaxBytes: 2 << 10}})
	alice := dial(t, tg.tcp)
	alice.hello(protocol.RoleChat, "alice", "")
	alice.join("lobby", 0)
	var refused *protocol.Frame
	for i := 0; i < 100 && refused == nil; i++ {
		w := dial(t, tg.tcp)
		if f := w.helloFrame(protocol.RoleChat, fmt.Sprintf("crowd-%d", i), ""); f.Op == protocol.OpErr {
			refused = f
		}
	}
	if refused == nil || string(refused.Topic) != protocol.CodeStoreFull {
		t.Fatalf("100 names in a 2 KiB bucket: last answer %v, want ERR store_full", refused)
	}
	if v, _ := tg.metric(t, `caps_stream_bytes{stream="KV_CHAT_PRESENCE"}`); v > 2<<10 {
		t.Errorf("the presence bucket holds %v bytes, over its 2048", v)
	}
	alice.ok("a present user posts", alice.pubJSON(chat.RoomTopic("lobby"), "a-1", chatMsg("a-1", "alice", "lobby", "still here", nil)))
}
