package hub

import (
	"strings"
	"time"

	"github.com/caps-hub/caps/protocol"
)

// Identity is who a session is, as established at the handshake.
type Identity struct {
	Role  string
	Name  string
	Store string // a vendor's store; empty for other roles
	// Perms, when set, replaces the role's default permissions (auth files set it).
	Perms *Permissions
	// Expires, when set, is when the credentials stop being valid: the hub
	// closes the session then, with a fatal "unauthorized".
	Expires time.Time
}

// Authenticator checks a HELLO and returns the identity it proves. An error
// refuses the connection with "unauthorized".
type Authenticator interface {
	Authenticate(h protocol.Hello) (Identity, error)
}

// Permissions lists the topic patterns a session may publish and subscribe to.
// Patterns may contain the placeholders {name} and {store}, replaced with the
// session's identity. Deny patterns win over allow patterns; a subscription
// that overlaps a denied pattern is accepted but never receives its messages.
type Permissions struct {
	Publish       []string `json:"publish" yaml:"publish"`
	Subscribe     []string `json:"subscribe" yaml:"subscribe"`
	DenyPublish   []string `json:"deny_publish,omitempty" yaml:"deny_publish"`
	DenySubscribe []string `json:"deny_subscribe,omitempty" yaml:"deny_subscribe"`
}

// compiled permissions, with placeholders filled in.
type perms struct {
	pub, sub, denyPub, denySub [][]byte
}

func (p *Permissions) compile(id Identity) *perms {
	fill := func(list []string) [][]byte {
		out := make([][]byte, 0, len(list))
		for _, s := range list {
			s = strings.ReplaceAll(s, "{name}", id.Name)
			s = strings.ReplaceAll(s, "{store}", id.Store)
			out = append(out, []byte(s))
		}
		return out
	}
	return &perms{pub: fill(p.Publish), sub: fill(p.Subscribe), denyPub: fill(p.DenyPublish), denySub: fill(p.DenySubscribe)}
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
		if Covers(d, pattern) {
			return false
		}
	}
	for _, a := range p.sub {
		if Covers(a, pattern) {
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

// Covers reports whether every topic matched by pattern p is also matched by
// pattern outer.
func Covers(outer, p []byte) bool { return covers(outer, p) }

// covers walks both patterns token by token without allocating: it runs
// for every publish (streamFor) and every subscribe (permissions, hooks).
func covers[T ~string | ~[]byte](outer T, p []byte) bool {
	oi, pi := 0, 0
	for {
		oe := oi
		for oe < len(outer) && outer[oe] != '.' {
			oe++
		}
		if oe-oi == 1 && outer[oi] == '>' {
			return pi <= len(p) // p has a token left here
		}
		if pi > len(p) {
			return false // outer has more tokens than p
		}
		pe := pi
		for pe < len(p) && p[pe] != '.' {
			pe++
		}
		switch {
		case pe-pi == 1 && p[pi] == '>':
			return false
		case oe-oi == 1 && outer[oi] == '*':
		case string(outer[oi:oe]) != string(p[pi:pe]):
			return false
		}
		oi, pi = oe+1, pe+1
		if oi > len(outer) {
			return pi > len(p) // both ended together
		}
	}
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
}

// defaultPolicy is what the hub core itself grants: admins everything,
// loggers may watch everything (apps deny what is private), generic clients
// may use any topic outside those the hub and its apps reserve.
func defaultPolicy() RolePolicy {
	return RolePolicy{
		protocol.RoleAdmin:  {Publish: []string{">"}, Subscribe: []string{">"}, DenyPublish: []string{"client.>"}},
		protocol.RoleLogger: {Subscribe: []string{">"}},
		protocol.RoleClient: {Publish: []string{">"}, Subscribe: []string{">"}, DenyPublish: []string{"client.>"}, DenySubscribe: []string{"client.>"}},
		protocol.RoleVendor: {},
		protocol.RoleDriver: {},
		protocol.RoleChat:   {},
	}
}
