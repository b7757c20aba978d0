package hostile_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caps-hub/caps/internal/chat"
	"github.com/caps-hub/caps/protocol"
)

// The audit of issue 12, item 1: every number or size a client sends
// reaches memory, a loop or the engine only through a bound.

// Before: a client, unauthenticated, could send a HELLO as large as any
// frame (1 MiB) and credentials of any length, hashed and compared. Now
// the handshake is read under a 16 KiB frame limit and a token or resume
// token over its bound is refused before anything is done with it.
func TestHandshakeIsBounded(t *testing.T) {
	tg := startTarget(t, setup{})
	big := dial(t, tg.tcp)
	big.send(&protocol.Frame{Op: protocol.OpHello, Payload: make([]byte, protocol.MaxHelloFrame+1)})
	big.closedWith("a HELLO frame over 16 KiB", protocol.CodeFrameTooLarge)
	for _, hello := range []protocol.Hello{
		{Version: 1, Role: protocol.RoleClient, Name: "t", Token: strings.Repeat("t", protocol.MaxTokenLen+1)},
		{Version: 1, Role: protocol.RoleClient, Name: "r", Resume: strings.Repeat("r", protocol.MaxResumeLen+1)},
	} {
		w := dial(t, tg.tcp)
		b, _ := json.Marshal(hello)
		w.send(&protocol.Frame{Op: protocol.OpHello, Payload: b})
		w.closedWith("over-long credentials", protocol.CodeHandshake)
	}
	// After the handshake, frames up to --max-frame are fine.
	w := dial(t, tg.tcp)
	w.hello(protocol.RoleClient, "ok", "")
	w.ok("a 100 KB publish", w.pub("news.big", "", make([]byte, 100_000)))
}

// Before: every chat.history request left an ordered consumer in the
// engine for five minutes (and read every stored message of the room): a
// client asking in a loop made the engine hold thousands. Now a history
// read uses the hub's bounded reader, and leaves nothing behind.
func TestChatHistoryLeavesNothingBehind(t *testing.T) {
	tg := startTarget(t, setup{})
	w := dial(t, tg.tcp)
	w.hello(protocol.RoleChat, "asker", "")
	w.join("lobby", 0)
	w.ok("a message", w.pubJSON(chat.RoomTopic("lobby"), "m-1", chatMsg("m-1", "asker", "lobby", "hello", nil)))
	for range 20 {
		id := w.id()
		w.send(&protocol.Frame{Op: protocol.OpReq, ID: id, Topic: []byte(chat.ServiceHistory), Payload: []byte(`{"room":"lobby","limit":1000000}`)})
		f := w.until("chat.history", func(f *protocol.Frame) bool {
			return f.ID == id && (f.Op == protocol.OpReply || f.Op == protocol.OpErr)
		})
		var msgs []chat.Message
		if f.Op != protocol.OpReply || json.Unmarshal(f.Payload, &msgs) != nil || len(msgs) != 1 || msgs[0].Text != "hello" {
			t.Fatalf("chat.history: %s", f)
		}
	}
	if v, ok := tg.metric(t, `caps_stream_consumers{stream="CHAT_ROOMS"}`); !ok || v != 0 {
		t.Errorf("20 history requests left %v consumers on CHAT_ROOMS", v)
	}
}
