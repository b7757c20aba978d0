package hub

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/caps-hub/caps/protocol"
	"github.com/caps-hub/caps/protocol/classroom"
)

// classroomMaxErrors malformed objects in a row mean the peer does not
// speak the dialect: the hub closes the connection.
const classroomMaxErrors = 16

// classroomConn is a classroom connection: the dialect's state beside its
// Session, which it drives through the session API.
type classroomConn struct {
	h       *Hub
	s       *Session
	self    []byte // message-id prefix of this connection's own generic events
	routers []ClassroomRouter
	idle    ClassroomPersona // what a silent connection is presumed to be
	hasIdle bool

	// Read loop only.
	held    map[personaKey]uint64 // the persona's subscriptions → sid
	nextKey uint64
	toText  bool // its first bytes were text: a text session takes the connection over

	// mu guards what deliveries and the write loop share with the read
	// loop. It is never held while calling the session API: deliveries of
	// durables come in under the durable's lock and take mu.
	mu       sync.Mutex
	durable  map[uint64]*ClassroomSub // the persona's durable subscriptions, by sid
	acks     classroomAcks
	presumed bool      // the persona is the apps' guess, not shown by the client
	graceEnd time.Time // zero once the grace period is over
	// silentEnd is when a connection that has sent nothing is closed
	// (Config.ClassroomSilentTimeout); zero once it has spoken. While it
	// is set, the connection holds one of Hub.silent's places.
	silentEnd time.Time
	lastWrite time.Time
	pubs      map[uint64]classroomPub // publishes awaiting their outcome
}

// classroomPub is what the outcome of a publish must know of its event.
type classroomPub struct {
	event   string
	settles string
}

// serveClassroom readies a classroom connection — from its first byte,
// '{', or, silent is true, after it has said nothing for the handshake
// deadline (it then holds a place among the silent ones, Hub.silent, which
// it gives back when it speaks or ends) — and returns its read loop (nil if
// it was refused, and closed).
func (h *Hub) serveClassroom(s *Session, br *bufio.Reader, silent bool) func() error {
	conn := s.conn
	if !h.cfg.classroomAllowed() {
		if silent {
			h.silent.Add(-1)
		}
		s.countError(protocol.CodeClassroomDisabled)
		s.writeNow(errorObject(protocol.CodeClassroomDisabled, h.classroomRefusal(), true))
		closeGently(conn)
		return nil
	}
	if tc := tcpOf(conn); tc != nil {
		// One object per write, sent at once: a classroom client parses each
		// read on its own. Classroom clients send no heartbeats, so dead peers
		// are found by TCP keepalive instead.
		_ = tc.SetNoDelay(true)
		_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: h.cfg.Heartbeat, Interval: h.cfg.Heartbeat / 2, Count: 4})
	}
	_ = conn.SetReadDeadline(time.Time{})

	c := &classroomConn{
		h: h, s: s,
		routers: h.classroomRouters(),
		held:    map[personaKey]uint64{},
		durable: map[uint64]*ClassroomSub{},
		acks:    classroomAcks{pending: map[string]ackRef{}, onWrite: map[*byte]ackRef{}},
		pubs:    map[uint64]classroomPub{},
	}
	c.idle, c.hasIdle = h.classroomIdle()
	if silent {
		// The place pickDialect took for it, given back when it speaks or
		// ends (spoke, at the latest when the read loop returns).
		c.silentEnd = time.Unix(0, s.lastRecv.Load()).Add(h.cfg.ClassroomSilentTimeout)
	}
	s.dialect, s.native, s.writer, s.heartbeats, s.pipelines = c, false, c, false, false
	s.info.Dialect = "classroom"

	// Unique across the hubs of a cluster: the parcel app tells drivers
	// apart by name.
	id := make([]byte, 4)
	_, _ = rand.Read(id)
	name := fmt.Sprintf("classroom-%x", id)
	anon := anonymousClassroom()
	if err := s.establish(Identity{Role: anon.Role, Name: name, Perms: h.classroomPermissions(anon.Role)}, ""); err != nil {
		code, text := errCode(err, protocol.CodeForbidden)
		s.countError(code)
		s.writeNow(errorObject(code, text, true))
		closeGently(conn)
		if silent {
			c.spoke()
		}
		return nil
	}
	c.self = []byte(s.info.ID + ".")

	return func() error {
		if silent {
			defer c.spoke()
		}
		if _, err := s.subscribe(s.ctx, subRequest{Pattern: ClassroomTopicPrefix + ">"}, nil); err != nil {
			s.fail(codeOf(err), err.Error())
			return err
		}
		if silent {
			c.startGrace()
		}
		if silent && h.textAllowed() {
			if err := c.awaitFirstBytes(br); err != nil {
				if c.toText {
					return c.switchToText(br, err)
				}
				return err
			}
		}
		return c.readLoop(br)
	}
}

// errToText ends the classroom session of a connection whose first bytes
// are text.
var errToText = errors.New("the connection speaks text, not classroom JSON")

