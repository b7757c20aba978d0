package chat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/protocol"
)

// AppConfig configures the chat application in a hub. Zero values select
// the defaults.
type AppConfig struct {
	// History is how many messages each room keeps (default 50).
	History int
	// MaxText is the longest message, in characters (default 2000).
	MaxText int
	// Rate and Burst limit each chat client's messages (rooms and private
	// together) per second (defaults 5 and 10).
	Rate  float64
	Burst int
	// PresenceTTL is how long a hub that died keeps its users' names and
	// room memberships (default 30s): its records are rewritten every
	// PresenceTTL/3 while it lives.
	PresenceTTL time.Duration

	// Disk and room limits (docs/SECURITY.md). MaxBytes and MaxAge bound
	// the rooms' stored messages (defaults 256 MiB and 30 days; the oldest
	// go first), PresenceMaxBytes the names and memberships (default 64
	// MiB). MaxRooms is how many rooms may have stored messages (default
	// 1000): the first message of one more is refused. MaxRoomsPerClient is
	// how many rooms one chat client may be in at once (default 50).
	MaxBytes          int64
	MaxAge            time.Duration
	PresenceMaxBytes  int64
	MaxRooms          int
	MaxRoomsPerClient int
}

func (c *AppConfig) withDefaults() {
	if c.History <= 0 {
		c.History = 50
	}
	if c.MaxText <= 0 {
		c.MaxText = DefaultMaxText
	}
	if c.Rate <= 0 {
		c.Rate = 5
	}
	if c.Burst <= 0 {
		c.Burst = 10
	}
	if c.PresenceTTL <= 0 {
		c.PresenceTTL = 30 * time.Second
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = 256 << 20
	}
	if c.MaxAge <= 0 {
		c.MaxAge = 30 * 24 * time.Hour
	}
	if c.PresenceMaxBytes <= 0 {
		c.PresenceMaxBytes = 64 << 20
	}
	if c.MaxRooms <= 0 {
		c.MaxRooms = 1000
	}
	if c.MaxRoomsPerClient <= 0 {
		c.MaxRoomsPerClient = 50
	}
}

// presenceRecordMax bounds one presence record (a name, a room, a session
// id, a hub name and a time: a few hundred bytes).
const presenceRecordMax = 4 << 10

// Names of the engine objects chat uses.
const (
	RoomsStream    = "CHAT_ROOMS"
	PresenceBucket = "CHAT_PRESENCE"
)

// Service names (REQ topics).
const (
	ServiceWho     = "chat.who"     // {"room"} → WhoReply
	ServiceRooms   = "chat.rooms"   // {} → RoomsReply
	ServiceHistory = "chat.history" // {"room","limit"} → []Message
)

// WhoReply answers chat.who.
type WhoReply struct {
	Room    string   `json:"room"`
	Members []Member `json:"members"`
}

// Member is one person in a room.
type Member struct {
	Name  string    `json:"name"`
	Hub   string    `json:"hub"`
	Since time.Time `json:"since"`
}

// RoomInfo is one room in a RoomsReply.
type RoomInfo struct {
	Room    string `json:"room"`
	Members int    `json:"members"`
}

// RoomsReply answers chat.rooms.
type RoomsReply struct {
	Rooms []RoomInfo `json:"rooms"`
}

// roomRequest is the body of chat.who and chat.history.
type roomRequest struct {
	Room  string `json:"room"`
	Limit int    `json:"limit,omitempty"`
}

// App is the chat application served by a hub. Create it with NewApp and
// put it in hub.Config.Apps.
type App struct {
	cfg       AppConfig
	host      *hub.Host
	log       *slog.Logger
	store     *presenceStore
	js        jetstream.JetStream
	roomCount *roomCount // rooms with stored messages, against MaxRooms

	mu        sync.Mutex
	sessions  map[string]*chatter      // by session id, this hub's chat clients
	classroom map[string]*rate.Limiter // by session id, classroom clients' lobby lines (classroom.go)
}

// chatter is the state of one local chat session.
type chatter struct {
	mu      sync.Mutex
	info    hub.SessionInfo
	at      time.Time         // when it connected, to tell a refused handshake from a live session
	nameRev uint64            // revision of its name record (0: not written yet)
	rooms   map[string]uint64 // room → revision of its membership record
	limit   *rate.Limiter
	gone    bool
}

