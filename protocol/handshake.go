package protocol

import (
	"encoding/json"
	"fmt"
	"regexp"
)

// Hello is the JSON payload of the client's first frame.
type Hello struct {
	Version int    `json:"version"`
	Role    string `json:"role"`            // vendor, driver, chat, logger, admin, client
	Name    string `json:"name"`            // display name; a vendor's store
	Token   string `json:"token,omitempty"` // credentials when the hub runs with --auth
	// Resume is the resume token of the WELCOME of the session this client
	// had before a reconnect (Welcome.Resume), so the hub can hand that
	// session's name and state to this one and tell presence "reconnected"
	// apart from "joined". Only that token resumes a session: a session id,
	// or another client's token, resumes nothing.
	Resume string `json:"resume,omitempty"`
}

// Welcome is the JSON payload of the hub's answer to a good Hello.
type Welcome struct {
	Session     string `json:"session"`
	Hub         string `json:"hub"`          // the hub's name, for logs and failover
	HeartbeatMS int    `json:"heartbeat_ms"` // ping when idle this long; peer is dead after 2×
	MaxFrame    int    `json:"max_frame"`
	MaxSubs     int    `json:"max_subs"`
	MaxPubRate  int    `json:"max_pub_rate"` // publishes per second, 0 = unlimited
	Role        string `json:"role"`         // as granted (may differ from asked with auth)
	Name        string `json:"name"`
	// Resume is this session's resume token: a secret, given only to this
	// client, that a HELLO after a reconnect sends back (Hello.Resume).
	Resume  string `json:"resume,omitempty"`
	Resumed bool   `json:"resumed,omitempty"` // the HELLO resumed its session
}

// Roles a client may announce.
const (
	RoleVendor = "vendor"
	RoleDriver = "driver"
	RoleChat   = "chat"
	RoleLogger = "logger"
	RoleAdmin  = "admin"
	RoleClient = "client" // generic publish/subscribe client
)

// ValidRole reports whether r is a role the hub knows.
func ValidRole(r string) bool {
	switch r {
	case RoleVendor, RoleDriver, RoleChat, RoleLogger, RoleAdmin, RoleClient:
		return true
	}
	return false
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$`)

// ValidName reports whether n can be a client name: 1–32 letters, digits,
// '_', '-', starting with a letter or digit. Names are topic tokens, so
// they must not contain spaces or wildcards.
func ValidName(n string) bool { return nameRE.MatchString(n) }

// Bounds on a HELLO: a hub reads the handshake under MaxHelloFrame (then
// the session under its own frame limit), and refuses longer credentials
// before hashing or checking them.
const (
	MaxHelloFrame = 16 << 10
	MaxTokenLen   = 1024
	MaxResumeLen  = 256
)

// ParseHello decodes and checks a HELLO payload.
func ParseHello(b []byte) (Hello, error) {
	var h Hello
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("hello is not JSON: %w", err)
	}
	if h.Version != Version {
		return h, fmt.Errorf("protocol version %d not supported (want %d)", h.Version, Version)
	}
	if h.Role == "" {
		h.Role = RoleClient
	}
	if !ValidRole(h.Role) {
		return h, fmt.Errorf("unknown role %q", h.Role)
	}
	if !ValidName(h.Name) {
		return h, fmt.Errorf("bad name %q: 1-32 of A-Z a-z 0-9 _ -, starting with a letter or digit", h.Name)
	}
	if len(h.Token) > MaxTokenLen || len(h.Resume) > MaxResumeLen {
		return h, fmt.Errorf("token (at most %d bytes) or resume token (at most %d) too long", MaxTokenLen, MaxResumeLen)
	}
	return h, nil
}

// Error codes carried in the topic field of an ERR frame.
const (
	CodeBadFrame          = "bad_frame"          // undecodable bytes; fatal
	CodeFrameTooLarge     = "frame_too_large"    // length over the limit; fatal
	CodeHandshake         = "handshake"          // bad or missing HELLO; fatal
	CodeHandshakeTime     = "handshake_timeout"  // no HELLO in time; fatal
	CodeAuth              = "unauthorized"       // bad token; fatal
	CodeForbidden         = "forbidden"          // not allowed for this identity
	CodeBadTopic          = "bad_topic"          // invalid topic or pattern
	CodeBadRequest        = "bad_request"        // malformed operation or payload
	CodeRejected          = "rejected"           // refused by an application rule
	CodeNotFound          = "not_found"          // no such subscription, order, service
	CodeTooManySubs       = "too_many_subs"      // subscription limit
	CodeRateLimited       = "rate_limited"       // publish rate limit
	CodeSlowConsumer      = "slow_consumer"      // outbound queue overflowed; fatal
	CodeHeartbeat         = "heartbeat_timeout"  // peer missed pings; fatal
	CodeUnavailable       = "unavailable"        // engine down; retry later
	CodeNameTaken         = "name_taken"         // another live client holds the name
	CodeTooManyConns      = "too_many_conns"     // connection limit; fatal
	CodeShuttingDown      = "shutting_down"      // hub is stopping
	CodeInternal          = "internal"           // hub bug or engine failure
	CodeClassroomDisabled = "classroom_disabled" // classroom dialect refused; fatal
	CodeTooLarge          = "too_large"          // payload over its topic's size limit (app schema or stream)
	CodeStoreFull         = "store_full"         // the topic's stream or bucket is at its limit and keeps what it has
	CodeTooManyRooms      = "too_many_rooms"     // chat: rooms per client or rooms in total
	CodeTooManyDurables   = "too_many_durables"  // durables per identity or per stream
)

// ErrorFrame builds an ERR frame.
func ErrorFrame(id uint64, code, text string, fatal bool) *Frame {
	f := &Frame{Op: OpErr, ID: id, Topic: []byte(code), Payload: []byte(text)}
	if fatal {
		f.Flags |= FlagFatal
	}
	return f
}

// Error is an ERR frame received from the peer, as a Go error.
type Error struct {
	Code  string
	Text  string
	Fatal bool
}

func (e *Error) Error() string { return e.Code + ": " + e.Text }

// AsError converts an ERR frame into an *Error.
func AsError(f *Frame) *Error {
	return &Error{Code: string(f.Topic), Text: string(f.Payload), Fatal: f.Flags&FlagFatal != 0}
}
