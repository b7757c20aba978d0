package hub

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
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
// runs serveConn and, in it, its dialect's loop) and a write loop;
// everything sent to it goes through a bounded queue so that no client can
// stall another.
//
// The files of a session:
//   - session.go: its life (admission, registration, cleanup) and its
//     outbound queue and write loop;
//   - session_api.go: what a client can do — subscribe, unsubscribe,
//     publish, acknowledge, request, close — as methods every dialect calls;
//   - dialect.go: how a connection's dialect is chosen, and what a dialect
//     provides;
//   - caps_dialect.go, classroom*.go: the dialects, translators between
//     their wire format and the methods of session_api.go.
type Session struct {
	hub  *Hub
	conn net.Conn

	// dialect renders what the hub sends unasked; native is true for CAPS
	// frames, which need no rendering: a delivery's shared encoding is
	// queued as it is (the fan-out's hot path). writer, when set, writes
	// the queued encodings instead of one writev per batch.
	dialect    dialect
	native     bool
	writer     batchWriter
	heartbeats bool // the hub pings it when idle and drops it when silent
	// pipelines: the dialect lets stored publishes complete off the read
	// loop (pipeline.go). The classroom dialect does not: its events act
	// on each other in the order sent (a "done" settles a delivery that a
	// "post" after it would otherwise hand back).
	pipelines bool

	// ctx ends when the session closes: requests running off the read loop
	// (work) see it.
	ctx    context.Context
	cancel context.CancelFunc
	work   sync.WaitGroup
	reqs   chan struct{} // one token per request in flight (session_api.go)
	pipe   *pipeline     // stored publishes in flight (pipeline.go)

	info SessionInfo
	// infoMu guards info against other goroutines while its read loop
	// changes it (a classroom session taking on a persona): code on other
	// goroutines copies it with infoSnapshot.
	infoMu sync.RWMutex
	ident  Identity
	// keyScope prefixes the message ids the session stores (msgid.go);
	// changed with ident, on the read loop.
	keyScope string
	// identKey names the identity the session was established as, whose
	// subscriptions on this hub are counted together (Hub.identSubs).
	identKey string
	// expires is when the credentials that proved ident expire (zero:
	// never); set by establish, read by the heartbeat loop.
	expires time.Time
	// perms may be replaced (reidentify) while the router and durables read
	// it for deliveries.
	perms atomic.Pointer[perms]
	// hello is the HELLO that proved ident, kept so that the credentials can
	// be checked again when the auth file is reloaded (Hub.Reauthenticate);
	// nil for a dialect without credentials.
	hello *protocol.Hello
	// hist holds live deliveries back while a subscription's history is sent.
	hist historyHold

	// pubMatches caches the local subscriptions of the topic this session
	// last published to (router.deliverLocal); read loop only.
	pubMatches *localMatches

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
	// keepConn: the session ends but its connection goes on in another
	// dialect (handOver); the write loop flushes and leaves it open.
	keepConn bool
	wake     chan struct{}
	done     chan struct{}
	closeErr error
	// writing: a write loop is running. It runs only while there is
	// something to write (see send), so an idle connection has one
	// goroutine, its reader, instead of two.
	writing bool
	// connDone is closed once the write loop has flushed and closed the connection.
	connDone chan struct{}

	// Subscriptions, guarded by subMu; changed by the read loop and cleanup.
	// The maps are made with the first subscription.
	subMu sync.Mutex
	live  map[uint64]*topicSub
	dur   map[uint64]*durableMember
	nsubs int
}

// serveConn runs one connection of the client port (or WebSocket) from
// first byte to close. transport names how it arrived ("tcp", "tls",
// "websocket").
func (h *Hub) serveConn(c net.Conn, transport string) {
	h.serveConnAs(c, transport, h.pickDialect, nil)
}

// openText readies a connection of the text-only port.
func (h *Hub) openText(s *Session, br *bufio.Reader) func() error {
	return h.serveText(s, br, textPort)
}

