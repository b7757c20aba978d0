package hub

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/caps-hub/caps/protocol"
)

// The HTTP port faces the same clients as the CAPS port: this file bounds
// what they can hold there (connections in total and per address, with room
// kept for health checks), which host names a browser may reach the
// WebSocket endpoint by, and who may read /metrics.

// healthHeadroom is how many connections beyond the HTTP limits are still
// accepted, each for one request to /healthz, /readyz or /metrics, so a load
// balancer or a monitor can see a hub whose clients have filled it.
const healthHeadroom = 16

// healthPath reports whether a request may be served on a headroom connection.
func healthPath(p string) bool { return p == "/healthz" || p == "/readyz" || p == "/metrics" }

// connLimiter is the HTTP listener, counting open connections in total and
// per remote address. A connection over either limit gets a headroom slot
// if one is free (health checks only) and is closed at once otherwise.
// WebSocket sessions are HTTP connections and count here too (as well as
// towards MaxConns, like every session).
type connLimiter struct {
	net.Listener
	max, perAddr int
	m            *Metrics

	mu     sync.Mutex
	open   int // admitted within the limits
	spare  int // admitted on the headroom
	byAddr map[string]int
}

func newConnLimiter(ln net.Listener, max, perAddr int, m *Metrics) *connLimiter {
	return &connLimiter{Listener: ln, max: max, perAddr: perAddr, m: m, byAddr: map[string]int{}}
}

// Accept returns the next connection the limits admit. Errors are the
// inner listener's, unchanged: http.Server backs off on temporary ones
// (EMFILE…) instead of spinning.
func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if lc := l.admit(c); lc != nil {
			return lc, nil
		}
		c.Close()
	}
}

func (l *connLimiter) admit(c net.Conn) *limitedConn {
	addr := remoteHost(c.RemoteAddr())
	l.mu.Lock()
	defer l.mu.Unlock()
	var over string
	switch {
	case l.open >= l.max:
		over = "total"
	case l.byAddr[addr] >= l.perAddr:
		over = "per_address"
	}
	if over == "" {
		l.open++
		l.byAddr[addr]++
		l.m.httpConns.Inc()
		return &limitedConn{Conn: c, l: l, addr: addr}
	}
	l.m.httpRefused.WithLabelValues(over).Inc()
	if l.spare >= healthHeadroom {
		return nil
	}
	l.spare++
	l.m.httpConns.Inc()
	lc := &limitedConn{Conn: c, l: l, addr: addr, spare: true}
	lc.hold = time.AfterFunc(headroomHold, func() { lc.Close() })
	return lc
}

func (l *connLimiter) release(lc *limitedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.m.httpConns.Dec()
	if lc.spare {
		l.spare--
		return
	}
	l.open--
	if l.byAddr[lc.addr]--; l.byAddr[lc.addr] <= 0 {
		delete(l.byAddr, lc.addr)
	}
}

// limitedConn is an admitted connection; closing it (also after a
// WebSocket upgrade took it over) gives its place back.
type limitedConn struct {
	net.Conn
	l     *connLimiter
	addr  string
	spare bool        // on the headroom: health checks only
	hold  *time.Timer // closes a headroom connection after headroomHold
	once  sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		if c.hold != nil {
			c.hold.Stop()
		}
		c.l.release(c)
	})
	return err
}

// CloseWrite lets net/http end a response with a FIN and linger for the
// client's last bytes before closing, as it does on a bare TCP connection
// (closing at once could reset a connection whose answer is unread).
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func remoteHost(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

type headroomKey struct{}

// connContext marks requests that arrive on a headroom connection.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if lc, ok := c.(*limitedConn); ok && lc.spare {
		return context.WithValue(ctx, headroomKey{}, true)
	}
	return ctx
}

