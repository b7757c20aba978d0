package cluster_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/caps-hub/caps/internal/api"
	"github.com/caps-hub/caps/internal/hubtest"
)

// TestIdempotentCreateAcrossHubs: a shop's retries of one POST
// /api/v1/orders, racing on two hubs over one NATS cluster with the same
// Idempotency-Key, create one order: every retry answers it, exactly one
// with 201, and both hubs list one order.
func TestIdempotentCreateAcrossHubs(t *testing.T) {
	nc := startProcessCluster(t, buildNATSServer(t), 3)
	specs := []hubSpec{externalHub("hub-a", nc.URLs()), externalHub("hub-b", nc.URLs())}
	for i := range specs {
		specs[i].cfg.HTTPAddr = "127.0.0.1:0"
		specs[i].apps.list = append(specs[i].apps.list, api.New(api.Config{Orders: specs[i].apps.parcel, AddrRate: 1000, TokenRate: 1000}))
	}
	hs := startHubs(t, specs...)
	base := func(i int) string { return "http://" + hs[i%2].HTTPAddr().String() + "/api/v1" }
	body, _ := json.Marshal(map[string]any{"store": "two-hubs", "customer": "Ada", "address": "1 Quorum Road"})

	const n = 10
	type answer struct {
		status int
		id     string
		err    error
	}
	answers := make([]answer, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			req, _ := http.NewRequest("POST", base(i)+"/orders", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Idempotency-Key", "cart-7")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				answers[i].err = err
				return
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			var o struct{ OrderID string }
			_ = json.Unmarshal(raw, &o)
			answers[i] = answer{status: resp.StatusCode, id: o.OrderID}
			if resp.StatusCode >= 300 {
				answers[i].err = fmt.Errorf("%d %s", resp.StatusCode, raw)
			}
		})
	}
	close(start)
	wg.Wait()
	created := 0
	for i, a := range answers {
		if a.err != nil {
			t.Fatalf("retry %d (hub %d): %v", i, i%2, a.err)
		}
		if a.id != answers[0].id || a.id == "" {
			t.Fatalf("retries answered orders %s and %s", answers[0].id, a.id)
		}
		if a.status == http.StatusCreated {
			created++
		}
	}
	if created != 1 {
		t.Errorf("%d retries answered 201, want 1", created)
	}
	for i := range 2 {
		var l struct{ Items []struct{ OrderID string } }
		hubtest.Eventually(t, 10*time.Second, fmt.Sprintf("hub %d lists the order", i), func() error {
			resp, err := http.Get(base(i) + "/orders?store=two-hubs")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			l.Items = nil
			if err := json.NewDecoder(resp.Body).Decode(&l); err != nil {
				return err
			}
			if len(l.Items) != 1 || l.Items[0].OrderID != answers[0].id {
				return fmt.Errorf("lists %+v", l.Items)
			}
			return nil
		})
	}
}
