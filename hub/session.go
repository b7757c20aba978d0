package hub

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"golang.org/x/time/rate"

	"github.com/caps-hub/caps/protocol"
)

// Session is one connected client. It owns a read loop (the goroutine that
// runs serveConn) and a write loop; everything sent to it goes through a
// bounded queue so that no client can stall another.
type Session struct {
	hub  *Hub
	conn net.Conn
	info SessionInfo
	// infoMu guards info against other goroutines while a classroom session
	// changes its role (hub/legacy.go, on its read loop): code on other
	// goroutines that copies info takes infoSnapshot.
	infoMu sync.RWMutex
	ident  Identity
	perms  *perms
	// legacy is non-nil for classroom-dialect sessions: it turns deliveries
	// into bare JSON objects.
	legacy *legacyCodec
	// hist holds live deliveries back while a subscription's history is sent.
	hist historyHold

	lastRecv atomic.Int64 // unix nanos
	lastSent atomic.Int64
	limiter  *rate.Limiter

	// Outbound queue, guarded by mu. Frames are immutable byte slices that
	// may be shared with other sessions (one encoding per fan-out).
	mu       sync.Mutex
	out      [][]byte
	spare    [][]byte
	outBytes int
	closing  bool // no more frames accepted; close after the queue drains
	closed   bool
	wake     chan struct{}
	done     chan struct{}
	closeErr error
	// writing: a write loop is running. It runs only while there is
	// something to write (see send), so an idle connection has one
	// goroutine, its reader, instead of two.
	writing bool
	// connDone is closed once the write loop has flushed and closed the connection.
	connDone chan struct{}

	// Write loop only: the writev vector and, for TLS and WebSocket, the
	// buffer a batch is copied into, kept from one batch to the next.
	iov, iovBuf net.Buffers
	wbuf        []byte

	// Subscriptions, touched only by the read loop and cleanup.
	subMu sync.Mutex
	live  map[uint64]*topicSub
	dur   map[uint64]*durableMember
	nsubs int

	// hello is the HELLO that proved ident, kept so the credentials can be
	// checked again when the auth file is reloaded (Hub.Reauthenticate).
	hello protocol.Hello
}

// serveConn runs one connection from first byte to close.
func (h *Hub) serveConn(c net.Conn, dialect string) {
	if n := h.nconns.Add(1); n > int64(h.cfg.MaxConns) {
		h.nconns.Add(-1)
		h.metrics.errors.WithLabelValues(protocol.CodeTooManyConns).Inc()
		c.SetWriteDeadline(time.Now().Add(time.Second))
		c.Write(protocol.ErrorFrame(0, protocol.CodeTooManyConns, fmt.Sprintf("hub is at its limit of %d connections", h.cfg.MaxConns), true).Encode())
		c.Close()
		return
	}
	defer h.nconns.Add(-1)
	if tc, ok := c.(*tls.Conn); ok {
		c.SetDeadline(time.Now().Add(h.cfg.HandshakeTimeout))
		if err := tc.Handshake(); err != nil {
			h.tlsHandshakeFailed(c, err)
			return
		}
		c.SetDeadline(time.Time{})
	}
	s := &Session{
		hub:      h,
		conn:     c,
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		connDone: make(chan struct{}),
		live:     map[uint64]*topicSub{},
		dur:      map[uint64]*durableMember{},
	}
	s.info.Remote = c.RemoteAddr().String()
	s.info.Hub = h.cfg.Name
	s.info.Dialect = dialect
	now := time.Now()
	s.lastRecv.Store(now.UnixNano())
	s.lastSent.Store(now.UnixNano())

	c.SetReadDeadline(now.Add(h.cfg.HandshakeTimeout))
	br := bufio.NewReaderSize(c, 512)
	first, err := br.Peek(1)
	if err != nil {
		if isTimeout(err) && dialect == "caps" && h.legacyPresumesSilent() {
			// A classroom driver says nothing until it is given work: with
			// the classroom dialect allowed and an app that knows what a
			// silent classroom client is, silence is not a failed handshake
			// (hub/legacy.go).
			h.serveLegacy(s, br, true)
			return
		}
		if isTimeout(err) {
			h.metrics.errors.WithLabelValues(protocol.CodeHandshakeTime).Inc()
			s.writeNow(protocol.ErrorFrame(0, protocol.CodeHandshakeTime, "no HELLO within "+h.cfg.HandshakeTimeout.String(), true).Encode())
		}
		c.Close()
		return
	}
	if first[0] == '{' && dialect == "caps" {
		h.serveLegacy(s, br, false)
		return
	}
	// A small first buffer: most connections are idle most of the time, and
	// the reader grows it for big frames and busy streams.
	rd := protocol.NewReaderSize(br, h.cfg.MaxFrame, 512)
	if !s.handshake(rd) {
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{})
	h.runSession(s, func() error { return s.readLoop(rd) })
}

