package client

import (
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"time"

	"github.com/caps-hub/caps/protocol"
)

// DefaultAddr is the hub address used when neither a flag nor CAPS_HUB names one.
const DefaultAddr = "localhost:3000"

// DefaultPort is added to addresses that have none.
const DefaultPort = "3000"

// EnvHub is the environment variable that holds the hub address list.
const EnvHub = "CAPS_HUB"

// Defaults of the Options fields.
const (
	DefaultReconnectMin      = 100 * time.Millisecond
	DefaultReconnectMax      = 5 * time.Second
	DefaultDialTimeout       = 5 * time.Second
	DefaultWriteTimeout      = 10 * time.Second
	DefaultHeartbeatFallback = 10 * time.Second
	DefaultBuffer            = 1024
)

// State is the connection state reported to Options.OnState.
type State int32

// Connection states.
const (
	// StateConnecting: Dial is making the first connection.
	StateConnecting State = iota
	// StateConnected: the handshake is done and the connection is usable.
	StateConnected
	// StateReconnecting: the connection was lost; the Conn is trying to get it back.
	// Publish and Request wait (bounded by their context) until it is back.
	StateReconnecting
	// StateClosed: the Conn is finished (Close, or a terminal error; see Conn.Err).
	StateClosed
)

func (s State) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateReconnecting:
		return "reconnecting"
	case StateClosed:
		return "closed"
	}
	return fmt.Sprintf("State(%d)", int32(s))
}

