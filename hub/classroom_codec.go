package hub

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"time"

	"github.com/caps-hub/caps/protocol"
	"github.com/caps-hub/caps/protocol/classroom"
)

// What a classroom connection is sent: bare JSON objects, one per write,
// paced (classroomWriteGap), so that a client doing JSON.parse(chunk) on
// each 'data' event gets whole objects.

// errorPayload is the payload of an "error" object.
type errorPayload struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Fatal   bool   `json:"fatal,omitempty"`
}

func errorObject(code, text string, fatal bool) []byte {
	b, _ := json.Marshal(errorPayload{Code: code, Message: text, Fatal: fatal})
	return classroom.Encode("error", b)
}

func byeObject(reason string) []byte {
	b, _ := json.Marshal(struct {
		Reason string `json:"reason"`
	}{reason})
	return classroom.Encode("bye", b)
}

// sendError tells the client of a refused event (not fatal), and counts it.
func (c *classroomConn) sendError(code, text string) {
	c.s.countError(code)
	c.s.send(errorObject(code, text, false))
}

func (c *classroomConn) notice(code, text string, fatal bool) []byte {
	return errorObject(code, text, fatal)
}

func (c *classroomConn) bye(reason string) []byte { return byeObject(reason) }

// writeBatch writes each object on its own (the write loop calls it with
// what is queued), keeping classroomWriteGap after the previous one, and
// acknowledges the delivery an object carries, if that waits for the write.
func (c *classroomConn) writeBatch(s *Session, batch [][]byte) error {
	for _, b := range batch {
		c.mu.Lock()
		wait := time.Until(c.lastWrite.Add(classroomWriteGap))
		c.mu.Unlock()
		if wait > 0 {
			select {
			case <-time.After(wait):
			case <-s.done: // closing: flush without pauses
			}
		}
		if _, err := s.conn.Write(b); err != nil {
			return err
		}
		c.mu.Lock()
		c.lastWrite = time.Now()
		c.mu.Unlock()
		c.written(b)
	}
	return nil
}

// tcpOf returns the TCP connection under c (plain or TLS), or nil.
func tcpOf(c net.Conn) *net.TCPConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	tc, _ := c.(*net.TCPConn)
	return tc
}

// closeGently lets the peer read a last object before it sees the close:
// closing with unread input pending would reset the connection and could
// discard the object.
func closeGently(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
		_ = tc.SetReadDeadline(time.Now().Add(refuseTimeout))
		_, _ = io.Copy(io.Discard, io.LimitReader(tc, 1<<16))
	}
	_ = c.Close()
}

// deliver renders a delivery as {"event": its event name, "payload": …}. A
// durable one is tracked until it is acknowledged for the client
// (classroom_acks.go).
func (c *classroomConn) deliver(s *Session, m protocol.Frame) bool {
	if len(m.Key) > 0 && bytes.HasPrefix(m.Key, c.self) {
		return true // its own generic event: the classroom hub did not echo
	}
	b := classroom.Encode(c.h.eventName(m.Topic), m.Payload)
	if m.Flags&protocol.FlagAckRequired == 0 {
		return s.send(b)
	}
	untrack, ok := c.track(m, b)
	if !ok {
		return false
	}
	if s.send(b) {
		return true
	}
	untrack()
	return false
}