// runSession registers an authenticated session, runs its loops and cleans up.
func (h *Hub) runSession(s *Session, read func() error) {
	h.mu.Lock()
	h.sessions[s.info.ID] = s
	h.mu.Unlock()
	h.metrics.conns.WithLabelValues(s.info.Role).Inc()
	h.log.Debug("client connected", "id", s.info.ID, "role", s.info.Role, "name", s.info.Name, "remote", s.info.Remote)
	h.clientEvent("client.connected", s)

	err := read()
	s.closeWith(nil, err)
	<-s.connDone
	s.cleanup()

	h.mu.Lock()
	delete(h.sessions, s.info.ID)
	h.mu.Unlock()
	h.metrics.conns.WithLabelValues(s.info.Role).Dec()
	for _, fn := range h.disconnectHooks {
		fn(s.info)
	}
	h.clientEvent("client.disconnected", s)
	h.log.Debug("client disconnected", "id", s.info.ID, "name", s.info.Name, "reason", s.closeErr)
}

// handshake reads and checks the HELLO, then answers WELCOME or a fatal ERR.
func (s *Session) handshake(rd *protocol.Reader) bool {
	h := s.hub
	f, err := rd.Next()
	if err != nil {
		switch {
		case isTimeout(err):
			h.metrics.errors.WithLabelValues(protocol.CodeHandshakeTime).Inc()
			s.writeNow(protocol.ErrorFrame(0, protocol.CodeHandshakeTime, "no HELLO within "+h.cfg.HandshakeTimeout.String(), true).Encode())
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		default:
			code := frameErrCode(err)
			h.metrics.errors.WithLabelValues(code).Inc()
			s.writeNow(protocol.ErrorFrame(0, code, err.Error(), true).Encode())
		}
		return false
	}
	if f.Op != protocol.OpHello {
		s.refuse(protocol.CodeHandshake, fmt.Sprintf("expected HELLO first, got %s", f.Op))
		return false
	}
	hello, err := protocol.ParseHello(f.Payload)
	if err != nil {
		s.refuse(protocol.CodeHandshake, err.Error())
		return false
	}
	id, err := s.hub.identify(hello)
	if err != nil {
		s.refuse(protocol.CodeAuth, err.Error())
		return false
	}
	s.hello = hello
	if err := s.establish(id, hello.Resume); err != nil {
		code, text := errCode(err, protocol.CodeForbidden)
		s.refuse(code, text)
		return false
	}
	w := protocol.Welcome{
		Session:     s.info.ID,
		Hub:         h.cfg.Name,
		HeartbeatMS: int(h.cfg.Heartbeat / time.Millisecond),
		MaxFrame:    h.cfg.MaxFrame,
		MaxSubs:     h.cfg.MaxSubs,
		MaxPubRate:  max(h.cfg.PubRate, 0),
		Role:        s.info.Role,
		Name:        s.info.Name,
		Resumed:     hello.Resume != "",
	}
	b, _ := json.Marshal(w)
	// Registered before the WELCOME leaves, so that once a client is in,
	// the hub already counts it (auth reloads, /people, shutdown's BYE).
	// runSession registers it again, harmlessly.
	h.mu.Lock()
	h.sessions[s.info.ID] = s
	h.mu.Unlock()
	s.writeNow((&protocol.Frame{Op: protocol.OpWelcome, Payload: b}).Encode())
	return true
}

// identify turns a HELLO into an identity: through the authenticator when
// the hub has one, else taking the client at its word.
func (h *Hub) identify(hello protocol.Hello) (Identity, error) {
	if h.cfg.Auth != nil {
		id, err := h.cfg.Auth.Authenticate(hello)
		if err != nil {
			h.log.Warn("authentication failed", "role", hello.Role, "name", hello.Name, "err", err)
		}
		return id, err
	}
	id := Identity{Role: hello.Role, Name: hello.Name}
	if id.Role == protocol.RoleVendor {
		id.Store = hello.Name
	}
	return id, nil
}

