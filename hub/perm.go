package hub

import (
	"maps"
	"strings"
	"time"

	"github.com/caps-hub/caps/protocol"
)

// Identity is who a session is, as established at the handshake.
type Identity struct {
	Role string
	Name string
	// Attrs are what the authenticator or an app established about the
	// client besides its role and name (the parcel app's "store" of a
	// vendor). A permission pattern's {key} placeholder is filled with
	// Attrs[key]; apps read them in SessionInfo. Treat the map as
	// immutable once the identity is given to the hub: replace it, never
	// change it in place.
	Attrs map[string]string
	// Perms, when set, replaces the role's default permissions (auth files set it).
	Perms *Permissions
	// Expires, when set, is when the credentials stop being valid: the hub
	// closes the session then, with a fatal "unauthorized".
	Expires time.Time
}

// Attr returns the attribute key, or "".
func (id Identity) Attr(key string) string { return id.Attrs[key] }

// WithAttr returns id with the attribute key set to value (a copy: the
// original's map is not changed).
func (id Identity) WithAttr(key, value string) Identity {
	attrs := make(map[string]string, len(id.Attrs)+1)
	maps.Copy(attrs, id.Attrs)
	attrs[key] = value
	id.Attrs = attrs
	return id
}

// Authenticator checks a HELLO and returns the identity it proves. An error
// refuses the connection with "unauthorized".
type Authenticator interface {
	Authenticate(h protocol.Hello) (Identity, error)
}

// IdentifyHook completes an identity before the hub compiles its
// permissions: an app adds the attributes its permission patterns use (on
// an open hub, the parcel app makes a vendor's store its name). It runs for
// every new session, authenticated or not, and again when credentials are
// checked anew (Hub.Reauthenticate).
type IdentifyHook func(id Identity) Identity

// Permissions lists the topic patterns a session may publish and subscribe to,
// and the shared durable subscriptions it may join.
// Patterns may contain placeholders: {name} is the session's name, {key} its
// attribute key (Identity.Attrs). A pattern whose placeholder the identity
// cannot fill (no such attribute, or a value that is not a valid name) is
// left out: it allows, or denies, nothing. Deny patterns win over allow
// patterns; a subscription that overlaps a denied pattern is accepted but
// never receives its messages (live, durable or history).
//
// Durable lists the durable names (placeholders allowed; "*" alone is any
// name, a trailing "*" any name with that prefix) the session shares with
// every other session granted the same name: the drivers' work queue, a
// store's mailbox. Reading a topic is not the right to join its queue: a
// durable name not granted is the session's own — a consumer private to
// its role and name, which no other identity reaches — and a name some
// role is granted (the hub's policy, RolePolicy) is refused to the others.
// nil (omitted in an auth file) is the role's grants; an empty list is none.
type Permissions struct {
	Publish       []string `json:"publish" yaml:"publish"`
	Subscribe     []string `json:"subscribe" yaml:"subscribe"`
	DenyPublish   []string `json:"deny_publish,omitempty" yaml:"deny_publish"`
	DenySubscribe []string `json:"deny_subscribe,omitempty" yaml:"deny_subscribe"`
	Durable       []string `json:"durable,omitempty" yaml:"durable"`
}

// compiled permissions, with placeholders filled in.
type perms struct {
	pub, sub, denyPub, denySub [][]byte
	durable                    []string
}

func (p *Permissions) compile(id Identity) *perms {
	fill := func(list []string) [][]byte {
		out := make([][]byte, 0, len(list))
		for _, s := range list {
			if filled, ok := fillPlaceholders(s, id); ok {
				out = append(out, []byte(filled))
			}
		}
		return out
	}
	out := &perms{pub: fill(p.Publish), sub: fill(p.Subscribe), denyPub: fill(p.DenyPublish), denySub: fill(p.DenySubscribe)}
	for _, d := range fill(p.Durable) {
		out.durable = append(out.durable, string(d))
	}
	return out
}

// sharesDurable reports whether durable name is one the session shares
// with others granted it (Permissions.Durable).
func (p *perms) sharesDurable(name string) bool {
	for _, g := range p.durable {
		if durableGrantMatches(g, name) {
			return true
		}
	}
	return false
}

