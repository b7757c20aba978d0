package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/api"
	"github.com/caps-hub/caps/internal/auth"
	"github.com/caps-hub/caps/internal/browsertest"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, browsertest.LeakOptions()...)
}

// wait bounds how long a browser test waits for something that should
// happen soon.
const wait = 30 * time.Second

// testHub is a real hub (embedded engine in a temporary directory, real
// loopback ports) with the parcel dispatcher and the API, and the tokens
// of its auth file.
type testHub struct {
	t      *testing.T
	h      *hubtest.Hub
	d      *parcel.Dispatcher
	base   string // http://127.0.0.1:port
	tokens map[string]string
}

type hubOpts struct {
	open   bool // no auth file
	orders parcel.Options
	api    api.Config
}

// Tokens of the auth file, by name: vendors of stores rosa and bruno, an
// admin, a driver.
var people = []auth.Entry{
	{Name: "rosa", Role: protocol.RoleVendor, Store: "rosa"},
	{Name: "bruno", Role: protocol.RoleVendor, Store: "bruno"},
	{Name: "ops", Role: protocol.RoleAdmin},
	{Name: "dora", Role: protocol.RoleDriver},
	{Name: "dan", Role: protocol.RoleDriver},
}

func startHub(t *testing.T, o hubOpts) *testHub {
	t.Helper()
	th := &testHub{t: t, tokens: map[string]string{}}
	th.d = parcel.NewDispatcher(o.orders)
	o.api.Orders = th.d
	cfg := hub.Config{Addr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Apps: []hub.App{th.d, api.New(o.api)}}
	if !o.open {
		var b strings.Builder
		b.WriteString("tokens:\n")
		for _, e := range people {
			th.tokens[e.Name], e.SHA256 = auth.NewToken()
			b.WriteString(auth.EntryYAML(e))
		}
		p := filepath.Join(t.TempDir(), "auth.yaml")
		if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		a, err := auth.Load(p)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Auth = a
	}
	th.h = hubtest.Start(t, cfg)
	th.base = "http://" + th.h.HTTPAddr().String()
	return th
}

// response is an HTTP answer, its body decoded as JSON.
type response struct {
	status int
	header http.Header
	raw    []byte
	body   map[string]any
}

func (r response) str(k string) string { s, _ := r.body[k].(string); return s }

// do sends a request as who (a token's name; "" for none) with a JSON body
// (nil: none; []byte: as is).
func (th *testHub) do(method, path, who string, body any, hdr ...string) response {
	th.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			th.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, th.base+path, rd)
	if err != nil {
		th.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if who != "" {
		tok, ok := th.tokens[who]
		if !ok {
			tok = who // a raw token
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		th.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := response{status: resp.StatusCode, header: resp.Header, raw: raw}
	_ = json.Unmarshal(raw, &r.body)
	return r
}

// want fails the test unless r has status (and, for a problem, code).
func want(t *testing.T, what string, r response, status int, code ...string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("%s: status %d, want %d: %s", what, r.status, status, r.raw)
	}
	if len(code) > 0 {
		if r.str("code") != code[0] || r.header.Get("Content-Type") != "application/problem+json" || r.body["status"] != float64(status) {
			t.Fatalf("%s: want a problem with code %s, got %s %s", what, code[0], r.header.Get("Content-Type"), r.raw)
		}
		if len(code) > 1 && r.str("rule") != code[1] {
			t.Fatalf("%s: want rule %s, got %s", what, code[1], r.raw)
		}
	}
}

// create posts an order of rosa's and returns it.
func (th *testHub) create(who string, body map[string]any, hdr ...string) response {
	th.t.Helper()
	r := th.do(http.MethodPost, "/api/v1/orders", who, body, hdr...)
	want(th.t, "create", r, http.StatusCreated)
	return r
}

func newOrder(customer string) map[string]any {
	return map[string]any{"customer": customer, "address": "12 Analytical Row, London"}
}

// dial connects a TCP client with a token's name.
func (th *testHub) dial(name string) *client.Conn {
	th.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := client.Options{Token: th.tokens[name]}
	if opts.Token == "" {
		for _, e := range people {
			if e.Name == name {
				opts.Role, opts.Name = e.Role, e.Name
			}
		}
	}
	c, err := client.Dial(ctx, []string{th.h.Addr().String()}, opts)
	if err != nil {
		th.t.Fatal(err)
	}
	th.t.Cleanup(func() { c.Close() })
	return c
}

// driver is a TCP driver in the drivers' queue, one pickup at a time,
// which the test moves step by step.
type driver struct {
	t    *testing.T
	c    *client.Conn
	name string

	mu    sync.Mutex
	queue []*client.Msg
}

func (th *testHub) driver(name string) *driver {
	d := &driver{t: th.t, c: th.dial(name), name: name}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := d.c.Subscribe(ctx, parcel.PickupPattern, func(m *client.Msg) {
		d.mu.Lock()
		d.queue = append(d.queue, m)
		d.mu.Unlock()
	}, client.Durable(parcel.DriversDurable), client.ManualAck(), client.MaxInFlight(1), client.DeliverAll()); err != nil {
		th.t.Fatal(err)
	}
	return d
}

// next waits for the next pickup, takes it in transit and acknowledges it.
func (d *driver) next() parcel.Record {
	d.t.Helper()
	var m *client.Msg
	hubtest.Until(d.t, 20*time.Second, d.name+"'s next pickup", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		if len(d.queue) == 0 {
			return false
		}
		m, d.queue = d.queue[0], d.queue[1:]
		return true
	})
	var r parcel.Record
	if err := json.Unmarshal(m.Payload, &r); err != nil {
		d.t.Fatal(err)
	}
	if err := d.report(r, parcel.EventInTransit, nil); err != nil {
		d.t.Fatalf("in transit: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Ack(ctx); err != nil {
		d.t.Fatal(err)
	}
	return r
}

// report publishes a driver's event for order r with extra fields.
func (d *driver) report(r parcel.Record, event string, extra map[string]any) error {
	p := map[string]any{"store": r.Store, "orderID": r.OrderID}
	for k, v := range extra {
		p[k] = v
	}
	b, _ := json.Marshal(p)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := d.c.Publish(ctx, parcel.Topic(r.Store, r.OrderID, event, d.name), b)
	return err
}

// statuses is an order's timeline as "status/by" words.
func statuses(r response) string {
	var words []string
	tl, _ := r.body["timeline"].([]any)
	for _, s := range tl {
		m := s.(map[string]any)
		by, _ := m["by"].(string)
		words = append(words, m["status"].(string)+"/"+by)
	}
	return strings.Join(words, " ")
}
