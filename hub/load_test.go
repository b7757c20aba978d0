package hub_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/protocol"
)

// raiseNoFile lifts the soft limit on open files to at least need (up to
// the hard limit), skipping the test when the machine cannot allow it.
func raiseNoFile(t *testing.T, need uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("getrlimit: %v", err)
	}
	if lim.Cur >= need {
		return
	}
	if lim.Max < need {
		t.Skipf("needs %d open files; the hard limit is %d", need, lim.Max)
	}
	old := lim
	lim.Cur = need
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("setrlimit: %v", err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
}

// loadConn is one of the many connections of TestLoad.
type loadConn struct {
	c              net.Conn
	direct, bcast  atomic.Int64
	failed         atomic.Pointer[string]
	allSID, ownSID uint64
}

func (lc *loadConn) fail(why string) { lc.failed.CompareAndSwap(nil, &why) }

// TestLoad holds 5,000 connections on one hub and keeps delivering to every
// one of them while one client floods the hub, one subscribes and never
// reads, and a stream of malformed connections arrives. The assertions are
// about counts and disconnects, not timing: every connection gets every
// message meant for it and none is dropped; the non-reader alone is cut off.
func TestLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("load test: skipped with -short")
	}
	const n = 5000
	raiseNoFile(t, 2*n+2000) // both ends of every connection live in this process
	syncOff := false
	h := startHub(t, func(c *hub.Config) {
		c.SyncAlways = &syncOff // connection events are stored; this test is about sessions
		c.Heartbeat = 5 * time.Minute
		c.HandshakeTimeout = 2 * time.Second
		c.MaxPending = 1 << 20
		c.PubRate = -1
		c.MaxConns = n + 100
		c.MaxConnsPerAddr = n + 100 // every connection comes from loopback
		c.ShutdownTimeout = 30 * time.Second
	})
	addr := h.Addr().String()
	start := time.Now()
	conns := connectLoad(t, addr, n)
	t.Logf("%d connections set up in %v", n, time.Since(start))
	stopReaders := readLoad(conns)
	defer stopReaders()
	waitMetric(t, h, n, "caps_connections", "role", "client")

	tm := startTroublemakers(t, addr)
	const broadcasts = 10
	t.Run("every connection gets every message meant for it", func(t *testing.T) {
		publishLoad(t, addr, n, broadcasts)
		t.Logf("published and acknowledged at %v", time.Since(start))
		waitDelivered(t, conns, broadcasts)
		t.Logf("all delivered at %v", time.Since(start))
	})
	t.Run("the client that never reads alone is cut off", func(t *testing.T) {
		// Once its backlog passed the limit (the flood keeps coming until then).
		hubtest.Until(t, 60*time.Second, fmt.Sprintf("the client that never reads to be cut off (%d flood messages)", tm.flooded.Load()),
			func() bool { return metric(t, h, "caps_slow_consumers_total") > 0 })
		tm.stop()
		t.Logf("troublemakers done at %v", time.Since(start))
		if got := metric(t, h, "caps_slow_consumers_total"); got != 1 {
			t.Fatalf("%v slow consumers, want only the one that never reads", got)
		}
	})
	t.Run("every other connection is still there", func(t *testing.T) {
		for i, lc := range conns {
			if why := lc.failed.Load(); why != nil {
				t.Fatalf("connection %d: %s", i, *why)
			}
		}
		if got := metric(t, h, "caps_connections", "role", "client"); got < n {
			t.Fatalf("%v clients connected at the end, want at least %d", got, n)
		}
	})
	tm.stop()
	t.Logf("%d connections; %d flood messages of 16 KiB; %v bad frames, %v handshake errors",
		n, tm.flooded.Load(), metric(t, h, "caps_errors_total", "code", protocol.CodeBadFrame),
		metric(t, h, "caps_errors_total", "code", protocol.CodeHandshake))
}

// connectLoad connects, handshakes and subscribes n connections, 50 at a time.
func connectLoad(t *testing.T, addr string, n int) []*loadConn {
	t.Helper()
	conns := make([]*loadConn, n)
	var setup sync.WaitGroup
	sem := make(chan struct{}, 50)
	var setupErr atomic.Pointer[error]
	for i := range conns {
		setup.Add(1)
		sem <- struct{}{}
		go func() {
			defer setup.Done()
			defer func() { <-sem }()
			lc, err := dialLoad(addr, i)
			if err != nil {
				setupErr.CompareAndSwap(nil, &err)
				return
			}
			conns[i] = lc
		}()
	}
	setup.Wait()
	if e := setupErr.Load(); e != nil {
		for _, lc := range conns {
			if lc != nil {
				lc.c.Close()
			}
		}
		t.Fatalf("setup: %v", *e)
	}
	return conns
}