// durableGrantMatches reports whether grant (a name, "*", or a prefix
// ending in "*") covers durable name.
func durableGrantMatches(grant, name string) bool {
	if prefix, glob := strings.CutSuffix(grant, "*"); glob {
		return strings.HasPrefix(name, prefix)
	}
	return grant == name
}

// fillPlaceholders replaces {name} and {attr} in pattern. A value must be
// a valid name (one topic token, no wildcard), so that no attribute can
// widen a pattern; ok is false when a placeholder cannot be filled.
func fillPlaceholders(pattern string, id Identity) (string, bool) {
	if !strings.Contains(pattern, "{") {
		return pattern, true
	}
	var b strings.Builder
	rest := pattern
	for {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			b.WriteString(rest)
			return b.String(), true
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return "", false
		}
		key := rest[i+1 : i+j]
		value := id.Attrs[key]
		if key == "name" {
			value = id.Name
		}
		if !protocol.ValidName(value) {
			return "", false
		}
		b.WriteString(rest[:i])
		b.WriteString(value)
		rest = rest[i+j+1:]
	}
}

func (p *perms) canPublish(topic []byte) bool {
	for _, d := range p.denyPub {
		if protocol.Match(d, topic) {
			return false
		}
	}
	for _, a := range p.pub {
		if protocol.Match(a, topic) {
			return true
		}
	}
	return false
}

// canSubscribe reports whether pattern is within an allowed pattern and not
// wholly inside a denied one.
func (p *perms) canSubscribe(pattern []byte) bool {
	for _, d := range p.denySub {
		if protocol.Covers(d, pattern) {
			return false
		}
	}
	for _, a := range p.sub {
		if protocol.Covers(a, pattern) {
			return true
		}
	}
	return false
}

// deniedDelivery reports whether topic may not be delivered to this session
// even though one of its subscriptions matches it.
func (p *perms) deniedDelivery(topic []byte) bool {
	for _, d := range p.denySub {
		if protocol.Match(d, topic) {
			return true
		}
	}
	return false
}

// RolePolicy maps roles to their default permissions. Applications add their
// topics to it when they start (Host.Grant); an auth file may override it.
type RolePolicy map[string]*Permissions

func (rp RolePolicy) grant(role string, p Permissions) {
	cur := rp[role]
	if cur == nil {
		cur = &Permissions{}
		rp[role] = cur
	}
	cur.Publish = append(cur.Publish, p.Publish...)
	cur.Subscribe = append(cur.Subscribe, p.Subscribe...)
	cur.DenyPublish = append(cur.DenyPublish, p.DenyPublish...)
	cur.DenySubscribe = append(cur.DenySubscribe, p.DenySubscribe...)
	cur.Durable = append(cur.Durable, p.Durable...)
}

// sharedDurables returns, as grants (durableGrantMatches), the durable
// names the policy shares among the sessions of some role — a placeholder
// becomes "*": the names no other session may take for its own. A grant
// of any name ("*") reserves none.
func (rp RolePolicy) sharedDurables() []string {
	var out []string
	for _, p := range rp {
		for _, g := range p.Durable {
			if i := strings.IndexByte(g, '{'); i >= 0 {
				g = g[:i] + "*"
			}
			if g != "*" && g != "" {
				out = append(out, g)
			}
		}
	}
	return out
}

// of returns the role's permissions (none for a role nobody granted anything).
func (rp RolePolicy) of(role string) *Permissions {
	if p := rp[role]; p != nil {
		return p
	}
	return &Permissions{}
}

// defaultPolicy is what the hub core itself grants, to the roles that mean
// the same in every application: admins everything, loggers may watch
// everything (apps deny what is private), generic clients may use any topic
// outside those the hub and its apps reserve. The application roles
// (vendor, driver, chat) get what their apps grant them, and nothing else.
func defaultPolicy() RolePolicy {
	return RolePolicy{
		protocol.RoleAdmin:  {Publish: []string{">"}, Subscribe: []string{">"}, DenyPublish: []string{"client.>"}},
		protocol.RoleLogger: {Subscribe: []string{">"}},
		// Generic clients share durables by name among themselves (a work
		// queue of their own), on the topics they may read.
		protocol.RoleClient: {Publish: []string{">"}, Subscribe: []string{">"}, DenyPublish: []string{"client.>"}, DenySubscribe: []string{"client.>"}, Durable: []string{"*"}},
	}
}
