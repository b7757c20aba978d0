package client

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caps-hub/caps/protocol"
)

// firstID is the first correlation id a Conn uses. Correlation ids and sids
// are separate number spaces, yet the ERR answering an ACK, NAK or UNSUB
// carries a sid in the same id field as the ERR answering a PUB, SUB or REQ
// carries a correlation id. Hubs number sids from 1; starting correlation ids
// far above that keeps the two apart in practice (the cost is two bytes per
// request frame).
const firstID = 1 << 20

// byeTimeout bounds the final flush of Close.
const byeTimeout = 2 * time.Second

// Conn is a connection to a CAPS hub that reconnects by itself. Create it
// with Dial; release it with Close.
type Conn struct {
	opts Options
	log  *slog.Logger
	eps  []endpoint
	next int // index into eps of the next address to try (connecting goroutine only)

	ids atomic.Uint64
	cur atomic.Pointer[transport] // the live transport, nil while reconnecting

	mu      sync.Mutex
	t       *transport    // same as cur
	wake    chan struct{} // closed when a transport is installed or the Conn closes
	welcome protocol.Welcome
	addr    string // address of the current or last hub
	resume  string // resume token of the last WELCOME, sent back in the next HELLO
	subs    subTable
	closed  bool
	err     error

	ctx       context.Context // canceled by Close
	cancel    context.CancelFunc
	done      chan struct{}
	doneOnce  sync.Once
	closeOnce sync.Once
	superDone chan struct{}

	stMu      sync.Mutex
	state     State
	stQueue   []event
	stRunning bool
}

// Dial connects to one of addrs and performs the handshake. Addresses are
// "host:port", "host" (port 3000), "caps://host:port" or "tls://host:port"
// (TLS); see Options.Dialer for other schemes. They are tried in turn with
// backoff (Options.ReconnectMin/Max) until one answers WELCOME or ctx is
// done; with NoReconnect each is tried once. A hub that refuses the identity
// (ERR unauthorized, name_taken or handshake) ends Dial at once with that
// *protocol.Error; a pass over the list in which a hub's TLS certificate
// failed verification (and none answered) ends it too. ctx bounds only the
// dial: once Dial has returned, the Conn lives until Close.
func Dial(ctx context.Context, addrs []string, opts Options) (*Conn, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, errors.New("caps client: no hub address")
	}
	c := &Conn{
		opts:      opts,
		log:       opts.Logger,
		wake:      make(chan struct{}),
		subs:      newSubTable(),
		done:      make(chan struct{}),
		superDone: make(chan struct{}),
		state:     -1,
	}
	c.ids.Store(firstID - 1)
	for _, a := range addrs {
		ep, err := parseEndpoint(a, opts.TLS != nil, opts.Dialer != nil)
		if err != nil {
			return nil, fmt.Errorf("caps client: %w", err)
		}
		c.eps = append(c.eps, ep)
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.setState(StateConnecting)

	t, err := c.connectLoop(ctx, true)
	if err != nil {
		c.cancel()
		close(c.superDone)
		c.finish(err)
		return nil, err
	}
	c.install(t)
	c.setState(StateConnected)
	go c.supervise(t)
	return c, nil
}

// connectLoop tries the addresses in turn until one succeeds, ctx is done,
// or a refusal that retrying cannot fix.
func (c *Conn) connectLoop(ctx context.Context, initial bool) (*transport, error) {
	n := len(c.eps)
	var errs []error
	certFailed := false // in this pass, a hub's certificate was refused
	for attempt := 0; ; attempt++ {
		if initial && attempt > 0 && attempt%n == 0 {
			if certFailed {
				// Retrying will not make a certificate valid: say so now.
				return nil, fmt.Errorf("caps client: no hub reachable: %w", errors.Join(errs...))
			}
		}
		if c.opts.NoReconnect && attempt >= n {
			return nil, fmt.Errorf("caps client: no hub reachable: %w", errors.Join(errs...))
		}
		if d := backoff(attempt, n, c.opts.ReconnectMin, c.opts.ReconnectMax, initial); d > 0 {
			timer := time.NewTimer(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				return nil, c.giveUp(ctx, errs)
			case <-c.ctx.Done():
				timer.Stop()
				return nil, ErrClosed
			}
		}
		ep := c.eps[c.next%n]
		c.next = (c.next + 1) % n
		t, err := c.connect(ctx, ep)
		if err == nil {
			return t, nil
		}
		if c.ctx.Err() != nil {
			return nil, ErrClosed
		}
		if expired(ctx) {
			if len(errs) == 0 {
				errs = append(errs, err)
			}
			return nil, c.giveUp(ctx, errs)
		}
		if handshakeFatal(err, initial, c.opts.RetryNameTaken) {
			return nil, err
		}
		var cve *tls.CertificateVerificationError
		certFailed = certFailed || errors.As(err, &cve)
		c.log.Warn("caps: connect failed", "hub", ep.raw, "attempt", attempt+1, "err", err)
		if len(errs) < n {
			errs = append(errs, err)
		} else {
			errs[attempt%n] = err
		}
	}
}

