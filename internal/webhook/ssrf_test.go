package webhook

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caps-hub/caps/internal/hubtest"
)

func TestInternalAddresses(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1":             "loopback",
		"127.9.9.9":             "loopback",
		"::1":                   "loopback",
		"::ffff:127.0.0.1":      "loopback",
		"10.1.2.3":              "private",
		"172.16.0.1":            "private",
		"192.168.1.1":           "private",
		"fd00::1":               "private",
		"169.254.169.254":       "link-local", // the clouds' metadata service
		"fe80::1%eth0":          "link-local",
		"0.0.0.0":               "unspecified",
		"::":                    "unspecified",
		"0.1.2.3":               `"this network"`,
		"100.100.100.200":       "shared (carrier-grade NAT)",
		"224.0.0.1":             "multicast",
		"255.255.255.255":       "reserved",
		"64:ff9b::a9fe:a9fe":    "link-local (through NAT64)",
		"2002:7f00:1::1":        "loopback (through 6to4)",
		"2002:a00:1::1":         "private (through 6to4)",
		"2001:0:4136:e378::1":   "Teredo tunnel",
		"198.18.0.1":            "benchmarking",
		"8.8.8.8":               "",
		"93.184.216.34":         "",
		"2606:4700:4700::1111":  "",
		"64:ff9b::808:808":      "", // NAT64 of a public address
		"::ffff:93.184.216.34":  "",
		"2002:5db8:d822::1":     "", // 6to4 of a public address
		"172.32.0.1":            "",
		"192.169.0.1":           "",
		"100.128.0.1":           "",
		"2001:4860:4860::8888":  "",
		"2a00:1450:4001:80b::e": "",
	} {
		if got := internalAddr(netip.MustParseAddr(addr)); got != want {
			t.Errorf("internalAddr(%s) = %q, want %q", addr, got, want)
		}
	}
}

func TestDialCheck(t *testing.T) {
	g := guard{allowPrivate: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}}
	for _, c := range []struct {
		network, addr string
		ok            bool
	}{
		{"tcp4", "93.184.216.34:443", true},
		{"tcp4", "10.0.0.7:443", true}, // allowed by the operator
		{"tcp4", "10.0.1.7:443", false},
		{"tcp4", "127.0.0.1:443", false},
		{"tcp6", "[::1]:443", false},
		{"tcp6", "[::ffff:169.254.169.254]:80", false},
		{"udp4", "93.184.216.34:443", false},
		{"tcp4", "garbage", false},
	} {
		err := g.control(c.network, c.addr, nil)
		if (err == nil) != c.ok {
			t.Errorf("control(%s, %s) = %v; want allowed %v", c.network, c.addr, err, c.ok)
		}
	}
}

// tlsReceiver is an https receiver on 127.0.0.1 and the TLS configuration
// that trusts it.
func tlsReceiver(t *testing.T, h http.HandlerFunc) (*httptest.Server, *x509.CertPool) {
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return srv, pool
}