// guardHTTP serves only health checks on headroom connections, and closes
// them after the answer.
func guardHTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if spare, _ := r.Context().Value(headroomKey{}).(bool); spare {
			w.Header().Set("Connection", "close")
			if !healthPath(r.URL.Path) {
				writeProblem(w, http.StatusServiceUnavailable, "Too many connections",
					"the hub is at its limit of HTTP connections (in total or from your address); only /healthz, /readyz and /metrics answer now")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// writeProblem answers with an RFC 9457 problem document.
func writeProblem(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"type": "about:blank", "title": title, "status": status, "detail": detail})
}

// hostSet is the host names a browser may use to reach the hub's WebSocket
// endpoint. DNS rebinding makes a hostile page's own name resolve to the
// hub: the browser then sends that name as Host and as Origin, which agree,
// so an origin check alone lets it in. A name the operator did not list is
// refused; an IP address is always accepted, since rebinding needs a name.
type hostSet struct {
	any      bool
	names    map[string]bool
	suffixes []string // from "*.example.com": ".example.com"
}

// newHostSet builds the accepted names: loopback names, this machine's
// host name, the names of the hub's TLS certificate, and extra (names,
// "*.domain" patterns, or "*" for any).
func newHostSet(extra []string, tc *tls.Config) *hostSet {
	hs := &hostSet{names: map[string]bool{"localhost": true}, suffixes: []string{".localhost"}}
	if name, err := os.Hostname(); err == nil && name != "" {
		hs.add(name)
		if short, _, ok := strings.Cut(name, "."); ok {
			hs.add(short)
		}
	}
	if tc != nil {
		for _, cert := range tc.Certificates {
			leaf := cert.Leaf
			if leaf == nil && len(cert.Certificate) > 0 {
				leaf, _ = x509.ParseCertificate(cert.Certificate[0])
			}
			if leaf != nil {
				for _, n := range leaf.DNSNames {
					hs.add(n)
				}
			}
		}
	}
	for _, n := range extra {
		hs.add(n)
	}
	return hs
}

func (hs *hostSet) add(name string) {
	name = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(name)), ".")
	switch {
	case name == "":
	case name == "*":
		hs.any = true
	case strings.HasPrefix(name, "*."):
		hs.suffixes = append(hs.suffixes, name[1:])
	default:
		hs.names[name] = true
	}
}

// allows reports whether a request's Host header names this hub.
func (hs *hostSet) allows(hostport string) bool {
	if hs.any {
		return true
	}
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if host == "" {
		return false
	}
	if net.ParseIP(host) != nil {
		return true
	}
	if hs.names[host] {
		return true
	}
	for _, s := range hs.suffixes {
		if strings.HasSuffix(host, s) {
			return true
		}
	}
	return false
}

// Who may read /metrics (Config.MetricsAccess).
const (
	MetricsOpen  = "open"  // anyone who reaches the HTTP port
	MetricsToken = "token" // a bearer token of an admin or logger (needs Auth)
	MetricsOff   = "off"   // not served
)

// metricsHandler serves /metrics as Config.MetricsAccess says.
func (h *Hub) metricsHandler() http.Handler {
	serve := h.metrics.Handler()
	if h.cfg.MetricsAccess != MetricsToken {
		return serve
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="caps"`)
			writeProblem(w, http.StatusUnauthorized, "Token required",
				"/metrics needs the token of an admin or logger: Authorization: Bearer <token>")
			return
		}
		id, err := h.cfg.Auth.Authenticate(protocol.Hello{Token: strings.TrimSpace(token)})
		if err != nil {
			h.log.Warn("metrics: authentication failed", "remote", r.RemoteAddr, "err", err)
			w.Header().Set("WWW-Authenticate", `Bearer realm="caps", error="invalid_token"`)
			writeProblem(w, http.StatusUnauthorized, "Bad token", err.Error())
			return
		}
		if id.Role != protocol.RoleAdmin && id.Role != protocol.RoleLogger {
			writeProblem(w, http.StatusForbidden, "Forbidden",
				fmt.Sprintf("%s %q may not read /metrics: admins and loggers may", id.Role, id.Name))
			return
		}
		serve.ServeHTTP(w, r)
	})
}
