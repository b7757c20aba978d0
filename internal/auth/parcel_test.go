package auth_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/auth"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// parcelHub runs a hub with the parcel dispatcher and an auth file with two
// vendors, a driver and a logger.
type parcelHub struct {
	addr                                  string
	vendorA, vendorB, driver, logger, bad string
}

func startParcelHub(t *testing.T) parcelHub {
	t.Helper()
	var ph parcelHub
	var body strings.Builder
	body.WriteString("tokens:\n")
	for _, e := range []struct {
		dst *string
		e   auth.Entry
	}{
		{&ph.vendorA, auth.Entry{Name: "store-a", Role: "vendor", Store: "store-a"}},
		{&ph.vendorB, auth.Entry{Name: "store-b", Role: "vendor", Store: "store-b"}},
		{&ph.driver, auth.Entry{Name: "dana", Role: "driver"}},
		{&ph.logger, auth.Entry{Name: "audit", Role: "logger"}},
	} {
		*e.dst, e.e.SHA256 = auth.NewToken()
		body.WriteString(auth.EntryYAML(e.e))
	}
	ph.bad, _ = auth.NewToken() // never written to the file
	p := filepath.Join(t.TempDir(), "auth.yaml")
	os.WriteFile(p, []byte(body.String()), 0o600)
	a, err := auth.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	h := hubtest.Start(t, hub.Config{Name: "auth", Auth: a, Apps: []hub.App{parcel.NewDispatcher(parcel.Options{})}})
	ph.addr = h.Addr().String()
	return ph
}

func dialAs(t *testing.T, addr, token string) *client.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, []string{addr}, client.Options{Token: token, NoReconnect: true})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func wantCode(t *testing.T, err error, code, what string) {
	t.Helper()
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != code {
		t.Errorf("%s: want %s, got %v", what, code, err)
	}
}

func order(store string) []byte {
	return []byte(`{"store":"` + store + `","orderID":"` + uuid.NewString() + `","customer":"Ada Lovelace","address":"1 Main St"}`)
}

