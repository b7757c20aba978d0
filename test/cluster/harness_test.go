// Package cluster_test runs several hubs over one NATS cluster: a three-node
// cluster started in-process (nats-server's server package) or as three
// separate nats-server processes, or three hubs whose embedded NATS servers
// form the cluster themselves. The same flows run on each: pub/sub, queue
// groups and durable work queues across hubs, a NATS node shut down mid-run,
// a hub shut down under its clients, parcels and chat across hubs.
package cluster_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
)

func TestMain(m *testing.M) {
	// nats.go and nats-server keep a few process-wide goroutines alive.
	goleak.VerifyTestMain(m, hubtest.LeakOptions()...)
}

// Deadlines are generous: JetStream elects RAFT leaders in seconds, and the
// tests must pass on a loaded 2-core machine. Nothing waits for them unless
// something is wrong; every wait is for a condition.
const (
	startTimeout = 60 * time.Second
	flowTimeout  = 60 * time.Second
)

// natsCluster is a three-node NATS cluster with JetStream, however it runs.
type natsCluster interface {
	// URLs returns the client URLs of every node, comma-separated.
	URLs() string
	// NodeOf returns the index of the node the NATS connection named name is
	// connected to, or -1.
	NodeOf(name string) int
	// Stop shuts node i down (for good).
	Stop(t *testing.T, i int)
	// Size is the number of nodes started.
	Size() int
}

// storeApp stores the topics of the tests under "jobs.>" so that they can
// be subscribed durably, like the parcel and chat apps store theirs.
type storeApp struct{}

func (storeApp) Setup(ctx context.Context, h *hub.Host) error {
	return h.AddStream(ctx, hub.StreamSpec{Name: "CLUSTER_JOBS", Topics: []string{"jobs.>"}})
}

// hubSpec is a hub to start: its configuration and its applications.
type hubSpec struct {
	cfg  hub.Config
	apps hubApps
}

// runningHub is a hub started by a test.
type runningHub struct {
	*hub.Hub
	name string
	apps hubApps
	once sync.Once
}

// Addr returns the hub's client address.
func (h *runningHub) Addr() string { return h.Hub.Addr().String() }

// Stop shuts the hub down gracefully (as on SIGTERM) and waits for it.
func (h *runningHub) Stop(t *testing.T) {
	t.Helper()
	h.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := h.Shutdown(ctx); err != nil {
			t.Errorf("hub %s did not drain in 30s: %v", h.name, err)
		}
	})
}

// startHubs starts hubs concurrently (embedded cluster members wait for each
// other before any is ready) and stops them when the test ends.
func startHubs(t *testing.T, specs ...hubSpec) []*runningHub {
	t.Helper()
	hs := make([]*runningHub, len(specs))
	errs := make([]error, len(specs))
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for i, spec := range specs {
		cfg := spec.cfg
		cfg.Apps = spec.apps.list
		if cfg.Addr == "" {
			cfg.Addr = "127.0.0.1:0"
		}
		if cfg.HTTPAddr == "" {
			cfg.HTTPAddr = "off"
		}
		cfg.Quiet = true
		rh := &runningHub{Hub: hub.New(cfg), name: cfg.Name, apps: spec.apps}
		hs[i] = rh
		t.Cleanup(func() { rh.Stop(t) })
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = rh.Start(ctx) }()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("hub %s did not start: %v", hs[i].name, err)
		}
	}
	return hs
}

// testAckWait is the hubs' ack wait: short enough that a delivery lost with
// a dying node comes back within the test, long enough that a slow machine
// does not redeliver what it is still processing.
const testAckWait = 3 * time.Second

// externalHub is a hub on an external NATS cluster.
func externalHub(name, urls string) hubSpec {
	return hubSpec{cfg: hub.Config{Name: name, NATSURLs: urls, AckWait: testAckWait}, apps: newHubApps()}
}

// dial connects a client to the hubs at addrs (the first one first) and
// closes it when the test ends. It reconnects quickly, for the tests.
func dial(t *testing.T, name, role string, addrs ...string) *client.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, addrs, client.Options{
		Name: name, Role: role,
		ReconnectMin: 20 * time.Millisecond, ReconnectMax: 250 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("dial %s as %s: %v", strings.Join(addrs, ","), name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// freePorts returns n TCP ports free on 127.0.0.1 right now. The NATS route
// ports must be known before any node starts, since every node names all of
// them in its routes, so they are chosen here and bound later by the
// servers. They come from below the kernel's ephemeral range: a port taken
// from that range (by binding port 0) and released could be handed to any
// other socket of the machine before the server binds it — another test's
// listener or an outgoing connection — which failed TestProcessCluster with
// "address already in use" when the suite ran beside other work.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	lo, hi := ephemeralRange()
	const first, last = 10000, 32767 // below Linux's default ephemeral range
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for tries := 0; len(ports) < n && tries < 1000; tries++ {
		p := first + rand.IntN(last-first+1)
		if p >= lo && p <= hi {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue // in use: try another
		}
		ls = append(ls, l)
		ports = append(ports, p)
	}
	if len(ports) < n {
		t.Fatalf("found only %d free ports of %d outside the ephemeral range", len(ports), n)
	}
	return ports
}

// ephemeralRange is the kernel's range for ports bound to port 0 and for
// outgoing connections (Linux's default when it cannot be read).
func ephemeralRange() (lo, hi int) {
	lo, hi = 32768, 60999
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	if f := strings.Fields(string(b)); len(f) == 2 {
		a, err1 := strconv.Atoi(f[0])
		z, err2 := strconv.Atoi(f[1])
		if err1 == nil && err2 == nil {
			return a, z
		}
	}
	return lo, hi
}

// counter records, by key, how often something was seen and by whom.
type counter struct {
	mu   sync.Mutex
	seen map[string][]string
}

func newCounter() *counter { return &counter{seen: map[string][]string{}} }

func (c *counter) add(key, by string) {
	c.mu.Lock()
	c.seen[key] = append(c.seen[key], by)
	c.mu.Unlock()
}

func (c *counter) has(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen[key]) > 0
}

func (c *counter) hasAll(keys []string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range keys {
		if len(c.seen[k]) == 0 {
			return false
		}
	}
	return true
}

// missing lists the keys not seen.
func (c *counter) missing(keys []string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, k := range keys {
		if len(c.seen[k]) == 0 {
			out = append(out, k)
		}
	}
	return out
}

// dups lists the keys seen more than once, with who saw them.
func (c *counter) dups() map[string][]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string][]string{}
	for k, by := range c.seen {
		if len(by) > 1 {
			out[k] = append([]string(nil), by...)
		}
	}
	return out
}

// byWho counts keys per receiver.
func (c *counter) byWho() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for _, by := range c.seen {
		for _, b := range by {
			out[b]++
		}
	}
	return out
}

// publishUntilStored publishes with a message id and retries (same id, so
// the engine stores it once) until the hub confirms it is stored. Failures
// are expected while a NATS node or a hub goes away.
func publishUntilStored(ctx context.Context, c *client.Conn, topic, id string, payload []byte) error {
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		seq, err := c.Publish(pctx, topic, payload, client.WithMsgID(id), client.WithDurable())
		cancel()
		if err == nil && seq > 0 {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("publish %s %s: %w (last error: %v)", topic, id, ctx.Err(), err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}