// serveConnAs admits a connection and runs it: open readies it in its
// dialect (the handshake) and returns the dialect's read loop. conns, when
// not nil, is told when the connection is over (Hub.conns).
//
// The read loop runs here, right below the goroutine's first frame
// (acceptLoop starts the goroutine with this function): openSession does
// everything before it (TLS, the dialect, its handshake) and returns. An
// idle connection spends its life blocked in that loop's read, and the
// garbage collector halves an 8 KiB stack only when less than about 1.2 KiB
// of it is in use (a quarter, less the 800 bytes it keeps for functions
// that do not grow the stack): each frame kept between here and the read
// costs 4 KiB per idle connection (docs/PERFORMANCE.md). That is why the
// frames here take their admissions back without defer (deferred calls
// keep their arguments in the frame). A read loop that ends handing the
// connection to another dialect (dialectSwitch) is followed by the new
// dialect's.
func (h *Hub) serveConnAs(c net.Conn, transport string, open func(*Session, *bufio.Reader) func() error, conns *sync.WaitGroup) {
	if addr, ok := h.admit(c, transport); ok {
		h.runConn(c, transport, open)
		h.release(addr, transport)
	}
	if conns != nil {
		conns.Done()
	}
}

// admit takes the connection's places in the hub's limits (all
// connections, and per address), or refuses it. addr is its address, for
// release.
func (h *Hub) admit(c net.Conn, transport string) (addr string, ok bool) {
	if n := h.nconns.Add(1); n > int64(h.cfg.MaxConns) {
		h.nconns.Add(-1)
		h.refuseConn(c, limitTotal, fmt.Sprintf("hub is at its limit of %d connections", h.cfg.MaxConns))
		return "", false
	}
	// One address may hold only so many of them, so that one client cannot
	// take every place. A WebSocket session is held to the HTTP port's own
	// limit per address instead (httpguard.go).
	if transport != transportWebSocket {
		addr = remoteHost(c.RemoteAddr())
		if !h.connsByAddr.take(addr, h.cfg.MaxConnsPerAddr) {
			h.nconns.Add(-1)
			h.refuseConn(c, limitPerAddress, fmt.Sprintf("%s holds %d connections, the most one address may (--max-conns-per-addr)", addr, h.cfg.MaxConnsPerAddr))
			return "", false
		}
	}
	return addr, true
}

// release gives back what admit took.
func (h *Hub) release(addr, transport string) {
	if transport != transportWebSocket {
		h.connsByAddr.give(addr, 1)
	}
	h.nconns.Add(-1)
}

// runConn runs an admitted connection's sessions (serveConnAs). A panic in
// a read loop is contained to its session (contain.go), which is closed
// with a fatal internal error.
func (h *Hub) runConn(c net.Conn, transport string, open func(*Session, *bufio.Reader) func() error) {
	s, read := h.openContained(c, transport, open)
	for read != nil {
		err := h.runSession(s, read)
		h.endSession(s, err)
		s, read = h.nextDialect(c, err)
	}
}

// runSession runs a started session's read loop and returns why it ended.
// A panic in it is contained to the session (contain.go): the session is
// closed with a fatal internal error.
func (h *Hub) runSession(s *Session, read func() error) (err error) {
	defer func() {
		if e := h.contained(inSession, recover()); e != nil {
			err = e
			pe := e.(*protocol.Error)
			s.fail(pe.Code, pe.Text) // say so, then close
		}
	}()
	return read()
}

// openContained is openSession with a panic before the session runs (the
// handshake, the dialect's start) costing only this connection (contain.go).
func (h *Hub) openContained(c net.Conn, transport string, open func(*Session, *bufio.Reader) func() error) (s *Session, read func() error) {
	defer func() {
		if h.contained(inSession, recover()) != nil {
			c.Close()
			s, read = nil, nil
		}
	}()
	return h.openSession(c, transport, open)
}

// nextDialect readies the session that follows one whose read loop ended
// with err: none, unless the connection goes on in another dialect. A
// panic readying it costs only this connection, as in openContained.
func (h *Hub) nextDialect(c net.Conn, err error) (s *Session, read func() error) {
	var sw *dialectSwitch
	if !errors.As(err, &sw) {
		return nil, nil
	}
	defer func() {
		if h.contained(inSession, recover()) != nil {
			c.Close()
			s, read = nil, nil
		}
	}()
	return sw.next()
}

