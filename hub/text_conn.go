package hub

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/caps-hub/caps/protocol"
)

// Bounds of the text dialect (docs/SECURITY.md).
const (
	// textMaxLine is the longest line a text client may send, in bytes; a
	// longer one is dropped with an error and the connection goes on. Chat's
	// own limit (2000 characters) is within it.
	textMaxLine = 8 << 10
	// textLinesPerSecond and textLineBurst pace the lines a text client's
	// session handles: beyond them the hub reads no further until it is
	// time, so a flood waits in the client's socket instead of costing the
	// hub work or memory.
	textLinesPerSecond = 20
	textLineBurst      = 40
	// textMaxBadLines lines in a row that are not text (not UTF-8, or too
	// long) mean the peer does not speak the dialect: the hub closes the
	// connection.
	textMaxBadLines = 16
	// textGuestAttempts bounds the guest names tried for one connection
	// when the ones the app picks are taken.
	textGuestAttempts = 8
)

// Text ports (serveText): the client port, where the dialect is told by the
// client's first bytes, and the text-only port (Config.TextAddr), where the
// hub speaks first.
const (
	textDetected = false
	textPort     = true
)

// textConn is a text connection: the dialect's state beside its Session,
// which it drives through the session API.
type textConn struct {
	h       *Hub
	s       *Session
	app     TextApp
	rd      *textReader
	api     *TextConn
	handler atomic.Pointer[TextHandler] // set once the app has opened the session
	lines   *rate.Limiter

	// Read loop only.
	established bool // before, writes go straight to the socket
	ready       bool // TextHandler.Ready has run
	seenLine    bool // a line has been read
	bad         int  // lines in a row that were not text

	// mu guards the publishes and requests awaiting their outcome.
	mu     sync.Mutex
	nextID uint64
	pubs   map[uint64]chan error
	reqs   map[uint64]chan textReply
}

type textReply struct {
	body []byte
	err  error
}

// errTextClosed is the outcome of a call the session's end cut short.
var errTextClosed = errors.New("session closed")

// serveText readies a text connection and returns its read loop (nil: it
// was refused, and closed). atPort says the hub speaks first (the
// text-only port): a newcomer is greeted at once. Otherwise the client has
// sent its first bytes already, on the client port. The hub serves text
// (textAllowed) whenever it gets here: pickDialect and the classroom's
// hand-over check, and Start refuses a text port otherwise.
func (h *Hub) serveText(s *Session, br *bufio.Reader, atPort bool) func() error {
	conn := s.conn
	app := h.textApp()
	c := &textConn{
		h: h, s: s, app: app,
		lines: rate.NewLimiter(textLinesPerSecond, textLineBurst),
		pubs:  map[uint64]chan error{},
		reqs:  map[uint64]chan textReply{},
	}
	c.rd = newTextReader(br, textMaxLine, c.reply)
	c.api = &TextConn{c: c}
	s.dialect, s.native, s.writer, s.heartbeats, s.pipelines = c, false, nil, false, false
	s.info.Dialect = "text"
	if tc := tcpOf(conn); tc != nil {
		// A person cannot answer heartbeats; dead peers are found by TCP
		// keepalive instead.
		_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: h.cfg.Heartbeat, Interval: h.cfg.Heartbeat / 2, Count: 4})
	}
	id, first, ok := c.identify(atPort)
	if !ok {
		return nil
	}
	if err := c.establish(id); err != nil {
		code, text := errCode(err, protocol.CodeForbidden)
		c.refuse(code, text)
		return nil
	}
	c.established = true
	return func() error { return c.run(first) }
}

// firstLine is the client's first line, when it was read before the
// session was established.
type firstLine struct {
	text string
	err  error // the line was dropped (too long, not UTF-8)
}

