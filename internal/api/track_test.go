package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/caps-hub/caps/internal/api"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// sse reads a tracking page's event stream.
type sse struct {
	t    *testing.T
	resp *http.Response
	sc   *bufio.Scanner
	stop context.CancelFunc
}

func openStream(t *testing.T, url string) *sse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		cancel()
		t.Fatalf("stream %s: %d %s", url, resp.StatusCode, b)
	}
	s := &sse{t: t, resp: resp, sc: bufio.NewScanner(resp.Body), stop: cancel}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	return s
}

// next returns the next event's data, decoded.
func (s *sse) next() map[string]any {
	s.t.Helper()
	for s.sc.Scan() {
		line := s.sc.Text()
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			var v map[string]any
			if err := json.Unmarshal([]byte(data), &v); err != nil {
				s.t.Fatalf("event %q: %v", data, err)
			}
			return v
		}
	}
	s.t.Fatalf("the stream ended: %v", s.sc.Err())
	return nil
}

// TestTrackingLink: the trackingURL, without a token, shows one order and
// follows it live (driver's name once assigned, the PIN, each change) and
// ends with it; the order id, a made-up code or another order's code show
// nothing else; an address is rate-limited.
func TestTrackingLink(t *testing.T) {
	th := startHub(t, hubOpts{api: api.Config{TrackRate: 1000, TrackBurst: 1000}})
	o := th.create("rosa", map[string]any{"customer": "Ada", "address": "12 Analytical Row", "requirePIN": true})
	other := th.create("bruno", map[string]any{"customer": "Secret Sam", "address": "99 Hidden Way"})
	link, id, pin := o.str("trackingURL"), o.str("orderID"), o.str("pin")

	page, err := http.Get(link)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(page.Body)
	page.Body.Close()
	if page.StatusCode != 200 || !strings.Contains(page.Header.Get("Content-Security-Policy"), "default-src 'self'") ||
		!strings.Contains(string(body), `src="/trackpage/track.js"`) || strings.Contains(string(body), "http") && strings.Contains(string(body), "://") {
		t.Fatalf("the page: %d %v %s", page.StatusCode, page.Header, body)
	}
	for _, bad := range []string{"/track/" + id, "/track/aaaaaaaaaaaaaaaaaaaaaaaa", "/track/" + strings.Repeat("z", 5000), "/track/%2e%2e", "/track/" + id + "/events"} {
		r := th.do("GET", bad, "", nil)
		want(t, "tracking "+bad, r, 404, protocol.CodeNotFound)
	}

	s := openStream(t, link+"/events")
	v := s.next()
	if v["status"] != "created" || v["pin"] != pin || v["driver"] != nil || v["store"] != "rosa" || v["address"] != "12 Analytical Row" {
		t.Fatalf("first event: %v", v)
	}
	raw, _ := json.Marshal(v)
	for _, leak := range []string{id, "Secret Sam", "99 Hidden Way", other.str("orderID"), `"hub"`, `"customer"`} {
		if strings.Contains(string(raw), leak) {
			t.Errorf("the tracking view shows %q: %s", leak, raw)
		}
	}
	dora := th.driver("dora")
	r := dora.next()
	seen := map[string]map[string]any{}
	for len(seen) < 2 { // assigned, in transit (the order's own events only)
		v = s.next()
		seen[v["status"].(string)] = v
	}
	if seen["assigned"]["driver"] != "dora" || seen["in-transit"]["driver"] != "dora" {
		t.Errorf("the driver once assigned: %v", seen)
	}
	// bruno's order moving is not this page's business: no event.
	if rb := dora.next(); rb.OrderID != other.str("orderID") {
		t.Fatalf("dora's second pickup is %s", rb.OrderID)
	}
	if err := dora.report(r, parcel.EventDelivered, map[string]any{"pin": pin}); err != nil {
		t.Fatal(err)
	}
	v = s.next()
	if v["status"] != "delivered" || len(v["timeline"].([]any)) != 4 {
		t.Errorf("delivered: %v", v)
	}
	done := make(chan bool, 1)
	go func() {
		more := false
		for s.sc.Scan() {
			more = more || strings.HasPrefix(s.sc.Text(), "data:")
		}
		done <- more
	}()
	select {
	case more := <-done:
		if more {
			t.Error("an event after the order finished")
		}
	case <-time.After(10 * time.Second):
		t.Error("the stream goes on after the order finished")
		s.stop()
		<-done
	}

	limited := startHub(t, hubOpts{api: api.Config{TrackRate: 1, TrackBurst: 2}})
	l := limited.create("rosa", newOrder("x")).str("trackingURL")
	var last *http.Response
	for range 3 {
		if last, err = http.Get(l); err != nil {
			t.Fatal(err)
		}
		last.Body.Close()
	}
	if last.StatusCode != http.StatusTooManyRequests || last.Header.Get("Retry-After") == "" {
		t.Errorf("the third look at once: %d %v", last.StatusCode, last.Header)
	}
}

// TestTrackingPageInChromium: the page in headless Chromium, as on a
// phone, follows the order live: the status, the driver's name once
// assigned, the PIN while it is needed, the history; the README's picture
// is taken here (CAPS_DASHBOARD_SHOTS=<dir>).
func TestTrackingPageInChromium(t *testing.T) {
	th := startHub(t, hubOpts{orders: parcel.Options{MaxAttempts: 3}})
	o := th.create("rosa", map[string]any{"customer": "Ada", "address": "12 Analytical Row, London", "requirePIN": true})
	pin := o.str("pin")
	b := newBrowser(t, 390, 844)
	b.Do("a phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile))
	b.Do("open the tracking link", chromedp.Navigate(o.str("trackingURL")))
	b.Until("the order received", `document.body.dataset.status === "created" && document.getElementById("status").textContent === "Order received"`)
	if got := eval[string](b, `document.getElementById("pin").textContent`); got != pin {
		t.Errorf("the page shows PIN %q, want %q", got, pin)
	}
	if got := eval[bool](b, `document.getElementById("pin-box").hidden`); got {
		t.Error("the PIN is hidden while the order needs it")
	}
	dora := th.driver("dora")
	r := dora.next()
	b.Until("out for delivery, with the driver's name", `document.body.dataset.status === "in-transit" && document.getElementById("driver").textContent === "dora"`)
	if err := dora.report(r, parcel.EventFailed, map[string]any{"reason": "recipient-absent"}); err != nil {
		t.Fatal(err)
	}
	r = dora.next()
	b.Until("the second attempt", `document.body.dataset.status === "in-transit" && document.querySelectorAll("#timeline li").length === 7`)
	if got := eval[string](b, `document.querySelector("#timeline li[data-status=failed] span").textContent`); !strings.Contains(got, "nobody was home") {
		t.Errorf("the failure reads %q", got)
	}
	b.Screenshot("tracking-phone.png")
	if err := dora.report(r, parcel.EventDelivered, map[string]any{"pin": pin}); err != nil {
		t.Fatal(err)
	}
	b.Until("delivered", `document.body.dataset.status === "delivered" && document.getElementById("pin-box").hidden`)
}
