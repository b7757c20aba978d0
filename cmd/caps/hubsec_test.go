package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/auth"
)

// The hub warns at start when its auth file is open to other users of the
// machine (who could read who may do what, or grant themselves anything),
// and says nothing about a file only its owner can use.
func TestLooseAuthFileWarned(t *testing.T) {
	_, hash := auth.NewToken()
	entry := auth.EntryYAML(auth.Entry{Name: "ops", Role: "admin", SHA256: hash})
	for _, c := range []struct {
		mode os.FileMode
		warn bool
	}{{0o644, true}, {0o660, true}, {0o600, false}, {0o400, false}} {
		path := filepath.Join(t.TempDir(), "auth.yaml")
		if err := os.WriteFile(path, []byte("tokens:\n"+entry), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, c.mode); err != nil {
			t.Fatal(err)
		}
		var logs bytes.Buffer
		cfg := hub.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))}
		ctx, cancel := context.WithCancel(context.Background())
		sec := &hubSecurity{authFile: path}
		if err := sec.apply(ctx, &cfg); err != nil {
			t.Fatal(err)
		}
		cancel()
		warned := strings.Contains(logs.String(), "the auth file may be read or changed by other users")
		if warned != c.warn {
			t.Errorf("mode %v: warned %v, want %v; logs:\n%s", c.mode, warned, c.warn, logs.String())
		}
	}
}
