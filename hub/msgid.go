package hub

import "strings"

// Message ids (a PUB's key) are the engine's de-duplication ids: a stored
// topic keeps one message per id within its duplicate window, and a second
// publish with the same id is answered with the first one's sequence and
// dropped. Taken verbatim, a client could pre-empt another's id — publish
// its own event under the id another client will use, so that the other's
// real event is dropped as a duplicate (issue 12, item 4). So the hub
// stores a client's id scoped to who published it:
//
//	~<role>~<name>~<the client's id>
//
// Roles and names cannot contain '~', so two identities never share a
// scope, and a client retrying its own publish (after a reconnect, from
// another hub of the cluster) still hits its own id. Deliveries carry the
// client's id as it was published (clientKey): subscribers never see the
// scope. On an open hub identities are self-declared, so a client claiming
// another's role and name shares its scope, as it shares everything else
// (docs/SECURITY.md).

// keyScope is the prefix of the ids a session with identity id stores.
func keyScope(id Identity) string { return "~" + id.Role + "~" + id.Name + "~" }

// scopeKey returns the engine's id for a client's key (nil stays nil).
func scopeKey(scope string, key []byte) []byte {
	if len(key) == 0 {
		return nil
	}
	out := make([]byte, 0, len(scope)+len(key))
	return append(append(out, scope...), key...)
}

// clientKey returns the id a client published, given the engine's id of
// its message: the scope is cut off. Ids the hub did not scope (an app's
// own, Host.Store) are returned as they are.
func clientKey(stored string) string {
	if len(stored) < 4 || stored[0] != '~' {
		return stored
	}
	role := strings.IndexByte(stored[1:], '~')
	if role < 0 {
		return stored
	}
	rest := stored[role+2:]
	name := strings.IndexByte(rest, '~')
	if name < 0 {
		return stored
	}
	return rest[name+1:]
}
