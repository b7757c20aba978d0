package cluster_test

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/caps-hub/caps/internal/hubtest"
)

// inprocCluster is a NATS cluster of nats-server's server package running
// inside the test process: routes and client ports on 127.0.0.1, JetStream
// file stores in temp dirs.
type inprocCluster struct {
	mu   sync.Mutex
	srvs []*server.Server
	urls []string
}

// startInprocCluster starts n nodes and waits until JetStream has a meta
// leader that sees every node.
func startInprocCluster(t *testing.T, n int) *inprocCluster {
	t.Helper()
	routePorts := freePorts(t, n)
	var routes []*url.URL
	for _, p := range routePorts {
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	c := &inprocCluster{}
	dir := t.TempDir()
	for i := 0; i < n; i++ {
		o := &server.Options{
			ServerName:         fmt.Sprintf("n%d", i),
			Host:               "127.0.0.1",
			Port:               server.RANDOM_PORT,
			NoSigs:             true,
			NoLog:              true,
			JetStream:          true,
			StoreDir:           filepath.Join(dir, fmt.Sprintf("n%d", i)),
			JetStreamMaxMemory: 64 << 20,
			JetStreamMaxStore:  1 << 30,
			Cluster: server.ClusterOpts{
				Name: "caps-test",
				Host: "127.0.0.1",
				Port: routePorts[i],
			},
			// Every node names every node, itself included (it ignores its
			// own route), as the config files of a real deployment do.
			Routes: routes,
		}
		s, err := server.NewServer(o)
		if err != nil {
			t.Fatalf("nats node %d: %v", i, err)
		}
		s.Start()
		if !s.ReadyForConnections(30 * time.Second) {
			t.Fatalf("nats node %d did not start", i)
		}
		c.srvs = append(c.srvs, s)
		c.urls = append(c.urls, s.ClientURL())
	}
	t.Cleanup(func() {
		start := time.Now()
		for i := range c.srvs {
			c.Stop(t, i)
		}
		t.Logf("NATS cluster stopped in %s", time.Since(start).Round(time.Millisecond))
	})
	start := time.Now()
	defer func() { t.Logf("NATS cluster of %d ready in %s", n, time.Since(start).Round(time.Millisecond)) }()
	hubtest.Until(t, startTimeout, "a JetStream meta leader that sees all nodes", func() bool {
		for _, s := range c.live() {
			if s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) == n {
				return true
			}
		}
		return false
	})
	return c
}

func (c *inprocCluster) live() []*server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*server.Server
	for _, s := range c.srvs {
		if s != nil {
			out = append(out, s)
		}
	}
	return out
}

func (c *inprocCluster) URLs() string { return strings.Join(c.urls, ",") }

func (c *inprocCluster) Size() int { return len(c.urls) }

func (c *inprocCluster) NodeOf(name string) int {
	c.mu.Lock()
	srvs := append([]*server.Server(nil), c.srvs...)
	c.mu.Unlock()
	for i, s := range srvs {
		if s != nil && connectedTo(s, name) {
			return i
		}
	}
	return -1
}

func (c *inprocCluster) Stop(_ *testing.T, i int) {
	c.mu.Lock()
	s := c.srvs[i]
	c.srvs[i] = nil
	c.mu.Unlock()
	if s != nil {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// connectedTo reports whether a client connection named name is on s.
func connectedTo(s *server.Server, name string) bool {
	cz, err := s.Connz(&server.ConnzOptions{})
	if err != nil {
		return false
	}
	for _, ci := range cz.Conns {
		if ci.Name == name {
			return true
		}
	}
	return false
}
