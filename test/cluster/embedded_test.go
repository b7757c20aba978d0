package cluster_test

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/caps-hub/caps/hub"
)

// TestEmbeddedCluster: three hubs whose embedded NATS servers are the
// cluster (caps hub --nats-cluster … --nats-routes …): only the caps binary.
// Hub A's shutdown takes a NATS member with it; the other two keep a quorum
// and A's clients carry on through B.
func TestEmbeddedCluster(t *testing.T) {
	ports := freePorts(t, 3)
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("127.0.0.1:%d", p)) // host:port, as --nats-routes accepts
	}
	dir := t.TempDir()
	var specs []hubSpec
	for i, name := range []string{"hub-a", "hub-b", "hub-c"} {
		specs = append(specs, hubSpec{apps: newHubApps(), cfg: hub.Config{
			Name:    name, // also the NATS server name: unique per member
			DataDir: filepath.Join(dir, name),
			EngineCluster: hub.EngineCluster{
				Name:   "caps-test",
				Listen: fmt.Sprintf("127.0.0.1:%d", ports[i]),
				Routes: routes,
			},
			AckWait: testAckWait,
		}})
	}
	hs := startHubs(t, specs...)
	runFlows(t, &rig{a: hs[0], b: hs[1]})
}