// readLoad reads every connection, counting its messages; stop closes them
// and waits for the readers.
func readLoad(conns []*loadConn) (stop func()) {
	var readers sync.WaitGroup
	var done atomic.Bool
	for _, lc := range conns {
		readers.Add(1)
		go func() {
			defer readers.Done()
			rd := protocol.NewReader(lc.c, 0)
			for {
				f, err := rd.Next()
				if err != nil {
					if !done.Load() {
						lc.fail(fmt.Sprintf("connection lost: %v", err))
					}
					return
				}
				switch {
				case f.Op == protocol.OpMsg && f.ID == lc.allSID:
					lc.bcast.Add(1)
				case f.Op == protocol.OpMsg && f.ID == lc.ownSID:
					lc.direct.Add(1)
				case f.Op == protocol.OpPing:
				default:
					lc.fail(fmt.Sprintf("unexpected %s", f))
				}
			}
		}()
	}
	return func() {
		done.Store(true)
		for _, lc := range conns {
			lc.c.Close()
		}
		readers.Wait()
	}
}

// troublemakers are the clients of TestLoad that misbehave.
type troublemakers struct {
	quit       chan struct{}
	once       sync.Once
	wg         sync.WaitGroup
	flooded    atomic.Int64
	neverReads net.Conn
}

func (tm *troublemakers) stop() {
	tm.once.Do(func() {
		close(tm.quit)
		tm.wg.Wait()
		tm.neverReads.Close()
	})
}

// startTroublemakers starts a flood of big publishes that never waits for
// anything, a subscriber to the flood that never reads, and connection
// after connection of malformed input.
func startTroublemakers(t *testing.T, addr string) *troublemakers {
	tm := &troublemakers{quit: make(chan struct{})}
	t.Cleanup(tm.stop)
	tm.wg.Add(2)
	go func() {
		defer tm.wg.Done()
		c := mustDialLoad(t, addr, "flooder")
		defer c.Close()
		go io.Copy(io.Discard, c)
		big := (&protocol.Frame{Op: protocol.OpPub, Topic: []byte("flood.big"), Payload: bytes.Repeat([]byte("f"), 16<<10)}).Encode()
		batch := bytes.Repeat(big, 16)
		for {
			select {
			case <-tm.quit:
				return
			default:
			}
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(batch); err != nil {
				t.Errorf("flooder cut off: %v", err)
				return
			}
			tm.flooded.Add(16)
		}
	}()
	tm.neverReads = mustDialLoad(t, addr, "never-reads")
	tm.neverReads.Write((&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("flood.big")}).Encode())
	go func() {
		defer tm.wg.Done()
		for {
			select {
			case <-tm.quit:
				return
			default:
			}
			if !sendMalformed(t, addr) {
				return
			}
		}
	}()
	return tm
}

// sendMalformed opens a connection for each malformed input and checks
// that the hub closes it once the client has hung up.
func sendMalformed(t *testing.T, addr string) bool {
	for _, in := range malformedInputs() {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Errorf("hub refused a connection: %v", err)
			return false
		}
		c.Write(in)
		c.(*net.TCPConn).CloseWrite() // the client hangs up: no input may keep the session
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err = io.Copy(io.Discard, c) // the hub must close it
		c.Close()
		if err != nil {
			t.Errorf("malformed input %q: connection not closed by the hub: %v", in, err)
			return false
		}
	}
	return true
}

// publishLoad publishes one message to each connection's own topic and
// broadcasts to everyone, all at once, and waits for every OK.
func publishLoad(t *testing.T, addr string, n, broadcasts int) {
	pub := mustDialLoad(t, addr, "publisher")
	defer pub.Close()
	prd := protocol.NewReader(pub, 0)
	var buf bytes.Buffer
	id := uint64(0)
	for i := range n {
		id++
		buf.Write((&protocol.Frame{Op: protocol.OpPub, ID: id, Topic: []byte(fmt.Sprintf("load.c%d", i)), Payload: []byte("yours")}).Encode())
		if i%10 == 0 && i/10 < broadcasts {
			id++
			buf.Write((&protocol.Frame{Op: protocol.OpPub, ID: id, Topic: []byte("load.all"), Payload: []byte("everyone")}).Encode())
		}
	}
	pub.SetWriteDeadline(time.Now().Add(60 * time.Second))
	if _, err := pub.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	pub.SetReadDeadline(time.Now().Add(60 * time.Second))
	for acked := uint64(0); acked < id; {
		f, err := prd.Next()
		if err != nil {
			t.Fatalf("publisher: %v after %d OKs", err, acked)
		}
		switch f.Op {
		case protocol.OpOK:
			acked++
		case protocol.OpPing:
		default:
			t.Fatalf("publisher got %s", f)
		}
	}
}

