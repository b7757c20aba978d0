package cluster_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caps-hub/caps/internal/hubtest"
)

// buildNATSServer builds nats-server from the module in go.mod's graph, or
// skips the test saying why it cannot.
func buildNATSServer(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: not building nats-server")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("cannot build nats-server: no go command in PATH (%v)", err)
	}
	bin := filepath.Join(t.TempDir(), "nats-server")
	cmd := exec.Command(goBin, "build", "-o", bin, "github.com/nats-io/nats-server/v2")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("cannot build nats-server from its module (go build github.com/nats-io/nats-server/v2): %v\n%s", err, out)
	}
	return bin
}

// processCluster is three nats-server processes, each with its own config
// file, clustered by routes on 127.0.0.1.
type processCluster struct {
	dir   string
	mu    sync.Mutex
	procs []*exec.Cmd
	urls  []string
	mons  []string // monitoring base URLs
}

// natsConfig is the config file of one node; the same shape as in
// docs/DEPLOY.md, on loopback ports.
const natsConfig = `# CAPS test node %[1]d
server_name: n%[1]d
listen: 127.0.0.1:%[2]d
http: 127.0.0.1:%[3]d

jetstream {
  store_dir: %[4]q
}

cluster {
  name: caps-test
  listen: 127.0.0.1:%[5]d
  routes: [
%[6]s
  ]
}
`

func startProcessCluster(t *testing.T, bin string, n int) *processCluster {
	t.Helper()
	ports := freePorts(t, 3*n)
	c := &processCluster{dir: t.TempDir()}
	var routes []string
	for i := 0; i < n; i++ {
		routes = append(routes, fmt.Sprintf("    nats-route://127.0.0.1:%d", ports[2*n+i]))
	}
	for i := 0; i < n; i++ {
		client, mon, route := ports[i], ports[n+i], ports[2*n+i]
		conf := filepath.Join(c.dir, fmt.Sprintf("n%d.conf", i))
		body := fmt.Sprintf(natsConfig, i, client, mon, filepath.Join(c.dir, fmt.Sprintf("n%d-store", i)), route, strings.Join(routes, "\n"))
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		logf, err := os.Create(filepath.Join(c.dir, fmt.Sprintf("n%d.log", i)))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-c", conf)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			logf.Close()
			t.Fatalf("start nats-server %d: %v", i, err)
		}
		logf.Close() // the child has its own descriptor
		c.procs = append(c.procs, cmd)
		c.urls = append(c.urls, fmt.Sprintf("nats://127.0.0.1:%d", client))
		c.mons = append(c.mons, fmt.Sprintf("http://127.0.0.1:%d", mon))
	}
	t.Cleanup(func() {
		for i := range c.procs {
			c.stop(i, syscall.SIGTERM)
		}
		if t.Failed() {
			c.dumpLogs(t)
		}
	})
	hubtest.Until(t, startTimeout, "every nats-server to know the JetStream meta leader and all peers", func() bool {
		for i := range c.mons {
			var jsz struct {
				Meta *struct {
					Leader   string `json:"leader"`
					Size     int    `json:"cluster_size"`
					Replicas []struct {
						Current bool `json:"current"`
						Offline bool `json:"offline"`
					} `json:"replicas"`
				} `json:"meta_cluster"`
			}
			if !c.getJSON(i, "/jsz", &jsz) || jsz.Meta == nil || jsz.Meta.Leader == "" || jsz.Meta.Size != n {
				return false
			}
		}
		return true
	})
	return c
}

func (c *processCluster) getJSON(i int, path string, v any) bool {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get(c.mons[i] + path)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(v) == nil
}

func (c *processCluster) URLs() string { return strings.Join(c.urls, ",") }

func (c *processCluster) Size() int { return len(c.urls) }

func (c *processCluster) NodeOf(name string) int {
	for i := range c.mons {
		c.mu.Lock()
		alive := c.procs[i] != nil
		c.mu.Unlock()
		if !alive {
			continue
		}
		var connz struct {
			Conns []struct {
				Name string `json:"name"`
			} `json:"connections"`
		}
		if !c.getJSON(i, "/connz", &connz) {
			continue
		}
		for _, cn := range connz.Conns {
			if cn.Name == name {
				return i
			}
		}
	}
	return -1
}

// Stop kills node i with SIGKILL: no goodbye, no leadership handed over.
func (c *processCluster) Stop(_ *testing.T, i int) { c.stop(i, syscall.SIGKILL) }

func (c *processCluster) stop(i int, sig syscall.Signal) {
	c.mu.Lock()
	cmd := c.procs[i]
	c.procs[i] = nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func (c *processCluster) dumpLogs(t *testing.T) {
	for i := range c.urls {
		b, err := os.ReadFile(filepath.Join(c.dir, fmt.Sprintf("n%d.log", i)))
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		t.Logf("nats-server n%d log (tail):\n%s", i, strings.Join(lines, "\n"))
	}
}

// TestProcessCluster: three separately started nats-server processes (built
// from the module) and two hubs on them; a node is killed with SIGKILL.
func TestProcessCluster(t *testing.T) {
	bin := buildNATSServer(t)
	nc := startProcessCluster(t, bin, 3)
	hs := startHubs(t, externalHub("hub-a", nc.URLs()), externalHub("hub-b", nc.URLs()))
	runFlows(t, &rig{nats: nc, a: hs[0], b: hs[1]})
}
