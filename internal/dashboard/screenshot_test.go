package dashboard_test

import (
	"os"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/auth"
)

// TestScreenshots makes the README's pictures of the dashboard under load.
// It runs only when CAPS_DASHBOARD_SHOTS names the directory to write them
// to, because it runs for over a minute to fill the charts:
//
//	CAPS_DASHBOARD_SHOTS=$PWD/docs go test ./internal/dashboard -run Screenshots -v
func TestScreenshots(t *testing.T) {
	if os.Getenv("CAPS_DASHBOARD_SHOTS") == "" {
		t.Skip("set CAPS_DASHBOARD_SHOTS=<dir> to make the dashboard's screenshots")
	}
	stores := []string{"1-206-flowers", "pizza-palace", "book-nook", "green-grocer", "tea-house", "bike-shop"}
	drivers := []string{"dana", "eli", "fay", "gus", "hal", "ivy", "jo", "kim"}
	entries := []auth.Entry{{Name: "boss", Role: "admin"}}
	for _, s := range stores {
		entries = append(entries, auth.Entry{Name: s, Role: "vendor", Store: s})
	}
	for _, d := range drivers {
		entries = append(entries, auth.Entry{Name: d, Role: "driver"})
	}
	a, tok := tokens(t, entries...)
	th := startHub(t, func(c *hub.Config) { c.Auth = a; c.Name = "hub-1" })
	f := newFleet(t, th)
	for i, s := range stores {
		f.vendor(s, 0, time.Duration(700+120*i)*time.Millisecond, tok[s])
	}
	for i, d := range drivers {
		f.driver(d, time.Duration(700+150*i)*time.Millisecond, time.Duration(1500+300*i)*time.Millisecond, tok[d])
	}
	time.Sleep(75 * time.Second) // let the charts fill with real traffic

	b := newBrowser(t, 1440, 900)
	b.Do("a laptop's screen", chromedp.EmulateViewport(1440, 900))
	signIn := func(b *browser, token string) {
		b.Do("open the dashboard", chromedp.Navigate(th.url()))
		b.Until("the token dialog", `document.getElementById("login").open`)
		b.Do("sign in", chromedp.SetValue(chromedp.CSS("#login-token"), token), chromedp.Click(chromedp.CSS("#login-form button")))
		b.Until("the page is ready", `document.body.dataset.ready === "true"`)
	}
	signIn(b, tok["boss"])
	b.Until("traffic", `document.querySelectorAll("#chart-rate polyline").length >= 2`)
	b.Until("people", `document.querySelectorAll("#people-table tbody tr").length >= 15`)
	b.Do("join the chat", chromedp.SetValue(chromedp.CSS("#chat-room"), "dispatch"), chromedp.Click(chromedp.CSS("#chat-join button")))
	b.Until("in the room", `!document.getElementById("chat-box").hidden`)
	for _, line := range []string{"Rain on the north side: expect delays", "/me is watching bike-shop's queue"} {
		b.Do("chat", chromedp.SetValue(chromedp.CSS("#chat-text"), line), chromedp.Click(chromedp.CSS("#chat-send button")))
		b.Until("the line", `document.querySelectorAll("#chat-log li").length >= 1 && !document.getElementById("chat-text").disabled`)
	}
	time.Sleep(1500 * time.Millisecond) // a few live ticks
	b.Screenshot("dashboard.png")

	b.Do("show delivered orders", chromedp.SetValue(chromedp.CSS("#f-status"), "delivered"),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("f-status").dispatchEvent(new Event("change"))`))
	b.Until("delivered first", `document.querySelector("#orders tbody tr").dataset.status === "delivered"`)
	b.Do("open a timeline", chromedp.Evaluate[chromedp.Void](`document.querySelector("#orders tbody tr").click()`))
	b.Until("the timeline", `document.querySelectorAll("#timeline-steps tbody tr").length >= 4`)
	b.Screenshot("dashboard-timeline.png")

	phone := b.Tab()
	phone.Do("a phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile))
	signIn(phone, tok["pizza-palace"])
	phone.Until("its orders", `document.querySelectorAll("#orders tbody tr").length >= 8`)
	time.Sleep(1500 * time.Millisecond)
	phone.Screenshot("dashboard-vendor-phone.png")
}