// establish fills in the session's identity and runs the connect hooks.
func (s *Session) establish(id Identity, resume string) error {
	h := s.hub
	s.ident = id
	s.info.ID = uuid.NewString()
	s.info.Role, s.info.Name, s.info.Store = id.Role, id.Name, id.Store
	s.info.Since = time.Now().UTC()
	s.info.Resume = resume
	p := id.Perms
	if p == nil {
		p = h.policy[id.Role]
		if p == nil {
			p = &Permissions{}
		}
	}
	s.perms = p.compile(id)
	if h.cfg.PubRate > 0 {
		s.limiter = rate.NewLimiter(rate.Limit(h.cfg.PubRate), h.cfg.PubBurst)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, fn := range h.connectHooks {
		if err := fn(ctx, s.info); err != nil {
			return err
		}
	}
	return nil
}

func (s *Session) refuse(code, text string) {
	s.hub.metrics.errors.WithLabelValues(code).Inc()
	s.writeNow(protocol.ErrorFrame(0, code, text, true).Encode())
}

// writeNow writes directly, before the write loop exists (handshake only).
func (s *Session) writeNow(b []byte) {
	s.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	s.conn.Write(b)
	s.conn.SetWriteDeadline(time.Time{})
}

// readLoop decodes frames until the connection ends. Returning ends the session.
func (s *Session) readLoop(rd *protocol.Reader) error {
	h := s.hub
	// Counters and the liveness clock are updated once per read from the
	// socket (when the reader has nothing more buffered), not once per frame.
	var frames, nbytes int
	for {
		f, err := rd.Next()
		if err != nil {
			h.metrics.framesIn.Add(float64(frames))
			h.metrics.bytesIn.Add(float64(nbytes))
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) {
				return err
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return err
			}
			var oe *net.OpError
			if errors.As(err, &oe) {
				return err
			}
			code := frameErrCode(err)
			s.fail(0, code, err.Error())
			return err
		}
		frames++
		nbytes += protocol.HeaderLen + 7 + len(f.Topic) + len(f.Key) + len(f.Group) + len(f.Payload)
		if rd.Buffered() == 0 || frames >= 256 {
			s.lastRecv.Store(time.Now().UnixNano())
			h.metrics.framesIn.Add(float64(frames))
			h.metrics.bytesIn.Add(float64(nbytes))
			frames, nbytes = 0, 0
		}
		if err := s.handle(f); err != nil {
			return err
		}
	}
}

func frameErrCode(err error) string {
	if errors.Is(err, protocol.ErrFrameTooLarge) {
		return protocol.CodeFrameTooLarge
	}
	return protocol.CodeBadFrame
}

// handle executes one frame. A returned error ends the session.
func (s *Session) handle(f *protocol.Frame) error {
	switch f.Op {
	case protocol.OpPub:
		s.handlePub(f)
	case protocol.OpSub:
		s.handleSub(f)
	case protocol.OpUnsub:
		s.handleUnsub(f)
	case protocol.OpAck, protocol.OpNak:
		s.handleAck(f)
	case protocol.OpReq:
		s.handleReq(f)
	case protocol.OpPing:
		s.sendRaw(pongFrame)
	case protocol.OpPong:
	case protocol.OpBye:
		return errClientBye
	case protocol.OpHello:
		s.sendErr(f.ID, protocol.CodeBadRequest, "already handshaken")
	default:
		s.sendErr(f.ID, protocol.CodeBadRequest, fmt.Sprintf("%s is not sent by clients", f.Op))
	}
	return nil
}

var (
	errClientBye = errors.New("client said bye")
	pongFrame    = (&protocol.Frame{Op: protocol.OpPong}).Encode()
)

func (s *Session) handlePub(f *protocol.Frame) {
	h := s.hub
	if s.limiter != nil && !s.limiter.Allow() {
		s.sendErr(f.ID, protocol.CodeRateLimited, fmt.Sprintf("more than %d publishes per second", h.cfg.PubRate))
		return
	}
	// The hooks see the message id, so an app can tell a retry from a new publish.
	if err := h.checkPublish(withPublishKey(context.Background(), f.Key), s, f.Topic, f.Payload); err != nil {
		code, text := errCode(err, protocol.CodeRejected)
		s.sendErr(f.ID, code, text)
		return
	}
	// publishChecked bounds the wait for the engine itself, on stored topics
	// only: a timer per live publish was a quarter of the hub's allocations.
	seq, err := h.publishChecked(context.Background(), f.Topic, f.Key, f.Payload, f.Flags&protocol.FlagDurable != 0)
	if err != nil {
		code, text := errCode(err, protocol.CodeUnavailable)
		s.sendErr(f.ID, code, text)
		return
	}
	h.logEvent(f.Topic, f.Payload)
	if f.ID != 0 {
		s.sendFrame(&protocol.Frame{Op: protocol.OpOK, ID: f.ID, Seq: seq})
	}
}

