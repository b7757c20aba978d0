package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestOrderCommand: caps order create|get|list|cancel against the caps
// binary as a hub, over HTTP: what they print, and a one-line error with a
// non-zero exit for what the API refuses.
func TestOrderCommand(t *testing.T) {
	bin := buildCaps(t)
	httpAddr := freeAddr(t)
	hub := startProcess(t, bin, "hub", "--addr", freeAddr(t), "--http", httpAddr, "--data", t.TempDir(), "--quiet")
	hub.errs.waitFor(t, "hub listening", 60*time.Second)
	api := "--api=http://" + httpAddr
	order := func(args ...string) (string, string, error) {
		p := startProcess(t, bin, append([]string{"order", api}, args...)...)
		err := p.waitExit(t, 30*time.Second)
		return strings.Join(p.out.all(), "\n"), strings.Join(p.errs.all(), "\n"), err
	}

	out, errs, err := order("create", "--store", "corner", "--customer", "Ada Lovelace", "--address", "12 Analytical Row",
		"--require-pin", "--idempotency-key", "cli-1", "--json")
	if err != nil {
		t.Fatalf("create: %v %s", err, errs)
	}
	var o struct{ OrderID, Status, PIN, TrackingURL string }
	if err := json.Unmarshal([]byte(out), &o); err != nil || o.Status != "created" || len(o.PIN) != 6 || !strings.Contains(o.TrackingURL, "/track/") {
		t.Fatalf("create printed %q (%v)", out, err)
	}
	if out, _, err = order("get", o.OrderID, "--store", "corner"); err != nil || !strings.Contains(out, "created") ||
		!strings.Contains(out, "PIN       "+o.PIN) || !strings.Contains(out, o.TrackingURL) {
		t.Errorf("get printed %q (%v)", out, err)
	}
	if out, _, err = order("list", "--store", "corner", "--status", "created,assigned"); err != nil || !strings.Contains(out, o.OrderID) {
		t.Errorf("list printed %q (%v)", out, err)
	}
	if out, _, err = order("cancel", o.OrderID, "--store", "corner"); err != nil || !strings.Contains(out, "cancelled") {
		t.Errorf("cancel printed %q (%v)", out, err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"get", o.OrderID, "--store", "elsewhere"}, "caps: order get " + o.OrderID + ": not_found"},
		{[]string{"list"}, "caps: order list: bad_request"},
		{[]string{"create", "--store", "corner", "--customer", "Bob", "--address", "x", "--idempotency-key", "cli-1"}, "idempotency-mismatch"},
		{[]string{"list", "--store", "corner", "--api", "http://127.0.0.1:1"}, "connection refused"},
	} {
		out, errs, err := order(c.args...)
		if err == nil || !strings.Contains(errs, c.want) || strings.Count(strings.TrimSpace(errs), "\n") != 0 || out != "" {
			t.Errorf("order %v: exit %v, stdout %q, stderr %q; want a one-line error with %q", c.args, err, out, errs, c.want)
		}
	}
}
