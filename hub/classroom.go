package hub

import "github.com/caps-hub/caps/protocol"

// The classroom dialect: a connection whose first byte is '{' speaks bare
// JSON objects {"event":…,"payload":…}, as the Node.js classroom clients
// do. Such a client has no handshake, so the hub infers what it is from
// what it sends, with the help of the apps (ClassroomRouter), and answers
// with the same kind of objects, one per write. docs/PROTOCOL.md
// ("Classroom dialect and WebSocket") describes the behaviour. The files:
//
//   - classroom.go: what an app implements and returns (this file);
//   - classroom_conn.go: a connection's read loop, translating events into
//     the session API;
//   - classroom_codec.go: objects out, one per write, paced;
//   - classroom_acks.go: acknowledging durable deliveries for a client
//     that has no acknowledgements;
//   - classroom_persona.go: what the connection is taken to be, and the
//     grace period, the presumed driver and its probation.

// ClassroomTopicPrefix is where classroom events that no app claims are
// published: "classroom.<event>". Every classroom connection receives that
// namespace (except its own events), as the classroom broadcast hub did.
const ClassroomTopicPrefix = "classroom."

// ClassroomRouter is implemented by an App (found among Config.Apps) that
// gives meaning to classroom events: the parcel app turns "pickup" into a
// vendor's order and makes a silent classroom connection a driver. The hub
// asks each router in turn; the first that handles an event decides.
type ClassroomRouter interface {
	// ClassroomIdle returns the persona of a classroom connection that has
	// sent nothing during the hub's grace period (Config.ClassroomGrace). ok
	// false: this app has none. The hub presumes it, and drops it again when
	// the connection shows it is something else.
	ClassroomIdle() (p ClassroomPersona, ok bool)
	// ClassroomRoute maps an event a classroom client sent. s is the session
	// as it stands (its Role and Attrs are those of its current persona).
	// handled false: not this app's event. An error is sent back as an
	// error object and nothing is published.
	ClassroomRoute(s SessionInfo, event string, payload []byte) (r ClassroomRoute, handled bool, err error)
}

// ClassroomPersona is what a classroom connection is taken to be: the role
// (and attributes) its publishes are checked against, and the
// subscriptions that feed it.
type ClassroomPersona struct {
	Role  string
	Attrs map[string]string
	Subs  []ClassroomSub
}

// ClassroomSub is one subscription of a persona.
type ClassroomSub struct {
	Pattern string
	// Durable names a durable subscription (a JetStream consumer shared with
	// the native clients that use the same name); empty for a live one.
	Durable string
	// DeliverAll: a durable created by this subscription starts at the first
	// stored message, as the native clients of that durable create it (the
	// consumer is created by whoever comes first).
	DeliverAll bool
	// MaxInFlight caps unacknowledged deliveries (0: the hub's default).
	// Classroom clients parse each read as one object, so 1 keeps them from
	// being handed a burst.
	MaxInFlight int
	// AckKey names a durable delivery so that a later event of the client
	// acknowledges it (ClassroomRoute.Settles): a classroom driver's pickup
	// is acknowledged by its in-transit. Deliveries it names "" — or all,
	// when it is nil — are acknowledged once written to the socket: the
	// classroom protocol has no acknowledgements of its own.
	AckKey func(topic string, payload []byte) string
}

// ClassroomRoute says what to do with one classroom event.
type ClassroomRoute struct {
	// Topic to publish on. Permissions and publish hooks apply as for a
	// native client of the persona's role.
	Topic string
	// Key is the message id (de-duplication of stored topics, retries).
	Key string
	// Payload to publish; nil publishes the event's payload as received.
	Payload []byte
	// Persona, when set, is what the connection becomes before publishing.
	Persona *ClassroomPersona
	// Settles acknowledges, once the publish is accepted, the delivery whose
	// AckKey is this.
	Settles string
}

// Classroom modes (Config.Classroom).
const (
	ClassroomAuto = "auto" // on unless the hub authenticates
	ClassroomOn   = "on"
	ClassroomOff  = "off"
)

// classroomAllowed reports whether the classroom dialect is accepted.
func (c *Config) classroomAllowed() bool {
	switch c.Classroom {
	case ClassroomOn:
		return true
	case ClassroomOff:
		return false
	}
	return c.Auth == nil
}

// classroomRefusal explains why a classroom connection is refused.
func (h *Hub) classroomRefusal() string {
	if h.cfg.Classroom == ClassroomOff {
		return "this hub does not accept the classroom dialect (it runs with --classroom=off); use a CAPS client"
	}
	return "this hub runs with authentication, so it does not accept the classroom dialect, which has none; use a CAPS client with a token, or start the hub with --classroom=on"
}

// classroomRouters returns the apps that implement ClassroomRouter.
func (h *Hub) classroomRouters() []ClassroomRouter {
	var out []ClassroomRouter
	for _, a := range h.cfg.Apps {
		if r, ok := a.(ClassroomRouter); ok {
			out = append(out, r)
		}
	}
	return out
}

// classroomIdle returns the persona the first router presumes of silent
// classroom connections.
func (h *Hub) classroomIdle() (ClassroomPersona, bool) {
	for _, r := range h.classroomRouters() {
		if p, ok := r.ClassroomIdle(); ok {
			return p, true
		}
	}
	return ClassroomPersona{}, false
}

// classroomPresumesSilent reports whether a connection that sends nothing
// within the handshake deadline is taken for a classroom client: the
// dialect is allowed and an app presumes something of silent classroom
// connections (the parcel app: they are drivers). Otherwise the deadline
// closes it.
func (h *Hub) classroomPresumesSilent() bool {
	if !h.cfg.classroomAllowed() {
		return false
	}
	_, ok := h.classroomIdle()
	return ok
}

// classroomEventName names classroom.<event> topics <event>.
func classroomEventName(topic string) string { return topic[len(ClassroomTopicPrefix):] }

// setupClassroom registers the hub's own naming of the classroom namespace.
func (h *Hub) setupClassroom(x *Host) {
	x.NameEvents(ClassroomTopicPrefix+">", classroomEventName)
}

// classroomPermissions are the permissions of a persona of role: the
// role's, plus the classroom namespace.
func (h *Hub) classroomPermissions(role string) *Permissions {
	base := *h.policy.of(role)
	ns := ClassroomTopicPrefix + ">"
	base.Publish = append(append([]string(nil), base.Publish...), ns)
	base.Subscribe = append(append([]string(nil), base.Subscribe...), ns)
	return &base
}

// anonymousClassroom is the persona of a classroom connection before it
// shows what it is: a generic client.
func anonymousClassroom() ClassroomPersona { return ClassroomPersona{Role: protocol.RoleClient} }
