package parcel_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

func TestLoggerRecordsEverythingAcrossAHubRestart(t *testing.T) {
	th := startHub(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &capture{}
	ready := make(chan struct{}, 2)
	cfg := parcel.LoggerConfig{ClientConfig: th.client()}
	cfg.Out = out
	cfg.OnReady = func() { ready <- struct{}{} }
	var r runner
	done := goRun(&r, func() error { return parcel.RunLogger(ctx, cfg) })
	<-ready

	lines := func() []parcel.LogLine {
		var ls []parcel.LogLine
		for _, l := range out.Lines() {
			var ll parcel.LogLine
			if err := json.Unmarshal([]byte(l), &ll); err != nil {
				t.Fatalf("not a JSON line: %q", l)
			}
			ls = append(ls, ll)
		}
		return ls
	}
	has := func(event, what string) func() bool {
		return func() bool {
			for _, l := range lines() {
				if l.Event == event && strings.Contains(string(l.Payload), what) {
					return true
				}
			}
			return false
		}
	}

	acme := dialAs(t, th, protocol.RoleVendor, "acme")
	hubtest.Until(t, 10*time.Second, "acme's connection event", has("client.connected", `"name":"acme"`))
	first := order("acme")
	if err := publish(acme, parcel.Topic("acme", first["orderID"].(string), parcel.EventPickup, ""), payload(t, first), ""); err != nil {
		t.Fatal(err)
	}
	hubtest.Until(t, 10*time.Second, "the pickup", has(parcel.EventPickup, first["orderID"].(string)))
	acme.Close()
	hubtest.Until(t, 10*time.Second, "acme's disconnection event", has("client.disconnected", `"name":"acme"`))

	th.stop()
	hubtest.Until(t, 10*time.Second, "the logger to notice", has("logger.disconnected", ""))
	th.start()
	hubtest.Until(t, 20*time.Second, "the logger to come back", has("logger.connected", ""))

	again := dialAs(t, th, protocol.RoleVendor, "acme")
	second := order("acme")
	// The logger's subscription may be a moment behind its connection.
	hubtest.Until(t, 10*time.Second, "a pickup after the restart", func() bool {
		if !has(parcel.EventPickup, second["orderID"].(string))() {
			second = order("acme")
			if err := publish(again, parcel.Topic("acme", second["orderID"].(string), parcel.EventPickup, ""), payload(t, second), ""); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		return has(parcel.EventPickup, second["orderID"].(string))()
	})
	for _, l := range lines() {
		if l.Event == parcel.EventPickup && !strings.HasPrefix(l.Topic, "parcel.acme.") {
			t.Errorf("pickup logged with topic %q", l.Topic)
		}
		if l.Time.IsZero() {
			t.Errorf("line without time: %+v", l)
		}
	}
	cancel()
	wait(t, done, 10*time.Second, "logger")
}

func TestVendorGivesUpWhenTheHubStaysAway(t *testing.T) {
	th := startHub(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := parcel.VendorConfig{ClientConfig: th.client(), Store: "acme", Interval: time.Hour, Orders: 2}
	cfg.Timeout = 500 * time.Millisecond
	ready := make(chan struct{})
	cfg.OnReady = func() { close(ready) }
	var r runner
	done := goRun(&r, func() error { return parcel.RunVendor(ctx, cfg) })
	<-ready
	th.stop()
	select {
	case err := <-done:
		if !errors.Is(err, parcel.ErrUnreachable) {
			t.Fatalf("vendor ended with %v, want ErrUnreachable", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("vendor did not give up")
	}

	// And at start.
	cfg.OnReady = nil
	err := parcel.RunVendor(ctx, cfg)
	if !errors.Is(err, parcel.ErrUnreachable) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("vendor with no hub: %q, want a one-line ErrUnreachable", err)
	}
}

func FuzzParsePayload(f *testing.F) {
	f.Add([]byte(`{"store":"acme","orderID":"5b1c7a52-5d0f-4a47-9a77-2b7a8a8b6c1e","customer":"Ada","address":"1 Main St"}`))
	f.Add([]byte(`{"store":"acme","orderID":"5B1C7A52-5D0F-4A47-9A77-2B7A8A8B6C1E","customer":"Ada","address":"1 Main St","driver":7}`))
	f.Add([]byte(`{"store":1}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"store":"a\u0000"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := parcel.ParsePayload(b)
		if err != nil {
			var r *parcel.Refusal
			if !errors.As(err, &r) || r.Rule == "" {
				t.Fatalf("error %v is not a named refusal", err)
			}
			return
		}
		for _, s := range []string{ev.Store, ev.OrderID, ev.Customer, ev.Address} {
			if s == "" || len(s) > parcel.MaxField {
				t.Fatalf("accepted field %q", s)
			}
		}
		if !protocol.ValidName(ev.Store) {
			t.Fatalf("accepted store %q", ev.Store)
		}
		if id, err := parcel.NormalizeID(ev.OrderID); err != nil || id != ev.OrderID {
			t.Fatalf("accepted orderID %q", ev.OrderID)
		}
	})
}
