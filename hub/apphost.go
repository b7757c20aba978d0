package hub

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
)

// Host methods for apps that serve data to people rather than route
// messages (the dashboard): they hand data out through services and
// Host.Send, so they need the hub's own permission rules, its HTTP server and
// its metrics.

// MayReceive reports whether the local session sessionID may receive
// messages on topic (a concrete topic, not a pattern): one of its subscribe
// permissions covers it and no deny pattern matches it. An app that hands
// out data through a service or Host.Send applies, with it, exactly the
// rules a SUB would meet. It is false for a session that is not (or no
// longer) connected to this hub.
func (x *Host) MayReceive(sessionID, topic string) bool {
	s := x.h.sessionByID(sessionID)
	if s == nil {
		return false
	}
	t, p := []byte(topic), s.perms.Load()
	return p.canSubscribe(t) && !p.deniedDelivery(t)
}

// HandleHTTP adds routes to the hub's HTTP server, like Hub.HandleHTTP, for
// an app to call from its Setup (the HTTP server starts after every app's
// Setup has run). Nothing is served when the hub runs with HTTP off.
func (x *Host) HandleHTTP(fn func(mux *http.ServeMux)) { x.h.HandleHTTP(fn) }

// Gatherer reads the hub's metrics (its own and those apps registered), for
// an app that shows them (the dashboard's traffic charts).
func (x *Host) Gatherer() prometheus.Gatherer { return x.h.metrics.Registry }

// Authenticated reports whether the hub checks credentials (runs with an
// Authenticator) rather than taking clients at their word.
func (x *Host) Authenticated() bool { return x.h.cfg.Auth != nil }
