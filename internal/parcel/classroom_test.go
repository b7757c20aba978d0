package parcel_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/internal/parcel"
)

// nodeProc is a classroom Node.js client run by a test.
type nodeProc struct {
	cmd  *exec.Cmd
	out  *capture
	errs *capture
	done chan error
}

// startNode runs testdata/classroom/<script> with node against addr.
func startNode(t *testing.T, node, script, addr string, env ...string) *nodeProc {
	t.Helper()
	p := &nodeProc{out: &capture{}, errs: &capture{}, done: make(chan error, 1)}
	p.cmd = exec.Command(node, filepath.Join("..", "..", "testdata", "classroom", script), addr)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.errs
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start node %s: %v", script, err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s stdout:\n%s\n%s stderr:\n%s", script, strings.Join(p.out.Lines(), "\n"), script, strings.Join(p.errs.Lines(), "\n"))
		}
	})
	return p
}

// lookNode finds node, or skips: CI (.ci/run) installs it.
func lookNode(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed: skipping the classroom interoperability test (.ci/run installs it)")
	}
	return node
}

// idsAfter returns the order ids of the lines that contain prefix.
func idsAfter(c *capture, prefix string) []string {
	var ids []string
	for _, l := range c.Lines() {
		if i := strings.Index(l, prefix); i >= 0 {
			ids = append(ids, strings.TrimSpace(l[i+len(prefix):]))
		}
	}
	return ids
}

// TestClassroomNodeClientsMixWithNative runs the classroom's Node.js vendor
// and driver, unchanged in spirit (net, JSON.stringify, JSON.parse(chunk)),
// beside a native vendor and two native drivers on one hub: every order is
// delivered exactly once, and each vendor thanks only for its own.
func TestClassroomNodeClientsMixWithNative(t *testing.T) {
	node := lookNode(t)
	th := startHub(t, func(c *hub.Config) {
		// The Node driver says nothing until it has work: it is taken for a
		// classroom driver at the handshake deadline.
		c.HandshakeTimeout = 300 * time.Millisecond
		c.ClassroomGrace = 200 * time.Millisecond
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFleet(t, th)
	const orders = 6

	// The Node driver starts alone, so it certainly takes part; the native
	// drivers join once it has delivered an order.
	nodeDriver := startNode(t, node, "driver.js", th.addr, "PICKUP_DELAY=300", "DELIVER_DELAY=100")
	nodeVendor := startNode(t, node, "vendor.js", th.addr, "STORE=node-flowers", "INTERVAL=100", fmt.Sprintf("ORDERS=%d", orders))
	goVendor := f.vendor(ctx, "go-pizza", orders, 100*time.Millisecond)
	hubtest.Until(t, 30*time.Second, "the Node driver's first delivery", func() bool {
		return nodeDriver.out.count("DRIVER: delivered ") > 0
	})
	var drivers []<-chan error
	for i := range 2 {
		drivers = append(drivers, f.driver(ctx, parcel.DriverConfig{
			Name: fmt.Sprintf("go-driver-%d", i), PickupDelay: 20 * time.Millisecond, DeliverDelay: 20 * time.Millisecond, Capacity: 1,
		}))
	}

	wait(t, goVendor, 60*time.Second, "native vendor")
	select {
	case err := <-nodeVendor.done:
		nodeVendor.done <- err // for the cleanup
		if err != nil {
			t.Fatalf("Node vendor: %v (stderr: %q)", err, nodeVendor.errs.Lines())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the Node vendor did not get all its orders delivered in 60s")
	}
	cancel()
	for i, ch := range drivers {
		wait(t, ch, 30*time.Second, fmt.Sprintf("native driver %d", i))
	}

	// The Node vendor's orders join the native ones in the exactly-once check.
	nodeIDs := idsAfter(nodeVendor.out, "VENDOR: posted ")
	if len(nodeIDs) != orders {
		t.Fatalf("the Node vendor posted %d orders, want %d", len(nodeIDs), orders)
	}
	f.mu.Lock()
	for _, id := range nodeIDs {
		f.posted[id] = "node-flowers"
	}
	f.mu.Unlock()
	f.drivers["node-driver"] = nodeDriver.out
	f.checkExactlyOnce(context.Background())

	// The Node vendor thanked once for each of its orders, and for nothing else.
	thanked := map[string]int{}
	for _, id := range idsAfter(nodeVendor.out, "VENDOR: Thank you for delivering ") {
		thanked[id]++
	}
	for _, id := range nodeIDs {
		if thanked[id] != 1 {
			t.Errorf("the Node vendor thanked %d times for its order %s", thanked[id], id)
		}
		delete(thanked, id)
	}
	if len(thanked) != 0 {
		t.Errorf("the Node vendor thanked for orders not its own: %v", thanked)
	}
	for id, store := range f.posted {
		if store != "node-flowers" && nodeVendor.out.count(id) != 0 {
			t.Errorf("the Node vendor saw order %s of %s", id, store)
		}
	}
	// Both kinds of driver did work, and nobody got an error.
	if n := nodeDriver.out.count("DRIVER: delivered "); n < 1 {
		t.Errorf("the Node driver delivered %d orders", n)
	}
	native := 0
	for name, out := range f.drivers {
		if name != "node-driver" {
			native += out.count("delivered ")
		}
	}
	if native < 1 {
		t.Errorf("the native drivers delivered %d orders", native)
	}
	for name, p := range map[string]*nodeProc{"driver": nodeDriver, "vendor": nodeVendor} {
		if errs := p.errs.Lines(); len(errs) > 0 {
			t.Errorf("Node %s printed errors: %q", name, errs)
		}
	}
}
