package chat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

// Chat from a plain socket: the App serves the hub's text dialect
// (hub.TextApp), so that `nc hub 3000` and `telnet hub 3000` chat as the
// classroom's TCP chat did. A text client is a chat client like any other —
// a name claimed cluster-wide, rooms, presence, history, the same limits —
// named guest-<n> until it renames itself; it types the commands of caps
// chat and of the classroom (commands.go), and reads what `caps chat
// --plain` prints (lines.go).

// TextRole implements hub.TextApp: text clients are chat clients.
func (a *App) TextRole() string { return protocol.RoleChat }

// TextGuest implements hub.TextApp: guest-<n>, n from a counter every hub
// shares. The name is claimed by the connect hook like any chat name; one
// that is held (someone called themselves guest-7) is refused there, and
// the hub asks again.
func (a *App) TextGuest(ctx context.Context, _ int) (string, error) {
	n, err := a.store.nextGuest(ctx)
	if err != nil {
		a.log.Warn("number a guest", "err", err)
		return "", hub.Reject(protocol.CodeUnavailable, "cannot pick a guest name (engine unavailable); retry")
	}
	return fmt.Sprintf("guest-%d", n), nil
}

// TextOpen implements hub.TextApp: it greets the newcomer. Its rooms wait
// for Ready, so that a first line "@nickname carol" renames it before any
// room hears of it.
func (a *App) TextOpen(_ context.Context, t *hub.TextConn) hub.TextHandler {
	u := &textUser{app: a, t: t, rooms: map[string]textRoom{}, lp: linePrinter{history: map[string]bool{}}}
	name := t.Info().Name
	if t.Authenticated() {
		t.Print("* welcome to CAPS chat, "+name,
			"* type a line to talk in "+Lobby+"; @help lists the commands")
	} else {
		t.Print("* welcome to CAPS chat, you are "+name,
			"* type a line to talk in "+Lobby+"; @nickname NAME changes your name; @help lists the commands")
	}
	return u
}

// textUser is a person on a text connection: the user the commands act for
// (commands.go), over the hub's text session.
type textUser struct {
	app *App
	t   *hub.TextConn

	mu      sync.Mutex
	rooms   map[string]textRoom
	order   []string // joined rooms, in joining order
	current string
	dm      uint64      // subscription to private messages (0: none yet)
	lp      linePrinter // guarded by mu: Render runs on the hub's goroutines
}

// textRoom is a joined room's subscriptions.
type textRoom struct{ msgs, presence uint64 }

// Ready subscribes to the user's private messages and joins the lobby.
func (u *textUser) Ready(ctx context.Context) {
	if err := u.subscribeDM(ctx); err != nil {
		u.fail(err)
	}
	if err := u.Join(ctx, Lobby); err != nil {
		u.fail(err)
	}
}

// First reports whether line renames the user: as the first line, it is
// handled before the lobby is joined, so the lobby never hears the guest
// name.
func (u *textUser) First(line string) bool {
	cmd, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	switch strings.ToLower(cmd) {
	case "@nickname", "@nick", "/nick":
		return strings.TrimSpace(rest) != ""
	}
	return false
}

// Line runs one line the user typed.
func (u *textUser) Line(ctx context.Context, line string) (quit bool) {
	if handleText(ctx, u, line) {
		u.info("bye, %s", u.Name())
		return true
	}
	return false
}

// Render shows a delivery as `caps chat --plain` would.
func (u *textUser) Render(topic string, payload []byte, history bool) []string {
	m, err := decode(payload)
	if err != nil {
		return nil
	}
	var e Event
	switch {
	case strings.HasPrefix(topic, roomPrefix):
		e = Event{Kind: EventMessage, Msg: m, History: history}
	case strings.HasPrefix(topic, presencePrefix):
		e = Event{Kind: EventPresence, Msg: m}
	case strings.HasPrefix(topic, dmPrefix):
		e = Event{Kind: EventPrivate, Msg: m}
	default:
		return nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.lp.lines(e, "")
}

func (u *textUser) show(e Event) {
	u.mu.Lock()
	lines := u.lp.lines(e, "")
	u.mu.Unlock()
	u.t.Print(lines...)
}

func (u *textUser) info(format string, args ...any) {
	u.show(Event{Kind: EventInfo, Text: fmt.Sprintf(format, args...)})
}

func (u *textUser) fail(err error) { u.show(Event{Kind: EventError, Text: describe(err)}) }

func (u *textUser) help() string { return textHelp() }

// Name is the user's name now.
func (u *textUser) Name() string { return u.t.Info().Name }

// Current is the room plain lines go to ("" when in none).
func (u *textUser) Current() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.current
}

// Rooms lists the joined rooms in joining order.
func (u *textUser) Rooms() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.order)
}

func (u *textUser) subscribeDM(ctx context.Context) error {
	sid, err := u.t.Subscribe(ctx, DMTopic(u.Name()), 0)
	if err != nil {
		return fmt.Errorf("subscribe to private messages: %w", err)
	}
	u.mu.Lock()
	u.dm = sid
	u.mu.Unlock()
	return nil
}

