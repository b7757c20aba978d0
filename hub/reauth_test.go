package hub_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/auth"
	"github.com/caps-hub/caps/protocol"
)

// After the auth file is reloaded, Reauthenticate closes the sessions of
// revoked tokens and of tokens whose permissions changed, and leaves the
// others alone.
func TestReauthenticateAfterReload(t *testing.T) {
	keepTok, keepHash := auth.NewToken()
	revokeTok, revokeHash := auth.NewToken()
	changeTok, changeHash := auth.NewToken()
	file := func(withRevoked bool, adminDeny string) string {
		var b strings.Builder
		b.WriteString("tokens:\n")
		b.WriteString(auth.EntryYAML(auth.Entry{Name: "keep", Role: "vendor", Store: "keep", SHA256: keepHash}))
		if withRevoked {
			b.WriteString(auth.EntryYAML(auth.Entry{Name: "gone", Role: "driver", SHA256: revokeHash}))
		}
		b.WriteString(auth.EntryYAML(auth.Entry{Name: "ops", Role: "admin", SHA256: changeHash}))
		b.WriteString("roles:\n  admin:\n    publish: [\">\"]\n    subscribe: [\">\"]\n    deny_subscribe: [\"" + adminDeny + "\"]\n")
		return b.String()
	}
	p := filepath.Join(t.TempDir(), "auth.yaml")
	os.WriteFile(p, []byte(file(true, "secret.>")), 0o600)
	a, err := auth.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	h := startHub(t, func(c *hub.Config) { c.Auth = a })
	keep, revoked, changed := dialRaw(t, h), dialRaw(t, h), dialRaw(t, h)
	keep.login(keepTok)
	revoked.login(revokeTok)
	changed.login(changeTok)

	if n := h.Reauthenticate(); n != 0 {
		t.Fatalf("nothing changed, yet %d sessions closed", n)
	}
	os.WriteFile(p, []byte(file(false, "private.>")), 0o600)
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	if n := h.Reauthenticate(); n != 2 {
		t.Fatalf("%d sessions closed, want 2", n)
	}
	for _, r := range []*rawConn{revoked, changed} {
		f := r.nextOp()
		if f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeAuth || f.Flags&protocol.FlagFatal == 0 {
			t.Fatalf("want fatal unauthorized, got %s", f)
		}
		r.expectClosed()
	}
	keep.expect(&protocol.Frame{Op: protocol.OpPing}, protocol.OpPong, "")

	// The revoked token is refused; the changed one gets its new permissions.
	again := dialRaw(t, h)
	if f := again.helloToken("driver", "gone", revokeTok); f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeAuth {
		t.Fatalf("revoked token: got %s", f)
	}
	adm := dialRaw(t, h)
	adm.login(changeTok)
	adm.expect(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("private.x")}, protocol.OpErr, protocol.CodeForbidden)
	adm.expect(&protocol.Frame{Op: protocol.OpSub, ID: 2, Topic: []byte("secret.x")}, protocol.OpOK, "")
}