// switchToText ends the classroom session (as if it disconnected: what it
// held goes to someone else) and hands its connection to a new, text
// session (serveConnAs runs it next).
func (c *classroomConn) switchToText(br *bufio.Reader, reason error) error {
	h, conn, transport := c.h, c.s.conn, c.s.info.Transport
	return &dialectSwitch{reason: reason, next: func() (*Session, func() error) {
		if h.stopping.Load() {
			_ = conn.Close()
			return nil, nil
		}
		ts := h.newSession(conn, transport)
		_ = conn.SetReadDeadline(time.Now().Add(h.cfg.HandshakeTimeout))
		return h.startSession(ts, h.serveText(ts, br, textDetected))
	}}
}

// awaitFirstBytes waits, with the dialect's timers running, for the first
// bytes of a connection taken for a classroom client because it was silent.
// A person who connected and waited before typing was silent too: if those
// bytes are text, the session ends (anything it was handed goes back at
// once) and the connection goes on as a text one (switchToText).
func (c *classroomConn) awaitFirstBytes(br *bufio.Reader) error {
	for {
		_, err := br.Peek(1)
		switch {
		case isTimeout(err):
			c.timer()
			continue
		case err != nil:
			return err
		}
		if c.h.sniffLate(br) != dialectText {
			return nil
		}
		c.h.log.Debug("classroom: a silent connection speaks text", "session", c.s.info.ID)
		c.toText = true
		c.s.handOver()
		return errToText
	}
}

// readLoop decodes objects until the connection ends.
func (c *classroomConn) readLoop(r io.Reader) error {
	s := c.s
	dec := classroom.NewDecoder(r, c.h.cfg.MaxFrame)
	bad := 0
	malformed := func(code, text string, err error) error {
		if bad++; bad >= classroomMaxErrors {
			s.fail(protocol.CodeBadFrame, fmt.Sprintf("%d malformed objects in a row: this is not the classroom dialect; closing", bad))
			return err
		}
		c.sendError(code, text)
		return nil
	}
	for {
		raw, err := dec.Next()
		if err != nil {
			var ce *classroom.Error
			switch {
			case isTimeout(err):
				c.timer()
				continue
			case errors.As(err, &ce):
				if err := malformed(protocol.CodeBadFrame, ce.Error(), err); err != nil {
					return err
				}
				continue
			case errors.Is(err, classroom.ErrUnsynced):
				s.fail(protocol.CodeBadFrame, err.Error())
				return err
			}
			return err // the connection ended
		}
		s.lastRecv.Store(time.Now().UnixNano())
		c.h.metrics.framesIn.Inc()
		c.h.metrics.bytesIn.Add(float64(len(raw)))
		obj, err := classroom.Parse(raw)
		if err != nil {
			if err := malformed(protocol.CodeBadRequest, err.Error(), err); err != nil {
				return err
			}
			continue
		}
		bad = 0
		c.spoke()
		c.event(obj)
	}
}

// event routes one event from the client: the apps say what it means, the
// persona may change, and it is published through the session API.
func (c *classroomConn) event(obj classroom.Object) {
	s := c.s
	// The rate limit comes first: routing may change the persona, which
	// costs engine calls.
	if err := s.allow(); err != nil {
		c.sendError(codeOf(err), err.Error())
		return
	}
	var route ClassroomRoute
	handled := false
	for _, r := range c.routers {
		err := c.h.contain(inClassroomRoute, func() (err error) {
			route, handled, err = r.ClassroomRoute(s.info, obj.Event, obj.Payload)
			return err
		})
		if err != nil {
			code, text := errCode(err, protocol.CodeRejected)
			c.sendError(code, fmt.Sprintf("%s: %s", obj.Event, text))
			return
		}
		if handled {
			break
		}
	}
	if !handled {
		c.nextKey++
		route = ClassroomRoute{Topic: ClassroomTopicPrefix + obj.Event, Key: string(c.self) + strconv.FormatUint(c.nextKey, 10)}
		c.mu.Lock()
		presumed := c.presumed
		c.mu.Unlock()
		if presumed {
			// It talks: it was not the silent client it was taken for.
			anon := anonymousClassroom()
			route.Persona = &anon
		}
	}
	if route.Persona != nil {
		if err := c.become(*route.Persona, false); err != nil {
			c.sendError(codeOf(err), err.Error())
			return
		}
	}
	payload := route.Payload
	if payload == nil {
		payload = obj.Payload
	}
	c.nextKey++
	id := c.nextKey
	c.mu.Lock()
	c.pubs[id] = classroomPub{event: obj.Event, settles: route.Settles}
	c.mu.Unlock()
	p := pubRequest{ID: id, Topic: []byte(route.Topic), Payload: payload, Allowed: true}
	if route.Key != "" {
		p.Key = []byte(route.Key)
	}
	s.publish(s.ctx, p)
}

// published answers a publish: an error object naming the event, or, once
// it is accepted, the acknowledgement it settles.
func (c *classroomConn) published(_ *Session, id, _ uint64, err error) {
	c.mu.Lock()
	p := c.pubs[id]
	delete(c.pubs, id)
	c.mu.Unlock()
	if err != nil {
		code, text := errCode(err, protocol.CodeRejected)
		c.sendError(code, fmt.Sprintf("%s: %s", p.event, text))
		return
	}
	if p.settles != "" {
		c.settle(p.settles)
	}
}

// replied is never called: classroom clients make no requests.
func (c *classroomConn) replied(*Session, uint64, string, []byte, error) {}
