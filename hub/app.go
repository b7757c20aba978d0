package hub

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/caps-hub/caps/protocol"
)

// App is an application served by the hub: the parcel dispatcher and chat
// are both Apps. The hub core knows nothing about them; they plug in through
// the Host they are given at start.
type App interface {
	// Setup registers the app's streams, hooks and services. It runs once,
	// after the engine is ready and before the hub accepts connections.
	Setup(ctx context.Context, h *Host) error
}

// SessionInfo describes a connected client to hooks and services.
type SessionInfo struct {
	ID   string `json:"id"`
	Role string `json:"role"`
	Name string `json:"name"`
	// Attrs are the identity's attributes (Identity.Attrs), e.g. a vendor's
	// "store". Do not change the map: it is shared.
	Attrs  map[string]string `json:"attrs,omitempty"`
	Remote string            `json:"remote"`
	Hub    string            `json:"hub"`
	// Dialect is the wire format the client speaks: "caps" (frames),
	// "classroom" (bare JSON objects) or "text" (lines, from nc or telnet).
	Dialect string `json:"dialect"`
	// Transport is how it is connected: "tcp", "tls" or "websocket".
	Transport string    `json:"transport"`
	Since     time.Time `json:"since"`
	// Resume is the id of the session this one resumes: the client showed
	// the resume token that session was given (its WELCOME's), for the
	// same role and name, so an app may hand that session's state (a chat
	// name, room memberships) to this one. Empty otherwise: a session id
	// alone (visible in connection events) resumes nothing.
	Resume string `json:"-"`
}

// Attr returns the attribute key, or "".
func (s SessionInfo) Attr(key string) string { return s.Attrs[key] }

// Hook signatures. Hooks must not keep the payload slice: it is reused.
// Their context ends after HookTimeout (a service's after ServiceTimeout).
type (
	// PublishHook may refuse a client's publish (return a *protocol.Error or
	// any error, reported as "rejected"). It runs before the message is stored.
	PublishHook func(ctx context.Context, s SessionInfo, topic string, payload []byte) error
	// DeliverHook runs before a durable message is handed to a session; an error
	// skips that session for this message.
	DeliverHook func(ctx context.Context, s SessionInfo, topic string, payload []byte) error
	// SubscribeHook may refuse a subscription; it also learns of it (chat presence).
	SubscribeHook func(ctx context.Context, s SessionInfo, pattern string) error
	// UnsubscribeHook learns that a subscription ended (explicitly or by disconnect).
	UnsubscribeHook func(s SessionInfo, pattern string)
	// ConnectHook may refuse a new session (e.g. a chat name already taken).
	ConnectHook func(ctx context.Context, s SessionInfo) error
	// DisconnectHook learns that a session ended.
	DisconnectHook func(s SessionInfo)
	// RequestHandler answers a REQ for a named service.
	RequestHandler func(ctx context.Context, s SessionInfo, payload []byte) ([]byte, error)
)

type patternHook[T any] struct {
	pattern []byte
	fn      T
}

// Host is what an App sees of the hub.
type Host struct {
	h *Hub
}

// Logger returns the hub's logger.
func (x *Host) Logger() *slog.Logger { return x.h.log }

// HubName returns the hub's name.
func (x *Host) HubName() string { return x.h.cfg.Name }

// Heartbeat returns the hub's heartbeat interval (a peer is dead after 2×).
func (x *Host) Heartbeat() time.Duration { return x.h.cfg.Heartbeat }

// Grant adds permissions to a role's defaults.
func (x *Host) Grant(role string, p Permissions) { x.h.policy.grant(role, p) }

// OnIdentify registers a hook that completes every identity before its
// permissions are compiled (IdentifyHook).
func (x *Host) OnIdentify(fn IdentifyHook) { x.h.identifyHooks = append(x.h.identifyHooks, fn) }

// OnPublish registers a hook for client publishes on topics matching pattern.
func (x *Host) OnPublish(pattern string, fn PublishHook) {
	x.h.pubHooks = append(x.h.pubHooks, patternHook[PublishHook]{[]byte(pattern), fn})
}

// OnDeliver registers a hook for durable deliveries on topics matching pattern.
func (x *Host) OnDeliver(pattern string, fn DeliverHook) {
	x.h.deliverHooks = append(x.h.deliverHooks, patternHook[DeliverHook]{[]byte(pattern), fn})
}

// OnSubscribe registers a hook for subscriptions whose pattern lies within pattern.
func (x *Host) OnSubscribe(pattern string, fn SubscribeHook) {
	x.h.subHooks = append(x.h.subHooks, patternHook[SubscribeHook]{[]byte(pattern), fn})
}

// OnUnsubscribe registers a hook for the end of subscriptions within pattern.
func (x *Host) OnUnsubscribe(pattern string, fn UnsubscribeHook) {
	x.h.unsubHooks = append(x.h.unsubHooks, patternHook[UnsubscribeHook]{[]byte(pattern), fn})
}

// OnConnect registers a hook run for every new session after the handshake.
func (x *Host) OnConnect(fn ConnectHook) { x.h.connectHooks = append(x.h.connectHooks, fn) }

// OnDisconnect registers a hook run when a session ends.
func (x *Host) OnDisconnect(fn DisconnectHook) {
	x.h.disconnectHooks = append(x.h.disconnectHooks, fn)
}

// Handle registers the service answering REQ frames whose topic is name.
func (x *Host) Handle(name string, fn RequestHandler) { x.h.services[name] = fn }

// NameEvents sets how topics matching pattern are named in EVENT lines and
// classroom-dialect objects (default: the topic itself).
func (x *Host) NameEvents(pattern string, fn func(topic string) string) {
	x.h.eventNamers = append(x.h.eventNamers, patternHook[func(string) string]{[]byte(pattern), fn})
}

// PrivateEvents keeps topics matching pattern out of the hub's EVENT lines:
// their payloads are for their recipients only (chat's private messages).
// It does not change who may subscribe to them; permissions do that.
func (x *Host) PrivateEvents(pattern string) {
	x.h.privateEvents = append(x.h.privateEvents, []byte(pattern))
}

// Publish publishes as the hub itself (no permission checks, no hooks).
// Stored topics are acknowledged by the engine before it returns.
func (x *Host) Publish(ctx context.Context, topic string, payload []byte) error {
	_, err := x.h.publish(ctx, []byte(topic), nil, payload)
	return err
}

// Sessions lists the sessions connected to this hub.
func (x *Host) Sessions() []SessionInfo { return x.h.sessionInfos() }

type publishKeyCtx struct{}

// PublishKey returns the message id (the PUB frame's key) of the publish a
// PublishHook is examining, or "" when the client gave none. An app uses it
// to tell a client's retry of a publish whose answer it lost (same id, which
// the engine stores only once) from a new publish.
func PublishKey(ctx context.Context) string {
	k, _ := ctx.Value(publishKeyCtx{}).(string)
	return k
}

func withPublishKey(ctx context.Context, key []byte) context.Context {
	if len(key) == 0 {
		return ctx
	}
	return context.WithValue(ctx, publishKeyCtx{}, string(key))
}

// Reject builds the error a hook returns to refuse something with a code.
func Reject(code, text string) error { return &protocol.Error{Code: code, Text: text} }

// errCode extracts an error code for an ERR frame.
func errCode(err error, fallback string) (string, string) {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return pe.Code, pe.Text
	}
	return fallback, err.Error()
}
