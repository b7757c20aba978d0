package hub_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/auth"
	"github.com/caps-hub/caps/protocol"
)

// shopApp grants what a delivery app would: vendors their own store's
// topics, drivers the pickups of every store.
type shopApp struct{}

func (shopApp) Setup(_ context.Context, h *hub.Host) error {
	h.Grant(protocol.RoleVendor, hub.Permissions{Publish: []string{"shop.{store}.order"}, Subscribe: []string{"shop.{store}.>"}})
	h.Grant(protocol.RoleDriver, hub.Permissions{Publish: []string{"shop.*.done"}, Subscribe: []string{"shop.*.order"}})
	return nil
}

type tokens struct {
	vendorA, vendorB, driver, custom, admin string
}

// startAuthHub runs a hub with shopApp and an auth file holding one token per
// identity used by the tests.
func startAuthHub(t *testing.T) (*hub.Hub, tokens) {
	t.Helper()
	var tk tokens
	var body strings.Builder
	body.WriteString("tokens:\n")
	add := func(dst *string, e auth.Entry, extra string) {
		*dst, e.SHA256 = auth.NewToken()
		body.WriteString(auth.EntryYAML(e))
		body.WriteString(extra)
	}
	add(&tk.vendorA, auth.Entry{Name: "store-a", Role: "vendor", Store: "store-a"}, "")
	add(&tk.vendorB, auth.Entry{Name: "store-b", Role: "vendor", Store: "store-b"}, "")
	add(&tk.driver, auth.Entry{Name: "dana", Role: "driver"}, "")
	// A token whose own permissions replace its role's.
	add(&tk.custom, auth.Entry{Name: "kiosk", Role: "vendor", Store: "store-k"},
		"    permissions:\n      publish: [\"kiosk.{name}.>\"]\n      subscribe: [\"kiosk.>\"]\n")
	add(&tk.admin, auth.Entry{Name: "ops", Role: "admin"}, "")
	// The file narrows what every admin may see.
	body.WriteString("roles:\n  admin:\n    publish: [\">\"]\n    subscribe: [\">\"]\n    deny_subscribe: [\"shop.*.secret\"]\n")
	p := filepath.Join(t.TempDir(), "auth.yaml")
	if err := os.WriteFile(p, []byte(body.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := auth.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	h := startHub(t, func(c *hub.Config) { c.Auth = a; c.Apps = append(c.Apps, shopApp{}) })
	return h, tk
}

// helloToken sends a HELLO with a token and returns the answer.
func (r *rawConn) helloToken(role, name, token string) *protocol.Frame {
	r.t.Helper()
	b, _ := json.Marshal(protocol.Hello{Version: protocol.Version, Role: role, Name: name, Token: token})
	r.send(&protocol.Frame{Op: protocol.OpHello, Payload: b})
	return r.nextOp()
}

func (r *rawConn) login(token string) protocol.Welcome {
	r.t.Helper()
	f := r.helloToken("client", "anyone", token)
	if f.Op != protocol.OpWelcome {
		r.t.Fatalf("want WELCOME, got %s", f)
	}
	var w protocol.Welcome
	if err := json.Unmarshal(f.Payload, &w); err != nil {
		r.t.Fatal(err)
	}
	return w
}

// expect sends f and checks the answer's op and, for ERR, its code.
func (r *rawConn) expect(f *protocol.Frame, op protocol.Op, code string) *protocol.Frame {
	r.t.Helper()
	r.send(f)
	got := r.nextOp()
	if got.Op != op || (op == protocol.OpErr && string(got.Topic) != code) {
		r.t.Fatalf("%s %q: want %s %s, got %s", f.Op, f.Topic, op, code, got)
	}
	return got
}

func TestAuthRefusesBadTokens(t *testing.T) {
	h, tk := startAuthHub(t)
	for _, token := range []string{"", "caps_guess", tk.vendorA[:len(tk.vendorA)-1], auth.Hash(tk.vendorA)} {
		r := dialRaw(t, h)
		f := r.helloToken("vendor", "store-a", token)
		if f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeAuth || f.Flags&protocol.FlagFatal == 0 {
			t.Fatalf("token %q: want fatal unauthorized, got %s", token, f)
		}
		r.expectClosed()
	}
	if got := metric(t, h, "caps_errors_total", "code", protocol.CodeAuth); got != 4 {
		t.Fatalf("unauthorized counted %v times, want 4", got)
	}
	// With auth on, the classroom dialect (which carries no token) is off.
	r := dialRaw(t, h)
	r.c.Write([]byte(`{"event":"pickup","payload":{}}`))
	buf := make([]byte, 512)
	n, _ := r.c.Read(buf)
	if !strings.Contains(string(buf[:n]), protocol.CodeClassroomDisabled) {
		t.Fatalf("classroom client on an auth hub: got %q", buf[:n])
	}
}

func TestAuthTokenDecidesIdentity(t *testing.T) {
	h, tk := startAuthHub(t)
	r := dialRaw(t, h)
	// Asks to be an admin called root; the token says vendor store-a.
	f := r.helloToken("admin", "root", tk.vendorA)
	if f.Op != protocol.OpWelcome {
		t.Fatalf("want WELCOME, got %s", f)
	}
	var w protocol.Welcome
	json.Unmarshal(f.Payload, &w)
	if w.Role != "vendor" || w.Name != "store-a" {
		t.Fatalf("granted %s %q, want vendor store-a", w.Role, w.Name)
	}
	r.expect(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte(">")}, protocol.OpErr, protocol.CodeForbidden)
}

func TestAuthVendorConfinedToItsStore(t *testing.T) {
	h, tk := startAuthHub(t)
	a := dialRaw(t, h)
	a.login(tk.vendorA)
	b := dialRaw(t, h)
	b.login(tk.vendorB)

	forbidden := []*protocol.Frame{
		{Op: protocol.OpPub, ID: 1, Topic: []byte("shop.store-b.order"), Payload: []byte("{}")}, // post for another store
		{Op: protocol.OpSub, ID: 2, Topic: []byte("shop.store-b.>")},                            // read another store
		{Op: protocol.OpSub, ID: 3, Topic: []byte("shop.*.order")},                              // read every store
		{Op: protocol.OpSub, ID: 4, Topic: []byte("shop.>")},
		{Op: protocol.OpSub, ID: 5, Topic: []byte(">")},
		{Op: protocol.OpPub, ID: 6, Topic: []byte("shop.store-a.done"), Payload: []byte("{}")}, // a driver's event
		{Op: protocol.OpSub, ID: 7, Topic: []byte("client.>")},
	}
	for _, f := range forbidden {
		got := a.expect(f, protocol.OpErr, protocol.CodeForbidden)
		if got.ID != f.ID || got.Flags&protocol.FlagFatal != 0 {
			t.Fatalf("want recoverable forbidden for id %d, got %s", f.ID, got)
		}
	}
	if got := metric(t, h, "caps_errors_total", "code", protocol.CodeForbidden); got != float64(len(forbidden)) {
		t.Fatalf("forbidden counted %v times, want %d", got, len(forbidden))
	}

	// Its own store works, and it hears only its own store.
	a.expect(&protocol.Frame{Op: protocol.OpSub, ID: 10, Topic: []byte("shop.store-a.>")}, protocol.OpOK, "")
	b.expect(&protocol.Frame{Op: protocol.OpPub, ID: 11, Topic: []byte("shop.store-b.order"), Payload: []byte("b's customer")}, protocol.OpOK, "")
	msgs := a.publishOwn(&protocol.Frame{Op: protocol.OpPub, ID: 12, Topic: []byte("shop.store-a.order"), Payload: []byte("a's customer")}, 1)
	if string(msgs[0].Payload) != "a's customer" {
		t.Fatalf("vendor a got %s, want only its own order", msgs[0])
	}
}

// publishOwn publishes f (which asks for an OK) on a connection subscribed
// to its topic and returns the n deliveries that arrive with the OK, in
// whatever order the two come.
func (r *rawConn) publishOwn(f *protocol.Frame, n int) []*protocol.Frame {
	r.t.Helper()
	r.send(f)
	var msgs []*protocol.Frame
	ok := false
	for !ok || len(msgs) < n {
		got := r.nextOp()
		switch {
		case got.Op == protocol.OpOK && got.ID == f.ID && !ok:
			ok = true
		case got.Op == protocol.OpMsg && len(msgs) < n:
			msgs = append(msgs, got)
		default:
			r.t.Fatalf("%s %q: unexpected %s", f.Op, f.Topic, got)
		}
	}
	return msgs
}

func TestAuthDriverCannotReadVendorTopics(t *testing.T) {
	h, tk := startAuthHub(t)
	d := dialRaw(t, h)
	if w := d.login(tk.driver); w.Role != "driver" || w.Name != "dana" {
		t.Fatalf("welcome %+v", w)
	}
	for i, topic := range []string{"shop.store-a.>", "shop.store-a.done", "shop.>", "shop.*.*"} {
		d.expect(&protocol.Frame{Op: protocol.OpSub, ID: uint64(i + 1), Topic: []byte(topic)}, protocol.OpErr, protocol.CodeForbidden)
	}
	d.expect(&protocol.Frame{Op: protocol.OpPub, ID: 9, Topic: []byte("shop.store-a.order"), Payload: []byte("{}")}, protocol.OpErr, protocol.CodeForbidden)
	d.expect(&protocol.Frame{Op: protocol.OpSub, ID: 10, Topic: []byte("shop.*.order")}, protocol.OpOK, "")
	d.expect(&protocol.Frame{Op: protocol.OpPub, ID: 11, Topic: []byte("shop.store-a.done"), Payload: []byte("{}")}, protocol.OpOK, "")
}

func TestAuthFilePermissionsOverrideRoles(t *testing.T) {
	h, tk := startAuthHub(t)
	// The kiosk is a vendor, but its token's permissions replace the role's.
	k := dialRaw(t, h)
	k.login(tk.custom)
	k.expect(&protocol.Frame{Op: protocol.OpPub, ID: 1, Topic: []byte("shop.store-k.order"), Payload: []byte("{}")}, protocol.OpErr, protocol.CodeForbidden)
	k.expect(&protocol.Frame{Op: protocol.OpPub, ID: 2, Topic: []byte("kiosk.kiosk.hello"), Payload: []byte("{}")}, protocol.OpOK, "")
	k.expect(&protocol.Frame{Op: protocol.OpPub, ID: 3, Topic: []byte("kiosk.other.hello"), Payload: []byte("{}")}, protocol.OpErr, protocol.CodeForbidden)

	// The admin role from the file: everything, but never the secrets, even
	// through a wildcard subscription.
	adm := dialRaw(t, h)
	adm.login(tk.admin)
	adm.expect(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("shop.x.secret")}, protocol.OpErr, protocol.CodeForbidden)
	adm.expect(&protocol.Frame{Op: protocol.OpSub, ID: 2, Topic: []byte("shop.>")}, protocol.OpOK, "")
	adm.publishOwn(&protocol.Frame{Op: protocol.OpPub, ID: 3, Topic: []byte("shop.x.secret"), Payload: []byte("hidden")}, 0)
	if m := adm.publishOwn(&protocol.Frame{Op: protocol.OpPub, ID: 4, Topic: []byte("shop.x.public"), Payload: []byte("shown")}, 1); string(m[0].Payload) != "shown" {
		t.Fatalf("admin got %s, want only the public message", m[0])
	}
}
