package hub_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/protocol"
)

// secretsApp keeps each client's room.<its name>.secret from it, and from
// it only: a permission with a placeholder.
type secretsApp struct{}

func (secretsApp) Setup(_ context.Context, x *hub.Host) error {
	x.Grant(protocol.RoleClient, hub.Permissions{DenySubscribe: []string{"room.{name}.secret"}})
	return nil
}

// Sessions whose permissions come out the same share one compiled set;
// sets with a placeholder filled differently do not; a set no session uses
// any more leaves the hub's table, so names a client makes up cannot grow it.
func TestSharedPermissions(t *testing.T) {
	h := startHub(t, func(c *hub.Config) { c.Apps = []hub.App{secretsApp{}} })
	a1 := hub.CompiledPermissions(h, hub.Identity{Role: protocol.RoleAdmin, Name: "a"})
	a2 := hub.CompiledPermissions(h, hub.Identity{Role: protocol.RoleAdmin, Name: "b"})
	if a1 != a2 {
		t.Error("two admins (a role without placeholders) got two permission sets")
	}
	m1 := hub.CompiledPermissions(h, hub.Identity{Role: protocol.RoleClient, Name: "x"})
	m2 := hub.CompiledPermissions(h, hub.Identity{Role: protocol.RoleClient, Name: "y"})
	m3 := hub.CompiledPermissions(h, hub.Identity{Role: protocol.RoleClient, Name: "x"})
	if m1 == m2 || m1 != m3 {
		t.Errorf("clients x, y, x: sets %p %p %p, want the first and the last shared only", m1, m2, m3)
	}
	before := hub.SharedPermissionSets(h)
	for i := range 1000 {
		hub.CompiledPermissions(h, hub.Identity{Role: protocol.RoleClient, Name: fmt.Sprintf("n%d", i)})
	}
	hubtest.Until(t, 10*time.Second, "the sets nobody uses to leave the table", func() bool {
		runtime.GC()
		return hub.SharedPermissionSets(h) <= before
	})
	runtime.KeepAlive([]any{a1, a2, m1, m2, m3})
}

// Sharing does not mix up what each session may receive: subscribers of
// different roles on one pattern, in turn, each get what their own set allows.
func TestDenyOnDeliveryWithSharedPermissions(t *testing.T) {
	h := startHub(t, func(c *hub.Config) { c.Apps = []hub.App{secretsApp{}} })
	var subs []*rawConn
	for i, who := range []struct{ role, name string }{{"client", "x"}, {"admin", "root"}, {"client", "x"}, {"client", "y"}, {"admin", "root2"}} {
		r := dialRaw(t, h)
		r.hello(who.role, who.name)
		pattern := "room.x.>"
		if who.name == "y" {
			pattern = "room.y.>"
		}
		r.expect(&protocol.Frame{Op: protocol.OpSub, ID: uint64(i + 1), Topic: []byte(pattern)}, protocol.OpOK, "")
		subs = append(subs, r)
	}
	pub := dialRaw(t, h)
	pub.hello("admin", "pub")
	for _, topic := range []string{"room.x.secret", "room.x.open", "room.y.secret"} {
		pub.expect(&protocol.Frame{Op: protocol.OpPub, ID: 1, Topic: []byte(topic), Payload: []byte(topic)}, protocol.OpOK, "")
	}
	// y's subscription is room.y.>, and room.y.secret is y's own secret.
	want := [][]string{{"room.x.open"}, {"room.x.secret", "room.x.open"}, {"room.x.open"}, nil, {"room.x.secret", "room.x.open"}}
	for i, r := range subs {
		r.send(&protocol.Frame{Op: protocol.OpPing})
		var got []string
		for f := r.nextOp(); f.Op != protocol.OpPong; f = r.nextOp() {
			got = append(got, string(f.Payload))
		}
		if fmt.Sprint(got) != fmt.Sprint(want[i]) {
			t.Errorf("subscriber %d got %q, want %q", i, got, want[i])
		}
	}
}
