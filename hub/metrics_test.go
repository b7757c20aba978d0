package hub_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

// metric returns the value of the counter or gauge name whose labels include
// labels (name=value pairs), 0 if it has not been recorded.
func metric(t *testing.T, h *hub.Hub, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := h.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if hasLabels(m, labels) {
				switch {
				case m.Counter != nil:
					return m.Counter.GetValue()
				case m.Gauge != nil:
					return m.Gauge.GetValue()
				case m.Histogram != nil:
					return float64(m.Histogram.GetSampleCount())
				}
			}
		}
	}
	return 0
}

func hasLabels(m *dto.Metric, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == kv[i] && lp.GetValue() == kv[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// waitMetric waits until the metric reaches want.
func waitMetric(t *testing.T, h *hub.Hub, want float64, name string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := metric(t, h, name, labels...)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v, want %v", name, labels, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	h := startHub(t, func(c *hub.Config) { c.HTTPAddr = "127.0.0.1:0"; withStore(c) })
	r := dialRaw(t, h)
	r.hello("client", "m1")
	r.send(&protocol.Frame{Op: protocol.OpPub, ID: 1, Topic: []byte("store.x"), Payload: []byte("stored")})
	if f := r.nextOp(); f.Op != protocol.OpOK {
		t.Fatalf("want OK, got %s", f)
	}
	r.send(&protocol.Frame{Op: protocol.OpPub, ID: 2, Topic: []byte("live.x"), Payload: []byte("live")})
	if f := r.nextOp(); f.Op != protocol.OpOK {
		t.Fatalf("want OK, got %s", f)
	}
	r.send(&protocol.Frame{Op: protocol.OpSub, ID: 3, Topic: []byte("client.>")})
	if f := r.nextOp(); f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeForbidden {
		t.Fatalf("want forbidden, got %s", f)
	}

	resp, err := http.Get("http://" + h.HTTPAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(body)
	for _, want := range []string{
		`caps_connections{role="client"} 1`,
		`caps_errors_total{code="forbidden"} 1`,
		// Stored: ours and the hub's client.connected event.
		`caps_publishes_total{kind="stored"} 2`,
		`caps_publishes_total{kind="live"} 1`,
		`caps_store_publish_seconds_count 2`,
		`caps_engine_ready 1`,
		`caps_jetstream_available 1`,
		`caps_sockets_open 1`,
		"caps_frames_in_total", "caps_frames_out_total", "caps_bytes_in_total", "caps_bytes_out_total",
		"caps_outbound_queued_bytes ", "caps_outbound_queued_frames ", "caps_outbound_queued_bytes_max ",
		"caps_outbound_queue_fill_max ", "caps_slow_consumers_total 0", "go_goroutines", "process_open_fds",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(text)
	}
}