// waitDelivered waits until every connection has its one message and the
// broadcasts, failing at once on a connection lost or a message too many.
func waitDelivered(t *testing.T, conns []*loadConn, broadcasts int64) {
	i := 0
	hubtest.Eventually(t, 60*time.Second, "every message delivered", func() error {
		for ; i < len(conns); i++ {
			lc := conns[i]
			if why := lc.failed.Load(); why != nil {
				t.Fatalf("connection %d: %s", i, *why)
			}
			if lc.direct.Load() > 1 || lc.bcast.Load() > broadcasts {
				t.Fatalf("connection %d got %d direct and %d broadcast messages", i, lc.direct.Load(), lc.bcast.Load())
			}
			if lc.direct.Load() != 1 || lc.bcast.Load() != broadcasts {
				return fmt.Errorf("connection %d got %d of 1 direct and %d of %d broadcast messages", i, lc.direct.Load(), lc.bcast.Load(), broadcasts)
			}
		}
		return nil
	})
}

func dialLoad(addr string, i int) (*loadConn, error) {
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	rd := protocol.NewReader(c, 0)
	hello, _ := json.Marshal(protocol.Hello{Version: protocol.Version, Role: "client", Name: fmt.Sprintf("load%d", i)})
	var b []byte
	b = (&protocol.Frame{Op: protocol.OpHello, Payload: hello}).Append(b)
	b = (&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("load.all")}).Append(b)
	b = (&protocol.Frame{Op: protocol.OpSub, ID: 2, Topic: []byte(fmt.Sprintf("load.c%d", i))}).Append(b)
	if _, err := c.Write(b); err != nil {
		c.Close()
		return nil, err
	}
	lc := &loadConn{c: c}
	for got := 0; got < 3; {
		f, err := rd.Next()
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("connection %d: %w", i, err)
		}
		switch {
		case f.Op == protocol.OpWelcome:
		case f.Op == protocol.OpOK && f.ID == 1:
			lc.allSID = f.Seq
		case f.Op == protocol.OpOK && f.ID == 2:
			lc.ownSID = f.Seq
		default:
			c.Close()
			return nil, fmt.Errorf("connection %d: unexpected %s", i, f)
		}
		got++
	}
	if rd.Buffered() > 0 {
		c.Close()
		return nil, errors.New("unexpected frames after the setup")
	}
	c.SetDeadline(time.Time{})
	return lc, nil
}

func mustDialLoad(t *testing.T, addr, name string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Error(err)
		return nil
	}
	hello, _ := json.Marshal(protocol.Hello{Version: protocol.Version, Role: "client", Name: name})
	c.Write((&protocol.Frame{Op: protocol.OpHello, Payload: hello}).Encode())
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	f, err := protocol.NewReader(c, 0).Next()
	if err != nil || f.Op != protocol.OpWelcome {
		t.Errorf("%s: handshake: %v %v", name, f, err)
	}
	c.SetReadDeadline(time.Time{})
	return c
}

// malformedInputs are whole connections' worth of bad input, each of which
// the hub must answer (or not) and close.
func malformedInputs() [][]byte {
	hello, _ := json.Marshal(protocol.Hello{Version: protocol.Version, Role: "client", Name: "bad"})
	h := (&protocol.Frame{Op: protocol.OpHello, Payload: hello}).Encode()
	return [][]byte{
		{0xff, 0xff, 0xff, 0xff, 1, 2, 3},                            // absurd length
		{0, 0, 0, 1, 1},                                              // too short
		{0, 0, 0, 9, 0xEE, 0, 0, 0, 0, 0, 0, 0, 0},                   // unknown op
		{0, 0, 0, 9, 1, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80}, // varint runs off the end
		{0, 0, 0, 7, 1, 0, 0, 0, 9, 0, 0},                            // field longer than the frame
		(&protocol.Frame{Op: protocol.OpHello, Payload: []byte("{not json")}).Encode(),
		(&protocol.Frame{Op: protocol.OpHello, Payload: []byte(`{"version":9,"name":"x"}`)}).Encode(),
		(&protocol.Frame{Op: protocol.OpPub, Topic: []byte("before.hello")}).Encode(),
		[]byte("GET / HTTP/1.1\r\nHost: hub\r\n\r\n"),
		[]byte("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), // a TLS ClientHello on a plain port
		append(bytes.Clone(h), 0xff, 0xff, 0xff, 0xff),         // garbage after a good handshake
		append(bytes.Clone(h), (&protocol.Frame{Op: protocol.OpMsg, ID: 1}).Encode()...),
		append(bytes.Clone(h), 0, 0, 0x40, 0),             // a frame over the limit
		append(bytes.Clone(h), 0, 0, 0, 20, 3, 0),         // a frame cut short, then EOF
		[]byte(`{"event":"pickup","payload":{"orderID":`), // classroom, cut short
		[]byte(`{"event":1}{]]]`),                         // classroom garbage
		{},                                                // nothing at all
	}
}
