package client

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caps-hub/caps/protocol"
)

// maxBuffered is how many encoded bytes may wait for the socket before a
// publisher has to wait for the writer (backpressure).
const maxBuffered = 4 << 20

// bufferReleaseAfter is how many writes in a row must use less than a
// quarter of a big write buffer before the writer lets it go.
const bufferReleaseAfter = 16

// call is one request waiting for its answer.
type call struct {
	done    chan struct{} // closed on completion when fn is nil
	fn      func(*call)   // run on completion instead (from the goroutine that completes it)
	seq     uint64
	payload []byte
	err     error
	ord     uint64 // registration order of an Ack/Nak waiter
}

func newCall() *call { return &call{done: make(chan struct{})} }

func (cl *call) complete(seq uint64, payload []byte, err error) {
	cl.seq, cl.payload, cl.err = seq, payload, err
	if cl.fn != nil {
		cl.fn(cl)
		return
	}
	close(cl.done)
}

type ackKey struct{ sid, seq uint64 }

// flushWait is a Flush waiting for the PONG answering the n-th PING.
type flushWait struct {
	n  uint64
	cl *call
}

// transport is one physical connection to a hub: a read goroutine, a write
// goroutine that coalesces everything queued since its last write, and a
// heartbeat goroutine. It lives from the handshake until die; a Conn goes
// through as many transports as it needs reconnects.
type transport struct {
	c       *Conn
	conn    net.Conn
	r       *protocol.Reader
	addr    string
	welcome protocol.Welcome
	hb      time.Duration // 0: no heartbeats
	maxSend int           // largest frame body the hub accepts

	// topics interns the topics of deliveries (read goroutine only), so a
	// subscriber to a busy topic does not allocate its name for every message.
	topics map[string]string

	// write side
	wmu   sync.Mutex
	wcond *sync.Cond
	wbuf  []byte
	werr  error
	pings uint64        // PINGs queued so far (guarded by wmu)
	kick  chan struct{} // something was queued
	stop  chan struct{} // flush what is queued, then stop writing
	stopO sync.Once
	wdone chan struct{} // closed when the writer has stopped

	// calls waiting for answers
	pmu     sync.Mutex
	pending map[uint64]*call
	acks    map[ackKey][]*call
	flushes []flushWait // Flush calls waiting for the PONG to their PING, in order
	pongs   uint64      // PONGs received so far
	ackOrd  uint64      // Ack/Nak waiters registered so far
	gone    bool        // set by die under pmu: nothing may register any more

	lastRecv atomic.Int64 // unix nanoseconds
	lastSend atomic.Int64
	lastPing atomic.Int64

	dead    chan struct{} // closed by die
	deadErr error         // why; valid once dead is closed
	dieOnce sync.Once
	wg      sync.WaitGroup // read, write, heartbeat goroutines
}

func newTransport(c *Conn, nc net.Conn, r *protocol.Reader, addr string, w protocol.Welcome) *transport {
	t := &transport{
		c: c, conn: nc, r: r, addr: addr, welcome: w,
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		wdone:   make(chan struct{}),
		pending: make(map[uint64]*call),
		acks:    make(map[ackKey][]*call),
		dead:    make(chan struct{}),
		maxSend: w.MaxFrame,
	}
	t.wcond = sync.NewCond(&t.wmu)
	if t.maxSend <= 0 {
		t.maxSend = protocol.DefaultMaxFrame
	}
	switch {
	case w.HeartbeatMS > 0:
		t.hb = time.Duration(w.HeartbeatMS) * time.Millisecond
	case c.opts.HeartbeatFallback > 0:
		t.hb = c.opts.HeartbeatFallback
	}
	now := time.Now().UnixNano()
	t.lastRecv.Store(now)
	t.lastSend.Store(now)
	t.lastPing.Store(now)
	return t
}

func (t *transport) start() {
	t.wg.Add(2)
	go t.readLoop()
	go t.writeLoop()
	if t.hb > 0 {
		t.wg.Add(1)
		go t.heartbeatLoop()
	}
}

func (t *transport) isDead() bool {
	select {
	case <-t.dead:
		return true
	default:
		return false
	}
}

// die ends the transport: it detaches it from its Conn (so new calls wait for
// the next one), closes the socket and fails every pending call. It must not
// be called with Conn.mu held.
func (t *transport) die(err error) {
	t.dieOnce.Do(func() {
		t.pmu.Lock()
		t.gone = true
		t.deadErr = err
		pending, acks, flushes := t.pending, t.acks, t.flushes
		t.pending, t.acks, t.flushes = nil, nil, nil
		t.pmu.Unlock()

		t.c.detach(t)
		close(t.dead)
		t.conn.Close()

		derr := fmt.Errorf("%w: %w", ErrDisconnected, err)
		if t.c.ctx.Err() != nil {
			derr = ErrClosed // Close: the outcome is "closed", not "retry"
		}
		t.wmu.Lock()
		if t.werr == nil {
			t.werr = derr
		}
		t.wmu.Unlock()
		t.wcond.Broadcast()

		for _, cl := range pending {
			cl.complete(0, nil, derr)
		}
		for _, cls := range acks {
			for _, cl := range cls {
				cl.complete(0, nil, derr)
			}
		}
		for _, w := range flushes {
			w.cl.complete(0, nil, derr)
		}
	})
}