// An https URL whose name resolves to a loopback address passes
// registration (names are not trusted at registration) and is refused
// when the hub connects; the receiver never sees a request.
func TestSSRFRefusedAtDial(t *testing.T) {
	var hits atomic.Int32
	srv, pool := tlsReceiver(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1) })
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	target := "https://localhost:" + port + "/hook" // localhost resolves to 127.0.0.1 (and ::1)

	eng := startEngine(t)
	cfg := testConfig(eng)
	cfg.AllowHTTP, cfg.AllowPrivate = nil, nil
	cfg.TLS = tlsConfig(pool)
	s := startService(t, cfg)

	// Refused at registration: plain http, and literal internal addresses.
	for _, u := range []string{
		"http://example.com/hook",
		"http://127.0.0.1:" + port + "/hook",
		"https://127.0.0.1:" + port + "/hook",
		"https://[::1]:" + port + "/hook",
		"https://169.254.169.254/latest/meta-data/",
		"https://10.0.0.1/hook",
		"https://[::ffff:192.168.0.1]/hook",
		"ftp://example.com/hook",
		"https://user:pw@example.com/hook",
		"https://example.com:99999/hook",
		"/relative",
		"https://example.com/hook#frag",
	} {
		_, _, err := s.Create(context.Background(), NewEndpoint{Store: "shop", URL: u})
		if ErrorCode(err) != CodeBadRequest {
			t.Errorf("Create(%s) = %v; want bad_request", u, err)
		}
	}

	ep, _ := create(t, s, "shop", target)
	publish(t, eng, testEvent{ID: "e1", Type: "order.created", Store: "shop"})
	hubtest.Eventually(t, 20*time.Second, "a refused attempt in the log", func() error {
		log, err := s.Log(context.Background(), "shop", ep.ID, 1)
		if err != nil || len(log) == 0 {
			return fmt.Errorf("log %v, %v", log, err)
		}
		if !strings.Contains(log[0].Error, "refused") || !strings.Contains(log[0].Error, "loopback") || log[0].Result != ResultRetry {
			return fmt.Errorf("attempt %+v: want a retry refused as loopback", log[0])
		}
		return nil
	})
	if n := hits.Load(); n != 0 {
		t.Fatalf("the loopback receiver got %d requests", n)
	}

	// The same URL is reached once the operator allows loopback, so it
	// was the check, not TLS or the network, that refused it.
	allowed := postOnly(t, Config{Engine: eng, TLS: tlsConfig(pool),
		AllowPrivate: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}})
	a := Attempt{EventID: "e1"}
	allowed.post(context.Background(), target, []byte("key"), []byte(`{}`), &a)
	if a.Status != 200 || hits.Load() != 1 {
		t.Fatalf("allowed loopback: %+v, %d hits", a, hits.Load())
	}
}

// postOnly is a service that is never started: for calling post directly.
func postOnly(t *testing.T, cfg Config) *Service {
	t.Helper()
	cfg.Registerer = prometheus.NewRegistry()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Redirects are not followed; a receiver's huge answer is not read; huge
// headers and hanging receivers end the attempt with an error.
func TestHostileReceivers(t *testing.T) {
	eng := startEngine(t)
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { elsewhere.Add(1) }))
	defer other.Close()
	written := make(chan int64, 1)
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/redirect":
			http.Redirect(w, r, other.URL+"/internal", http.StatusTemporaryRedirect)
		case "/huge-body":
			chunk := []byte(strings.Repeat("x", 64<<10))
			var n int64
			for n < 256<<20 {
				m, err := w.Write(chunk)
				n += int64(m)
				if err != nil {
					break
				}
			}
			written <- n
		case "/huge-headers":
			w.Header().Set("X-Big", strings.Repeat("h", 1<<20))
		case "/hang":
			select {
			case <-hang:
			case <-r.Context().Done():
			}
		}
	}))
	defer srv.Close()
	defer close(hang) // before Close, which waits for the handlers
	s := postOnly(t, Config{Engine: eng, AllowHTTP: []string{"127.0.0.1"},
		AllowPrivate: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, RequestTimeout: 500 * time.Millisecond})

	try := func(path string) Attempt {
		a := Attempt{EventID: "e1"}
		s.post(context.Background(), srv.URL+path, []byte("key"), []byte(`{}`), &a)
		return a
	}
	if a := try("/redirect"); a.Status != 307 || !strings.Contains(a.Error, "redirect not followed") || elsewhere.Load() != 0 {
		t.Errorf("redirect: %+v, %d requests elsewhere", a, elsewhere.Load())
	}
	if a := try("/huge-body"); a.Status != 200 || len(a.Response) > maxResponseLog+len("…") {
		t.Errorf("huge body: %+v", a)
	}
	if n := <-written; n >= 256<<20 {
		t.Errorf("the hub read the whole %d-byte answer", n)
	}
	if a := try("/huge-headers"); a.Status != 0 || !strings.Contains(a.Error, "header") {
		t.Errorf("huge headers: %+v", a)
	}
	if a := try("/hang"); a.Status != 0 || !strings.Contains(a.Error, "no answer within 500ms") {
		t.Errorf("hanging receiver: %+v", a)
	}
}
