package auth_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caps-hub/caps/internal/auth"
	"github.com/caps-hub/caps/protocol"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "auth.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func hello(token string) protocol.Hello {
	return protocol.Hello{Version: protocol.Version, Role: protocol.RoleClient, Name: "whoever", Token: token}
}

func TestAuthenticate(t *testing.T) {
	vendorTok, vendorHash := auth.NewToken()
	driverTok, driverHash := auth.NewToken()
	loggerTok, loggerHash := auth.NewToken()
	oldTok, oldHash := auth.NewToken()
	body := "tokens:\n" +
		auth.EntryYAML(auth.Entry{Name: "1-206-flowers", Role: "vendor", Store: "1-206-flowers", SHA256: vendorHash}) +
		auth.EntryYAML(auth.Entry{Name: "dana", Role: "driver", SHA256: driverHash}) +
		"    permissions:\n      publish: [\"parcel.{name}.>\"]\n      subscribe: [\"parcel.>\"]\n" +
		auth.EntryYAML(auth.Entry{Name: "log", Role: "logger", SHA256: loggerHash}) +
		auth.EntryYAML(auth.Entry{Name: "old", Role: "chat", SHA256: oldHash, Expires: ptr(time.Now().Add(-time.Hour))}) +
		"roles:\n  logger:\n    subscribe: [\">\"]\n    deny_subscribe: [\"chat.dm.>\"]\n"
	a, err := auth.Load(writeFile(t, body))
	if err != nil {
		t.Fatalf("load:\n%s\n%v", body, err)
	}
	if a.Tokens() != 4 {
		t.Fatalf("loaded %d tokens, want 4", a.Tokens())
	}

	id, err := a.Authenticate(hello(vendorTok))
	if err != nil {
		t.Fatal(err)
	}
	if id.Role != "vendor" || id.Name != "1-206-flowers" || id.Attr(auth.StoreAttr) != "1-206-flowers" || id.Perms != nil {
		t.Fatalf("vendor identity %+v", id)
	}
	id, err = a.Authenticate(hello(driverTok))
	if err != nil {
		t.Fatal(err)
	}
	if id.Role != "driver" || id.Name != "dana" || id.Perms == nil || id.Perms.Publish[0] != "parcel.{name}.>" {
		t.Fatalf("driver identity %+v", id)
	}
	id, err = a.Authenticate(hello(loggerTok))
	if err != nil {
		t.Fatal(err)
	}
	if id.Perms == nil || len(id.Perms.DenySubscribe) != 1 {
		t.Fatalf("logger did not get the file's role permissions: %+v", id)
	}

	for _, c := range []struct {
		token string
		want  error
	}{
		{"", auth.ErrNoToken},
		{"caps_nope", auth.ErrUnknownToken},
		{vendorTok + "x", auth.ErrUnknownToken},
		{vendorHash, auth.ErrUnknownToken}, // the hash is not the token
		{oldTok, auth.ErrExpiredToken},
	} {
		if _, err := a.Authenticate(hello(c.token)); !errors.Is(err, c.want) {
			t.Errorf("token %q: got %v, want %v", c.token, err, c.want)
		}
	}
}

func TestReloadKeepsOldTableOnError(t *testing.T) {
	tok, h := auth.NewToken()
	p := writeFile(t, "tokens:\n"+auth.EntryYAML(auth.Entry{Name: "a", Role: "admin", SHA256: h}))
	a, err := auth.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p, []byte("tokens: [oops"), 0o600)
	if err := a.Reload(); err == nil {
		t.Fatal("reload of a broken file succeeded")
	}
	if _, err := a.Authenticate(hello(tok)); err != nil {
		t.Fatalf("old token refused after a failed reload: %v", err)
	}
	tok2, h2 := auth.NewToken()
	os.WriteFile(p, []byte("tokens:\n"+auth.EntryYAML(auth.Entry{Name: "b", Role: "admin", SHA256: h2})), 0o600)
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Authenticate(hello(tok)); !errors.Is(err, auth.ErrUnknownToken) {
		t.Fatalf("removed token still accepted: %v", err)
	}
	if _, err := a.Authenticate(hello(tok2)); err != nil {
		t.Fatal(err)
	}
}

func TestBadFiles(t *testing.T) {
	_, h := auth.NewToken()
	for name, c := range map[string]struct{ body, want string }{
		"not yaml":         {"tokens: [", "not a valid auth file"},
		"unknown field":    {"tokens:\n  - name: a\n    role: admin\n    sha256: " + h + "\n    token: secret\n", "not a valid auth file"},
		"unknown role":     {"tokens:\n  - name: a\n    role: king\n    sha256: " + h + "\n", "unknown role"},
		"bad name":         {"tokens:\n  - name: \"a b\"\n    role: admin\n    sha256: " + h + "\n", "bad name"},
		"vendor no store":  {"tokens:\n  - name: a\n    role: vendor\n    sha256: " + h + "\n", "needs a store"},
		"store on driver":  {"tokens:\n  - name: a\n    role: driver\n    store: s\n    sha256: " + h + "\n", "only vendor"},
		"short hash":       {"tokens:\n  - name: a\n    role: admin\n    sha256: abcd\n", "64 hex digits"},
		"plain token":      {"tokens:\n  - name: a\n    role: admin\n    sha256: caps_abc\n", "64 hex digits"},
		"duplicate token":  {"tokens:\n  - name: a\n    role: admin\n    sha256: " + h + "\n  - name: b\n    role: admin\n    sha256: " + h + "\n", "same token"},
		"bad pattern":      {"tokens:\n  - name: a\n    role: admin\n    sha256: " + h + "\n    permissions:\n      publish: [\"a..b\"]\n", "invalid topic pattern"},
		"bad role section": {"tokens: []\nroles:\n  wizard:\n    publish: [\">\"]\n", "unknown role"},
	} {
		_, err := auth.Parse([]byte(c.body))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", name, err, c.want)
		}
	}
	if _, err := auth.Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Error("missing file accepted")
	}
}

func TestEntryYAMLQuotesNumericNames(t *testing.T) {
	_, h := auth.NewToken()
	f, err := auth.Parse([]byte("tokens:\n" + auth.EntryYAML(auth.Entry{Name: "123", Role: "vendor", Store: "1e3", SHA256: h})))
	if err != nil {
		t.Fatal(err)
	}
	if f.Tokens[0].Name != "123" || f.Tokens[0].Store != "1e3" {
		t.Fatalf("round trip changed the entry: %+v", f.Tokens[0])
	}
}

func TestNewTokenIsRandomAndPrefixed(t *testing.T) {
	a, ha := auth.NewToken()
	b, _ := auth.NewToken()
	if a == b || !strings.HasPrefix(a, auth.TokenPrefix) || len(a) < 40 {
		t.Fatalf("tokens %q %q", a, b)
	}
	if auth.Hash(a) != ha || len(ha) != 64 {
		t.Fatalf("hash %q", ha)
	}
}

func ptr[T any](v T) *T { return &v }
