package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/caps-hub/caps/internal/hubtest"
)

// hookReceiver is a shop's webhook endpoint that verifies signatures and
// records each event (by webhook-id) it answered 2xx, and can be down.
type hookReceiver struct {
	srv  *httptest.Server
	down atomic.Bool

	mu     sync.Mutex
	wh     *standardwebhooks.Webhook
	bodies map[string]string          // webhook-id → body
	orders map[string]map[string]bool // order → its webhook-ids answered
	bad    []string
}

func newHookReceiver(t *testing.T) *hookReceiver {
	r := &hookReceiver{bodies: map[string]string{}, orders: map[string]map[string]bool{}}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if r.down.Load() {
			panic(http.ErrAbortHandler)
		}
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.wh == nil || r.wh.Verify(body, req.Header) != nil {
			r.bad = append(r.bad, "a request with a bad signature")
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		id := req.Header.Get("webhook-id")
		if prev, ok := r.bodies[id]; ok && prev != string(body) {
			r.bad = append(r.bad, "webhook-id "+id+" carried two different events")
		}
		r.bodies[id] = string(body)
		var ev struct {
			Data struct {
				OrderID string `json:"orderID"`
			} `json:"data"`
		}
		_ = json.Unmarshal(body, &ev)
		if r.orders[ev.Data.OrderID] == nil {
			r.orders[ev.Data.OrderID] = map[string]bool{}
		}
		r.orders[ev.Data.OrderID][id] = true
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// TestWebhooksSurviveHubKill9: the caps binary as a hub, killed with
// SIGKILL twice — once while orders are being created and carried, once
// while the shop's receiver is down with deliveries pending — loses no
// webhook event: once the receiver is back, every event of every order
// (as many as its timeline has steps) has been answered, each with one
// webhook-id and one body however often it was delivered.
func TestWebhooksSurviveHubKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test: skipped with -short")
	}
	bin := buildCaps(t)
	data, addr, httpAddr := t.TempDir(), freeAddr(t), freeAddr(t)
	base := "http://" + httpAddr
	startHub := func() *process {
		t.Helper()
		p := startProcess(t, bin, "hub", "--addr", addr, "--http", httpAddr, "--data", data, "--quiet",
			"--webhook-allow-http", "127.0.0.1", "--webhook-allow-private", "127.0.0.1/32",
			"--webhook-backoff", "100ms", "--webhook-backoff-max", "500ms", "--webhook-timeout", "2s")
		p.errs.waitFor(t, "hub listening", 60*time.Second)
		return p
	}
	kill := func(p *process) {
		t.Helper()
		if err := p.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		<-p.exited
		p.exited <- nil // for the cleanup
	}
	// call makes an API request, retried while the hub restarts.
	call := func(method, path string, body any, hdr ...string) map[string]any {
		t.Helper()
		var out map[string]any
		hubtest.Eventually(t, 60*time.Second, method+" "+path, func() error {
			b, _ := json.Marshal(body)
			req, _ := http.NewRequest(method, base+path, bytes.NewReader(b))
			req.Header.Set("Content-Type", "application/json")
			for i := 0; i+1 < len(hdr); i += 2 {
				req.Header.Set(hdr[i], hdr[i+1])
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			if resp.StatusCode >= 300 {
				return fmt.Errorf("%d %s", resp.StatusCode, raw)
			}
			out = map[string]any{}
			return json.Unmarshal(raw, &out)
		})
		return out
	}

	hub := startHub()
	recv := newHookReceiver(t)
	ep := call("POST", "/api/v1/webhooks", map[string]any{"store": "kill-shop", "url": recv.srv.URL + "/hooks"})
	wh, err := standardwebhooks.NewWebhook(ep["secret"].(string))
	if err != nil {
		t.Fatal(err)
	}
	recv.mu.Lock()
	recv.wh = wh
	recv.mu.Unlock()

	startProcess(t, bin, "driver", "--hub", addr, "--name", "wk1",
		"--pickup-delay", "30ms", "--deliver-delay", "60ms", "--capacity", "3", "--timeout", "60s")
	const n = 8
	var ids []string
	for i := range n {
		if i == n/2 {
			kill(hub)
			hub = startHub()
		}
		o := call("POST", "/api/v1/orders", map[string]any{"store": "kill-shop", "customer": fmt.Sprintf("Customer %d", i), "address": "1 Crash Lane"},
			"Idempotency-Key", fmt.Sprintf("kill-order-%d", i))
		ids = append(ids, o["orderID"].(string))
	}
	delivered := func() error {
		for _, id := range ids {
			if o := call("GET", "/api/v1/orders/"+id+"?store=kill-shop", nil); o["status"] != "delivered" {
				return fmt.Errorf("order %s is %v", id, o["status"])
			}
		}
		return nil
	}
	recv.down.Store(true)
	hubtest.Eventually(t, 90*time.Second, "every order delivered", delivered)
	kill(hub) // with deliveries pending for the receiver that is down
	hub = startHub()
	recv.down.Store(false)

	hubtest.Eventually(t, 90*time.Second, "every event of every order at the receiver", func() error {
		for _, id := range ids {
			o := call("GET", "/api/v1/orders/"+id+"?store=kill-shop", nil)
			steps := len(o["timeline"].([]any))
			recv.mu.Lock()
			got := len(recv.orders[id])
			recv.mu.Unlock()
			if got != steps {
				return fmt.Errorf("order %s: %d of its %d events received", id, got, steps)
			}
		}
		return nil
	})
	recv.mu.Lock()
	defer recv.mu.Unlock()
	if len(recv.bad) > 0 {
		t.Errorf("receiver: %s", strings.Join(recv.bad, "; "))
	}
	if len(recv.orders) != n {
		t.Errorf("events of %d orders, want %d", len(recv.orders), n)
	}
}
