package hub

import (
	"bufio"

	"github.com/caps-hub/caps/protocol"
)

// A dialect is one wire format on the client port. Each is a translator in
// two halves:
//
//   - inbound, a loop (its serve function, run by serveConn on the
//     session's read loop) that reads the client's bytes, establishes the
//     session's identity (Session.establish) and turns each operation into
//     a call of the session API (session_api.go): subscribe, unsubscribe,
//     publish, ack, nak, request, reidentify, close. It answers the calls
//     that return (a SUB's OK, an ACK's error) itself, with Session.send;
//   - outbound, the dialect interface below: how the session renders what
//     the hub sends without being asked in that moment — deliveries, the
//     outcome of publishes and requests (which may complete after the call
//     returns), errors, the goodbye of a shutdown.
//
// A dialect never touches the router, the durables or a session's
// subscription tables (TestDialectsUseTheSessionAPI holds the dialect
// files to that). WebSocket is not a dialect but a transport: its
// connections are net.Conns that speak CAPS frames.
//
// Adding a dialect: a serve function and a type implementing dialect (and
// batchWriter if it writes differently), and a case in pickDialect saying
// how its connections are recognised.
type dialect interface {
	// deliver queues m, a MSG for one of the session's subscriptions (m.ID
	// is the sid; m.Flags says whether it awaits an ACK, is a redelivery or
	// history), in the dialect's form. It reports false when the session
	// will not get it (closing, or not for this client after all): a durable
	// delivery is then offered to another member. m's slices are shared and
	// must not be changed or kept beyond the call.
	deliver(s *Session, m protocol.Frame) bool
	// notice renders an error the hub reports unasked; with fatal the
	// session closes after it. nil: nothing to send.
	notice(code, text string, fatal bool) []byte
	// bye renders the goodbye of a hub shutting down (nil: nothing to send).
	bye(reason string) []byte
	// published reports the outcome of Session.publish for the publish the
	// dialect numbered id: the stream sequence (0 for a live topic), or the
	// refusal, a *protocol.Error. It may run on another goroutine than the
	// read loop (a stored publish completing later), so it must be safe for
	// concurrent use, and the publishes of one session may complete in any
	// order.
	published(s *Session, id, seq uint64, err error)
	// replied reports the outcome of Session.request id, on the goroutine
	// that ran the service.
	replied(s *Session, id uint64, service string, reply []byte, err error)
}

// batchWriter is implemented by a dialect that writes its queued
// encodings in its own way (the classroom: one object per write, paced)
// instead of one writev per batch.
type batchWriter interface {
	writeBatch(s *Session, batch [][]byte) error
}

// A new connection's dialect is told by its first byte, or by its silence:
//
//   - '{' over TCP or TLS: the classroom's JSON objects (classroom.go);
//   - nothing until the handshake deadline, over TCP or TLS, when the
//     classroom dialect is allowed and an app presumes something of silent
//     classroom clients (the parcel app: they are drivers): the classroom;
//   - anything else: CAPS frames (caps_dialect.go), whose first byte is the
//     high byte of the frame's length, 0x00 for any frame under 16 MiB.
//
// pickDialect peeks at the connection (its read deadline is the handshake
// deadline) and serves it in its dialect; a connection that ends or times
// out before saying anything is answered and closed here.
func (h *Hub) pickDialect(s *Session, br *bufio.Reader) {
	stream := s.info.Transport != transportWebSocket // WebSocket speaks CAPS frames only
	first, err := br.Peek(1)
	switch {
	case err == nil && stream && first[0] == '{':
		h.serveClassroom(s, br, false)
	case err == nil:
		h.serveCAPS(s, br)
	case isTimeout(err) && stream && h.classroomPresumesSilent():
		h.serveClassroom(s, br, true)
	case isTimeout(err):
		s.countError(protocol.CodeHandshakeTime)
		s.writeNow(protocol.ErrorFrame(0, protocol.CodeHandshakeTime, "no HELLO within "+h.cfg.HandshakeTimeout.String(), true).Encode())
		s.conn.Close()
	default:
		s.conn.Close()
	}
}

// Transports, as SessionInfo.Transport names them.
const (
	transportTCP       = "tcp"
	transportTLS       = "tls"
	transportWebSocket = "websocket"
)