// enqueue queues f for the writer. With block set it waits while too much is
// already queued (publishers); control frames (block false) are always queued
// so that they can be sent while holding Conn.mu.
func (t *transport) enqueue(f *protocol.Frame, block bool) error {
	t.wmu.Lock()
	for block && t.werr == nil && len(t.wbuf) >= maxBuffered {
		t.wcond.Wait()
	}
	if t.werr != nil {
		err := t.werr
		t.wmu.Unlock()
		return err
	}
	t.wbuf = f.Append(t.wbuf)
	if f.Op == protocol.OpPing {
		t.pings++
	}
	t.wmu.Unlock()
	t.kickWriter()
	return nil
}

func (t *transport) kickWriter() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// flush queues a PING and registers cl to complete when its PONG arrives.
// PONGs are matched by count, not by id: the hub answers PINGs in order,
// and a hub that does not echo the PING's id is still understood.
func (t *transport) flush(cl *call) error {
	t.wmu.Lock()
	if t.werr != nil {
		err := t.werr
		t.wmu.Unlock()
		return err
	}
	t.wbuf = (&protocol.Frame{Op: protocol.OpPing}).Append(t.wbuf)
	t.pings++
	n := t.pings
	// Register before releasing wmu so that the PONG cannot be counted first.
	t.pmu.Lock()
	if t.gone {
		err := t.disconnectedLocked()
		t.pmu.Unlock()
		t.wmu.Unlock()
		return err
	}
	t.flushes = append(t.flushes, flushWait{n, cl})
	t.pmu.Unlock()
	t.wmu.Unlock()
	t.kickWriter()
	return nil
}

// pong counts a PONG and completes the Flush calls it answers.
func (t *transport) pong() {
	t.pmu.Lock()
	t.pongs++
	var done []*call
	i := 0
	for ; i < len(t.flushes) && t.flushes[i].n <= t.pongs; i++ {
		done = append(done, t.flushes[i].cl)
	}
	t.flushes = t.flushes[i:]
	t.pmu.Unlock()
	for _, cl := range done {
		cl.complete(0, nil, nil)
	}
}

func (t *transport) cancelFlush(cl *call) {
	t.pmu.Lock()
	defer t.pmu.Unlock()
	for i, w := range t.flushes {
		if w.cl == cl {
			t.flushes = append(t.flushes[:i:i], t.flushes[i+1:]...)
			return
		}
	}
}

func (t *transport) writeLoop() {
	defer t.wg.Done()
	defer close(t.wdone)
	var out []byte
	underused := 0 // writes in a row that used less than a quarter of a big buffer
	for {
		stopping := false
		select {
		case <-t.kick:
		case <-t.stop:
			stopping = true
		case <-t.dead:
			return
		}
		t.wmu.Lock()
		out, t.wbuf = t.wbuf, out[:0]
		t.wmu.Unlock()
		t.wcond.Broadcast()
		if len(out) > 0 {
			_ = t.conn.SetWriteDeadline(time.Now().Add(t.c.opts.WriteTimeout))
			if _, err := t.conn.Write(out); err != nil {
				t.die(fmt.Errorf("write to %s: %w", t.addr, err))
				return
			}
			t.lastSend.Store(time.Now().UnixNano())
		}
		if cap(out) > 64<<10 && len(out) < cap(out)/4 {
			// Bursts are over: let a big buffer go. A publisher that fills
			// it in bursts keeps it: growing a new one after every quiet
			// moment cost a tenth of its CPU (growslice, and the runtime
			// giving the old ones back to the OS).
			if underused++; underused >= bufferReleaseAfter {
				out, underused = nil, 0
			}
		} else {
			underused = 0
		}
		if stopping {
			return
		}
	}
}

// intern returns b as a string, allocating only for a topic not seen lately.
func (t *transport) intern(b []byte) string {
	if s, ok := t.topics[string(b)]; ok {
		return s
	}
	if t.topics == nil || len(t.topics) >= 1024 {
		t.topics = make(map[string]string)
	}
	s := string(b)
	t.topics[s] = s
	return s
}