// openSession takes a new connection up to its read loop: the TLS
// handshake, the dialect (open) and its handshake, then the session's start
// (beginSession). It returns the read loop to run, or nil when the
// connection was refused or ended (and is closed).
func (h *Hub) openSession(c net.Conn, transport string, open func(*Session, *bufio.Reader) func() error) (*Session, func() error) {
	if tc, ok := c.(*tls.Conn); ok {
		c.SetDeadline(time.Now().Add(h.cfg.HandshakeTimeout))
		if err := tc.Handshake(); err != nil {
			h.tlsHandshakeFailed(c, err)
			return nil, nil
		}
		c.SetDeadline(time.Time{})
	}
	s := h.newSession(c, transport)
	c.SetReadDeadline(time.Now().Add(h.cfg.HandshakeTimeout))
	return h.startSession(s, open(s, bufio.NewReaderSize(c, 512)))
}

// Connection limits, as caps_connections_refused_total{limit} names them.
const (
	limitTotal           = "total"            // Config.MaxConns
	limitPerAddress      = "per_address"      // Config.MaxConnsPerAddr
	limitClassroomSilent = "classroom_silent" // Config.ClassroomMaxSilent
)

// refuseConn tells a connection over a limit why (a fatal too_many_conns
// frame; nothing is known of its dialect yet), counts it and closes it.
func (h *Hub) refuseConn(c net.Conn, limit, text string) {
	h.metrics.errors.WithLabelValues(protocol.CodeTooManyConns).Inc()
	h.metrics.connsRefused.WithLabelValues(limit).Inc()
	c.SetWriteDeadline(time.Now().Add(refuseTimeout))
	c.Write(protocol.ErrorFrame(0, protocol.CodeTooManyConns, text, true).Encode())
	c.Close()
}

// startSession starts an established session whose read loop is read (nil:
// it was refused, and nothing starts).
func (h *Hub) startSession(s *Session, read func() error) (*Session, func() error) {
	if read == nil {
		return nil, nil
	}
	h.beginSession(s)
	return s, read
}

// dialectSwitch ends a session whose connection goes on in another dialect
// (a silent connection taken for a classroom client that turns out to
// type text): next readies the new session and returns its read loop.
type dialectSwitch struct {
	reason error
	next   func() (*Session, func() error)
}

func (d *dialectSwitch) Error() string { return d.reason.Error() }
func (d *dialectSwitch) Unwrap() error { return d.reason }

