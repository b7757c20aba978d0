package main

import (
	"crypto/tls"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caps-hub/caps/internal/tlsutil"
)

// newToken runs `caps token new` and returns the token and the YAML entry it printed.
func newToken(t *testing.T, bin string, args ...string) (token, entry string) {
	t.Helper()
	out, err := exec.Command(bin, append([]string{"token", "new"}, args...)...).Output()
	if err != nil {
		t.Fatalf("caps token new %v: %v", args, err)
	}
	first, rest, _ := strings.Cut(string(out), "\n")
	var lines []string
	for _, l := range strings.Split(rest, "\n") {
		if strings.HasPrefix(l, "  ") {
			lines = append(lines, l)
		}
	}
	return strings.TrimSpace(first), strings.Join(lines, "\n") + "\n"
}

// TestSecureHubProcesses: `caps cert` and `caps token new` make what `caps
// hub --auth --tls-cert --tls-key` needs; vendor and driver processes work
// with --token and --tls-ca; HTTPS serves /readyz; SIGHUP after a token is
// removed from the file cuts off its holder, which cannot come back.
func TestSecureHubProcesses(t *testing.T) {
	bin := buildCaps(t)
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	if out, err := exec.Command(bin, "cert", "--dir", certs, "--hosts", "localhost,127.0.0.1").CombinedOutput(); err != nil {
		t.Fatalf("caps cert: %v\n%s", err, out)
	}
	vendorTok, vendorEntry := newToken(t, bin, "--role", "vendor", "--store", "tls-shop")
	driverTok, driverEntry := newToken(t, bin, "--role", "driver", "--name", "tls-driver")
	authFile := filepath.Join(dir, "auth.yaml")
	if err := os.WriteFile(authFile, []byte("tokens:\n"+vendorEntry+driverEntry), 0o600); err != nil {
		t.Fatal(err)
	}

	addr, httpAddr := freeAddr(t), freeAddr(t)
	hub := startProcess(t, bin, "hub", "--addr", addr, "--http", httpAddr, "--data", filepath.Join(dir, "data"), "--quiet",
		"--auth", authFile, "--tls-cert", filepath.Join(certs, "cert.pem"), "--tls-key", filepath.Join(certs, "key.pem"))
	hub.errs.waitFor(t, "hub listening", 60*time.Second)
	hub.errs.waitFor(t, "tokens=2", time.Second)

	ca := filepath.Join(certs, "ca.pem")
	driver := startProcess(t, bin, "driver", "--hub", addr, "--name", "tls-driver", "--token", driverTok, "--tls-ca", ca,
		"--pickup-delay", "10ms", "--deliver-delay", "10ms")
	vendor := exec.Command(bin, "vendor", "--hub", addr, "--store", "tls-shop", "--orders", "2", "--interval", "50ms", "--tls-ca", ca)
	vendor.Env = append(os.Environ(), "CAPS_TOKEN="+vendorTok) // the token from the environment
	out, err := vendor.Output()
	if err != nil {
		t.Fatalf("vendor over TLS with a token: %v\n%s", err, out)
	}
	if n := strings.Count(string(out), "VENDOR[tls-shop]: Thank you for delivering "); n != 2 {
		t.Fatalf("vendor printed:\n%s", out)
	}

	// The same vendor without TLS, or without its token, is refused with a reason.
	out, err = exec.Command(bin, "vendor", "--hub", addr, "--store", "tls-shop", "--orders", "1", "--token", vendorTok).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "TLS") {
		t.Errorf("plain vendor on the TLS port: err %v, output:\n%s", err, out)
	}
	out, err = exec.Command(bin, "vendor", "--hub", addr, "--store", "tls-shop", "--orders", "1", "--tls-ca", ca).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "unauthorized") {
		t.Errorf("vendor without a token: err %v, output:\n%s", err, out)
	}

	pool, err := tlsutil.LoadCAPool(ca)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second}
	resp, err := hc.Get("https://" + httpAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz over HTTPS: %s", resp.Status)
	}

	// Revoke the driver: remove its entry and send SIGHUP.
	if err := os.WriteFile(authFile, []byte("tokens:\n"+vendorEntry), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := hub.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	hub.errs.waitFor(t, "sessions_closed=1", 30*time.Second)
	if err := driver.waitExit(t, 60*time.Second); err == nil {
		t.Fatal("revoked driver exited 0")
	}
	if !strings.Contains(strings.Join(driver.errs.all(), "\n"), "unauthorized") {
		t.Errorf("revoked driver did not say why:\n%s", strings.Join(driver.errs.all(), "\n"))
	}
	// A broken file on reload keeps the old tokens and says so.
	os.WriteFile(authFile, []byte("tokens: [broken"), 0o600)
	hub.cmd.Process.Signal(syscall.SIGHUP)
	hub.errs.waitFor(t, "previous tokens stay in force", 30*time.Second)
	hub.stop(t)
}
