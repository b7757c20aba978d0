package hub

import (
	"errors"
	"strings"

	"github.com/caps-hub/caps/protocol"
)

// ErrNoAuthenticator is returned by Host.AuthenticateToken on a hub that
// takes clients at their word (no Authenticator): there is no token to check.
var ErrNoAuthenticator = errors.New("the hub runs without an authenticator")

// AuthenticateToken checks a token as the hub checks a HELLO's (the same
// Authenticator, the same identity hooks), for an app that serves HTTP
// requests with a bearer token (the REST API): an HTTP caller has the
// role, name, attributes and expiry a TCP client with that token would
// have. Failures are *protocol.Error with code "unauthorized".
func (x *Host) AuthenticateToken(token string) (Identity, error) {
	h := x.h
	if h.cfg.Auth == nil {
		return Identity{}, ErrNoAuthenticator
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return Identity{}, Reject(protocol.CodeAuth, "a token is required: Authorization: Bearer <token>")
	}
	id, err := h.cfg.Auth.Authenticate(protocol.Hello{Token: token})
	if err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) {
			return Identity{}, err
		}
		return Identity{}, Reject(protocol.CodeAuth, err.Error())
	}
	return h.completeIdentity(id), nil
}

// OnHTTPShutdown registers fn to run when the hub's HTTP server begins to
// shut down, for an app that holds responses open (server-sent events) to
// end them: the shutdown waits for every response in progress. Call it
// from Setup.
func (x *Host) OnHTTPShutdown(fn func()) { x.h.httpShutdown = append(x.h.httpShutdown, fn) }
