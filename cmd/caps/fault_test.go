package main

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestHubKill9 runs vendors and drivers as processes against a `caps hub`
// process and kills the hub with SIGKILL three times mid-run, restarting it
// on the same data directory each time. Every order a vendor posted (and the
// hub acknowledged) must still be delivered: each vendor exits 0 only once
// all its orders are confirmed delivered, and prints each thank-you once.
func TestHubKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test: skipped with -short")
	}
	bin := buildCaps(t)
	data := t.TempDir()
	addr := freeAddr(t)
	startHub := func() *process {
		t.Helper()
		p := startProcess(t, bin, "hub", "--addr", addr, "--http", "off", "--data", data, "--quiet")
		p.errs.waitFor(t, "hub listening", 60*time.Second)
		return p
	}
	hub := startHub()

	const perVendor = 20
	stores := []string{"kill-flowers", "kill-pizza"}
	vendors := map[string]*process{}
	for _, s := range stores {
		vendors[s] = startProcess(t, bin, "vendor", "--hub", addr, "--store", s,
			"--orders", fmt.Sprint(perVendor), "--interval", "150ms", "--timeout", "60s")
	}
	var drivers []*process
	for _, name := range []string{"kd1", "kd2", "kd3"} {
		drivers = append(drivers, startProcess(t, bin, "driver", "--hub", addr, "--name", name,
			"--pickup-delay", "30ms", "--deliver-delay", "60ms", "--capacity", "3", "--timeout", "60s"))
	}

	thanked := func() int {
		n := 0
		for _, v := range vendors {
			n += countLines(v.out.all(), "Thank you for delivering")
		}
		return n
	}
	// Kill the hub at three points of progress, while orders are still
	// being posted and carried.
	total := perVendor * len(stores)
	for i, at := range []int{2, total / 4, total / 2} {
		deadline := time.Now().Add(90 * time.Second)
		for thanked() < at {
			if time.Now().After(deadline) {
				t.Fatalf("kill %d: only %d of %d orders delivered", i+1, thanked(), at)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := hub.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		<-hub.exited
		hub.exited <- nil // for the cleanup
		t.Logf("kill -9 number %d after %d of %d thank-yous", i+1, thanked(), total)
		hub = startHub()
	}

	for s, v := range vendors {
		if err := v.waitExit(t, 120*time.Second); err != nil {
			t.Fatalf("vendor %s: %v\nstderr:\n%s", s, err, strings.Join(v.errs.all(), "\n"))
		}
	}
	for s, v := range vendors {
		seen := map[string]int{}
		for _, l := range v.out.all() {
			if _, id, ok := strings.Cut(l, "VENDOR["+s+"]: Thank you for delivering "); ok {
				seen[id]++
			}
		}
		if len(seen) != perVendor {
			t.Errorf("vendor %s thanked for %d orders, want %d", s, len(seen), perVendor)
		}
		for id, n := range seen {
			if n != 1 {
				t.Errorf("vendor %s thanked for %s %d times", s, id, n)
			}
		}
	}
	// The restarted hub's own records agree: every order thanked for is delivered.
	for _, v := range vendors {
		for _, l := range v.out.all() {
			if _, id, ok := strings.Cut(l, "Thank you for delivering "); ok {
				out, err := exec.Command(bin, "track", id, "--hub", addr).CombinedOutput()
				if err != nil || !strings.Contains(string(out), "delivered") {
					t.Errorf("track %s after the kills: %v\n%s", id, err, out)
				}
			}
		}
	}
	// Drivers work at least once: a pickup whose acknowledgement died with
	// the hub may be carried again; count those, for the record.
	picked := map[string]int{}
	for _, d := range drivers {
		for _, l := range d.out.all() {
			if _, id, ok := strings.Cut(l, "]: picked up "); ok {
				picked[id]++
			}
		}
	}
	again := 0
	for _, n := range picked {
		again += n - 1
	}
	t.Logf("%d orders, %d pickups repeated by drivers after a hub kill", len(picked), again)
	for _, d := range drivers {
		d.stop(t)
	}
	hub.stop(t)
}
