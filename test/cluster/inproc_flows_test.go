package cluster_test

import "testing"

// TestInprocCluster: a three-node NATS cluster inside the test process and
// two hubs on it.
func TestInprocCluster(t *testing.T) {
	nc := startInprocCluster(t, 3)
	hs := startHubs(t, externalHub("hub-a", nc.URLs()), externalHub("hub-b", nc.URLs()))
	runFlows(t, &rig{nats: nc, a: hs[0], b: hs[1]})
}
