package hub

import (
	"maps"
	"reflect"

	"github.com/caps-hub/caps/protocol"
)

// Reauthenticate checks the credentials of every connected session again,
// typically after the auth file was reloaded: a session whose token no
// longer authenticates (revoked, expired) or now proves another identity or
// other permissions is closed with a fatal "unauthorized" error. A client
// whose token still holds reconnects with its new permissions; one whose
// token was revoked is refused at the handshake. It returns how many
// sessions it closed. Without an Authenticator it does nothing.
func (h *Hub) Reauthenticate() int {
	if h.cfg.Auth == nil {
		return 0
	}
	closed := 0
	for _, s := range h.allSessions() {
		if s.hello == nil {
			continue // a dialect without credentials (the classroom's)
		}
		id, err := h.cfg.Auth.Authenticate(*s.hello)
		if err == nil {
			id = h.completeIdentity(id)
		}
		var why string
		switch {
		case err != nil:
			why = "credentials no longer valid: " + err.Error()
		case !sameIdentity(id, s.ident):
			why = "credentials changed (identity, permissions or expiry); reconnect"
		default:
			continue
		}
		if s.fail(protocol.CodeAuth, why) {
			closed++
			h.log.Warn("session closed on re-authentication", "id", s.info.ID, "role", s.info.Role, "name", s.info.Name, "reason", why)
		}
	}
	return closed
}

func sameIdentity(a, b Identity) bool {
	if a.Role != b.Role || a.Name != b.Name || !maps.Equal(a.Attrs, b.Attrs) || !a.Expires.Equal(b.Expires) {
		return false
	}
	if (a.Perms == nil) != (b.Perms == nil) {
		return false
	}
	return a.Perms == nil || reflect.DeepEqual(*a.Perms, *b.Perms)
}