// Join enters room, with its history, or makes it the current room.
func (u *textUser) Join(ctx context.Context, room string) error {
	if !ValidRoom(room) {
		return fmt.Errorf("bad room %q: %s", room, RoomRule)
	}
	u.mu.Lock()
	_, in := u.rooms[room]
	if in {
		u.current = room
	}
	u.mu.Unlock()
	if in {
		return nil
	}
	// Presence first, then the messages: the subscription the hub counts
	// as membership, whose join the presence subscription then shows.
	presence, err := u.t.Subscribe(ctx, PresenceTopic(room), 0)
	if err != nil {
		return err
	}
	msgs, err := u.t.Subscribe(ctx, RoomTopic(room), u.app.cfg.History)
	if err != nil {
		_ = u.t.Unsubscribe(presence)
		return err
	}
	u.mu.Lock()
	u.rooms[room] = textRoom{msgs: msgs, presence: presence}
	u.order = append(u.order, room)
	u.current = room
	u.mu.Unlock()
	return nil
}

// Leave leaves room; the current room becomes the last one joined.
func (u *textUser) Leave(room string) error {
	u.mu.Lock()
	r, in := u.rooms[room]
	if in {
		delete(u.rooms, room)
		u.order = slices.DeleteFunc(u.order, func(o string) bool { return o == room })
		if u.current == room {
			u.current = ""
			if n := len(u.order); n > 0 {
				u.current = u.order[n-1]
			}
		}
		delete(u.lp.history, room)
	}
	u.mu.Unlock()
	if !in {
		return fmt.Errorf("you are not in %s", room)
	}
	return errors.Join(u.t.Unsubscribe(r.msgs), u.t.Unsubscribe(r.presence))
}

// Say sends text to the current room.
func (u *textUser) Say(ctx context.Context, text string) error {
	return u.post(ctx, u.Current(), KindMsg, text)
}

// SayIn sends text to room.
func (u *textUser) SayIn(ctx context.Context, room, text string) error {
	return u.post(ctx, room, KindMsg, text)
}

// Me sends an action to the current room.
func (u *textUser) Me(ctx context.Context, action string) error {
	return u.post(ctx, u.Current(), KindMe, action)
}

func (u *textUser) post(ctx context.Context, room, kind, text string) error {
	if room == "" {
		return errNoRoom
	}
	m := Message{ID: uuid.NewString(), From: u.Name(), Room: room, Text: text, Kind: kind, Time: time.Now().UTC()}
	return u.publish(ctx, RoomTopic(room), m)
}

// Private sends text to name only, and shows it as sent.
func (u *textUser) Private(ctx context.Context, to, text string) error {
	if !protocol.ValidName(to) {
		return fmt.Errorf("bad name %q", to)
	}
	kind := KindMsg
	if action, ok := strings.CutPrefix(text, "/me "); ok {
		kind, text = KindMe, action
	}
	name := u.Name()
	m := Message{ID: uuid.NewString(), From: name, To: to, Text: text, Kind: kind, Time: time.Now().UTC()}
	if err := u.publish(ctx, DMTopic(to), m); err != nil {
		return err
	}
	if to != name { // to oneself it arrives anyway
		u.show(Event{Kind: EventPrivate, Msg: m, Outgoing: true})
	}
	return nil
}

func (u *textUser) publish(ctx context.Context, topic string, m Message) error {
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return u.t.Publish(ctx, topic, m.ID, body)
}

// Nick renames the user: the name is claimed, the rooms hear the new name
// join and the old one leave (as with caps chat's /nick), and private
// messages follow the new name.
func (u *textUser) Nick(ctx context.Context, name string) error {
	if !protocol.ValidName(name) {
		return fmt.Errorf("bad name %q: 1-32 of A-Z a-z 0-9 _ . -, starting with a letter or digit", name)
	}
	if name == u.Name() {
		return nil
	}
	if u.t.Authenticated() {
		return fmt.Errorf("this hub names you by your token (you are %s); you cannot change that", u.Name())
	}
	if err := u.app.rename(ctx, u.t, name); err != nil {
		return err
	}
	u.mu.Lock()
	old := u.dm
	u.mu.Unlock()
	if old == 0 {
		return nil // not subscribed yet: Ready does it, under the new name
	}
	if err := u.subscribeDM(ctx); err != nil {
		return err
	}
	return u.t.Unsubscribe(old)
}

// Who lists the members of room (the current one when empty).
func (u *textUser) Who(ctx context.Context, room string) (WhoReply, error) {
	var reply WhoReply
	if room == "" {
		room = u.Current()
	}
	if room == "" {
		return reply, errors.New("you are in no room: /who ROOM")
	}
	err := u.request(ctx, ServiceWho, roomRequest{Room: room}, &reply)
	return reply, err
}

// ListRooms lists the rooms that have members.
func (u *textUser) ListRooms(ctx context.Context) (RoomsReply, error) {
	var reply RoomsReply
	err := u.request(ctx, ServiceRooms, struct{}{}, &reply)
	return reply, err
}

func (u *textUser) request(ctx context.Context, service string, req, reply any) error {
	body, _ := json.Marshal(req)
	out, err := u.t.Request(ctx, service, body)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, reply); err != nil {
		return fmt.Errorf("%s: bad reply: %w", service, err)
	}
	return nil
}