func (c *Conn) giveUp(ctx context.Context, errs []error) error {
	cerr := ctx.Err()
	if cerr == nil {
		cerr = context.DeadlineExceeded // expired, the timer has not fired yet
	}
	if len(errs) == 0 {
		return fmt.Errorf("caps client: connect: %w", cerr)
	}
	return fmt.Errorf("caps client: connect: %w (last errors: %w)", cerr, errors.Join(errs...))
}

// expired reports whether ctx is done or past its deadline (a context's
// timer may fire a little after the deadline, while a dial already failed
// because of it).
func expired(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// connect dials ep and performs the handshake.
func (c *Conn) connect(ctx context.Context, ep endpoint) (*transport, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.DialTimeout)
	defer cancel()
	var nc net.Conn
	var err error
	if c.opts.Dialer != nil {
		nc, err = c.opts.Dialer(ctx, ep.addr)
	} else {
		var d net.Dialer
		nc, err = d.DialContext(ctx, "tcp", ep.addr)
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", ep.raw, err)
	}
	if ep.tls {
		cfg := &tls.Config{}
		if c.opts.TLS != nil {
			cfg = c.opts.TLS.Clone()
		}
		if cfg.ServerName == "" && !cfg.InsecureSkipVerify {
			if host, _, err := net.SplitHostPort(ep.addr); err == nil {
				cfg.ServerName = host
			}
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("tls %s: %w", ep.raw, err)
		}
		nc = tc
	}
	// The context bounds the handshake through the socket deadline.
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	w, r, err := c.handshake(nc)
	if !stop() {
		err = ctx.Err()
		if c.ctx.Err() != nil {
			err = ErrClosed
		}
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("handshake with %s: %w", ep.raw, err)
	}
	_ = nc.SetDeadline(time.Time{})
	c.log.Info("caps: connected", "hub", ep.raw, "hub_name", w.Hub, "session", w.Session, "resumed", w.Resumed)
	return newTransport(c, nc, r, ep.raw, w), nil
}

func (c *Conn) handshake(nc net.Conn) (protocol.Welcome, *protocol.Reader, error) {
	var w protocol.Welcome
	c.mu.Lock()
	hello := protocol.Hello{
		Version: protocol.Version,
		Role:    c.opts.Role,
		Name:    c.opts.Name,
		Token:   c.opts.Token,
		Resume:  c.resume,
	}
	c.mu.Unlock()
	payload, err := json.Marshal(hello)
	if err != nil {
		return w, nil, err
	}
	f := protocol.Frame{Op: protocol.OpHello, Payload: payload}
	if _, err := nc.Write(f.Encode()); err != nil {
		return w, nil, err
	}
	r := protocol.NewReader(nc, c.opts.MaxFrame)
	in, err := r.Next()
	if err != nil {
		return w, nil, err
	}
	switch in.Op {
	case protocol.OpWelcome:
		if err := json.Unmarshal(in.Payload, &w); err != nil {
			return w, nil, fmt.Errorf("bad WELCOME: %w", err)
		}
		return w, r, nil
	case protocol.OpErr:
		return w, nil, protocol.AsError(in)
	case protocol.OpBye:
		return w, nil, fmt.Errorf("%w: %s", ErrHubClosing, in.Payload)
	}
	return w, nil, fmt.Errorf("expected WELCOME, got %s", in.Op)
}

