package hub_test

import (
	"encoding/json"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

// startNATS runs an external NATS server with JetStream on loopback, storing
// in dir; port 0 picks a free port.
func startNATS(t *testing.T, port int, dir string) *server.Server {
	t.Helper()
	if port == 0 {
		port = server.RANDOM_PORT
	}
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir,
		NoLog: true, NoSigs: true, ServerName: "external",
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server did not start")
	}
	return s
}

// readyz returns the HTTP status of /readyz.
func readyz(t *testing.T, h *hub.Hub) int {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + h.HTTPAddr().String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func waitReadyz(t *testing.T, h *hub.Hub, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for readyz(t, h) != want {
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never answered %d", want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestEngineOutage: with the external engine down the hub refuses publishes
// with "unavailable" instead of acknowledging them, reports unready, keeps
// its clients connected, and recovers by itself when the engine returns.
func TestEngineOutage(t *testing.T) {
	dir := t.TempDir()
	ns := startNATS(t, 0, dir)
	url := ns.ClientURL()
	p := ns.Addr().(*net.TCPAddr).Port
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			ns.Shutdown()
			ns.WaitForShutdown()
		}
	})

	h := startHub(t, func(c *hub.Config) {
		c.DataDir = ""
		c.NATSURLs = url
		c.HTTPAddr = "127.0.0.1:0"
		withStore(c)
	})
	waitReadyz(t, h, http.StatusOK)

	// A durable subscriber and a publisher, connected through the outage.
	sub := dialRaw(t, h)
	sub.hello("client", "worker")
	sub.expect(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("store.>"), Key: []byte("outage")}, protocol.OpOK, "")
	pub := dialRaw(t, h)
	pub.hello("client", "pub")
	before := pub.expect(&protocol.Frame{Op: protocol.OpPub, ID: 1, Topic: []byte("store.a"), Payload: []byte("before")}, protocol.OpOK, "")
	if m := sub.nextOp(); m.Op != protocol.OpMsg || string(m.Payload) != "before" {
		t.Fatalf("durable got %s", m)
	} else {
		sub.send(&protocol.Frame{Op: protocol.OpAck, ID: m.ID, Seq: m.Seq})
	}

	ns.Shutdown()
	ns.WaitForShutdown()
	stopped = true
	waitReadyz(t, h, http.StatusServiceUnavailable)
	if v := metric(t, h, "caps_engine_ready"); v != 0 {
		t.Fatalf("caps_engine_ready = %v during the outage", v)
	}
	if v := metric(t, h, "caps_jetstream_available"); v != 0 {
		t.Fatalf("caps_jetstream_available = %v during the outage", v)
	}
	for i, topic := range []string{"store.b", "live.b"} {
		f := pub.expect(&protocol.Frame{Op: protocol.OpPub, ID: uint64(10 + i), Topic: []byte(topic), Payload: []byte("during")}, protocol.OpErr, protocol.CodeUnavailable)
		if f.Flags&protocol.FlagFatal != 0 || f.ID != uint64(10+i) {
			t.Fatalf("want a recoverable unavailable for id %d, got %s", 10+i, f)
		}
	}
	resp, err := http.Get("http://" + h.HTTPAddr().String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Ready, Engine bool }
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if body.Ready || body.Engine {
		t.Fatalf("/readyz body during the outage: %+v", body)
	}

	// The engine returns on the same port with the same store.
	ns = startNATS(t, p, dir)
	stopped = false
	waitReadyz(t, h, http.StatusOK)
	after := pub.expect(&protocol.Frame{Op: protocol.OpPub, ID: 20, Topic: []byte("store.c"), Payload: []byte("after")}, protocol.OpOK, "")
	// Nothing refused was stored: the stream's next sequence follows on.
	if after.Seq != before.Seq+1 {
		t.Fatalf("sequence after the outage %d, before %d: a refused publish was stored", after.Seq, before.Seq)
	}
	// The durable subscription resumes by itself.
	for {
		m := sub.nextOp()
		if m.Op != protocol.OpMsg {
			t.Fatalf("durable after the outage: got %s", m)
		}
		if string(m.Payload) == "after" {
			break
		}
		if string(m.Payload) != "before" { // a redelivery of the first is allowed
			t.Fatalf("durable got %q", m.Payload)
		}
	}
	if got := metric(t, h, "caps_errors_total", "code", protocol.CodeUnavailable); got != 2 {
		t.Fatalf("unavailable counted %v times, want 2", got)
	}
}
