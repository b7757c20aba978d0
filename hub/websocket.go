package hub

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// serveWebSocket accepts the CAPS protocol as binary WebSocket messages at
// /ws: the same frames, handshake, permissions and limits as on the TCP port
// (serveConn runs it like any connection, only never in the classroom
// dialect). Browsers are held to Config.AllowedOrigins: by default only
// pages served by the hub itself may connect; clients that send no Origin
// header (not browsers) are not affected. A browser must also reach the hub
// by a host name it serves (Config.HTTPHosts).
func (h *Hub) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	if h.stopping.Load() {
		http.Error(w, "hub shutting down", http.StatusServiceUnavailable)
		return
	}
	if r.Header.Get("Origin") != "" && !h.hosts.allows(r.Host) {
		// A browser that reached us by a name we do not serve: a page
		// whose own name was made to resolve here (DNS rebinding).
		h.log.Info("websocket refused: a browser reached the hub by a host name it does not serve (add it with --http-hosts if it is yours)", "remote", r.RemoteAddr, "host", r.Host, "origin", r.Header.Get("Origin"))
		writeProblem(w, http.StatusForbidden, "Unknown host",
			fmt.Sprintf("this hub does not serve the host name %q to browsers; an operator adds it with --http-hosts", r.Host))
		return
	}
	// Counted before the upgrade, while the HTTP server still tracks this
	// request: its Shutdown then returns only after the count includes us,
	// so the hub's drain (closeSessions) waits for this session too.
	h.conns.Add(1)
	defer h.conns.Done()
	opts := &websocket.AcceptOptions{OriginPatterns: h.cfg.AllowedOrigins}
	for _, o := range h.cfg.AllowedOrigins {
		if o == "*" {
			opts.InsecureSkipVerify = true
		}
	}
	c, err := websocket.Accept(w, r, opts)
	if err != nil {
		// Accept has answered (403 for a foreign origin, 426 without an upgrade…).
		h.log.Debug("websocket refused", "remote", r.RemoteAddr, "origin", r.Header.Get("Origin"), "err", err)
		return
	}
	// A message may carry many frames and a frame may in principle span
	// messages: NetConn makes the messages one byte stream (and lifts the
	// message size limit), and protocol.Reader enforces MaxFrame per frame,
	// exactly as on TCP.
	nc := websocket.NetConn(r.Context(), c, websocket.MessageBinary)
	h.serveConn(&wsConn{Conn: nc}, transportWebSocket)
}

// wsConn gives a WebSocket connection the read deadline that serveConn uses
// for the handshake. websocket.NetConn closes the connection when a read
// deadline passes during a read, which would swallow the handshake_timeout
// error the hub sends then; here the read returns a timeout instead, the
// read itself carries on in the background, and the connection stays usable.
type wsConn struct {
	net.Conn
	mu       sync.Mutex
	deadline time.Time
	pending  chan wsRead // the background read, if one is running
	rest     []byte      // what it read beyond what its caller could take
}

type wsRead struct {
	b   []byte
	err error
}

func (c *wsConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return nil
}

func (c *wsConn) SetDeadline(t time.Time) error {
	_ = c.SetReadDeadline(t)
	return c.Conn.SetWriteDeadline(t)
}

func (c *wsConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	deadline := c.deadline
	c.mu.Unlock()
	if len(c.rest) > 0 {
		n := copy(p, c.rest)
		c.rest = c.rest[n:]
		return n, nil
	}
	if deadline.IsZero() && c.pending == nil {
		return c.Conn.Read(p)
	}
	if c.pending == nil {
		c.pending = make(chan wsRead, 1)
		ch, size := c.pending, len(p)
		go func() {
			b := make([]byte, size)
			n, err := c.Conn.Read(b)
			ch <- wsRead{b[:n], err}
		}()
	}
	var expired <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		expired = t.C
	}
	select {
	case r := <-c.pending:
		c.pending = nil
		n := copy(p, r.b)
		c.rest = r.b[n:]
		return n, r.err
	case <-expired:
		return 0, os.ErrDeadlineExceeded
	}
}
