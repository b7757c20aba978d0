package main

import (
	"context"
	"encoding/json"
	"net"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/caps-hub/caps/client"
)

// startHubProcess runs `caps hub` on a loopback port with dataDir.
func startHubProcess(t *testing.T, bin, dataDir string, extra ...string) (addr string, cmd *exec.Cmd, out *lineWatcher) {
	t.Helper()
	addr = freeAddr(t)
	args := append([]string{"hub", "--addr", addr, "--http", "off", "--data", dataDir}, extra...)
	cmd = exec.Command(bin, args...)
	stdout, _ := cmd.StdoutPipe()
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	out = watchLines(stdout)
	logs := watchLines(stderr)
	logs.waitFor(t, "hub listening", 60*time.Second)
	return addr, cmd, out
}

func TestHubProcessSIGTERMAndRestart(t *testing.T) {
	bin := buildCaps(t)
	data := t.TempDir()
	addr, cmd, events := startHubProcess(t, bin, data)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, []string{addr}, client.Options{Role: "client", Name: "prober", NoReconnect: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, "greetings.world", []byte(`{"hello":"world"}`)); err != nil {
		t.Fatal(err)
	}
	line := events.waitFor(t, `"event":"greetings.world"`, 10*time.Second)
	var ev struct {
		Event   string          `json:"event"`
		Time    string          `json:"time"`
		Payload json.RawMessage `json:"payload"`
	}
	if err := json.Unmarshal([]byte(line[len("EVENT "):]), &ev); err != nil {
		t.Fatalf("EVENT line is not JSON: %q: %v", line, err)
	}
	if _, err := time.Parse(time.RFC3339, ev.Time); err != nil || string(ev.Payload) != `{"hello":"world"}` {
		t.Fatalf("bad EVENT line %q", line)
	}
	c.Close()

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("hub exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("hub did not exit within 20s of SIGTERM")
	}
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Fatal("hub still accepting after exit")
	}

	// Second start on the same data directory: the stored connection events
	// of the first run are still there.
	addr2, _, _ := startHubProcess(t, bin, data)
	admin, err := client.Dial(ctx, []string{addr2}, client.Options{Role: "admin", Name: "auditor", NoReconnect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	got := make(chan string, 16)
	_, err = admin.Subscribe(ctx, "client.connected", func(m *client.Msg) {
		if m.History {
			got <- string(m.Payload)
		}
	}, client.History(10))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		var info struct{ Name string }
		json.Unmarshal([]byte(p), &info)
		if info.Name != "prober" && info.Name != "auditor" {
			t.Fatalf("unexpected stored event %s", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("durable state of the first run not found after restart")
	}
}
