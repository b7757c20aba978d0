package tlsutil_test

import (
	"crypto/tls"
	"io"

	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caps-hub/caps/internal/tlsutil"
)

func TestGenerateDevServesVerifiedTLS(t *testing.T) {
	dir := t.TempDir()
	files, err := tlsutil.GenerateDev(dir, tlsutil.DevOptions{Hosts: []string{"localhost", "127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{files.CAKey, files.Key} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, st.Mode().Perm())
		}
	}
	srvCfg, err := tlsutil.ServerConfig(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, "hello")
			}()
		}
	}()

	cliCfg, err := tlsutil.ClientConfig(files.CACert)
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"localhost", "127.0.0.1"} {
		cfg := cliCfg.Clone()
		cfg.ServerName = host
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			t.Fatalf("dial as %s: %v", host, err)
		}
		b, _ := io.ReadAll(c)
		c.Close()
		if string(b) != "hello" {
			t.Fatalf("read %q", b)
		}
	}

	// A name the certificate does not cover is refused.
	cfg := cliCfg.Clone()
	cfg.ServerName = "example.com"
	if c, err := tls.Dial("tcp", ln.Addr().String(), cfg); err == nil {
		c.Close()
		t.Fatal("certificate accepted for a host it does not name")
	}
	// Without the CA the certificate is not trusted.
	if c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: "localhost"}); err == nil {
		c.Close()
		t.Fatal("self-signed certificate trusted without the CA")
	}
}

func TestGenerateDevRefusesToOverwrite(t *testing.T) {
	dir := t.TempDir()
	if _, err := tlsutil.GenerateDev(dir, tlsutil.DevOptions{}); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, tlsutil.CACertFile))
	_, err := tlsutil.GenerateDev(dir, tlsutil.DevOptions{})
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("want an 'already exists' error, got %v", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, tlsutil.CACertFile))
	if string(before) != string(after) {
		t.Fatal("CA replaced despite the refusal")
	}
	if _, err := tlsutil.GenerateDev(dir, tlsutil.DevOptions{Force: true}); err != nil {
		t.Fatalf("with Force: %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.pem")
	os.WriteFile(bad, []byte("not pem"), 0o644)
	if _, err := tlsutil.ClientConfig(bad); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("want a clear error for a non-PEM CA file, got %v", err)
	}
	if _, err := tlsutil.ClientConfig(filepath.Join(dir, "missing.pem")); err == nil {
		t.Fatal("missing CA file accepted")
	}
	if _, err := tlsutil.ServerConfig(bad, bad); err == nil {
		t.Fatal("bad key pair accepted")
	}
	if _, err := tlsutil.ServerConfig("", ""); err == nil {
		t.Fatal("empty file names accepted")
	}
}
