package hub

import (
	"context"
	"errors"
	"strings"

	"github.com/caps-hub/caps/protocol"
)

// The text dialect: a person with nc or telnet types lines and reads lines.
// The hub does what is the same for any line-based app — decoding what a
// terminal sends (telnet commands, editing, line ends, UTF-8, bounds),
// identity (a guest name, or a token shown first), pacing, and writing
// lines back — and an app (TextApp, among Config.Apps: chat) says what the
// lines mean and how deliveries read. docs/PROTOCOL.md ("The text
// dialect") describes the behaviour. The files:
//
//   - text.go: what an app implements (TextApp, TextHandler) and the handle
//     it drives the session with (TextConn), over the session API;
//   - text_codec.go: bytes to lines (telnet, BS/DEL, CR LF, UTF-8, length);
//   - text_conn.go: a connection — who it is, its read loop, and what it is
//     sent (the dialect interface).

// TextApp is implemented by an App (found among Config.Apps) that gives
// meaning to the lines of plain-text clients. The first app implementing it
// serves every text connection.
type TextApp interface {
	// TextRole is the role text clients have (with a token, the token's
	// role must be this one).
	TextRole() string
	// TextGuest names a text client that shows no token. attempt counts
	// from 0; it grows when the name was refused as taken by a connect hook
	// (protocol.CodeNameTaken), so that the app picks another.
	TextGuest(ctx context.Context, attempt int) (string, error)
	// TextOpen starts the app's side of an established text session. It
	// runs on the connection's read loop; it may print (the greeting) but
	// should not subscribe yet: that is for TextHandler.Ready, after the
	// client's first line has had its say.
	TextOpen(ctx context.Context, t *TextConn) TextHandler
}

// TextHandler is an app's side of one text connection.
type TextHandler interface {
	// Ready runs once: before the client's first line is handled (after
	// it, when First says so), or when the client has said nothing for a
	// moment (textJoinDelay). The app starts the client's subscriptions
	// here (chat joins the lobby).
	Ready(ctx context.Context)
	// First reports whether the client's first line is to be handled
	// before Ready: a line that changes who the client is (chat:
	// "@nickname carol"), so that it takes effect before anyone hears of
	// the client.
	First(line string) bool
	// Line handles one line the client typed: decoded, edited, valid
	// UTF-8, without its line end (possibly empty). quit: the client asked
	// to leave.
	Line(ctx context.Context, line string) (quit bool)
	// Render turns a delivery on one of the session's subscriptions into
	// the lines to show (none: nothing). It runs on the hub's delivery
	// goroutines, concurrently with Line, and must not block.
	Render(topic string, payload []byte, history bool) []string
}

// TextConn is a text session as its app drives it: the session API in the
// form a line-at-a-time app needs, with the same checks as for any client
// (permissions, hooks, limits). Print and Info may be called from any
// goroutine; the other methods only from TextApp.TextOpen and the
// TextHandler's Ready and Line, which run on the connection's read loop.
type TextConn struct {
	c *textConn
}

// Info describes the session as it stands.
func (t *TextConn) Info() SessionInfo { return t.c.s.infoSnapshot() }

// Authenticated reports whether the client proved its identity with a
// token: its name is then the token's and cannot be changed.
func (t *TextConn) Authenticated() bool { return t.c.s.hello != nil }

// Print sends lines to the client (a line containing newlines is several).
// It never blocks: a client that does not read is cut off as a slow
// consumer.
func (t *TextConn) Print(lines ...string) { t.c.print(lines...) }

// Subscribe subscribes the session to pattern; history > 0 asks a stored
// topic for its last messages first (TextHandler.Render gets them with
// history set). It returns the subscription's id.
func (t *TextConn) Subscribe(ctx context.Context, pattern string, history int) (uint64, error) {
	return t.c.s.subscribe(ctx, subRequest{Pattern: pattern, History: history}, nil)
}

// Unsubscribe ends subscription sid.
func (t *TextConn) Unsubscribe(sid uint64) error { return t.c.s.unsubscribe(sid) }

// Publish publishes payload on topic with message id key and returns once
// the hub has accepted it (a stored topic: once stored) or refused it (a
// *protocol.Error with the code).
func (t *TextConn) Publish(ctx context.Context, topic, key string, payload []byte) error {
	return t.c.publish(ctx, topic, key, payload)
}

// Request asks service and returns its answer.
func (t *TextConn) Request(ctx context.Context, service string, payload []byte) ([]byte, error) {
	return t.c.request(ctx, service, payload)
}

// Rename makes name the session's name, as hooks, permissions and
// deliveries see it from now on. The app that offers renaming keeps its own
// records (chat: the name claim) itself, before and after. A session that
// proved its identity with a token keeps the token's name.
func (t *TextConn) Rename(name string) error {
	if t.Authenticated() {
		return Reject(protocol.CodeForbidden, "you are named by your token ("+t.c.s.info.Name+")")
	}
	return t.c.s.rename(name)
}

// Text modes (Config.Text).
const (
	TextAuto = "auto" // on when an app serves text; with Auth, a token first
	TextOn   = "on"   // as auto, but with Auth a client may also stay a guest
	TextOff  = "off"
)

// textApp returns the app serving text connections, or nil.
func (h *Hub) textApp() TextApp {
	for _, a := range h.cfg.Apps {
		if t, ok := a.(TextApp); ok {
			return t
		}
	}
	return nil
}

// textAllowed reports whether the text dialect is served: not turned off,
// and an app gives lines a meaning.
func (h *Hub) textAllowed() bool { return h.cfg.Text != TextOff && h.textApp() != nil }

// textNeedsToken reports whether a text client must show a token before
// anything else: the hub authenticates, and --text is not "on".
func (h *Hub) textNeedsToken() bool { return h.cfg.Auth != nil && h.cfg.Text != TextOn }

// errTextOff explains why a text port cannot be served.
func (h *Hub) errTextOff() error {
	if h.cfg.Text == TextOff {
		return errors.New("the text dialect is off (--text off)")
	}
	return errors.New("no application serves text clients (chat is not running)")
}

// tokenLine returns the token of a line "@token TOKEN".
func tokenLine(line string) (token string, ok bool) {
	cmd, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	if !strings.EqualFold(cmd, "@token") {
		return "", false
	}
	return strings.TrimSpace(rest), true
}