// NewApp returns the chat application.
func NewApp(cfg AppConfig) *App {
	cfg.withDefaults()
	return &App{cfg: cfg, sessions: map[string]*chatter{}, classroom: map[string]*rate.Limiter{}}
}

// Setup declares the chat stream and bucket, the permissions of the chat
// role and the hooks and services. It implements hub.App.
func (a *App) Setup(ctx context.Context, host *hub.Host) error {
	a.host = host
	a.log = host.Logger().With("app", "chat")
	a.js = host.JetStream()
	// A room keeps its last History messages; all rooms together keep at
	// most MaxBytes for at most MaxAge, the oldest going first. A message
	// over MaxPayload never reaches the stream (onPublish), and the stream
	// itself refuses one (with its headers) that would.
	if err := host.AddStream(ctx, hub.StreamSpec{
		Name:              RoomsStream,
		Topics:            []string{RoomTopic("*")},
		MaxMsgsPerSubject: int64(a.cfg.History),
		MaxBytes:          a.cfg.MaxBytes,
		MaxAge:            a.cfg.MaxAge,
		MaxMsgSize:        int32(MaxPayload(a.cfg.MaxText) + 1024),
	}); err != nil {
		return fmt.Errorf("chat: %w", err)
	}
	a.roomCount = &roomCount{js: a.js, max: a.cfg.MaxRooms, known: map[string]time.Time{}}
	// Records are rewritten every PresenceTTL/3 while their session lives,
	// so an age limit far above that only ever removes leftovers (delete
	// markers, records of hubs that died).
	kv, err := host.KeyValue(ctx, hub.BucketSpec{
		Bucket:       PresenceBucket,
		TTL:          max(10*a.cfg.PresenceTTL, 5*time.Minute),
		MaxBytes:     a.cfg.PresenceMaxBytes,
		MaxValueSize: presenceRecordMax,
	})
	if err != nil {
		return fmt.Errorf("chat: %w", err)
	}
	a.store = &presenceStore{kv: kv, ttl: a.cfg.PresenceTTL, now: time.Now}

	host.Grant(protocol.RoleChat, hub.Permissions{
		Publish:   []string{RoomTopic("*"), DMTopic(">")},
		Subscribe: []string{RoomTopic("*"), PresenceTopic("*"), DMTopic("{name}")},
	})
	// Private messages are private: loggers (which watch ">") and generic
	// clients do not get them unless an auth file grants it explicitly.
	host.Grant(protocol.RoleLogger, hub.Permissions{DenySubscribe: []string{DMTopic(">")}})
	// Generic clients may not speak in chat: names are unique only among
	// chat clients, so they could pose as someone.
	host.Grant(protocol.RoleClient, hub.Permissions{
		DenySubscribe: []string{DMTopic(">")},
		DenyPublish:   []string{"chat.>"},
	})

	host.PrivateEvents(DMTopic(">"))

	host.OnConnect(a.onConnect)
	host.OnDisconnect(a.onDisconnect)
	host.OnSubscribe(RoomTopic("*"), a.onSubscribe)
	host.OnUnsubscribe(RoomTopic("*"), a.onUnsubscribe)
	// Every client publish under chat. passes onPublish: rooms and private
	// messages are checked there, anything else (presence is the hub's
	// own) is refused, whatever permissions an auth file grants.
	host.OnPublish("chat.>", a.onPublish)
	host.Handle(ServiceWho, a.who)
	host.Handle(ServiceRooms, a.rooms)
	host.Handle(ServiceHistory, a.history)
	if err := a.setupClassroomBridge(ctx, host); err != nil {
		return err
	}

	go a.maintain(ctx)
	return nil
}

func (a *App) chatter(id string) *chatter {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sessions[id]
}

