package webhook

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"go.uber.org/goleak"

	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/internal/hubtest"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	goleak.VerifyTestMain(m, hubtest.LeakOptions()...)
}

// testLogger discards logs unless CAPS_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("CAPS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startEngine runs an embedded engine in a temporary directory.
func startEngine(t *testing.T) *engine.Engine {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	eng, err := engine.Start(ctx, engine.Config{DataDir: t.TempDir(), Name: "webhook-test", Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eng.Close)
	if _, err := eng.EnsureStream(ctx, engine.StreamSpec{Name: testStream, Topics: []string{"test.ev.>"}}); err != nil {
		t.Fatal(err)
	}
	return eng
}

// The test source: stream TEST_EVENTS, one JSON message per event,
// {"id","type","store",…}; type "skip" is not an event, type "panic" makes
// the mapper panic.
const testStream = "TEST_EVENTS"

type testEvent struct {
	ID    string `json:"id"`
	Type  string `json:"type"`
	Store string `json:"store"`
	Pad   string `json:"pad,omitempty"`
}

func testMap(msg jetstream.Msg) (Event, string, bool) {
	var te testEvent
	if err := json.Unmarshal(msg.Data(), &te); err != nil || te.Type == "skip" {
		return Event{}, "", false
	}
	if te.Type == "panic" {
		panic("a mapper bug")
	}
	return Event{ID: te.ID, Type: te.Type, Data: msg.Data()}, te.Store, true
}

// testConfig is a configuration with test-sized timings: http to loopback
// allowed, retries within tens of milliseconds.
func testConfig(eng *engine.Engine) Config {
	return Config{
		Engine:         eng,
		Registerer:     prometheus.NewRegistry(),
		Logger:         testLogger(),
		HubName:        "test",
		AllowHTTP:      []string{"127.0.0.1"},
		AllowPrivate:   []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
		RetryWindow:    time.Minute,
		BackoffBase:    50 * time.Millisecond,
		BackoffMax:     400 * time.Millisecond,
		RequestTimeout: 2 * time.Second,
		MaxInFlight:    4,
		StatsInterval:  100 * time.Millisecond,
		Source: Source{
			Stream:   testStream,
			Subjects: []string{engine.Subject("test.ev.>")},
			AckWait:  2 * time.Second,
			Map:      testMap,
		},
	}
}

func startService(t *testing.T, cfg Config) *Service {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Start's context is the service's lifetime: Stop ends it.
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// publish stores a test event in the source stream.
func publish(t *testing.T, eng *engine.Engine, ev testEvent) {
	t.Helper()
	data, _ := json.Marshal(ev)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := eng.JS.Publish(ctx, engine.Subject("test.ev."+ev.Store), data, jetstream.WithMsgID(ev.ID)); err != nil {
		t.Fatal(err)
	}
}

func publishN(t *testing.T, eng *engine.Engine, store, prefix string, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("%s-%03d", prefix, i)
		publish(t, eng, testEvent{ID: ids[i], Type: "order.delivered", Store: store})
	}
	return ids
}

func create(t *testing.T, s *Service, store, url string, events ...string) (Endpoint, string) {
	t.Helper()
	ep, secret, err := s.Create(context.Background(), NewEndpoint{Store: store, URL: url, Events: events})
	if err != nil {
		t.Fatal(err)
	}
	return ep, secret
}

// receiver is a webhook receiver on loopback that records every request;
// checkCalls verifies them with the Standard Webhooks library (not this
// package's code). Verification waits for checkCalls because a test may
// learn the secret after the first requests arrive.
type receiver struct {
	srv *httptest.Server
	// respond decides the status of a request (nil: 200); it may block.
	respond func(r *http.Request) int

	mu     sync.Mutex
	secret string
	calls  []*call
}

type call struct {
	id     string
	body   []byte
	header http.Header
	status int // 0 while the request is being answered
}

// verify checks a request's signature and timestamp with the Standard
// Webhooks library, as a receiver does (a test checks within seconds of
// arrival, well inside the library's 5-minute tolerance).
func (c *call) verify(secret string) error {
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		return err
	}
	return wh.Verify(c.body, c.header)
}

func newReceiver(t testing.TB, respond func(r *http.Request) int) *receiver {
	rc := &receiver{respond: respond}
	rc.srv = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) URL() string { return rc.srv.URL + "/hook" }

func (rc *receiver) setSecret(s string) {
	rc.mu.Lock()
	rc.secret = s
	rc.mu.Unlock()
}

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	rc.mu.Lock()
	c := &call{id: r.Header.Get("webhook-id"), body: body, header: r.Header.Clone()}
	rc.calls = append(rc.calls, c)
	rc.mu.Unlock()
	status := http.StatusOK
	if rc.respond != nil {
		status = rc.respond(r)
	}
	rc.mu.Lock()
	c.status = status
	rc.mu.Unlock()
	w.WriteHeader(status)
}

// snapshot returns a copy of the calls so far.
func (rc *receiver) snapshot() []call {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	out := make([]call, len(rc.calls))
	for i, c := range rc.calls {
		out[i] = *c
	}
	return out
}

// delivered returns, per webhook-id, how many requests were answered 2xx.
func (rc *receiver) delivered() map[string]int {
	out := map[string]int{}
	for _, c := range rc.snapshot() {
		if c.status >= 200 && c.status < 300 {
			out[c.id]++
		}
	}
	return out
}

// checkCalls fails the test for any request whose signature did not
// verify, and for two requests with one webhook-id but different bodies.
func (rc *receiver) checkCalls(t *testing.T) {
	t.Helper()
	rc.mu.Lock()
	secret := rc.secret
	rc.mu.Unlock()
	bodies := map[string]string{}
	for _, c := range rc.snapshot() {
		if err := c.verify(secret); err != nil {
			t.Errorf("request %s: signature does not verify: %v", c.id, err)
		}
		if b, ok := bodies[c.id]; ok && b != string(c.body) {
			t.Errorf("two requests with webhook-id %s carry different bodies:\n%s\n%s", c.id, b, c.body)
		}
		bodies[c.id] = string(c.body)
	}
}

// waitDelivered waits until every id was delivered at least once.
func (rc *receiver) waitDelivered(t *testing.T, timeout time.Duration, ids []string) {
	t.Helper()
	hubtest.Eventually(t, timeout, "every event delivered", func() error {
		got := rc.delivered()
		missing := 0
		for _, id := range ids {
			if got[id] == 0 {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d not delivered yet", missing, len(ids))
		}
		return nil
	})
}

func counter(c *prometheus.CounterVec, label string) float64 {
	return testutil.ToFloat64(c.WithLabelValues(label))
}

func gauge(g *prometheus.GaugeVec, label string) float64 {
	return testutil.ToFloat64(g.WithLabelValues(label))
}

func errorCode(t *testing.T, err error, want string) {
	t.Helper()
	if got := ErrorCode(err); got != want {
		t.Fatalf("error %v: code %q, want %q", err, got, want)
	}
}

func natsMsg(subject, data, id string) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Data = []byte(data)
	m.Header.Set(nats.MsgIdHdr, id)
	return m
}

// tlsConfig trusts an httptest TLS server, whatever name the URL uses
// (its certificate names example.com).
func tlsConfig(pool *x509.CertPool) *tls.Config {
	return &tls.Config{RootCAs: pool, ServerName: "example.com"}
}