// install makes t the current transport and subscribes again to everything.
// It reports false (and leaves t alone) when the Conn was closed meanwhile.
func (c *Conn) install(t *transport) bool {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false
	}
	t.start()
	c.t = t
	c.cur.Store(t)
	c.welcome = t.welcome
	c.resume = t.welcome.Resume
	c.addr = t.addr
	c.subs.resubscribe(c, t)
	close(c.wake)
	c.mu.Unlock()
	return true
}

// detach is called by a dying transport: later calls wait for the next one.
func (c *Conn) detach(t *transport) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.t != t {
		return
	}
	c.t = nil
	c.cur.Store(nil)
	if !c.closed {
		c.wake = make(chan struct{})
	}
	c.subs.lost(t)
}

// supervise watches the current transport and replaces it when it dies.
func (c *Conn) supervise(t *transport) {
	defer close(c.superDone)
	for {
		select {
		case <-t.dead:
		case <-c.ctx.Done():
			return
		}
		t.wg.Wait()
		if c.ctx.Err() != nil {
			return
		}
		c.log.Warn("caps: connection lost", "hub", t.addr, "err", t.deadErr)
		if c.opts.NoReconnect {
			c.terminate(t.deadErr)
			return
		}
		c.setState(StateReconnecting)
		nt, err := c.connectLoop(c.ctx, false)
		if err != nil {
			if c.ctx.Err() == nil {
				c.log.Error("caps: giving up", "err", err)
				c.terminate(err)
			}
			return
		}
		if !c.install(nt) {
			nt.conn.Close() // never started
			return
		}
		c.setState(StateConnected)
		t = nt
	}
}

// terminate ends the Conn because of err (not a Close).
func (c *Conn) terminate(err error) {
	c.mu.Lock()
	c.markClosedLocked(err)
	c.mu.Unlock()
	c.cancel()
	c.finish(err)
}

func (c *Conn) markClosedLocked(err error) {
	if c.closed {
		return
	}
	c.closed = true
	c.err = err
	c.subs.closeAll(c)
	select {
	case <-c.wake:
	default:
		close(c.wake)
	}
}

func (c *Conn) finish(err error) {
	c.doneOnce.Do(func() {
		c.mu.Lock()
		if c.err == nil {
			c.err = err
		}
		c.closed = true
		c.mu.Unlock()
		c.setState(StateClosed)
		close(c.done)
	})
}

// Close says BYE to the hub, closes the connection and ends every
// subscription. Handlers that are running when Close is called finish
// running; no new one is started. Close returns once every goroutine of the
// Conn has stopped, except for those handlers. It is safe to call more than
// once, and from a handler or an OnState callback.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.markClosedLocked(ErrClosed)
		t := c.t
		c.mu.Unlock()
		c.cancel()
		if t != nil {
			t.shutdown("client closing", byeTimeout, ErrClosed)
		}
		<-c.superDone
		c.finish(ErrClosed)
	})
	return nil
}

