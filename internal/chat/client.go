package chat

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/protocol"
)

// ClientConfig configures a chat client.
type ClientConfig struct {
	Hubs    []string // hub addresses, tried in turn
	Name    string
	Room    string // joined at start ("" joins none)
	History int    // messages of history asked for on joining a room (default 50)
	Token   string
	TLS     *tls.Config
	Logger  *slog.Logger
	// ConnectTimeout bounds the first connection (default 10s). Later
	// reconnects go on until Close.
	ConnectTimeout time.Duration
	// RequestTimeout bounds each publish and request (default 10s).
	RequestTimeout time.Duration
	// reconnect backoff, shortened by tests
	reconnectMin, reconnectMax time.Duration
}

// EventKind tells what an Event is.
type EventKind int

const (
	EventMessage  EventKind = iota // a room message (Msg.Kind msg or me)
	EventPresence                  // someone joined or left a room (Msg.Kind join or leave)
	EventPrivate                   // a private message, received or (Outgoing) sent
	EventInfo                      // an answer to a command, for the user
	EventError                     // something failed, for the user
	EventState                     // the connection state changed
)

// Event is something for the user interface to show.
type Event struct {
	Kind     EventKind
	Msg      Message
	History  bool // a room message from before the user joined
	CaughtUp bool // a room message missed while reconnecting
	Outgoing bool // a private message this client sent
	Text     string
	State    client.State
	Hub      string // with EventState: the hub connected to
}

// Client is a chat session: one name on a hub, in any number of rooms.
// Everything it has to show comes out of Events, in order.
type Client struct {
	cfg    ClientConfig
	events chan Event
	done   chan struct{}
	closed sync.Once

	showMu sync.Mutex // see showRoomMessage

	mu      sync.Mutex
	conn    *client.Conn
	gen     int // generation of conn, to ignore callbacks of other connections
	nextGen int
	name    string
	named   bool // the hub names this client by its token: /nick cannot work
	rooms   map[string]*roomSubs
	order   []string // joined rooms, in joining order
	current string
	dm      *client.Subscription
	seen    map[string]*idSet // room ("" for private messages) → recent message ids
	lastSt  client.State
}

type roomSubs struct {
	msgs, presence *client.Subscription
	histShown      bool
}

// NewClient connects to the hub as name and joins cfg.Room. A name that is
// taken comes back as an error wrapping a *protocol.Error with code
// name_taken.
func NewClient(ctx context.Context, cfg ClientConfig) (*Client, error) {
	if cfg.History <= 0 {
		cfg.History = 50
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if !protocol.ValidName(cfg.Name) {
		return nil, fmt.Errorf("bad name %q: 1-32 of A-Z a-z 0-9 _ . -, starting with a letter or digit", cfg.Name)
	}
	if cfg.Room != "" && !ValidRoom(cfg.Room) {
		return nil, fmt.Errorf("bad room %q: %s", cfg.Room, RoomRule)
	}
	c := &Client{
		cfg:    cfg,
		events: make(chan Event, 1024),
		done:   make(chan struct{}),
		rooms:  map[string]*roomSubs{},
		seen:   map[string]*idSet{},
	}
	conn, gen, err := c.dial(ctx, cfg.Name)
	if err != nil {
		return nil, err
	}
	// A hub with authentication names and roles its clients by their token,
	// whatever they asked for.
	w := conn.Welcome()
	if w.Role != "" && w.Role != protocol.RoleChat {
		conn.Close()
		return nil, fmt.Errorf("the hub admits this token as %s %q; chat needs a token for role chat", w.Role, w.Name)
	}
	name := cfg.Name
	if w.Name != "" {
		name = w.Name
	}
	dm, err := c.subscribeDM(ctx, conn, name)
	if err != nil {
		conn.Close()
		return nil, err
	}
	c.mu.Lock()
	c.conn, c.gen, c.name, c.dm = conn, gen, name, dm
	c.named = name != cfg.Name
	c.lastSt = client.StateConnected
	c.mu.Unlock()
	c.emit(Event{Kind: EventState, State: client.StateConnected, Hub: conn.Addr()})
	if cfg.Room != "" {
		if err := c.Join(ctx, cfg.Room); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// Events delivers what the interface has to show. It is never closed; stop
// reading it after Close (see Done).
func (c *Client) Events() <-chan Event { return c.events }

// Done is closed by Close.
func (c *Client) Done() <-chan struct{} { return c.done }

// Name is the current name.
func (c *Client) Name() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.name
}

// Current is the room plain text goes to ("" when in none).
func (c *Client) Current() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.current
}

// Rooms lists the joined rooms in joining order.
func (c *Client) Rooms() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.order)
}

