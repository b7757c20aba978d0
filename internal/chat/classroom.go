package chat

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"golang.org/x/time/rate"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

// The classroom's chat meets the rest in the lobby. Classroom JSON clients
// chat with generic events, which reach the other classroom clients on
// classroom.<event> (docs/PROTOCOL.md); their chat event is "message". The
// chat app bridges it and the lobby, both ways:
//
//   - a classroom client's {"event":"message","payload":P} still reaches
//     the other classroom clients as it was sent, and when P is a line of
//     text — a JSON string, or an object with a string "text" — it is also
//     said in the lobby under the connection's hub-given name:
//     "[lobby] classroom-1a2b3c4d: hi";
//   - whatever is said in the lobby by anyone else (caps chat, the
//     dashboard, nc) reaches classroom clients as
//     {"event":"message","payload":{"from":"alice","text":"hi","kind":"msg"}}
//     ("kind":"me" for an action), once, from one hub of the cluster.
//
// Messages said in the lobby for a classroom client carry an id starting
// with classroomIDPrefix, which is how the second half knows not to send
// them back.

// ClassroomChatEvent is the classroom event the lobby is bridged with.
const ClassroomChatEvent = "message"

// classroomChatTopic is where classroom clients' chat events are published.
const classroomChatTopic = hub.ClassroomTopicPrefix + ClassroomChatEvent

const (
	classroomIDPrefix   = "classroom:"
	classroomBridgeName = "caps-chat-classroom" // the NATS queue group of the bridge, one member per hub
)

// classroomLine is what classroom clients receive for a lobby message.
type classroomLine struct {
	From string `json:"from"`
	Text string `json:"text"`
	Kind string `json:"kind"`
}

// setupClassroomBridge registers both halves of the bridge.
func (a *App) setupClassroomBridge(ctx context.Context, host *hub.Host) error {
	host.OnPublish(classroomChatTopic, a.fromClassroom)
	sub, err := host.NATS().QueueSubscribe(hub.Subject(RoomTopic(Lobby)), classroomBridgeName, a.toClassroom)
	if err != nil {
		return fmt.Errorf("chat: bridge the lobby to classroom clients: %w", err)
	}
	context.AfterFunc(ctx, func() { _ = sub.Unsubscribe() })
	return nil
}

// classroomText is the line of text a classroom chat payload carries: a
// JSON string, or an object's string "text".
func classroomText(payload []byte) (string, bool) {
	var s string
	if json.Unmarshal(payload, &s) == nil {
		return s, true
	}
	var obj struct {
		Text *string `json:"text"`
	}
	if json.Unmarshal(payload, &obj) == nil && obj.Text != nil {
		return *obj.Text, true
	}
	return "", false
}

// fromClassroom is the publish hook of classroom chat events: a classroom
// connection's line of text is also said in the lobby. A payload that is
// not one (no text, too long, control characters) still reaches the
// classroom clients, as any generic event; a client over chat's rate is
// refused.
func (a *App) fromClassroom(ctx context.Context, s hub.SessionInfo, _ string, payload []byte) error {
	if s.Dialect != "classroom" {
		return nil // only a classroom connection's name is the hub's own, unique and its
	}
	text, ok := classroomText(payload)
	if !ok || checkText(text, a.cfg.MaxText) != nil {
		return nil
	}
	if !a.classroomLimiter(s.ID).Allow() {
		return hub.Reject(protocol.CodeRateLimited, fmt.Sprintf("slow down: at most %g messages per second (bursts of %d)", a.cfg.Rate, a.cfg.Burst))
	}
	if held, err := a.store.online(ctx, s.Name); err != nil || held {
		return nil // a chat client calls itself that (or we cannot tell): not in its name
	}
	m := Message{ID: classroomIDPrefix + uuid.NewString(), From: s.Name, Room: Lobby, Text: text, Kind: KindMsg, Time: time.Now().UTC()}
	body, _ := json.Marshal(m)
	if err := a.host.Publish(ctx, RoomTopic(Lobby), body); err != nil {
		a.log.Warn("classroom message to the lobby", "name", s.Name, "err", err)
	}
	return nil
}

// toClassroom passes a lobby message on to the classroom clients (one hub
// of the cluster gets each: the queue group).
func (a *App) toClassroom(msg *nats.Msg) {
	m, err := decode(msg.Data)
	if err != nil || strings.HasPrefix(m.ID, classroomIDPrefix) || (m.Kind != KindMsg && m.Kind != KindMe) {
		return
	}
	body, _ := json.Marshal(classroomLine{From: m.From, Text: m.Text, Kind: m.Kind})
	ctx, cancel := context.WithTimeout(context.Background(), hub.HookTimeout)
	defer cancel()
	if err := a.host.Publish(ctx, classroomChatTopic, body); err != nil {
		a.log.Warn("lobby message to classroom clients", "err", err)
	}
}

// classroomLimiter is the rate limit of a classroom connection's lobby
// lines, as for a chat client's messages; dropped when it disconnects.
func (a *App) classroomLimiter(session string) *rate.Limiter {
	a.mu.Lock()
	defer a.mu.Unlock()
	l := a.classroom[session]
	if l == nil {
		l = rate.NewLimiter(rate.Limit(a.cfg.Rate), a.cfg.Burst)
		a.classroom[session] = l
	}
	return l
}