// onConnect claims a chat client's name cluster-wide.
func (a *App) onConnect(ctx context.Context, s hub.SessionInfo) error {
	if s.Role != protocol.RoleChat {
		return nil
	}
	rec := record{Name: s.Name, Session: s.ID, Hub: s.Hub, Since: s.Since}
	rev, _, err := a.store.claim(ctx, nameKey(s.Name), rec, s.Resume, true)
	if errors.Is(err, errTaken) {
		return hub.Reject(protocol.CodeNameTaken, fmt.Sprintf("name %s is in use; choose another with --name", s.Name))
	}
	if engine.IsFull(err) {
		a.log.Warn("chat presence bucket full: new names refused", "name", s.Name, "err", err)
		return hub.Reject(protocol.CodeStoreFull, "the hub holds as many chat names as it may (--chat-presence-max-bytes); retry later")
	}
	if err != nil {
		a.log.Warn("claim chat name", "name", s.Name, "err", err)
		return hub.Reject(protocol.CodeUnavailable, "cannot check that the name is free (engine unavailable); retry")
	}
	a.mu.Lock()
	a.sessions[s.ID] = &chatter{
		info: s, at: time.Now(), nameRev: rev, rooms: map[string]uint64{},
		limit: rate.NewLimiter(rate.Limit(a.cfg.Rate), a.cfg.Burst),
	}
	a.mu.Unlock()
	return nil
}

