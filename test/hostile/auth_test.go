package hostile_test

import (
	"strings"
	"testing"
	"time"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/auth"
	"github.com/caps-hub/caps/protocol"
)

// Before: a token's expiry was checked only at the handshake, so a session
// opened just before it went on for as long as it liked (a publish 12 s
// after expiry was accepted). Now the hub closes the session at expiry,
// with a fatal "unauthorized", and the token cannot open another.
func TestSessionClosedWhenTokenExpires(t *testing.T) {
	// The auth file holds whole seconds.
	expires := time.Now().Add(1500 * time.Millisecond).Truncate(time.Second)
	withAuth, tok := withTokens(t,
		auth.Entry{Name: "brief", Role: protocol.RoleClient, Expires: &expires},
		auth.Entry{Name: "lasting", Role: protocol.RoleClient},
	)
	// The expiry check rides on the heartbeat ticker (every quarter
	// heartbeat: 1 s here), while the other client, silent meanwhile, has
	// two heartbeats before it counts as dead.
	tg := startTarget(t, setup{hub: func(c *hub.Config) {
		withAuth(c)
		c.Heartbeat = 4 * time.Second
		c.MetricsAccess = hub.MetricsOpen
	}})
	brief := dial(t, tg.tcp)
	brief.hello(protocol.RoleClient, "brief", tok["brief"])
	brief.ok("a publish before expiry", brief.pub("news.x", "", []byte("before")))
	lasting := dial(t, tg.tcp)
	lasting.hello(protocol.RoleClient, "lasting", tok["lasting"])

	e := brief.closedWith("the session to end at expiry", protocol.CodeAuth)
	if !strings.Contains(e.Text, "token expired") {
		t.Errorf("closed with %q", e.Text)
	}
	if time.Now().Before(expires) {
		t.Errorf("closed before the token expired")
	}
	again := dial(t, tg.tcp)
	if f := again.helloFrame(protocol.RoleClient, "brief", tok["brief"]); f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeAuth {
		t.Errorf("the expired token opened a session: %s", f)
	}
	// Others are unaffected.
	lasting.ok("a publish by another client", lasting.pub("news.x", "", []byte("after")))
	if v, _ := tg.metric(t, "caps_sessions_expired_total"); v != 1 {
		t.Errorf("caps_sessions_expired_total = %v, want 1", v)
	}
}
