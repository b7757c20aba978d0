package hostile_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/auth"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/protocol"
)

// httpConn is one raw HTTP/1.1 connection, kept alive between requests.
type httpConn struct {
	t    *testing.T
	c    net.Conn
	br   *bufio.Reader
	host string
}

// httpDial connects to addr, from the local IP address from if given (any
// of 127.0.0.0/8 works on loopback).
func httpDial(t *testing.T, addr, from string) *httpConn {
	t.Helper()
	d := net.Dialer{Timeout: wait}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &httpConn{t: t, c: c, br: bufio.NewReader(c), host: addr}
}

// get sends a request with extra header lines and reads the response; an
// error means the hub closed the connection without one.
func (h *httpConn) get(path string, header ...string) (*http.Response, string, error) {
	h.c.SetDeadline(time.Now().Add(wait))
	defer h.c.SetDeadline(time.Time{})
	req := "GET " + path + " HTTP/1.1\r\nHost: " + h.host + "\r\n" + strings.Join(append(header, ""), "\r\n") + "\r\n"
	if _, err := io.WriteString(h.c, req); err != nil {
		return nil, "", err
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

// mustGet is get that fails the test without a response of status want.
func (h *httpConn) mustGet(want int, path string, header ...string) (*http.Response, string) {
	h.t.Helper()
	resp, body, err := h.get(path, header...)
	if err != nil {
		h.t.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode != want {
		h.t.Fatalf("GET %s: %d %s, want %d", path, resp.StatusCode, body, want)
	}
	return resp, body
}

// closed reports whether the hub has closed the connection (a read ends
// without data before the deadline).
func (h *httpConn) closed(within time.Duration) bool {
	h.c.SetReadDeadline(time.Now().Add(within))
	defer h.c.SetReadDeadline(time.Time{})
	_, err := h.br.ReadByte()
	return isClosed(err)
}

// problem checks an RFC 9457 problem response.
func problem(t *testing.T, resp *http.Response, body string, status int) {
	t.Helper()
	var p struct {
		Status int    `json:"status"`
		Title  string `json:"title"`
		Detail string `json:"detail"`
	}
	if resp.StatusCode != status || resp.Header.Get("Content-Type") != "application/problem+json" ||
		json.Unmarshal([]byte(body), &p) != nil || p.Status != status || p.Detail == "" {
		t.Errorf("want a %d problem document; got %d %s %s", status, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
}

// Before: 1,000 idle keep-alive connections stayed open over 90 s and
// counted towards nothing. Now the HTTP port holds at most
// --http-max-conns; past that a connection gets health checks only while
// a small headroom lasts, and is closed at once after.
func TestHTTPConnectionsAreLimited(t *testing.T) {
	const max = 30
	tg := startTarget(t, setup{hub: func(c *hub.Config) { c.HTTPMaxConns = max }})
	for range max {
		httpDial(t, tg.http, "").mustGet(http.StatusOK, "/caps.js") // kept alive, idle
	}
	// Full: another client gets a problem document, a health check an answer.
	over := httpDial(t, tg.http, "")
	resp, body, err := over.get("/caps.js")
	if err != nil {
		t.Fatalf("a connection over the limit got no answer: %v", err)
	}
	problem(t, resp, body, http.StatusServiceUnavailable)
	if !resp.Close || !over.closed(wait) {
		t.Error("a connection over the limit was kept open after its answer")
	}
	httpDial(t, tg.http, "").mustGet(http.StatusOK, "/readyz")
	httpDial(t, tg.http, "").mustGet(http.StatusOK, "/healthz")
	// Silent connections take the headroom, each for as long as a request
	// header may take (5 s: these dials take milliseconds); the next one
	// is closed at once, unanswered.
	var silent []*httpConn
	for range 16 {
		silent = append(silent, httpDial(t, tg.http, ""))
	}
	if _, _, err := httpDial(t, tg.http, "").get("/healthz"); err == nil {
		t.Error("a connection past the limit and its headroom was served")
	}
	for _, h := range silent {
		h.c.Close() // the headroom again, for the scrape, once the hub sees them go
	}
	var metrics string
	hubtest.Eventually(t, wait, "a scrape on the headroom", func() error {
		resp, err := (&http.Client{Timeout: wait}).Get("http://" + tg.http + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		metrics = string(b)
		return err
	})
	if v, _ := sample(metrics, `caps_http_connections_refused_total{limit="total"}`); v < 4 {
		t.Errorf(`caps_http_connections_refused_total{limit="total"} = %v, want at least 4`, v)
	}
}

// Idle keep-alive connections are closed after --http-idle-timeout, and
// give their places back.
func TestHTTPIdleConnectionsClosed(t *testing.T) {
	tg := startTarget(t, setup{hub: func(c *hub.Config) { c.HTTPIdleTimeout = 300 * time.Millisecond }})
	var idle []*httpConn
	for range 50 {
		h := httpDial(t, tg.http, "")
		h.mustGet(http.StatusOK, "/healthz")
		idle = append(idle, h)
	}
	for i, h := range idle {
		if !h.closed(wait) {
			t.Fatalf("idle keep-alive connection %d still open", i)
		}
	}
	// Only the scrape's own connection is left.
	hubtest.Until(t, wait, "the places given back", func() bool {
		v, _ := tg.metric(t, "caps_http_connections")
		return v == 1
	})
}

// One address may hold only --http-max-conns-per-addr connections
// (WebSocket sessions included); others are not affected.
func TestHTTPConnectionsPerAddress(t *testing.T) {
	tg := startTarget(t, setup{hub: func(c *hub.Config) { c.HTTPMaxConnsPerAddr = 5 }})
	for range 5 {
		httpDial(t, tg.http, "127.0.0.1").mustGet(http.StatusOK, "/caps.js")
	}
	resp, body, err := httpDial(t, tg.http, "127.0.0.1").get("/caps.js")
	if err != nil {
		t.Fatal(err)
	}
	problem(t, resp, body, http.StatusServiceUnavailable)
	resp, body, err = httpDial(t, tg.http, "127.0.0.1").get("/ws", "Connection: Upgrade", "Upgrade: websocket",
		"Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
	if err != nil {
		t.Fatal(err)
	}
	problem(t, resp, body, http.StatusServiceUnavailable)
	httpDial(t, tg.http, "127.0.0.1").mustGet(http.StatusOK, "/healthz") // health checks still answer
	httpDial(t, tg.http, "127.0.0.2").mustGet(http.StatusOK, "/caps.js") // another address is served
	// Read from a third address, which is not over its limit.
	_, body = httpDial(t, tg.http, "127.0.0.3").mustGet(http.StatusOK, "/metrics")
	if v, _ := sample(body, `caps_http_connections_refused_total{limit="per_address"}`); v != 3 {
		t.Errorf(`caps_http_connections_refused_total{limit="per_address"} = %v, want 3`, v)
	}
}

// Before: the HTTP server took request headers up to 1 MB. Now 16 KiB.
func TestHTTPHeaderLimit(t *testing.T) {
	tg := startTarget(t, setup{})
	h := httpDial(t, tg.http, "")
	resp, _, err := h.get("/healthz", "X-Junk: "+strings.Repeat("j", 64<<10))
	// The hub answers and closes while the header is still coming: the
	// response may be followed by a reset.
	if resp == nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("a 64 KiB header: %v %v, want 431", resp, err)
	}
}

// A WebSocket session is not an HTTP request: the port's request timeouts
// must not cut it.
func TestWebSocketOutlivesRequestTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	tg := startTarget(t, setup{hub: func(c *hub.Config) { c.HTTPRequestTimeout = timeout }})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+tg.http+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	t.Cleanup(func() { nc.Close() })
	w := &wire{t: t, c: nc, rd: protocol.NewReader(nc, 0)}
	w.hello(protocol.RoleClient, "ws", "")
	end := time.Now().Add(4 * timeout)
	for time.Now().Before(end) { // a session in constant use, past the timeouts
		w.send(&protocol.Frame{Op: protocol.OpPing})
		w.until("PONG", func(f *protocol.Frame) bool { return f.Op == protocol.OpPong })
	}
}

// upgrade asks for a WebSocket with this Host and Origin and returns the status.
func upgrade(t *testing.T, addr, host, origin string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+addr+"/ws", nil)
	req.Host = host
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	resp, err := (&http.Client{Timeout: wait}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Before: a WebSocket upgrade whose Origin equalled its Host was accepted
// for any host name, so a page whose own name was made to resolve to the
// hub (DNS rebinding) could open sessions as the visitor's browser. Now a
// browser must reach the hub by a name it serves.
func TestWebSocketDNSRebindingRefused(t *testing.T) {
	tg := startTarget(t, setup{hub: func(c *hub.Config) { c.HTTPHosts = []string{"caps.example.com", "*.caps.example.org"} }})
	_, port, _ := net.SplitHostPort(tg.http)
	for _, c := range []struct {
		host string
		want int
	}{
		{"rebind.evil.example:" + port, http.StatusForbidden},
		{"evil.example", http.StatusForbidden},
		{"localhost:" + port, http.StatusSwitchingProtocols},
		{"127.0.0.1:" + port, http.StatusSwitchingProtocols},
		{"[::1]:" + port, http.StatusSwitchingProtocols},
		{"caps.example.com:" + port, http.StatusSwitchingProtocols},
		{"CAPS.example.com.:" + port, http.StatusSwitchingProtocols},
		{"eu.caps.example.org:" + port, http.StatusSwitchingProtocols},
		{"caps.example.org.evil.example:" + port, http.StatusForbidden},
	} {
		if got := upgrade(t, tg.http, c.host, "http://"+c.host); got != c.want {
			t.Errorf("Host and Origin %s: %d, want %d", c.host, got, c.want)
		}
	}
	// Programs send no Origin and are not browsers: no rebinding to fear.
	if got := upgrade(t, tg.http, "anything.example", ""); got != http.StatusSwitchingProtocols {
		t.Errorf("no Origin: %d, want 101", got)
	}
}

// Before: /metrics was open to anyone. With --auth it now takes the token
// of an admin or a logger (or is open or off, as the operator says).
func TestMetricsAccess(t *testing.T) {
	withAuth, tok := withTokens(t,
		auth.Entry{Name: "audit", Role: protocol.RoleLogger},
		auth.Entry{Name: "ops", Role: protocol.RoleAdmin},
		auth.Entry{Name: "dana", Role: protocol.RoleDriver},
	)
	tg := startTarget(t, setup{hub: withAuth})
	url := "http://" + tg.http + "/metrics"
	for _, c := range []struct {
		who, token string
		want       int
	}{
		{"nobody", "", http.StatusUnauthorized},
		{"a wrong token", "caps_wrong", http.StatusUnauthorized},
		{"a driver", tok["dana"], http.StatusForbidden},
		{"a logger", tok["audit"], http.StatusOK},
		{"an admin", tok["ops"], http.StatusOK},
	} {
		status, body := get(t, url, c.token)
		if status != c.want {
			t.Errorf("/metrics for %s: %d, want %d", c.who, status, c.want)
		}
		if c.want == http.StatusOK && !strings.Contains(body, "caps_sockets_open") {
			t.Errorf("/metrics for %s: no metrics in %.80q", c.who, body)
		}
	}
	if status, _ := get(t, "http://"+tg.http+"/readyz", ""); status != http.StatusOK {
		t.Errorf("/readyz needs no token: %d", status)
	}

	open := startTarget(t, setup{hub: func(c *hub.Config) { withAuth(c); c.MetricsAccess = hub.MetricsOpen }})
	if status, _ := get(t, "http://"+open.http+"/metrics", ""); status != http.StatusOK {
		t.Errorf("--metrics open: %d", status)
	}
	off := startTarget(t, setup{hub: func(c *hub.Config) { c.MetricsAccess = hub.MetricsOff }})
	if status, _ := get(t, "http://"+off.http+"/metrics", ""); status != http.StatusNotFound {
		t.Errorf("--metrics off: %d", status)
	}
}

// A hub told to check metrics tokens without any tokens refuses to start.
func TestMetricsTokenNeedsAuth(t *testing.T) {
	h := hub.New(hub.Config{Addr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(), Quiet: true, MetricsAccess: hub.MetricsToken})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	err := h.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "needs authentication") {
		t.Fatalf("Run: %v", err)
	}
}