// Done is closed when the Conn is finished: after Close, or when it gave up
// (NoReconnect, or the hub refused the identity on a reconnect).
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err reports why the Conn is finished: nil while it is alive, ErrClosed
// after Close, or the error that ended it.
func (c *Conn) Err() error {
	select {
	case <-c.done:
	default:
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Welcome returns the WELCOME of the current (or last) connection.
func (c *Conn) Welcome() protocol.Welcome {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.welcome
}

// Addr returns the address of the hub currently (or last) connected to.
func (c *Conn) Addr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addr
}

// State returns the connection state.
func (c *Conn) State() State {
	c.stMu.Lock()
	defer c.stMu.Unlock()
	return c.state
}

// Name returns the name announced in HELLO (generated when Options.Name was empty).
func (c *Conn) Name() string { return c.opts.Name }

func (c *Conn) setState(s State) {
	c.stMu.Lock()
	defer c.stMu.Unlock()
	if c.state == StateClosed || c.state == s {
		return
	}
	c.state = s
	c.log.Debug("caps: state", "state", s)
	if c.opts.OnState != nil {
		c.queueEventLocked(event{state: s, isState: true})
	}
}

// event is a state change or an asynchronous error for the callbacks.
type event struct {
	isState bool
	state   State
	err     error
}

// maxQueuedErrors bounds the errors waiting for OnError; more are only logged.
const maxQueuedErrors = 256

func (c *Conn) queueEventLocked(e event) {
	if !e.isState && len(c.stQueue) >= maxQueuedErrors {
		return
	}
	c.stQueue = append(c.stQueue, e)
	if !c.stRunning {
		c.stRunning = true
		go c.notify()
	}
}

// notify runs the callbacks in order from a goroutine that exists only while
// there is something to deliver, so that a callback may block or call Close.
func (c *Conn) notify() {
	for {
		c.stMu.Lock()
		if len(c.stQueue) == 0 {
			c.stRunning = false
			c.stMu.Unlock()
			return
		}
		e := c.stQueue[0]
		c.stQueue = c.stQueue[1:]
		c.stMu.Unlock()
		if e.isState {
			c.opts.OnState(e.state)
		} else {
			c.opts.OnError(e.err)
		}
	}
}

func (c *Conn) nextID() uint64 { return c.ids.Add(1) }

// transport returns the live transport, waiting for a reconnect if needed.
func (c *Conn) transport(ctx context.Context) (*transport, error) {
	if t := c.cur.Load(); t != nil && !t.isDead() {
		return t, nil
	}
	for {
		c.mu.Lock()
		t, wake, closed := c.t, c.wake, c.closed
		c.mu.Unlock()
		if closed {
			return nil, ErrClosed
		}
		if t != nil {
			if !t.isDead() {
				return t, nil
			}
			// die is detaching it right now.
			select {
			case <-t.dead:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			continue
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// handle processes one frame from the hub (read goroutine).
func (c *Conn) handle(t *transport, f *protocol.Frame) {
	switch f.Op {
	case protocol.OpMsg:
		c.deliver(t, f)
	case protocol.OpOK:
		if f.Flags&protocol.FlagConfirm != 0 {
			if !t.completeAck(ackKey{f.ID, f.Seq}, nil) {
				c.log.Debug("caps: unexpected confirm", "sid", f.ID, "seq", f.Seq)
			}
			return
		}
		if !t.complete(f.ID, f.Seq, nil, nil) {
			c.log.Debug("caps: OK for no pending call", "id", f.ID)
		}
	case protocol.OpReply:
		t.complete(f.ID, 0, clone(f.Payload), nil)
	case protocol.OpErr:
		perr := protocol.AsError(f)
		handled := false
		if f.ID != 0 {
			// An ERR answering ACK/NAK carries the sid in id, like the ERR
			// answering a request carries its correlation id (see firstID).
			// Should a hub put the sequence in seq, it is used.
			if f.Seq != 0 {
				handled = t.completeAck(ackKey{f.ID, f.Seq}, perr)
			}
			if !handled && f.Flags&protocol.FlagConfirm != 0 {
				handled = t.failAckBySid(f.ID, perr)
			}
			handled = handled || t.complete(f.ID, 0, nil, perr) || t.failAckBySid(f.ID, perr)
		}
		if !handled {
			c.asyncError(fmt.Errorf("hub %s: ERR id=%d: %w", t.addr, f.ID, perr))
		}
		if perr.Fatal {
			t.die(fmt.Errorf("hub %s: %w", t.addr, perr))
		}
	case protocol.OpPing:
		_ = t.enqueue(&protocol.Frame{Op: protocol.OpPong, ID: f.ID}, false)
	case protocol.OpPong:
		t.pong()
	case protocol.OpBye:
		c.log.Info("caps: hub said bye", "hub", t.addr, "reason", string(f.Payload))
		t.die(fmt.Errorf("%w: %s", ErrHubClosing, f.Payload))
	default:
		c.log.Debug("caps: unexpected frame", "op", f.Op)
	}
}

func (c *Conn) asyncError(err error) {
	c.log.Warn("caps: async error", "err", err)
	if c.opts.OnError != nil {
		c.stMu.Lock()
		c.queueEventLocked(event{err: err})
		c.stMu.Unlock()
	}
}

func clone(b []byte) []byte {
	if len(b) == 0 {
		return []byte{}
	}
	c := make([]byte, len(b))
	copy(c, b)
	return c
}
