package hub

import (
	"bufio"
	"fmt"

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
// Adding a dialect: a serve function (it establishes the session and
// returns its read loop, which serveConn runs), a type implementing dialect
// (and batchWriter if it writes differently), and a case in pickDialect
// saying how its connections are recognised.
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

// A new connection's dialect is told by its first bytes, or by its silence:
//
//   - a byte that can start a CAPS frame the hub accepts — 0x00 for any
//     frame under 16 MiB, the first byte being the high byte of its length
//     — is CAPS frames (caps_dialect.go);
//   - '{' over TCP or TLS, followed (after any white space) by '"' or '}',
//     as every JSON object does: the classroom's JSON objects
//     (classroom.go);
//   - anything else over TCP or TLS, when the text dialect is served: text
//     lines from nc or telnet (text.go) — a letter, '@', '/', a line end, a
//     telnet command (IAC, 0xFF), and '{' followed by anything but '"' or
//     '}' (a person typing "{hello");
//   - anything else, when it is not: CAPS frames, which refuse it;
//   - nothing until the handshake deadline, over TCP or TLS, when the
//     classroom dialect is allowed and an app presumes something of silent
//     classroom clients (the parcel app: they are drivers): the classroom.
//     Should its first bytes, later, be text (a person who waited before
//     typing), it becomes a text connection (classroom_conn.go).
//
// pickDialect peeks at the connection (its read deadline is the handshake
// deadline) and readies it in its dialect: it returns the dialect's read
// loop, or nil when the connection ended, timed out before saying anything
// or was refused (it is answered and closed then).
func (h *Hub) pickDialect(s *Session, br *bufio.Reader) func() error {
	stream := s.info.Transport != transportWebSocket // WebSocket speaks CAPS frames only
	_, err := br.Peek(1)
	switch {
	case err == nil && stream:
		switch h.sniff(br) {
		case dialectClassroom:
			return h.serveClassroom(s, br, false)
		case dialectText:
			return h.serveText(s, br, textDetected)
		default:
			return h.serveCAPS(s, br)
		}
	case err == nil:
		return h.serveCAPS(s, br)
	case isTimeout(err) && stream && h.classroomPresumesSilent():
		// Silent sockets are kept only so many at once: past that, one
		// more is not presumed anything, and clients that speak keep
		// their places.
		if n := h.silent.Add(1); n > int64(h.cfg.ClassroomMaxSilent) {
			h.silent.Add(-1)
			h.metrics.connsRefused.WithLabelValues(limitClassroomSilent).Inc()
			s.countError(protocol.CodeTooManyConns)
			s.writeNow(errorObject(protocol.CodeTooManyConns, fmt.Sprintf("the hub holds %d connections that have sent nothing, the most it keeps (--classroom-max-silent); send something within %s",
				h.cfg.ClassroomMaxSilent, h.cfg.HandshakeTimeout), true))
			closeGently(s.conn)
			return nil
		}
		return h.serveClassroom(s, br, true)
	case isTimeout(err):
		s.countError(protocol.CodeHandshakeTime)
		s.writeNow(protocol.ErrorFrame(0, protocol.CodeHandshakeTime, h.handshakeTimeoutText(), true).Encode())
		s.conn.Close()
	default:
		s.conn.Close()
	}
	return nil
}

// The dialects a connection's first bytes can show.
type dialectKind int

const (
	dialectCAPS dialectKind = iota
	dialectClassroom
	dialectText
)

// sniff tells the dialect of a TCP or TLS connection from its first bytes
// (at least one is buffered).
func (h *Hub) sniff(br *bufio.Reader) dialectKind {
	first, _ := br.Peek(1)
	b := first[0]
	switch {
	case int(b)<<24 <= h.cfg.MaxFrame:
		return dialectCAPS
	case b == '{':
		if !h.textAllowed() || jsonObjectAhead(br) {
			return dialectClassroom
		}
		return dialectText
	case h.textAllowed():
		return dialectText
	}
	return dialectCAPS
}

// jsonObjectAhead reports whether the '{' buffered in br starts a JSON
// object: the next byte other than white space is '"' or '}'. When it
// cannot tell (the client stops there), it says yes: '{' was the
// classroom's sign before there was a text dialect.
func jsonObjectAhead(br *bufio.Reader) bool {
	for n := 2; n <= 64; n++ {
		b, err := br.Peek(n)
		if err != nil {
			return true
		}
		switch b[n-1] {
		case ' ', '\t', '\r', '\n':
			continue
		case '"', '}':
			return true
		}
		return false
	}
	return true
}

// sniffLate tells the dialect of a connection that was silent until the
// handshake deadline and was taken for a classroom client: its first bytes,
// now buffered in br, are a classroom object's unless they are text —
// anything but '{' (not followed by an object's '"' or '}') and blanks.
func (h *Hub) sniffLate(br *bufio.Reader) dialectKind {
	first, _ := br.Peek(1)
	switch first[0] {
	case '{':
		if jsonObjectAhead(br) {
			return dialectClassroom
		}
	case ' ', '\t':
		return dialectClassroom
	}
	return dialectText
}

// handshakeTimeoutText explains a handshake timeout; when people may chat
// with nc or telnet it tells them how.
func (h *Hub) handshakeTimeoutText() string {
	text := "no HELLO within " + h.cfg.HandshakeTimeout.String()
	if h.textAllowed() {
		text += fmt.Sprintf(" (to chat with nc or telnet, type a line within %s of connecting", h.cfg.HandshakeTimeout)
		if a := h.TextAddr(); a != nil {
			text += ", or use the text port " + a.String()
		}
		text += ")"
	}
	return text
}

// Transports, as SessionInfo.Transport names them.
const (
	transportTCP       = "tcp"
	transportTLS       = "tls"
	transportWebSocket = "websocket"
)