// identify finds out who the client is before the session exists: with a
// hub that wants a token, the token it shows first; otherwise it will be a
// guest (id nil). On the client port, the first line is read now if it
// comes in time (the handshake deadline): an HTTP request is answered as
// one, and the line is kept for the session. ok false: refused and closed.
func (c *textConn) identify(atPort bool) (id *Identity, first *firstLine, ok bool) {
	h, conn := c.h, c.s.conn
	if h.textNeedsToken() {
		if atPort {
			c.say("* this hub needs a token: type @token TOKEN")
		}
		id, ok := c.login()
		return id, nil, ok
	}
	if atPort {
		return nil, nil, true
	}
	line, err := c.rd.next()
	switch {
	case err == nil && httpRequestLine(line):
		c.answerHTTP()
		return nil, nil, false
	case err == nil, errors.Is(err, errLineTooLong), errors.Is(err, errNotUTF8):
		_ = conn.SetReadDeadline(time.Time{})
		return nil, &firstLine{text: line, err: err}, true
	case isTimeout(err):
		// A partial line (a person typing, a telnet client negotiating):
		// it goes on once the session is established.
		_ = conn.SetReadDeadline(time.Time{})
		return nil, nil, true
	}
	_ = conn.Close() // gone before it finished a line
	return nil, nil, false
}

// login reads the "@token TOKEN" a hub with authentication wants first and
// returns the identity the token proves.
func (c *textConn) login() (*Identity, bool) {
	h := c.h
	_ = c.s.conn.SetReadDeadline(time.Now().Add(textLoginTimeout))
	var line string
	for {
		var err error
		line, err = c.rd.next()
		if isTimeout(err) {
			c.refuse(protocol.CodeAuth, fmt.Sprintf("no @token within %s", textLoginTimeout))
			return nil, false
		}
		if err != nil && !errors.Is(err, errLineTooLong) && !errors.Is(err, errNotUTF8) {
			_ = c.s.conn.Close()
			return nil, false
		}
		if err != nil || strings.TrimSpace(line) != "" {
			break
		}
	}
	if httpRequestLine(line) {
		c.answerHTTP()
		return nil, false
	}
	token, isToken := tokenLine(line)
	if !isToken || token == "" {
		c.refuse(protocol.CodeAuth, "this hub needs a token first: send @token TOKEN as your first line")
		return nil, false
	}
	hello := protocol.Hello{Version: protocol.Version, Role: c.app.TextRole(), Token: token}
	id, err := h.authenticate(hello)
	if err != nil {
		c.refuse(protocol.CodeAuth, err.Error())
		return nil, false
	}
	if id.Role != c.app.TextRole() {
		c.refuse(protocol.CodeAuth, fmt.Sprintf("this token is for role %s; text clients have role %s", id.Role, c.app.TextRole()))
		return nil, false
	}
	c.s.hello = &hello // checked again when the auth file is reloaded
	_ = c.s.conn.SetReadDeadline(time.Time{})
	return &id, true
}

// establish gives the session its identity: id, or a guest name from the
// app, another one as long as the connect hooks find it taken.
func (c *textConn) establish(id *Identity) error {
	s := c.s
	if id != nil {
		return s.establish(*id, "")
	}
	for attempt := range textGuestAttempts {
		ctx, cancel := context.WithTimeout(s.ctx, HookTimeout)
		name, err := c.app.TextGuest(ctx, attempt)
		cancel()
		if err != nil {
			return withCode(err, protocol.CodeUnavailable)
		}
		err = s.establish(Identity{Role: c.app.TextRole(), Name: name}, "")
		if err == nil || codeOf(err) != protocol.CodeNameTaken {
			return err
		}
	}
	return Reject(protocol.CodeNameTaken, "no free guest name found; try again")
}

