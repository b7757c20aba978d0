package dashboard_test

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/caps-hub/caps/internal/chat"
	"github.com/caps-hub/caps/internal/hubtest"
)

// TestPageShowsTheSystemLive opens the dashboard of a hub that vendors and
// drivers are busy on, and checks each panel: orders appear and move to
// delivered, the filters, a timeline, people with drivers' loads, traffic
// charts, a chat message going from the page to a line-mode chat client and
// back; and that the page fits a phone's screen.
func TestPageShowsTheSystemLive(t *testing.T) {
	th := startHub(t, nil)
	f := newFleet(t, th)
	for _, store := range []string{"1-206-flowers", "pizza-palace", "book-nook"} {
		f.vendor(store, 0, 400*time.Millisecond, "")
	}
	for _, d := range []string{"dana", "eli", "fay"} {
		f.driver(d, 600*time.Millisecond, 900*time.Millisecond, "")
	}
	// A chat user in a terminal, in line mode.
	term := startLineChat(t, th, "bob", "lobby")

	b := newBrowser(t, 1400, 1000)
	b.Do("open the dashboard", chromedp.Navigate(th.url()))
	b.Until("the page is ready", `document.body.dataset.ready === "true"`)
	b.Until("the connection is up", `document.getElementById("conn-state").dataset.state === "connected"`)

	// Orders appear, and one seen before delivery moves on to delivered.
	b.Until("an order not yet delivered", `!!document.querySelector("#orders tbody tr:not([data-status=delivered])")`)
	id := eval[string](b, `document.querySelector("#orders tbody tr:not([data-status=delivered])").dataset.id`)
	b.Until("order "+id+" delivered", `document.querySelector('#orders tbody tr[data-id="`+id+`"]')?.dataset.status === "delivered"`)
	b.Until("orders of three stores", `new Set([...document.querySelectorAll("#orders tbody td.store")].map(td => td.textContent)).size === 3`)
	b.Until("a delivered order timed in every stage",
		`[...document.querySelectorAll("#orders tbody tr[data-status=delivered]")].some(tr =>
			[...tr.querySelectorAll("td.t")].every(td => /\d/.test(td.textContent)))`)

	// Filter by store.
	b.Do("filter by store", chromedp.SetValue(chromedp.CSS("#f-store"), "pizza-palace"),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("f-store").dispatchEvent(new Event("change"))`))
	b.Until("only pizza-palace's orders", `(() => {
		const s = [...document.querySelectorAll("#orders tbody td.store")].map(td => td.textContent);
		return s.length > 0 && s.every(x => x === "pizza-palace");
	})()`)
	// And by status and driver together with it.
	b.Do("filter by status", chromedp.SetValue(chromedp.CSS("#f-status"), "delivered"),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("f-status").dispatchEvent(new Event("change"))`))
	b.Until("only delivered pizza-palace orders", `(() => {
		const rows = [...document.querySelectorAll("#orders tbody tr")];
		return rows.length > 0 && rows.every(r => r.dataset.status === "delivered" && r.querySelector("td.store").textContent === "pizza-palace");
	})()`)
	driver := eval[string](b, `document.querySelector("#orders tbody td.driver").textContent`)
	b.Do("filter by driver", chromedp.SetValue(chromedp.CSS("#f-driver"), driver),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("f-driver").dispatchEvent(new Event("change"))`))
	b.Until("only "+driver+"'s orders", `[...document.querySelectorAll("#orders tbody td.driver")].every(td => td.textContent === `+js(driver)+`)`)

	// The timeline of a delivered order: what `caps track` shows.
	b.Do("open a timeline", chromedp.Click(chromedp.CSS("#orders tbody tr[data-status=delivered]")))
	b.Until("the timeline dialog", `document.getElementById("timeline").open`)
	b.Until("its four steps", `[...document.querySelectorAll("#timeline-steps tbody tr")].map(r => r.dataset.status).join(",") === "created,assigned,in-transit,delivered"`)
	b.Until("who carried it", `document.querySelector("#timeline-facts").textContent.includes("driver `+driver+`")`)
	b.Do("close the timeline", chromedp.Click(chromedp.CSS("#timeline .dialog-head button")))
	b.Until("the dialog closed", `!document.getElementById("timeline").open`)
	b.Do("clear the filters", chromedp.Evaluate[chromedp.Void](`for (const id of ["f-store", "f-status", "f-driver"]) {
		const s = document.getElementById(id); s.value = ""; s.dispatchEvent(new Event("change"));
	}`))

	// People: vendors, drivers with their loads, the chat user, the page.
	b.Until("people of every role", `(() => {
		const roles = [...document.querySelectorAll("#people-table tbody tr")].map(r => r.dataset.role);
		return ["vendor", "driver", "chat", "admin"].every(r => roles.includes(r)) && roles.filter(r => r === "driver").length === 3;
	})()`)
	b.Until("drivers' loads", `[...document.querySelectorAll("#people-table tbody tr[data-role=driver] td.load")].every(td => /^\d+$/.test(td.textContent))`)
	b.Until("someone carrying parcels", `[...document.querySelectorAll("#people-table tbody tr[data-role=driver] td.load")].some(td => td.textContent !== "0")`)

	// Traffic: lines in both charts, counters.
	b.Until("the message rate chart", `document.querySelectorAll("#chart-rate polyline").length >= 2`)
	b.Until("the latency chart", `document.querySelectorAll("#chart-latency polyline").length >= 2`)
	b.Until("connections counted", `Number(document.querySelector("[data-stat=conns] dd").firstChild.textContent) >= 8`)

	// Chat: join as alice, hear bob's terminal, and be heard there.
	b.Do("join the chat", chromedp.SetValue(chromedp.CSS("#chat-name"), "alice"),
		chromedp.Click(chromedp.CSS("#chat-join button")))
	b.Until("in the lobby", `!document.getElementById("chat-box").hidden && document.getElementById("chat-who").textContent.includes("bob")`)
	term.waitFor(t, "[lobby] * alice joined")
	b.Do("say hello", chromedp.SetValue(chromedp.CSS("#chat-text"), "hello from the browser"),
		chromedp.Click(chromedp.CSS("#chat-send button")))
	term.waitFor(t, "[lobby] alice: hello from the browser")
	term.say("hi alice, bob here")
	b.Until("bob's answer in the page", `[...document.querySelectorAll("#chat-log li")].some(li => li.textContent.includes("bob: hi alice, bob here"))`)

	// On a phone the page fits the width, the sections one under another.
	phone := b.Tab()
	phone.Do("open the dashboard as a phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile),
		chromedp.Navigate(th.url()))
	phone.Until("orders", `document.querySelectorAll("#orders tbody tr").length >= 4`)
	phone.Until("traffic", `document.querySelectorAll("#chart-rate polyline").length >= 2`)
	if w := eval[int](phone, `document.documentElement.scrollWidth`); w > 390 {
		t.Errorf("the page is %dpx wide on a 390px screen", w)
	}
	if !eval[bool](phone, `document.getElementById("traffic").getBoundingClientRect().top > document.getElementById("parcels").getBoundingClientRect().bottom - 1`) {
		t.Error("on a phone, traffic is not below parcels")
	}
}

// lineChat is a chat client in line mode, as in a terminal.
type lineChat struct {
	in  *io.PipeWriter
	mu  sync.Mutex
	out bytes.Buffer
}

func startLineChat(t *testing.T, th *testHub, name, room string) *lineChat {
	t.Helper()
	r, w := io.Pipe()
	lc := &lineChat{in: w}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- chat.RunLines(ctx, chat.ClientConfig{Hubs: []string{th.addr()}, Name: name, Room: room, Logger: testLog()}, r, lc, lc)
	}()
	t.Cleanup(func() {
		w.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("chat %s: %v", name, err)
		}
	})
	lc.waitFor(t, "["+room+"]")
	return lc
}

func (lc *lineChat) Write(p []byte) (int, error) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return lc.out.Write(p)
}

func (lc *lineChat) say(line string) { _, _ = io.WriteString(lc.in, line+"\n") }

func (lc *lineChat) waitFor(t *testing.T, s string) {
	t.Helper()
	hubtest.Eventually(t, wait, "the chat terminal prints "+s, func() error {
		lc.mu.Lock()
		defer lc.mu.Unlock()
		if !strings.Contains(lc.out.String(), s) {
			return errString("not yet; it printed:\n" + lc.out.String())
		}
		return nil
	})
}

type errString string

func (e errString) Error() string { return string(e) }

// TestPageRidesOutAHubRestart restarts the hub under an open page: the
// page says it is reconnecting, then picks up where it left off, with the
// orders posted after the restart.
func TestPageRidesOutAHubRestart(t *testing.T) {
	th := startHub(t, nil)
	f := newFleet(t, th)
	f.vendor("north", 0, 200*time.Millisecond, "")
	f.driver("dana", 100*time.Millisecond, 100*time.Millisecond, "")

	b := newBrowser(t, 1200, 900)
	b.Do("open the dashboard", chromedp.Navigate(th.url()))
	b.Until("orders delivered", `document.querySelectorAll("#orders tbody tr[data-status=delivered]").length >= 3`)
	th.stop()
	b.Until("the page notices", `["reconnecting", "connecting"].includes(document.getElementById("conn-state").dataset.state)`)
	before := eval[[]string](b, `[...document.querySelectorAll("#orders tbody tr")].map(r => r.dataset.id)`)
	th.start()
	b.Until("connected again", `document.getElementById("conn-state").dataset.state === "connected"`)
	seen := "new Set(" + jsList(before) + ")"
	b.Until("an order posted after the restart, delivered", `[...document.querySelectorAll("#orders tbody tr[data-status=delivered]")].some(r => !`+seen+`.has(r.dataset.id))`)
	b.Until("traffic from the new run", `document.querySelectorAll("#chart-rate polyline").length >= 1`)
}

// jsList renders strings as a JavaScript array literal.
func jsList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = js(s)
	}
	return "[" + strings.Join(q, ",") + "]"
}