// checkPublish runs validation, permissions and app hooks for a client publish.
func (h *Hub) checkPublish(ctx context.Context, s *Session, topic, payload []byte) error {
	return h.checkPublishAs(ctx, s.info, s.perms, topic, payload)
}

// checkPublishAs is checkPublish for an identity and permissions given
// apart from a session's own: a classroom session publishes with those of
// the persona it is taken for (hub/legacy.go).
func (h *Hub) checkPublishAs(ctx context.Context, info SessionInfo, p *perms, topic, payload []byte) error {
	if !protocol.ValidTopic(topic) {
		return Reject(protocol.CodeBadTopic, fmt.Sprintf("invalid topic %q", topic))
	}
	if !p.canPublish(topic) {
		return Reject(protocol.CodeForbidden, fmt.Sprintf("%s %q may not publish to %q", info.Role, info.Name, topic))
	}
	var t string
	for _, ph := range h.pubHooks {
		if protocol.Match(ph.pattern, topic) {
			if t == "" {
				t = string(topic)
			}
			if err := ph.fn(ctx, info, t, payload); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *Session) handleReq(f *protocol.Frame) {
	h := s.hub
	// Requests share the publish rate: a service call costs the hub (and
	// often the engine) at least as much as a publish.
	if s.limiter != nil && !s.limiter.Allow() {
		s.sendErr(f.ID, protocol.CodeRateLimited, fmt.Sprintf("more than %d publishes and requests per second", h.cfg.PubRate))
		return
	}
	fn, ok := h.services[string(f.Topic)]
	if !ok {
		s.sendErr(f.ID, protocol.CodeNotFound, fmt.Sprintf("no service %q", f.Topic))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := fn(ctx, s.info, f.Payload)
	if err != nil {
		code, text := errCode(err, protocol.CodeInternal)
		s.sendErr(f.ID, code, text)
		return
	}
	s.sendFrame(&protocol.Frame{Op: protocol.OpReply, ID: f.ID, Topic: f.Topic, Payload: out})
}

// sendErr queues a recoverable ERR and counts it in caps_errors_total.
func (s *Session) sendErr(id uint64, code, text string) {
	s.hub.metrics.errors.WithLabelValues(code).Inc()
	s.sendFrame(protocol.ErrorFrame(id, code, text, false))
}

func (s *Session) sendFrame(f *protocol.Frame) bool {
	if s.legacy != nil {
		return s.legacy.sendFrame(s, f)
	}
	return s.send(f.Encode())
}

// sendRaw queues an already-encoded native frame (PING, PONG).
func (s *Session) sendRaw(b []byte) bool {
	if s.legacy != nil {
		return true // the classroom dialect has no heartbeats
	}
	return s.send(b)
}

// send queues an encoded frame. It never blocks: a session whose queue is
// over its limit is a slow consumer and is disconnected.
func (s *Session) send(b []byte) bool {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return false
	}
	if s.outBytes+len(b) > s.hub.cfg.MaxPending {
		s.mu.Unlock()
		if s.fail(0, protocol.CodeSlowConsumer, fmt.Sprintf("more than %d bytes waiting to be read", s.hub.cfg.MaxPending)) {
			s.hub.metrics.slowConsumers.Inc()
			s.hub.log.Warn("slow consumer disconnected", "id", s.info.ID, "name", s.info.Name, "pending_bytes", s.hub.cfg.MaxPending)
		}
		return false
	}
	s.out = append(s.out, b)
	s.outBytes += len(b)
	start := !s.writing
	s.writing = true
	s.mu.Unlock()
	if start {
		go s.writeLoop()
		return true
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return true
}

// fail sends a fatal ERR and closes the session once it is written. It
// reports whether this call closed the session (and so sent and counted the
// error); a session already closing is left alone.
func (s *Session) fail(id uint64, code, text string) bool {
	return s.closeWith(protocol.ErrorFrame(id, code, text, true), errors.New(code+": "+text))
}

// closeWith queues a last frame (if any, bypassing the queue limit), stops
// accepting more and lets the write loop flush and close the connection.
// It reports false when the session was already closing.
func (s *Session) closeWith(last *protocol.Frame, reason error) bool {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return false
	}
	s.closing = true
	s.closeErr = reason
	if last != nil && last.Op == protocol.OpErr {
		// Counted before it can be written, so whoever reads it sees it counted.
		s.hub.metrics.errors.WithLabelValues(string(last.Topic)).Inc()
	}
	if last != nil {
		var b []byte
		if s.legacy != nil {
			b = s.legacy.encodeFrame(last)
		} else {
			b = last.Encode()
		}
		if b != nil {
			s.out = append(s.out, b)
		}
	}
	start := !s.writing // someone must flush and close the connection
	s.writing = true
	s.mu.Unlock()
	close(s.done)
	if start {
		go s.writeLoop()
	}
	return true
}

// writerLinger is how long a write loop with nothing to write waits for
// more before it ends (send starts another when needed).
const writerLinger = time.Second

// writeLoop writes queued frames, many per system call. send starts it when
// a frame is queued and none is running; it ends after writerLinger with
// nothing to write. When the session closes it flushes what is left (within
// a deadline) and closes the connection, which also ends the read loop.
func (s *Session) writeLoop() {
	var linger *time.Timer
	for {
		select {
		case <-s.done:
			s.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
			s.flushQueue()
			if tc, ok := s.conn.(*net.TCPConn); ok {
				// Let the peer read the final frame before it sees the close.
				tc.CloseWrite()
			}
			s.conn.Close()
			close(s.connDone)
			return
		default:
		}
		s.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := s.flushQueue(); err != nil {
			s.closeWith(nil, fmt.Errorf("write: %w", err)) // writing stays set: no other loop starts
			s.conn.Close()
			close(s.connDone)
			return
		}
		if linger == nil {
			linger = time.NewTimer(writerLinger)
		} else {
			linger.Reset(writerLinger)
		}
		select {
		case <-s.wake:
			continue
		case <-s.done:
			continue
		case <-linger.C:
		}
		s.mu.Lock()
		if len(s.out) == 0 && !s.closing {
			s.writing = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}

func (s *Session) flushQueue() error {
	for {
		s.mu.Lock()
		batch := s.out
		if len(batch) == 0 {
			s.mu.Unlock()
			return nil
		}
		s.out = s.spare[:0]
		s.outBytes = 0
		s.mu.Unlock()

		err := s.writeBatch(batch)
		for i := range batch {
			batch[i] = nil
		}
		s.mu.Lock()
		if cap(batch) <= 1024 {
			s.spare = batch[:0]
		} else {
			s.spare = nil // let a burst's big slice go
		}
		s.mu.Unlock()
		if err != nil {
			return err
		}
		s.lastSent.Store(time.Now().UnixNano())
	}
}

func (s *Session) writeBatch(batch [][]byte) error {
	h := s.hub
	n := 0
	for _, b := range batch {
		n += len(b)
	}
	h.metrics.framesOut.Add(float64(len(batch)))
	h.metrics.bytesOut.Add(float64(n))
	if s.legacy != nil {
		// One object per write so a client doing JSON.parse(chunk) works;
		// legacy.write also paces them and acknowledges what waited for it.
		for _, b := range batch {
			if err := s.legacy.write(s, b); err != nil {
				return err
			}
		}
		return nil
	}
	if _, ok := s.conn.(*net.TCPConn); ok {
		// writev: one system call for the batch. WriteTo consumes s.iov, so
		// the vector's storage is kept apart in s.iovBuf for the next batch.
		s.iov = append(s.iovBuf[:0], batch...)
		s.iovBuf = s.iov[:0]
		_, err := s.iov.WriteTo(s.conn)
		clear(s.iovBuf[:len(batch)]) // do not keep the frames alive
		return err
	}
	if len(batch) == 1 {
		_, err := s.conn.Write(batch[0])
		return err
	}
	buf := s.wbuf[:0]
	for _, b := range batch {
		buf = append(buf, b...)
	}
	_, err := s.conn.Write(buf)
	if cap(buf) <= 64<<10 {
		s.wbuf = buf[:0] // reuse; a burst's big buffer is let go
	} else {
		s.wbuf = nil
	}
	return err
}

// cleanup ends every subscription of a closed session; durable deliveries it
// had not acknowledged go to another member at once.
func (s *Session) cleanup() {
	s.subMu.Lock()
	live := s.live
	dur := s.dur
	s.live = map[uint64]*topicSub{}
	s.dur = map[uint64]*durableMember{}
	s.subMu.Unlock()
	for _, ts := range live {
		s.hub.router.remove(ts, s)
		s.hub.runUnsubHooks(s, ts.pattern)
	}
	for _, m := range dur {
		s.hub.durables.leave(m)
		s.hub.runUnsubHooks(s, m.pattern)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}

// infoSnapshot returns a copy of the session's info, safe to take from any
// goroutine (see infoMu).
func (s *Session) infoSnapshot() SessionInfo {
	s.infoMu.RLock()
	defer s.infoMu.RUnlock()
	return s.info
}