// With --auth and the parcel application: a vendor token cannot post for
// another store or read another store's notifications, a driver token cannot
// subscribe to vendor topics, a bad token is refused at the handshake.
func TestParcelPermissionsWithTokens(t *testing.T) {
	ph := startParcelHub(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nop := func(*client.Msg) {}

	a := dialAs(t, ph.addr, ph.vendorA)
	if w := a.Welcome(); w.Role != "vendor" || w.Name != "store-a" {
		t.Fatalf("vendor token granted %s %q", w.Role, w.Name)
	}
	_, err := a.Publish(ctx, parcel.Topic("store-b", uuid.NewString(), parcel.EventPickup, ""), order("store-b"))
	wantCode(t, err, protocol.CodeForbidden, "vendor a posting for store b")
	_, err = a.Publish(ctx, parcel.Topic("store-a", uuid.NewString(), parcel.EventDelivered, "store-a"), order("store-a"))
	wantCode(t, err, protocol.CodeForbidden, "vendor a posting a driver's event")
	for _, p := range []string{parcel.MailboxPattern("store-b"), parcel.StorePattern("store-b"), "parcel.>", parcel.PickupPattern, ">"} {
		_, err := a.Subscribe(ctx, p, nop)
		wantCode(t, err, protocol.CodeForbidden, "vendor a subscribing to "+p)
	}

	d := dialAs(t, ph.addr, ph.driver)
	for _, p := range []string{parcel.MailboxPattern("store-a"), parcel.StorePattern("store-a"), parcel.Topic("*", "*", parcel.EventInTransit, "*"), "parcel.>"} {
		_, err := d.Subscribe(ctx, p, nop)
		wantCode(t, err, protocol.CodeForbidden, "driver subscribing to "+p)
	}
	_, err = d.Publish(ctx, parcel.Topic("store-a", uuid.NewString(), parcel.EventPickup, ""), order("store-a"))
	wantCode(t, err, protocol.CodeForbidden, "driver posting a pickup")

	// Vendor b's durable notifications are b's: a cannot take them over by
	// name. b's pattern is refused outright, and so is b's durable name on
	// a's own pattern: vendor-store-b is a name only b's vendor is granted
	// (a durable of a's own takes another name).
	b := dialAs(t, ph.addr, ph.vendorB)
	if _, err := b.Subscribe(ctx, parcel.MailboxPattern("store-b"), nop,
		client.Durable(parcel.VendorDurable("store-b")), client.ManualAck(), client.DeliverAll()); err != nil {
		t.Fatal(err)
	}
	_, err = a.Subscribe(ctx, parcel.MailboxPattern("store-b"), nop, client.Durable(parcel.VendorDurable("store-b")), client.ManualAck())
	wantCode(t, err, protocol.CodeForbidden, "vendor a joining vendor b's durable")
	_, err = a.Subscribe(ctx, parcel.MailboxPattern("store-a"), nop, client.Durable(parcel.VendorDurable("store-b")), client.ManualAck())
	wantCode(t, err, protocol.CodeForbidden, "vendor a using vendor b's durable name on its own pattern")
	if _, err := a.Subscribe(ctx, parcel.MailboxPattern("store-a"), nop, client.Durable("a-archive"), client.ManualAck()); err != nil {
		t.Fatalf("vendor a's own pattern under a durable name of its own: %v", err)
	}

	_, err = client.Dial(ctx, []string{ph.addr}, client.Options{Role: "admin", Name: "root", Token: ph.bad, NoReconnect: true})
	wantCode(t, err, protocol.CodeAuth, "an unknown token")
	_, err = client.Dial(ctx, []string{ph.addr}, client.Options{Role: "vendor", Name: "store-a", NoReconnect: true})
	wantCode(t, err, protocol.CodeAuth, "no token")
}

// The vendor and driver programs work with tokens, and each vendor hears
// only of its own orders.
func TestParcelFlowWithTokens(t *testing.T) {
	ph := startParcelHub(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cc := func(token string, out *syncBuffer) parcel.ClientConfig {
		return parcel.ClientConfig{Hub: []string{ph.addr}, Timeout: 20 * time.Second, Options: client.Options{Token: token}, Out: out}
	}
	var outA, outB, outD syncBuffer
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	run := func(fn func() error) {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- fn() }()
	}
	drvCtx, stopDriver := context.WithCancel(ctx)
	run(func() error {
		return parcel.RunDriver(drvCtx, parcel.DriverConfig{ClientConfig: cc(ph.driver, &outD), Name: "dana", Capacity: 4})
	})
	vendorsDone := make(chan error, 2)
	for store, tok := range map[string]string{"store-a": ph.vendorA, "store-b": ph.vendorB} {
		out := &outA
		if store == "store-b" {
			out = &outB
		}
		go func() {
			vendorsDone <- parcel.RunVendor(ctx, parcel.VendorConfig{ClientConfig: cc(tok, out), Store: store, Orders: 2, Interval: 10 * time.Millisecond})
		}()
	}
	for range 2 {
		select {
		case err := <-vendorsDone:
			if err != nil {
				t.Fatalf("vendor: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("vendors did not finish")
		}
	}
	stopDriver()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("driver: %v", err)
		}
	}
	for store, out := range map[string]*syncBuffer{"store-a": &outA, "store-b": &outB} {
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) != 2 {
			t.Fatalf("vendor %s printed %q", store, lines)
		}
		for _, l := range lines {
			if !strings.HasPrefix(l, "VENDOR["+store+"]: Thank you for delivering ") {
				t.Errorf("vendor %s printed %q", store, l)
			}
		}
	}
	if n := strings.Count(outD.String(), "DRIVER[dana]: delivered "); n != 4 {
		t.Errorf("driver delivered %d orders, want 4:\n%s", n, outD.String())
	}

	// A vendor program with a bad token stops at once with the reason.
	err := parcel.RunVendor(ctx, parcel.VendorConfig{ClientConfig: cc(ph.bad, &syncBuffer{}), Store: "store-a", Orders: 1})
	wantCode(t, err, protocol.CodeAuth, "vendor program with a bad token")
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The auth file grants shared durables like topics: a token granted
// "drivers" joins the drivers' queue whatever its role, one whose own
// permissions leave durable out keeps its role's grants, and one given
// durable: [] may not join a queue its role could. (Issue 12, item 2: a
// logger joined the drivers' queue and took every pickup.)
func TestDurableGrantsInTheAuthFile(t *testing.T) {
	var tok struct{ relief, narrow, none string }
	var body strings.Builder
	body.WriteString("tokens:\n")
	for _, e := range []struct {
		dst *string
		e   auth.Entry
	}{
		// A logger trusted to stand in for a driver.
		{&tok.relief, auth.Entry{Name: "relief", Role: "logger", Permissions: &hub.Permissions{Subscribe: []string{parcel.PickupPattern}, Durable: []string{parcel.DriversDurable}}}},
		// A driver with permissions of its own, durable left out: its role's grant stays.
		{&tok.narrow, auth.Entry{Name: "narrow", Role: "driver", Permissions: &hub.Permissions{Subscribe: []string{parcel.PickupPattern}}}},
		// A driver denied every shared durable.
		{&tok.none, auth.Entry{Name: "none", Role: "driver", Permissions: &hub.Permissions{Subscribe: []string{parcel.PickupPattern}, Durable: []string{}}}},
	} {
		*e.dst, e.e.SHA256 = auth.NewToken()
		body.WriteString(auth.EntryYAML(e.e))
	}
	a, err := auth.Load(writeFile(t, body.String()))
	if err != nil {
		t.Fatalf("load:\n%s\n%v", body.String(), err)
	}
	h := hubtest.Start(t, hub.Config{Name: "grants", Auth: a, Apps: []hub.App{parcel.NewDispatcher(parcel.Options{})}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nop := func(*client.Msg) {}
	join := func(token string) error {
		c := dialAs(t, h.Addr().String(), token)
		_, err := c.Subscribe(ctx, parcel.PickupPattern, nop, client.Durable(parcel.DriversDurable), client.ManualAck())
		return err
	}
	if err := join(tok.relief); err != nil {
		t.Errorf("a logger granted the drivers' queue: %v", err)
	}
	if err := join(tok.narrow); err != nil {
		t.Errorf("a driver with permissions of its own, durable left out: %v", err)
	}
	wantCode(t, join(tok.none), protocol.CodeForbidden, "a driver given durable: []")
}

func TestDurableGrantsAreChecked(t *testing.T) {
	_, h := auth.NewToken()
	for _, bad := range []string{`["a.b"]`, `["x y"]`, `["*a"]`, `[""]`, `["` + strings.Repeat("d", 65) + `"]`} {
		body := "tokens:\n" + auth.EntryYAML(auth.Entry{Name: "t", Role: "logger", SHA256: h}) +
			"    permissions:\n      subscribe: [\">\"]\n      durable: " + bad + "\n"
		if _, err := auth.Parse([]byte(body)); err == nil || !strings.Contains(err.Error(), "durable") {
			t.Errorf("durable %s: got %v, want an error naming it", bad, err)
		}
	}
	for _, good := range []string{`["drivers"]`, `["vendor-{store}"]`, `["*"]`, `["audit-*"]`, `[]`} {
		body := "tokens:\n" + auth.EntryYAML(auth.Entry{Name: "t", Role: "logger", SHA256: h}) +
			"    permissions:\n      subscribe: [\">\"]\n      durable: " + good + "\n"
		if _, err := auth.Parse([]byte(body)); err != nil {
			t.Errorf("durable %s: %v", good, err)
		}
	}
}