// run is the session's read loop: the app opens the session (it greets),
// its subscriptions start (Ready) around the first line, and each line is
// handed to the app, at most textLinesPerSecond.
func (c *textConn) run(first *firstLine) error {
	s := c.s
	handler := c.app.TextOpen(s.ctx, c.api)
	c.handler.Store(&handler)
	joinAt := time.Now().Add(textJoinDelay)
	if first != nil {
		if quit, err := c.handle(first.text, first.err); quit || err != nil {
			return err
		}
	}
	waiting := false // the read deadline is joinAt
	for {
		if !c.ready && !waiting {
			_ = s.conn.SetReadDeadline(joinAt)
			waiting = true
		} else if c.ready && waiting {
			_ = s.conn.SetReadDeadline(time.Time{})
			waiting = false
		}
		line, err := c.rd.next()
		switch {
		case err == nil, errors.Is(err, errLineTooLong), errors.Is(err, errNotUTF8):
		case isTimeout(err) && !c.ready:
			c.makeReady() // silent so far: it is in, whatever it says later
			continue
		default:
			return err // the connection ended
		}
		if quit, err := c.handle(line, err); quit || err != nil {
			return err
		}
	}
}

// handle takes one line (or the error that dropped it). It reports quit
// when the session is over; err is why, for the log.
func (c *textConn) handle(line string, dropped error) (quit bool, err error) {
	s := c.s
	s.lastRecv.Store(time.Now().UnixNano())
	c.h.metrics.framesIn.Inc()
	c.h.metrics.bytesIn.Add(float64(len(line) + 1))
	if err := c.lines.Wait(s.ctx); err != nil {
		return true, errTextClosed
	}
	firstEver := !c.seenLine
	c.seenLine = true
	if dropped != nil {
		return c.malformed(dropped)
	}
	c.bad = 0
	if firstEver && httpRequestLine(line) {
		s.fail(protocol.CodeBadRequest, "this is the CAPS client port, not HTTP; HTTP is served on the hub's HTTP port")
		return true, errors.New("HTTP request on the text port")
	}
	handler := *c.handler.Load()
	early := !c.ready && handler.First(line)
	if !c.ready && !early {
		c.makeReady()
	}
	if _, ok := tokenLine(line); ok {
		// Never handed to the app: a token typed again must not end up in a room.
		if s.hello != nil {
			c.print(fmt.Sprintf("* you are signed in already, as %s", s.infoSnapshot().Name))
		} else {
			c.print("* no token needed: you are a guest here")
		}
	} else if handler.Line(s.ctx, line) {
		return true, errClientBye
	}
	if !c.ready {
		c.makeReady()
	}
	return false, nil
}

// malformed reports a dropped line; too many in a row end the session.
func (c *textConn) malformed(err error) (bool, error) {
	c.bad++
	if c.bad >= textMaxBadLines {
		c.s.fail(protocol.CodeBadRequest, fmt.Sprintf("%d lines in a row were not text; closing", c.bad))
		return true, err
	}
	if errors.Is(err, errLineTooLong) {
		c.notify(protocol.CodeTooLarge, fmt.Sprintf("that line was longer than %d bytes; it was not sent", textMaxLine))
	} else {
		c.notify(protocol.CodeBadRequest, "that line was not UTF-8 text; it was not sent")
	}
	return false, nil
}

func (c *textConn) makeReady() {
	c.ready = true
	(*c.handler.Load()).Ready(c.s.ctx)
}

// encodeLines renders lines for the terminal: each ends with CR LF, and a
// line containing newlines is several.
func encodeLines(lines []string) []byte {
	n := 0
	for _, l := range lines {
		n += len(l) + 2
	}
	b := make([]byte, 0, n)
	for _, l := range lines {
		for part := range strings.SplitSeq(strings.TrimRight(l, "\r\n"), "\n") {
			b = append(b, strings.TrimRight(part, "\r")...)
			b = append(b, '\r', '\n')
		}
	}
	return b
}

// print queues lines for the client.
func (c *textConn) print(lines ...string) {
	if len(lines) > 0 {
		c.s.send(encodeLines(lines))
	}
}

// say writes lines before the session exists (its write loop does not).
func (c *textConn) say(lines ...string) { c.s.writeNow(encodeLines(lines)) }

// reply sends the answers to telnet negotiation.
func (c *textConn) reply(b []byte) {
	if c.established {
		c.s.send(b)
		return
	}
	c.s.writeNow(b)
}