func (h *Hub) newSession(c net.Conn, transport string) *Session {
	s := &Session{
		hub:      h,
		conn:     c,
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		connDone: make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.useCAPSFrames()
	s.perms.Store(&perms{})
	s.info.Remote = c.RemoteAddr().String()
	s.info.Hub = h.cfg.Name
	s.info.Transport = transport
	now := time.Now().UnixNano()
	s.lastRecv.Store(now)
	s.lastSent.Store(now)
	return s
}

// establish gives the session its identity, claims its name if its role's
// names are exclusive (names.go) and runs the connect hooks; an error (the
// name is held, a hook's refusal) refuses the session. resume is the
// resume token of the session the client had before a reconnect, if it
// gives one: it resumes that session only if the token is the one that
// session was given, for this role and name.
func (s *Session) establish(id Identity, resume string) error {
	h := s.hub
	id = h.completeIdentity(id)
	s.ident = id
	s.keyScope = keyScope(id)
	s.identKey = id.Role + "\x00" + id.Name
	s.expires = id.Expires
	s.info.ID = uuid.NewString()
	s.info.Role, s.info.Name, s.info.Attrs = id.Role, id.Name, id.Attrs
	s.info.Since = time.Now().UTC()
	if resume != "" {
		s.info.Resume = h.names.resumes(resume, id.Role, id.Name)
	}
	s.perms.Store(h.permissionsOf(id))
	if h.cfg.PubRate > 0 {
		s.limiter = rate.NewLimiter(rate.Limit(h.cfg.PubRate), h.cfg.PubBurst)
	}
	// Not derived from s.ctx: a child would leave s.ctx holding a map and a
	// channel for the rest of the session (a quarter of an idle session's
	// heap). Nothing can close a session before it is established.
	ctx, cancel := context.WithTimeout(context.Background(), HookTimeout)
	defer cancel()
	if err := h.names.claim(ctx, s); err != nil {
		return err
	}
	for _, fn := range h.connectHooks {
		if err := h.contain(inConnectHook, func() error { return fn(ctx, s.info) }); err != nil {
			h.names.release(s)
			return err
		}
	}
	return nil
}

// completeIdentity runs the apps' identify hooks.
func (h *Hub) completeIdentity(id Identity) Identity {
	for _, fn := range h.identifyHooks {
		_ = h.contain(inIdentifyHook, func() error { id = fn(id); return nil }) // a panic leaves id as it was
	}
	return id
}

// permissionsOf compiles id's permissions: its own, or its role's. Its own
// without a durable list (an auth file entry written before durables were
// a permission) keep the role's durable grants.
func (h *Hub) permissionsOf(id Identity) *perms {
	p := id.Perms
	if p == nil {
		p = h.policy.of(id.Role)
	} else if p.Durable == nil {
		own := *p
		own.Durable = h.policy.of(id.Role).Durable
		p = &own
	}
	return h.perms.share(p.compile(id))
}

// register makes an established session known to the hub (auth reloads,
// the sessions list, shutdown's BYE). Idempotent.
func (h *Hub) register(s *Session) {
	h.mu.Lock()
	h.sessions[s.info.ID] = s
	h.mu.Unlock()
}

// beginSession makes an established session known and announces it; its
// read loop runs next, then endSession.
func (h *Hub) beginSession(s *Session) {
	h.register(s)
	h.metrics.conns.WithLabelValues(s.info.Role).Inc()
	h.log.Debug("client connected", "id", s.info.ID, "role", s.info.Role, "name", s.info.Name, "remote", s.info.Remote, "dialect", s.info.Dialect)
	h.clientEvent("client.connected", s)
}

// endSession cleans up after a session's read loop ended with err.
func (h *Hub) endSession(s *Session, err error) {
	// Stored publishes still in flight are seen through and answered before
	// the connection closes: a client that published and said BYE has
	// its messages stored and its OKs (pipeline.go).
	s.pipe.drain()
	s.closeWith(nil, "", err)
	<-s.connDone
	s.work.Wait() // requests still running see s.ctx end
	s.cleanup()
	h.names.release(s)

	h.mu.Lock()
	delete(h.sessions, s.info.ID)
	h.mu.Unlock()
	info := s.infoSnapshot()
	h.metrics.conns.WithLabelValues(info.Role).Dec()
	for _, fn := range h.disconnectHooks {
		_ = h.contain(inDisconnectHook, func() error { fn(info); return nil })
	}
	h.clientEvent("client.disconnected", s)
	h.log.Debug("client disconnected", "id", info.ID, "name", info.Name, "reason", s.closeErr)
}

// writeNow writes directly, before the write loop exists (the handshake's
// answers, refusals).
func (s *Session) writeNow(b []byte) {
	s.conn.SetWriteDeadline(time.Now().Add(greetTimeout))
	s.conn.Write(b)
	s.conn.SetWriteDeadline(time.Time{})
}

// countError counts an error told to the client (caps_errors_total).
func (s *Session) countError(code string) {
	s.hub.metrics.errors.WithLabelValues(code).Inc()
}

// notify tells the client, in its dialect, of an error nothing it sent
// asked about (a subscription's history that could not be read, a durable
// that could not start), and counts it.
func (s *Session) notify(code, text string) {
	if b := s.dialect.notice(code, text, false); b != nil {
		s.countError(code)
		s.send(b)
	}
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
		if s.fail(protocol.CodeSlowConsumer, fmt.Sprintf("more than %d bytes waiting to be read", s.hub.cfg.MaxPending)) {
			s.hub.metrics.slowConsumers.Inc()
			info := s.infoSnapshot() // send runs on any goroutine; the read loop may be renaming the session
			s.hub.log.Warn("slow consumer disconnected", "id", info.ID, "name", info.Name, "pending_bytes", s.hub.cfg.MaxPending)
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

// handOver makes the session's end leave its connection open, for a
// session in another dialect to go on with (a connection taken for a
// classroom client while it was silent, whose first words are text). Only
// the read loop may call it, before the session closes.
func (s *Session) handOver() {
	s.mu.Lock()
	s.keepConn = true
	s.mu.Unlock()
}

// fail tells the client of a fatal error and closes the session once it is
// written. It reports whether this call closed the session (and so sent and
// counted the error); a session already closing is left alone.
func (s *Session) fail(code, text string) bool {
	return s.closeWith(s.dialect.notice(code, text, true), code, errors.New(code+": "+text))
}

// closeWith queues a last encoded frame (if any, bypassing the queue
// limit; errCode names it when it is an error, to count it), stops
// accepting more and lets the write loop flush and close the connection.
// It reports false when the session was already closing.
func (s *Session) closeWith(last []byte, errCode string, reason error) bool {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return false
	}
	s.closing = true
	s.closeErr = reason
	if errCode != "" && last != nil {
		// Counted before it can be written, so whoever reads it sees it counted.
		s.countError(errCode)
	}
	if last != nil {
		s.out = append(s.out, last)
	}
	start := !s.writing // someone must flush and close the connection
	s.writing = true
	s.mu.Unlock()
	close(s.done)
	s.cancel()
	if start {
		go s.writeLoop()
	}
	return true
}

// writeLoop writes queued frames, many per system call. send starts it when
// a frame is queued and none is running; it ends after writerLinger with
// nothing to write. When the session closes it flushes what is left (within
// a deadline) and closes the connection, which also ends the read loop.
func (s *Session) writeLoop() {
	var linger *time.Timer
	var w writeBufs
	for {
		select {
		case <-s.done:
			s.conn.SetWriteDeadline(time.Now().Add(closeFlushTimeout))
			s.flushQueue(&w)
			s.mu.Lock()
			keep := s.keepConn
			s.mu.Unlock()
			if keep {
				s.conn.SetWriteDeadline(time.Time{})
				close(s.connDone)
				return
			}
			if tc, ok := s.conn.(*net.TCPConn); ok {
				// Let the peer read the final frame before it sees the close.
				tc.CloseWrite()
			}
			s.conn.Close()
			close(s.connDone)
			return
		default:
		}
		s.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		if err := s.flushQueue(&w); err != nil {
			s.closeWith(nil, "", fmt.Errorf("write: %w", err)) // writing stays set: no other loop starts
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

// writeBufs are a write loop's own: the writev vector and, for TLS and
// WebSocket, the buffer a batch is copied into, kept from one batch to the
// next while the loop runs (an idle session, whose loop has ended, keeps
// none).
type writeBufs struct {
	iov, iovBuf net.Buffers
	wbuf        []byte
}

func (s *Session) flushQueue(w *writeBufs) error {
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

		err := s.writeBatch(batch, w)
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

func (s *Session) writeBatch(batch [][]byte, w *writeBufs) error {
	h := s.hub
	n := 0
	for _, b := range batch {
		n += len(b)
	}
	h.metrics.framesOut.Add(float64(len(batch)))
	h.metrics.bytesOut.Add(float64(n))
	if s.writer != nil {
		return s.writer.writeBatch(s, batch)
	}
	if _, ok := s.conn.(*net.TCPConn); ok {
		// writev: one system call for the batch. WriteTo consumes w.iov, so
		// the vector's storage is kept apart in w.iovBuf for the next batch.
		w.iov = append(w.iovBuf[:0], batch...)
		w.iovBuf = w.iov[:0]
		_, err := w.iov.WriteTo(s.conn)
		clear(w.iovBuf[:len(batch)]) // do not keep the frames alive
		return err
	}
	if len(batch) == 1 {
		_, err := s.conn.Write(batch[0])
		return err
	}
	buf := w.wbuf[:0]
	for _, b := range batch {
		buf = append(buf, b...)
	}
	_, err := s.conn.Write(buf)
	if cap(buf) <= 64<<10 {
		w.wbuf = buf[:0] // reuse; a burst's big buffer is let go
	} else {
		w.wbuf = nil
	}
	return err
}

// cleanup ends every subscription of a closed session; durable deliveries it
// had not acknowledged go to another member at once.
func (s *Session) cleanup() {
	s.subMu.Lock()
	live := s.live
	dur := s.dur
	s.live, s.dur = nil, nil
	s.hub.identSubs.give(s.identKey, s.nsubs)
	s.nsubs = 0
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