// Options configure a Conn. The zero value of every field selects its default.
type Options struct {
	// Role announced in HELLO (protocol.RoleVendor, …); default protocol.RoleClient.
	Role string
	// Name announced in HELLO: 1–32 of A-Z a-z 0-9 _ - (see protocol.ValidName).
	// Default: "client-" followed by 8 random hex digits.
	Name string
	// Token is the credential sent in HELLO when the hub runs with authentication.
	Token string

	// TLS, when set, is used for every address; "tls://" addresses use TLS
	// even when it is nil (with the system roots). ServerName defaults to the
	// address's host.
	TLS *tls.Config
	// Dialer replaces the default TCP dialer, for example to carry the
	// protocol over WebSocket. It receives "host:port" for caps:// , tls://
	// and bare addresses, and the whole address for any other scheme
	// ("ws://…", "wss://…"), which is accepted only when Dialer is set.
	// TLS (Options.TLS or tls://) is layered on top of what it returns.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// DialTimeout bounds one connection attempt: dial, TLS and handshake (default 5s).
	DialTimeout time.Duration
	// WriteTimeout bounds one write to the socket; a write that takes longer
	// means the connection is dead (default 10s).
	WriteTimeout time.Duration

	// MaxFrame is the largest frame accepted from the hub (default
	// protocol.DefaultMaxFrame plus room for headers). Frames sent are
	// limited by the hub's max_frame from WELCOME.
	MaxFrame int
	// HeartbeatFallback is the heartbeat interval used when the hub's WELCOME
	// announces none (default 10s; negative disables heartbeats then).
	HeartbeatFallback time.Duration

	// ReconnectMin and ReconnectMax bound the exponential backoff between
	// connection attempts (defaults 100ms and 5s). Each wait is drawn at
	// random from [d/2, d] where d doubles after every pass over the address list.
	ReconnectMin, ReconnectMax time.Duration
	// RetryNameTaken makes Dial retry a name the hub says is in use
	// (name_taken) until its context ends, instead of giving up at once:
	// for a program restarted under its name (a driver) before the hub has
	// noticed that its previous run's connection is gone. A reconnect
	// always retries it.
	RetryNameTaken bool
	// NoReconnect makes Dial try each address once, and makes a lost
	// connection final: the Conn closes and Err reports why.
	NoReconnect bool

	// OnState is called on every state change, in order, from a goroutine of
	// its own (it may call any method of the Conn, including Close).
	OnState func(State)
	// OnError receives asynchronous errors: ERR frames that answer no pending
	// call, subscriptions the hub refused after a reconnect, and
	// ErrSlowConsumer. Like OnState it runs on the callback goroutine, in
	// order with the state changes; errors beyond 256 waiting ones are only logged.
	OnError func(error)
	// Logger for connection events (default: discard).
	Logger *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.Role == "" {
		o.Role = protocol.RoleClient
	}
	if !protocol.ValidRole(o.Role) {
		return o, fmt.Errorf("caps client: unknown role %q", o.Role)
	}
	if o.Name == "" {
		var b [4]byte
		_, _ = crand.Read(b[:])
		o.Name = "client-" + hex.EncodeToString(b[:])
	}
	if !protocol.ValidName(o.Name) {
		return o, fmt.Errorf("caps client: bad name %q: 1-32 of A-Z a-z 0-9 _ -, starting with a letter or digit", o.Name)
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.MaxFrame <= 0 {
		o.MaxFrame = protocol.DefaultMaxFrame + 4096
	}
	if o.HeartbeatFallback == 0 {
		o.HeartbeatFallback = DefaultHeartbeatFallback
	}
	if o.ReconnectMin <= 0 {
		o.ReconnectMin = DefaultReconnectMin
	}
	if o.ReconnectMax <= 0 {
		o.ReconnectMax = DefaultReconnectMax
	}
	if o.ReconnectMax < o.ReconnectMin {
		o.ReconnectMax = o.ReconnectMin
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// ParseAddrs splits a comma-separated list of hub addresses, trimming spaces
// and dropping empty items.
func ParseAddrs(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// DefaultAddrs returns the hub addresses a command should use: those in flag
// when it is not empty, else those in $CAPS_HUB, else "localhost:3000".
func DefaultAddrs(flag string) []string {
	if a := ParseAddrs(flag); len(a) > 0 {
		return a
	}
	if a := ParseAddrs(os.Getenv(EnvHub)); len(a) > 0 {
		return a
	}
	return []string{DefaultAddr}
}

// endpoint is one parsed hub address.
type endpoint struct {
	raw  string // as given, for logs and errors
	addr string // what is dialed
	tls  bool
}

// parseEndpoint accepts "host:port", "host", "caps://host:port", "tls://host:port",
// and, when custom is true (a Dialer is set), any other "scheme://…" verbatim.
func parseEndpoint(s string, forceTLS, custom bool) (endpoint, error) {
	s = strings.TrimSpace(s)
	ep := endpoint{raw: s, tls: forceTLS}
	rest := s
	if i := strings.Index(s, "://"); i >= 0 {
		scheme := strings.ToLower(s[:i])
		rest = s[i+3:]
		switch scheme {
		case "caps", "tcp":
		case "tls", "capss":
			ep.tls = true
		default:
			if !custom {
				return ep, fmt.Errorf("address %q: scheme %q needs Options.Dialer", s, scheme)
			}
			ep.addr = s
			return ep, nil
		}
		rest = strings.TrimSuffix(rest, "/")
	}
	if rest == "" {
		return ep, fmt.Errorf("address %q: empty", s)
	}
	if _, _, err := net.SplitHostPort(rest); err != nil {
		// No port (or a bare IPv6 address in brackets): add the default one.
		host := strings.TrimSuffix(strings.TrimPrefix(rest, "["), "]")
		rest = net.JoinHostPort(host, DefaultPort)
		if _, _, err := net.SplitHostPort(rest); err != nil {
			return ep, fmt.Errorf("address %q: %w", s, err)
		}
	}
	ep.addr = rest
	return ep, nil
}

// backoff returns the wait before connection attempt number attempt (0-based)
// over n addresses: no wait while the first pass over the list is not
// finished, then min·2^pass capped at max, drawn at random from [d/2, d].
func backoff(attempt, n int, minD, maxD time.Duration, first bool) time.Duration {
	if n < 1 {
		n = 1
	}
	pass := attempt / n
	if first {
		if pass == 0 {
			return 0
		}
		pass--
	} else if attempt%n != 0 {
		// Within a pass, move on to the next address quickly.
		return jitter(minD / 2)
	}
	d := minD
	for i := 0; i < pass && d < maxD; i++ {
		d *= 2
	}
	d = min(d, maxD)
	return jitter(d)
}

// jitter draws a duration from [d/2, d].
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	half := d / 2
	return half + rand.N(d-half+1)
}

// handshakeFatal reports whether a handshake error must not be retried:
// the hub refused this identity, not this moment. name_taken is retried
// during a reconnect (and, with retryNameTaken, on the first connect),
// because the hub may not have noticed yet that our own previous
// connection is dead.
func handshakeFatal(err error, initial, retryNameTaken bool) bool {
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code {
	case protocol.CodeAuth, protocol.CodeHandshake:
		return true
	case protocol.CodeNameTaken:
		return initial && !retryNameTaken
	}
	return false
}