// notify tells the client of an error in the line it sent, and counts it.
func (c *textConn) notify(code, text string) {
	c.s.countError(code)
	c.print(errorLine(code, text))
}

// refuse tells a client the hub does not take it, before its session
// exists, and closes the connection.
func (c *textConn) refuse(code, text string) {
	c.s.countError(code)
	c.say(errorLine(code, text))
	closeGently(c.s.conn)
}

func errorLine(code, text string) string { return "! " + code + ": " + text }

// httpRequestLine reports whether line is an HTTP request line: a browser
// or a probe that reached the client port.
var httpRequestRE = regexp.MustCompile(`^[A-Z]{3,10} \S+ HTTP/\d(\.\d)?$`)

func httpRequestLine(line string) bool { return httpRequestRE.MatchString(line) }

// answerHTTP answers an HTTP request on the client port with a problem
// document (RFC 9457) saying where HTTP is, and closes the connection.
func (c *textConn) answerHTTP() {
	body, _ := json.Marshal(map[string]any{
		"type": "about:blank", "title": "Bad Request", "status": 400,
		"detail": "this is the CAPS client port (CAPS frames, the classroom's JSON, or chat lines from nc and telnet); HTTP is served on the hub's HTTP port",
	})
	c.s.countError(protocol.CodeBadRequest)
	c.s.writeNow(fmt.Appendf(nil, "HTTP/1.1 400 Bad Request\r\nContent-Type: application/problem+json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body))
	closeGently(c.s.conn)
}

// The dialect: what the session is sent unasked.

func (c *textConn) deliver(s *Session, m protocol.Frame) bool {
	hp := c.handler.Load()
	if hp == nil {
		return true // nothing is subscribed before the app has the session
	}
	lines := (*hp).Render(string(m.Topic), m.Payload, m.Flags&protocol.FlagHistory != 0)
	if len(lines) == 0 {
		return true
	}
	return s.send(encodeLines(lines))
}

func (c *textConn) notice(code, text string, _ bool) []byte {
	return encodeLines([]string{errorLine(code, text)})
}

func (c *textConn) bye(reason string) []byte { return encodeLines([]string{"* bye: " + reason}) }

// publish publishes through the session API and waits for the outcome.
func (c *textConn) publish(ctx context.Context, topic, key string, payload []byte) error {
	ch := make(chan error, 1)
	c.mu.Lock()
	c.nextID++
	id := c.nextID
	c.pubs[id] = ch
	c.mu.Unlock()
	c.s.publish(ctx, pubRequest{ID: id, Topic: []byte(topic), Key: []byte(key), Payload: payload})
	select {
	case err := <-ch:
		return err
	case <-c.s.done:
		c.mu.Lock()
		delete(c.pubs, id)
		c.mu.Unlock()
		return errTextClosed
	}
}

func (c *textConn) published(_ *Session, id, _ uint64, err error) {
	c.mu.Lock()
	ch := c.pubs[id]
	delete(c.pubs, id)
	c.mu.Unlock()
	if ch != nil {
		ch <- err
	}
}

// request asks a service through the session API and waits for the answer.
func (c *textConn) request(ctx context.Context, service string, payload []byte) ([]byte, error) {
	ch := make(chan textReply, 1)
	c.mu.Lock()
	c.nextID++
	id := c.nextID
	c.reqs[id] = ch
	c.mu.Unlock()
	c.s.request(id, service, payload)
	select {
	case r := <-ch:
		return r.body, r.err
	case <-ctx.Done():
	case <-c.s.done:
	}
	c.mu.Lock()
	delete(c.reqs, id)
	c.mu.Unlock()
	return nil, errTextClosed
}

func (c *textConn) replied(_ *Session, id uint64, _ string, reply []byte, err error) {
	c.mu.Lock()
	ch := c.reqs[id]
	delete(c.reqs, id)
	c.mu.Unlock()
	if ch != nil {
		ch <- textReply{reply, err}
	}
}