// Hub is the address of the hub connected to.
func (c *Client) Hub() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn.Addr()
}

// Close leaves (by disconnecting: the hub announces it) and ends the client.
func (c *Client) Close() error {
	c.closed.Do(func() {
		close(c.done)
		c.mu.Lock()
		conn := c.conn
		c.gen = -1 // ignore the closing connection's callbacks
		c.mu.Unlock()
		conn.Close()
	})
	return nil
}

func (c *Client) emit(e Event) {
	select {
	case c.events <- e:
	case <-c.done:
	}
}

func (c *Client) info(format string, args ...any) {
	c.emit(Event{Kind: EventInfo, Text: fmt.Sprintf(format, args...)})
}

func (c *Client) fail(err error) { c.emit(Event{Kind: EventError, Text: describe(err)}) }

// describe turns an error into one line for the user: the hub's own words
// when it refused something.
func describe(err error) string {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return pe.Code + ": " + pe.Text
	}
	return err.Error()
}

// dial connects as name. The returned generation identifies the
// connection's callbacks, which are ignored until it becomes c.gen.
func (c *Client) dial(ctx context.Context, name string) (*client.Conn, int, error) {
	c.mu.Lock()
	c.nextGen++
	gen := c.nextGen
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
	defer cancel()
	conn, err := client.Dial(ctx, c.cfg.Hubs, client.Options{
		Role:         protocol.RoleChat,
		Name:         name,
		Token:        c.cfg.Token,
		TLS:          c.cfg.TLS,
		Logger:       c.cfg.Logger,
		ReconnectMin: c.cfg.reconnectMin,
		ReconnectMax: c.cfg.reconnectMax,
		OnState:      func(s client.State) { c.onState(gen, s) },
		OnError:      func(err error) { c.onError(gen, err) },
	})
	if err != nil {
		return nil, 0, fmt.Errorf("connect to %s as %s: %w", strings.Join(c.cfg.Hubs, ","), name, err)
	}
	return conn, gen, nil
}

func (c *Client) onState(gen int, s client.State) {
	c.mu.Lock()
	if gen != c.gen || c.conn == nil {
		c.mu.Unlock()
		return
	}
	prev := c.lastSt
	c.lastSt = s
	conn := c.conn
	rooms := slices.Clone(c.order)
	c.mu.Unlock()
	c.emit(Event{Kind: EventState, State: s, Hub: conn.Addr()})
	if s == client.StateConnected && prev == client.StateReconnecting {
		go c.catchUp(conn, rooms)
	}
}

func (c *Client) onError(gen int, err error) {
	c.mu.Lock()
	cur := gen == c.gen
	c.mu.Unlock()
	if cur {
		c.fail(err)
	}
}

// catchUp asks for the recent messages of every room after a reconnect and
// shows those missed while away (the subscriptions came back live only).
func (c *Client) catchUp(conn *client.Conn, rooms []string) {
	for _, room := range rooms {
		c.fetchRecent(conn, room, Event{CaughtUp: true})
	}
}

// fetchRecent shows the messages of room stored on the hub that this client
// has not shown yet, flagged as in mark.
func (c *Client) fetchRecent(conn *client.Conn, room string, mark Event) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.RequestTimeout)
	defer cancel()
	body, _ := json.Marshal(roomRequest{Room: room, Limit: c.cfg.History})
	reply, err := conn.Request(ctx, ServiceHistory, body)
	if err != nil {
		if !errors.Is(err, client.ErrClosed) {
			c.fail(fmt.Errorf("catching up on %s: %w", room, err))
		}
		return
	}
	var msgs []Message
	if err := json.Unmarshal(reply, &msgs); err != nil {
		c.fail(fmt.Errorf("catching up on %s: %w", room, err))
		return
	}
	for _, m := range msgs {
		e := mark
		e.Kind, e.Msg = EventMessage, m
		c.showRoomMessage(room, e)
	}
}

// showRoomMessage emits a room message unless it was shown already. History,
// live delivery and catch-up may overlap; holding showMu across the check
// and the emit keeps each of them in order.
func (c *Client) showRoomMessage(room string, e Event) {
	c.showMu.Lock()
	defer c.showMu.Unlock()
	if c.firstSight(room, e.Msg.ID) {
		c.emit(e)
	}
}

// firstSight records a message id, reporting whether it is new: history,
// live delivery and catch-up may overlap.
func (c *Client) firstSight(room, id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.seen[room]
	if s == nil {
		s = newIDSet(1024)
		c.seen[room] = s
	}
	return s.add(id)
}

