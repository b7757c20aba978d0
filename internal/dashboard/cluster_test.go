package dashboard_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/dashboard"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// TestTwoHubs runs two hubs on one NATS server: a page on either sees the
// clients of both, with the hub each is on, and the orders posted through
// the other.
func TestTwoHubs(t *testing.T) {
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true, ServerName: "shared",
	})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	on := func(name string) func(*hub.Config) {
		return func(c *hub.Config) { c.NATSURLs, c.DataDir, c.Name = ns.ClientURL(), "", name }
	}
	east := startHub(t, on("east"))
	west := startHub(t, on("west"))

	// A vendor and a driver on west; the admin asks east.
	f := newFleet(t, west)
	f.vendor("westside", 3, 20*time.Millisecond, "")
	f.driver("wanda", 0, 0, "")
	admin := east.dial(t, protocol.RoleAdmin, "boss", "")
	hubtest.Eventually(t, wait, "east's page sees west's clients", func() error {
		p, err := request[dashboard.PeopleReply](t, admin, dashboard.ServicePeople, nil)
		if err != nil {
			return err
		}
		if !slices.Equal(p.Hubs, []string{"east", "west"}) {
			return fmt.Errorf("hubs %v", p.Hubs)
		}
		where := map[string]string{}
		for _, x := range p.People {
			where[x.Name] = x.Hub
		}
		// The vendor leaves once its 3 orders are delivered, possibly before
		// this looks: the driver stays, so it is the one that must be seen.
		if v, ok := where["westside"]; ok && v != "west" {
			return fmt.Errorf("people on hubs %v", where)
		}
		if where["boss"] != "east" || where["wanda"] != "west" {
			return fmt.Errorf("people on hubs %v", where)
		}
		return nil
	})
	hubtest.Eventually(t, wait, "east's page sees west's orders delivered", func() error {
		r, err := request[dashboard.OrdersReply](t, admin, dashboard.ServiceOrders, nil)
		if err != nil {
			return err
		}
		n := 0
		for _, o := range r.Orders {
			if o.Store == "westside" && o.Status == parcel.StatusDelivered {
				n++
			}
		}
		if n != 3 {
			return fmt.Errorf("%d of westside's 3 orders delivered", n)
		}
		return nil
	})
}