func (t *transport) readLoop() {
	defer t.wg.Done()
	for {
		f, err := t.r.Next()
		if err != nil {
			t.die(fmt.Errorf("read from %s: %w", t.addr, err))
			return
		}
		if t.r.Buffered() == 0 {
			// Once per read from the socket, not per frame: the clock was a
			// tenth of a 100-subscriber fan-out's CPU.
			t.lastRecv.Store(time.Now().UnixNano())
		}
		t.c.handle(t, f)
	}
}

func (t *transport) heartbeatLoop() {
	defer t.wg.Done()
	tick := time.NewTicker(max(t.hb/4, time.Millisecond))
	defer tick.Stop()
	hb := t.hb.Nanoseconds()
	for {
		select {
		case <-t.dead:
			return
		case <-tick.C:
		}
		now := time.Now().UnixNano()
		idleRecv := now - t.lastRecv.Load()
		if idleRecv >= 2*hb {
			t.die(fmt.Errorf("heartbeat: nothing from %s for %v", t.addr, time.Duration(idleRecv).Round(time.Millisecond)))
			return
		}
		if now-t.lastSend.Load() >= hb || (idleRecv >= hb && now-t.lastPing.Load() >= hb/2) {
			t.lastPing.Store(now)
			_ = t.enqueue(&protocol.Frame{Op: protocol.OpPing}, false)
		}
	}
}

// register records a call waiting for the answer with correlation id.
func (t *transport) register(id uint64, cl *call) error {
	t.pmu.Lock()
	defer t.pmu.Unlock()
	if t.gone {
		return t.disconnectedLocked()
	}
	t.pending[id] = cl
	return nil
}

func (t *transport) disconnectedLocked() error {
	if t.c.ctx.Err() != nil {
		return ErrClosed
	}
	return fmt.Errorf("%w: %w", ErrDisconnected, t.deadErr)
}

func (t *transport) unregister(id uint64) {
	t.pmu.Lock()
	if t.pending != nil {
		delete(t.pending, id)
	}
	t.pmu.Unlock()
}

// complete finishes the call with correlation id, reporting whether there was one.
func (t *transport) complete(id, seq uint64, payload []byte, err error) bool {
	t.pmu.Lock()
	cl := t.pending[id]
	if cl != nil {
		delete(t.pending, id)
	}
	t.pmu.Unlock()
	if cl == nil {
		return false
	}
	cl.complete(seq, payload, err)
	return true
}

func (t *transport) registerAck(k ackKey, cl *call) error {
	t.pmu.Lock()
	defer t.pmu.Unlock()
	if t.gone {
		return t.disconnectedLocked()
	}
	t.ackOrd++
	cl.ord = t.ackOrd
	t.acks[k] = append(t.acks[k], cl)
	return nil
}

func (t *transport) unregisterAck(k ackKey, cl *call) {
	t.pmu.Lock()
	defer t.pmu.Unlock()
	cls := t.acks[k]
	for i, c := range cls {
		if c == cl {
			cls = append(cls[:i:i], cls[i+1:]...)
			break
		}
	}
	if len(cls) == 0 {
		delete(t.acks, k)
	} else {
		t.acks[k] = cls
	}
}

// completeAck finishes every Ack/Nak waiting for (sid, seq).
func (t *transport) completeAck(k ackKey, err error) bool {
	t.pmu.Lock()
	cls := t.acks[k]
	delete(t.acks, k)
	t.pmu.Unlock()
	for _, cl := range cls {
		cl.complete(k.seq, nil, err)
	}
	return len(cls) > 0
}

// failAckBySid fails the oldest Ack/Nak waiting on sid: an ERR answering an
// ACK carries the sid but no sequence, and the hub answers in order.
func (t *transport) failAckBySid(sid uint64, err error) bool {
	t.pmu.Lock()
	var found *call
	var fk ackKey
	for k, cls := range t.acks {
		if k.sid == sid && len(cls) > 0 && (found == nil || cls[0].ord < found.ord) {
			found, fk = cls[0], k
		}
	}
	if found != nil {
		if cls := t.acks[fk][1:]; len(cls) == 0 {
			delete(t.acks, fk)
		} else {
			t.acks[fk] = cls
		}
	}
	t.pmu.Unlock()
	if found == nil {
		return false
	}
	found.complete(fk.seq, nil, err)
	return true
}

// shutdown says BYE, flushes what is queued (waiting at most timeout) and
// kills the transport with err, then waits for its goroutines.
func (t *transport) shutdown(reason string, timeout time.Duration, err error) {
	if t.enqueue(&protocol.Frame{Op: protocol.OpBye, Payload: []byte(reason)}, false) == nil {
		t.stopO.Do(func() { close(t.stop) })
		timer := time.NewTimer(timeout)
		select {
		case <-t.wdone:
		case <-t.dead:
		case <-timer.C:
		}
		timer.Stop()
	}
	t.die(err)
	t.wg.Wait()
}