func (c *Client) subscribeDM(ctx context.Context, conn *client.Conn, name string) (*client.Subscription, error) {
	sub, err := conn.Subscribe(ctx, DMTopic(name), func(m *client.Msg) {
		msg, err := decode(m.Payload)
		// Private messages are not stored, so the engine cannot drop the
		// copy of one sent again after a lost connection: drop it here.
		if err != nil || !c.firstSight("", msg.ID) {
			return
		}
		c.emit(Event{Kind: EventPrivate, Msg: msg})
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to private messages: %w", err)
	}
	return sub, nil
}

// subscribeRoom subscribes conn to a room's presence, then its messages
// (the subscription that makes the hub count us in and announce us).
func (c *Client) subscribeRoom(ctx context.Context, conn *client.Conn, room string, history int) (*roomSubs, error) {
	rs := &roomSubs{}
	var err error
	rs.presence, err = conn.Subscribe(ctx, PresenceTopic(room), func(m *client.Msg) {
		msg, err := decode(m.Payload)
		if err != nil || !c.isConn(conn) {
			return // during /nick both connections hear it: show it once
		}
		c.emit(Event{Kind: EventPresence, Msg: msg})
	})
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", room, err)
	}
	var opts []client.SubOpt
	if history > 0 {
		opts = append(opts, client.History(history))
	}
	rs.msgs, err = conn.Subscribe(ctx, RoomTopic(room), func(m *client.Msg) {
		msg, err := decode(m.Payload)
		if err != nil {
			return
		}
		c.showRoomMessage(room, Event{Kind: EventMessage, Msg: msg, History: m.History})
	}, opts...)
	if err != nil {
		_ = rs.presence.Unsubscribe()
		return nil, fmt.Errorf("join %s: %w", room, err)
	}
	return rs, nil
}

func (c *Client) isConn(conn *client.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn == conn
}

// Join enters room (or makes it the current room if already in it).
func (c *Client) Join(ctx context.Context, room string) error {
	if !ValidRoom(room) {
		return fmt.Errorf("bad room %q: %s", room, RoomRule)
	}
	c.mu.Lock()
	if _, in := c.rooms[room]; in {
		c.current = room
		c.mu.Unlock()
		return nil
	}
	conn := c.conn
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	rs, err := c.subscribeRoom(ctx, conn, room, c.cfg.History)
	if err != nil {
		return err
	}
	if c.cfg.History > 0 {
		// The hub replays history and then starts the live feed; a message
		// stored between the two would be in neither. Asking once more now
		// that the feed is live closes that gap (what was shown is skipped).
		c.fetchRecent(conn, room, Event{History: true})
	}
	c.mu.Lock()
	c.rooms[room] = rs
	c.order = append(c.order, room)
	c.current = room
	c.mu.Unlock()
	return nil
}

// Leave leaves room; the current room becomes the last one joined.
func (c *Client) Leave(room string) error {
	c.mu.Lock()
	rs, in := c.rooms[room]
	if !in {
		c.mu.Unlock()
		return fmt.Errorf("you are not in %s", room)
	}
	delete(c.rooms, room)
	c.order = slices.DeleteFunc(c.order, func(r string) bool { return r == room })
	if c.current == room {
		c.current = ""
		if n := len(c.order); n > 0 {
			c.current = c.order[n-1]
		}
	}
	c.mu.Unlock()
	// Messages first: that is the subscription the hub counts as membership.
	_ = rs.msgs.Unsubscribe()
	_ = rs.presence.Unsubscribe()
	return nil
}

// Say sends text to the current room.
func (c *Client) Say(ctx context.Context, text string) error {
	return c.post(ctx, c.Current(), KindMsg, text)
}

// SayIn sends text to room, which need not be the current one.
func (c *Client) SayIn(ctx context.Context, room, text string) error {
	return c.post(ctx, room, KindMsg, text)
}

// Me sends an action ("/me waves") to the current room.
func (c *Client) Me(ctx context.Context, action string) error {
	return c.post(ctx, c.Current(), KindMe, action)
}

func (c *Client) help() string { return Help() }

func (c *Client) post(ctx context.Context, room, kind, text string) error {
	c.mu.Lock()
	name, conn := c.name, c.conn
	c.mu.Unlock()
	if room == "" {
		return errNoRoom
	}
	m := Message{ID: uuid.NewString(), From: name, Room: room, Text: text, Kind: kind, Time: time.Now().UTC()}
	return c.publish(ctx, conn, RoomTopic(room), m)
}