// rename gives a text client (t) the chat name name: the name is claimed
// cluster-wide, the hub calls the session by it, its room memberships move
// to it — each room hears the new name join and the old one leave, as when
// caps chat's /nick reconnects — and the old name is freed.
func (a *App) rename(ctx context.Context, t *hub.TextConn, name string) error {
	s := t.Info()
	c := a.chatter(s.ID)
	if c == nil {
		return hub.Reject(protocol.CodeInternal, "chat session not registered")
	}
	rev, _, err := a.store.claim(ctx, nameKey(name), record{Name: name, Session: s.ID, Hub: s.Hub, Since: s.Since}, "", true)
	switch {
	case errors.Is(err, errTaken):
		return hub.Reject(protocol.CodeNameTaken, fmt.Sprintf("name %s is in use; choose another", name))
	case engine.IsFull(err):
		return hub.Reject(protocol.CodeStoreFull, "the hub holds as many chat names as it may; retry later")
	case err != nil:
		a.log.Warn("claim chat name", "name", name, "err", err)
		return hub.Reject(protocol.CodeUnavailable, "cannot check that the name is free (engine unavailable); retry")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := t.Rename(name); err != nil {
		a.store.release(ctx, nameKey(name), s.ID, rev)
		return err
	}
	old, oldRev := c.info.Name, c.nameRev
	c.info.Name, c.nameRev = name, rev
	for room, mrev := range c.rooms {
		rec := record{Name: name, Room: room, Session: s.ID, Hub: s.Hub, Since: time.Now().UTC()}
		nrev, _, err := a.store.claim(ctx, memberKey(room, name), rec, "", false)
		if err != nil {
			a.log.Warn("record room membership", "room", room, "name", name, "err", err) // the maintenance loop writes it later
		}
		c.rooms[room] = nrev
		a.announce(ctx, room, name, KindJoin)
		a.store.release(ctx, memberKey(room, old), s.ID, mrev)
		a.announce(ctx, room, old, KindLeave)
	}
	a.store.release(ctx, nameKey(old), s.ID, oldRev)
	return nil
}

// onDisconnect frees the name. The hub has already ended the session's
// subscriptions, so its rooms have been left (and announced) by now.
func (a *App) onDisconnect(s hub.SessionInfo) {
	if s.Role != protocol.RoleChat {
		a.mu.Lock()
		delete(a.classroom, s.ID)
		a.mu.Unlock()
		return
	}
	a.mu.Lock()
	c := a.sessions[s.ID]
	delete(a.sessions, s.ID)
	a.mu.Unlock()
	if c == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gone = true
	for room, rev := range c.rooms { // normally none left
		a.leaveLocked(ctx, c, room, rev)
	}
	a.store.release(ctx, nameKey(s.Name), s.ID, c.nameRev)
}

// onSubscribe makes a chat client a member of the room it subscribes to,
// and tells the room.
func (a *App) onSubscribe(ctx context.Context, s hub.SessionInfo, pattern string) error {
	if s.Role != protocol.RoleChat {
		return nil
	}
	room, ok := roomOf(pattern, roomPrefix)
	if !ok {
		return hub.Reject(protocol.CodeBadTopic, fmt.Sprintf("join rooms one at a time by name (%s<room>, room: %s)", roomPrefix, RoomRule))
	}
	c := a.chatter(s.ID)
	if c == nil {
		return hub.Reject(protocol.CodeInternal, "chat session not registered")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, in := c.rooms[room]; in || c.gone {
		return nil // a second SUB to the same room: still one membership
	}
	if len(c.rooms) >= a.cfg.MaxRoomsPerClient {
		return hub.Reject(protocol.CodeTooManyRooms, fmt.Sprintf("you are in %d rooms, the most one client may be in; leave one first", len(c.rooms)))
	}
	rec := record{Name: s.Name, Room: room, Session: s.ID, Hub: s.Hub, Since: time.Now().UTC()}
	rev, resumed, err := a.store.claim(ctx, memberKey(room, s.Name), rec, s.Resume, false)
	if err != nil {
		// Still a member here; the maintenance loop writes the record later.
		a.log.Warn("record room membership", "room", room, "name", s.Name, "err", err)
	}
	c.rooms[room] = rev
	if !resumed {
		a.announce(ctx, room, s.Name, KindJoin)
	}
	return nil
}

// onUnsubscribe ends a membership (an explicit /leave, or the end of the
// session however it ended) and tells the room.
func (a *App) onUnsubscribe(s hub.SessionInfo, pattern string) {
	if s.Role != protocol.RoleChat {
		return
	}
	room, ok := roomOf(pattern, roomPrefix)
	if !ok {
		return
	}
	c := a.chatter(s.ID)
	if c == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	rev, in := c.rooms[room]
	if !in {
		return
	}
	a.leaveLocked(ctx, c, room, rev)
}

// leaveLocked removes c from room and announces it, unless the record now
// belongs to a newer session of the same client (a reconnect that the
// room should not hear about).
func (a *App) leaveLocked(ctx context.Context, c *chatter, room string, rev uint64) {
	delete(c.rooms, room)
	if a.store.release(ctx, memberKey(room, c.info.Name), c.info.ID, rev) {
		a.announce(ctx, room, c.info.Name, KindLeave)
		return
	}
	// Taken over by the client's next session (a reconnect): stay quiet.
	// Missing (its write failed while the engine was away): still say so.
	if _, _, err := a.store.get(ctx, memberKey(room, c.info.Name)); errors.Is(err, jetstream.ErrKeyNotFound) {
		a.announce(ctx, room, c.info.Name, KindLeave)
	}
}

// announce publishes a presence event so that the room and every logger
// hear of it, on every hub.
func (a *App) announce(ctx context.Context, room, name, kind string) {
	b, _ := json.Marshal(Message{ID: uuid.NewString(), From: name, Room: room, Kind: kind, Time: time.Now().UTC()})
	if err := a.host.Publish(ctx, PresenceTopic(room), b); err != nil {
		a.log.Warn("announce presence", "room", room, "name", name, "kind", kind, "err", err)
	}
}

// onPublish checks a client's publish under chat.: who may send it, that
// it is a well-formed Message and nothing more, that it says truthfully
// who sent it (for every role: the hub, not the client, decides who said
// something), and the room, size and rate limits.
func (a *App) onPublish(ctx context.Context, s hub.SessionInfo, topic string, payload []byte) error {
	room, isRoom := roomOf(topic, roomPrefix)
	to, isDM := strings.CutPrefix(topic, dmPrefix)
	if !isRoom && !isDM {
		return hub.Reject(protocol.CodeForbidden, fmt.Sprintf("%s is not a chat topic clients publish on: rooms are %s<room>, private messages %s<name>", topic, roomPrefix, dmPrefix))
	}
	var c *chatter
	switch s.Role {
	case protocol.RoleChat:
		if c = a.chatter(s.ID); c == nil {
			return hub.Reject(protocol.CodeInternal, "chat session not registered")
		}
	case protocol.RoleAdmin:
		// An operator may speak anywhere, under its own name only — and not
		// under a name a chat client holds now.
	default:
		return hub.Reject(protocol.CodeForbidden, "only chat clients (role chat) may post chat messages")
	}
	m, err := decodeStrict(payload, MaxPayload(a.cfg.MaxText))
	if errors.Is(err, errTooLarge) {
		return hub.Reject(protocol.CodeTooLarge, err.Error())
	}
	if err != nil {
		return hub.Reject(protocol.CodeBadRequest, err.Error())
	}
	if m.From != s.Name {
		return hub.Reject(protocol.CodeForbidden, fmt.Sprintf("message says it is from %q but you are %q", m.From, s.Name))
	}
	if m.Kind != KindMsg && m.Kind != KindMe {
		return hub.Reject(protocol.CodeBadRequest, fmt.Sprintf("kind %q: clients send %q or %q", m.Kind, KindMsg, KindMe))
	}
	if m.ID == "" || len(m.ID) > MaxIDLen {
		return hub.Reject(protocol.CodeBadRequest, fmt.Sprintf("a message needs an id of 1-%d bytes", MaxIDLen))
	}
	if err := checkText(m.Text, a.cfg.MaxText); err != nil {
		return hub.Reject(protocol.CodeBadRequest, err.Error())
	}
	if isRoom {
		if m.Room != room || m.To != "" {
			return hub.Reject(protocol.CodeBadRequest, fmt.Sprintf("message for room %q published on %s", m.Room, topic))
		}
		if c != nil {
			c.mu.Lock()
			_, in := c.rooms[room]
			c.mu.Unlock()
			if !in {
				return hub.Reject(protocol.CodeForbidden, fmt.Sprintf("you are not in room %s; /join %s first", room, room))
			}
		}
	} else if !protocol.ValidName(to) || m.To != to || m.Room != "" {
		return hub.Reject(protocol.CodeBadRequest, fmt.Sprintf("private message for %q published on %s", m.To, topic))
	}
	if c != nil && !c.limit.Allow() {
		return hub.Reject(protocol.CodeRateLimited, fmt.Sprintf("slow down: at most %g messages per second (bursts of %d)", a.cfg.Rate, a.cfg.Burst))
	}
	if c == nil {
		held, err := a.store.online(ctx, s.Name)
		if err != nil {
			return hub.Reject(protocol.CodeUnavailable, "cannot check who holds the name (engine unavailable); retry")
		}
		if held {
			return hub.Reject(protocol.CodeForbidden, fmt.Sprintf("the chat name %q belongs to a chat client now; an admin speaks under a name of its own", s.Name))
		}
	}
	if isRoom {
		if err := a.roomCount.admit(ctx, room); err != nil {
			return err
		}
		return nil
	}
	on, err := a.store.online(ctx, to)
	if err != nil {
		return hub.Reject(protocol.CodeUnavailable, "cannot look the recipient up (engine unavailable); retry")
	}
	if !on {
		return hub.Reject(protocol.CodeNotFound, fmt.Sprintf("%s is not online", to))
	}
	return nil
}

// who answers chat.who: the members of a room, on every hub.
func (a *App) who(ctx context.Context, _ hub.SessionInfo, payload []byte) ([]byte, error) {
	var req roomRequest
	if err := json.Unmarshal(payload, &req); err != nil || !ValidRoom(req.Room) {
		return nil, hub.Reject(protocol.CodeBadRequest, `chat.who wants {"room":"<room>"}, room: `+RoomRule)
	}
	recs, err := a.store.members(ctx, req.Room)
	if err != nil {
		return nil, hub.Reject(protocol.CodeUnavailable, err.Error())
	}
	reply := WhoReply{Room: req.Room, Members: make([]Member, 0, len(recs))}
	for _, r := range recs {
		reply.Members = append(reply.Members, Member{Name: r.Name, Hub: r.Hub, Since: r.Since})
	}
	slices.SortFunc(reply.Members, func(x, y Member) int { return strings.Compare(x.Name, y.Name) })
	return json.Marshal(reply)
}

// rooms answers chat.rooms: every room with members, and how many.
func (a *App) rooms(ctx context.Context, _ hub.SessionInfo, _ []byte) ([]byte, error) {
	es, err := a.store.list(ctx, "room.>")
	if err != nil {
		return nil, hub.Reject(protocol.CodeUnavailable, err.Error())
	}
	count := map[string]int{}
	for _, e := range es {
		if !e.old && e.rec.Room != "" {
			count[e.rec.Room]++
		}
	}
	reply := RoomsReply{Rooms: make([]RoomInfo, 0, len(count))}
	for r, n := range count {
		reply.Rooms = append(reply.Rooms, RoomInfo{Room: r, Members: n})
	}
	slices.SortFunc(reply.Rooms, func(x, y RoomInfo) int { return strings.Compare(x.Room, y.Room) })
	return json.Marshal(reply)
}

// history answers chat.history: the last messages of a room the asker is
// in. Clients use it to catch up after a reconnect.
func (a *App) history(ctx context.Context, s hub.SessionInfo, payload []byte) ([]byte, error) {
	var req roomRequest
	if err := json.Unmarshal(payload, &req); err != nil || !ValidRoom(req.Room) {
		return nil, hub.Reject(protocol.CodeBadRequest, `chat.history wants {"room":"<room>","limit":N}, room: `+RoomRule)
	}
	if s.Role != protocol.RoleAdmin {
		c := a.chatter(s.ID)
		in := false
		if c != nil {
			c.mu.Lock()
			_, in = c.rooms[req.Room]
			c.mu.Unlock()
		}
		if !in {
			return nil, hub.Reject(protocol.CodeForbidden, fmt.Sprintf("join %s to read its history", req.Room))
		}
	}
	limit := req.Limit
	if limit <= 0 || limit > a.cfg.History {
		limit = a.cfg.History
	}
	msgs, err := a.lastMessages(ctx, req.Room, limit)
	if err != nil {
		return nil, hub.Reject(protocol.CodeUnavailable, err.Error())
	}
	return json.Marshal(msgs)
}

// lastMessages reads up to limit of a room's stored messages, oldest
// first: the hub's bounded reader (a request does not leave a consumer
// behind in the engine, and reads at most twice limit messages).
func (a *App) lastMessages(ctx context.Context, room string, limit int) ([]Message, error) {
	stored, err := a.host.LastMessages(ctx, RoomTopic(room), limit)
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", room, err)
	}
	out := make([]Message, 0, len(stored))
	for _, m := range stored {
		if msg, err := decode(m.Data()); err == nil {
			out = append(out, msg)
		}
	}
	return out, nil
}

// maintain keeps this hub's records fresh, drops the state of sessions
// that never got going (refused by another app's connect hook), and sweeps
// away the records of hubs that died, announcing their users' departure.
func (a *App) maintain(ctx context.Context) {
	every := a.cfg.PresenceTTL / 3
	t := time.NewTicker(every)
	defer t.Stop()
	// Sweep at once: a hub restarting after a crash cleans up after itself
	// as soon as its old records are stale.
	a.sweep(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.refresh(ctx, every)
		a.sweep(ctx)
	}
}

// orphanAfter is how long after its connect hook a session must be listed
// by the hub: the hub lists it as soon as it has written WELCOME.
const orphanAfter = 10 * time.Second

func (a *App) refresh(ctx context.Context, timeout time.Duration) {
	live := map[string]bool{}
	for _, s := range a.host.Sessions() {
		live[s.ID] = true
	}
	a.mu.Lock()
	cs := make([]*chatter, 0, len(a.sessions))
	for id, c := range a.sessions {
		if !live[id] && time.Since(c.at) > orphanAfter {
			// Its handshake was refused after our hook ran: no disconnect will come.
			delete(a.sessions, id)
			go a.onDisconnectOrphan(c)
			continue
		}
		cs = append(cs, c)
	}
	a.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, c := range cs {
		c.mu.Lock()
		if c.gone {
			c.mu.Unlock()
			continue
		}
		s := c.info
		rec := record{Name: s.Name, Session: s.ID, Hub: s.Hub, Since: s.Since}
		if rev, err := a.store.refresh(ctx, nameKey(s.Name), rec, c.nameRev); err == nil {
			c.nameRev = rev
		} else if !errors.Is(err, context.Canceled) {
			a.log.Warn("refresh chat name", "name", s.Name, "err", err)
		}
		for room, rev := range c.rooms {
			rec := record{Name: s.Name, Room: room, Session: s.ID, Hub: s.Hub, Since: s.Since}
			nrev, err := a.store.refresh(ctx, memberKey(room, s.Name), rec, rev)
			if err == nil {
				c.rooms[room] = nrev
			} else if !errors.Is(err, context.Canceled) {
				a.log.Warn("refresh room membership", "room", room, "name", s.Name, "err", err)
			}
		}
		c.mu.Unlock()
	}
}

// onDisconnectOrphan releases the records of a session the hub never ran.
func (a *App) onDisconnectOrphan(c *chatter) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gone = true
	a.store.release(ctx, nameKey(c.info.Name), c.info.ID, c.nameRev)
}

func (a *App) sweep(ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	gone, err := a.store.sweep(sctx)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("sweep chat presence", "err", err)
		}
		return
	}
	for _, r := range gone {
		a.log.Info("chat member dropped with its hub", "room", r.Room, "name", r.Name, "hub", r.Hub)
		a.announce(sctx, r.Room, r.Name, KindLeave)
	}
}
