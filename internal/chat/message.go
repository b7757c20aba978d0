// Package chat is the chat application of CAPS: rooms, presence, history
// and private messages on top of the hub core (App, run inside the hub), and
// the chat client (Client, with a line-mode runner and a full-screen
// terminal interface).
//
// Topics:
//
//	chat.room.<room>      room messages, stored (the last N per room are history)
//	chat.presence.<room>  joined/left, published by the hub (live)
//	chat.dm.<name>        private messages to <name> (live, never stored)
//
// Every payload is a JSON Message. The hub accepts from a client only a
// Message as a whole: at most MaxPayload bytes, its documented fields each
// once and spelled exactly, and a From that is the sender's own name.
package chat

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"
)

// Message kinds.
const (
	KindMsg   = "msg"   // an ordinary line of text
	KindMe    = "me"    // an action: "* alice waves"
	KindJoin  = "join"  // presence: someone joined the room
	KindLeave = "leave" // presence: someone left (or dropped)
)

// Message is the payload of every chat topic.
type Message struct {
	ID   string    `json:"id"`
	From string    `json:"from"`
	Room string    `json:"room,omitempty"` // empty for a private message
	To   string    `json:"to,omitempty"`   // recipient of a private message
	Text string    `json:"text,omitempty"`
	Kind string    `json:"kind"`
	Time time.Time `json:"time"`
}

// Topic prefixes.
const (
	roomPrefix     = "chat.room."
	presencePrefix = "chat.presence."
	dmPrefix       = "chat.dm."
)

// Lobby is the room everyone starts in: caps chat's default --room, and
// where a plain-text client is and the classroom's chat meets the rest
// (classroom.go).
const Lobby = "lobby"

// RoomTopic is where a room's messages are published.
func RoomTopic(room string) string { return roomPrefix + room }

// PresenceTopic is where a room's joined/left events are published.
func PresenceTopic(room string) string { return presencePrefix + room }

// DMTopic is where private messages to name are published. Names may
// contain dots, so a DM topic can have more than three tokens.
func DMTopic(name string) string { return dmPrefix + name }

// roomOf returns the room of a room or presence topic.
func roomOf(topic, prefix string) (string, bool) {
	r, ok := strings.CutPrefix(topic, prefix)
	if !ok || !ValidRoom(r) {
		return "", false
	}
	return r, true
}

var roomRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$`)

// ValidRoom reports whether r can be a room name: 1–32 letters, digits,
// '_' or '-', starting with a letter or digit. Rooms are one topic token,
// so unlike user names they may not contain dots.
func ValidRoom(r string) bool { return roomRE.MatchString(r) }

// RoomRule describes ValidRoom for error messages.
const RoomRule = "1-32 of A-Z a-z 0-9 _ -, starting with a letter or digit"

// Limits of a message. MaxIDLen bounds the client-chosen id that is also the
// engine's de-duplication key.
const (
	DefaultMaxText = 2000
	MaxIDLen       = 64
)

// checkText validates a message text: non-blank, valid UTF-8, at most max
// characters, no control characters other than tab (they would let one
// client repaint another's terminal).
func checkText(text string, max int) error {
	if strings.TrimSpace(text) == "" {
		return fmt.Errorf("empty message")
	}
	if !utf8.ValidString(text) {
		return fmt.Errorf("message is not valid UTF-8")
	}
	if n := utf8.RuneCountInString(text); n > max {
		return fmt.Errorf("message is %d characters long; the limit is %d", n, max)
	}
	for _, r := range text {
		if r < 0x20 && r != '\t' || r == 0x7f || r >= 0x80 && r < 0xa0 {
			return fmt.Errorf("message contains control character %U", r)
		}
	}
	return nil
}

// decode parses a Message payload.
func decode(payload []byte) (Message, error) {
	var m Message
	if err := json.Unmarshal(payload, &m); err != nil {
		return m, fmt.Errorf("chat payload is not a JSON message: %w", err)
	}
	return m, nil
}