// Private sends text to name only.
func (c *Client) Private(ctx context.Context, to, text string) error {
	if !protocol.ValidName(to) {
		return fmt.Errorf("bad name %q", to)
	}
	c.mu.Lock()
	name, conn := c.name, c.conn
	c.mu.Unlock()
	kind := KindMsg
	if action, ok := strings.CutPrefix(text, "/me "); ok {
		kind, text = KindMe, action
	}
	m := Message{ID: uuid.NewString(), From: name, To: to, Text: text, Kind: kind, Time: time.Now().UTC()}
	if err := c.publish(ctx, conn, DMTopic(to), m); err != nil {
		return err
	}
	if to != name { // to oneself it arrives anyway
		c.emit(Event{Kind: EventPrivate, Msg: m, Outgoing: true})
	}
	return nil
}

func (c *Client) publish(ctx context.Context, conn *client.Conn, topic string, m Message) error {
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	for {
		// The id makes a publish repeated after a lost connection count
		// once: the engine drops the copy if the first one was stored.
		_, err = conn.Publish(ctx, topic, body, client.WithMsgID(m.ID))
		if !errors.Is(err, client.ErrDisconnected) || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) {
			return pe // the hub's refusal says it all
		}
		return err
	}
	return nil
}

// Who lists the members of room (the current one when empty).
func (c *Client) Who(ctx context.Context, room string) (WhoReply, error) {
	var reply WhoReply
	if room == "" {
		room = c.Current()
	}
	if room == "" {
		return reply, errors.New("you are in no room: /who ROOM")
	}
	err := c.request(ctx, ServiceWho, roomRequest{Room: room}, &reply)
	return reply, err
}

// ListRooms lists the rooms that have members, with how many.
func (c *Client) ListRooms(ctx context.Context) (RoomsReply, error) {
	var reply RoomsReply
	err := c.request(ctx, ServiceRooms, struct{}{}, &reply)
	return reply, err
}

func (c *Client) request(ctx context.Context, service string, req, reply any) error {
	body, _ := json.Marshal(req)
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	out, err := conn.Request(ctx, service, body)
	if err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) {
			return pe
		}
		return err
	}
	if err := json.Unmarshal(out, reply); err != nil {
		return fmt.Errorf("%s: bad reply: %w", service, err)
	}
	return nil
}

// Nick changes name: it connects again under the new name (which the hub
// refuses if it is taken, leaving everything as it was), rejoins every room
// there and then drops the old connection. The rooms see the new name join
// and the old one leave.
func (c *Client) Nick(ctx context.Context, name string) error {
	if !protocol.ValidName(name) {
		return fmt.Errorf("bad name %q: 1-32 of A-Z a-z 0-9 _ . -, starting with a letter or digit", name)
	}
	if name == c.Name() {
		return nil
	}
	c.mu.Lock()
	named := c.named
	c.mu.Unlock()
	if named {
		return fmt.Errorf("this hub names you by your token (you are %s); /nick cannot change that", c.Name())
	}
	conn, gen, err := c.dial(ctx, name)
	if err != nil {
		return err
	}
	abort := func(err error) error {
		conn.Close()
		return err
	}
	if w := conn.Welcome(); w.Name != "" && w.Name != name {
		return abort(fmt.Errorf("this hub names you by your token (as %s); /nick cannot change that", w.Name))
	}
	dm, err := c.subscribeDM(ctx, conn, name)
	if err != nil {
		return abort(err)
	}
	rooms := c.Rooms()
	subs := map[string]*roomSubs{}
	for _, room := range rooms {
		// No history: this client has seen the room already.
		rs, err := c.subscribeRoom(ctx, conn, room, 0)
		if err != nil {
			return abort(err)
		}
		subs[room] = rs
	}
	c.mu.Lock()
	old := c.conn
	c.conn, c.gen, c.name, c.dm = conn, gen, name, dm
	c.lastSt = client.StateConnected
	for room, rs := range subs {
		if _, still := c.rooms[room]; still {
			c.rooms[room] = rs
		}
	}
	c.mu.Unlock()
	old.Close()
	c.emit(Event{Kind: EventState, State: client.StateConnected, Hub: conn.Addr()})
	return nil
}

// errNoRoom refuses a message of a user who left every room.
var errNoRoom = errors.New("you are in no room: /join ROOM first")

// idSet remembers the last n ids added.
type idSet struct {
	ids  map[string]struct{}
	ring []string
	next int
}

func newIDSet(n int) *idSet { return &idSet{ids: map[string]struct{}{}, ring: make([]string, n)} }

func (s *idSet) add(id string) bool {
	if _, ok := s.ids[id]; ok {
		return false
	}
	if old := s.ring[s.next]; old != "" {
		delete(s.ids, old)
	}
	s.ring[s.next] = id
	s.next = (s.next + 1) % len(s.ring)
	s.ids[id] = struct{}{}
	return true
}
