package dashboard_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/browsertest"
	"github.com/caps-hub/caps/internal/chat"
	"github.com/caps-hub/caps/internal/dashboard"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/web"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, browsertest.LeakOptions()...)
}

// wait bounds how long a test waits for something that should happen soon.
const wait = 30 * time.Second

// testHub is a hub on loopback with the parcel dispatcher, chat and the
// dashboard, serving HTTP (the page and /ws) on a free port. It can be
// stopped and started again on the same ports and data.
type testHub struct {
	t        *testing.T
	h        *hubtest.Hub
	mod      func(*hub.Config)
	dir      string
	tcp, web string // addresses, kept across restarts
}

func startHub(t *testing.T, mod func(*hub.Config)) *testHub {
	t.Helper()
	th := &testHub{t: t, mod: mod, dir: t.TempDir(), tcp: "127.0.0.1:0", web: "127.0.0.1:0"}
	th.start()
	return th
}

func (th *testHub) start() {
	th.t.Helper()
	off := false
	cfg := hub.Config{
		Addr: th.tcp, HTTPAddr: th.web, DataDir: th.dir,
		SyncAlways: &off, Logger: testLog(), ShutdownTimeout: 5 * time.Second,
		Apps: []hub.App{
			parcel.NewDispatcher(parcel.Options{}),
			chat.NewApp(chat.AppConfig{}),
			dashboard.New(dashboard.Options{
				Assets: web.Dashboard(), SampleEvery: 200 * time.Millisecond, LatencyWindow: 2 * time.Second,
				GatherQuiet: 50 * time.Millisecond, Retry: 100 * time.Millisecond,
			}),
		},
	}
	if th.mod != nil {
		th.mod(&cfg)
	}
	th.h = hubtest.Start(th.t, cfg)
	th.tcp, th.web = th.h.Addr().String(), th.h.HTTPAddr().String()
}

// stop shuts the hub down gracefully and waits for it.
func (th *testHub) stop() { th.h.Stop() }

func (th *testHub) addr() string { return th.tcp }

// url is the dashboard's address.
func (th *testHub) url() string { return "http://" + th.web + "/" }

func (th *testHub) parcelClient() parcel.ClientConfig {
	return parcel.ClientConfig{Hub: []string{th.addr()}, Timeout: wait, Log: testLog()}
}

// dial connects a Go client as role/name (or with a token).
func (th *testHub) dial(t *testing.T, role, name, token string) *client.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := client.Dial(ctx, []string{th.addr()}, client.Options{Role: role, Name: name, Token: token, NoReconnect: true, Logger: testLog()})
	if err != nil {
		t.Fatalf("dial as %s %s: %v", role, name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// request asks a dashboard service and decodes its JSON answer.
func request[T any](t *testing.T, c *client.Conn, service string, body any) (T, error) {
	t.Helper()
	var out T
	b, _ := json.Marshal(body)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	reply, err := c.Request(ctx, service, b)
	if err != nil {
		return out, err
	}
	if err := json.Unmarshal(reply, &out); err != nil {
		t.Fatalf("%s answered %q: %v", service, reply, err)
	}
	return out, nil
}

// fleet runs vendors and drivers until the test ends.
type fleet struct {
	t    *testing.T
	th   *testHub
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup
}

func newFleet(t *testing.T, th *testHub) *fleet {
	ctx, cancel := context.WithCancel(context.Background())
	f := &fleet{t: t, th: th, ctx: ctx, stop: cancel}
	t.Cleanup(f.close)
	return f
}

func (f *fleet) close() {
	f.stop()
	f.wg.Wait()
}

func (f *fleet) run(what string, fn func(ctx context.Context) error) {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		if err := fn(f.ctx); err != nil && !errors.Is(err, context.Canceled) && f.ctx.Err() == nil {
			f.t.Errorf("%s: %v", what, err)
		}
	}()
}

// vendor posts orders for store every interval (orders 0: until the end).
func (f *fleet) vendor(store string, orders int, interval time.Duration, token string) {
	cfg := parcel.VendorConfig{ClientConfig: f.th.parcelClient(), Store: store, Orders: orders, Interval: interval}
	cfg.Options.Token = token
	f.run("vendor "+store, func(ctx context.Context) error { return parcel.RunVendor(ctx, cfg) })
}

// driver delivers pickups with the given delays.
func (f *fleet) driver(name string, pickup, deliver time.Duration, token string) {
	cfg := parcel.DriverConfig{ClientConfig: f.th.parcelClient(), Name: name, PickupDelay: pickup, DeliverDelay: deliver}
	cfg.Options.Token = token
	f.run("driver "+name, func(ctx context.Context) error { return parcel.RunDriver(ctx, cfg) })
}

func testLog() *slog.Logger {
	if os.Getenv("CAPS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}
