package dashboard_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/auth"
)

// tokens makes an auth file with one token per entry and returns the
// authenticator and the tokens by name.
func tokens(t *testing.T, entries ...auth.Entry) (*auth.Authenticator, map[string]string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("tokens:\n")
	out := map[string]string{}
	for _, e := range entries {
		tok, hash := auth.NewToken()
		e.SHA256 = hash
		out[e.Name] = tok
		b.WriteString(auth.EntryYAML(e))
	}
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := auth.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return a, out
}

// TestTokensDecideWhatThePageShows runs a hub with --auth: the page asks
// for a token, refuses a wrong one, shows a vendor only its own store's
// orders (and no people or traffic), and an admin everything.
func TestTokensDecideWhatThePageShows(t *testing.T) {
	a, tok := tokens(t,
		auth.Entry{Name: "boss", Role: "admin"},
		auth.Entry{Name: "north", Role: "vendor", Store: "north"},
		auth.Entry{Name: "south", Role: "vendor", Store: "south"},
		auth.Entry{Name: "dana", Role: "driver"},
		auth.Entry{Name: "carol", Role: "chat"},
	)
	th := startHub(t, func(c *hub.Config) { c.Auth = a })
	f := newFleet(t, th)
	f.vendor("north", 0, 150*time.Millisecond, tok["north"])
	f.vendor("south", 0, 150*time.Millisecond, tok["south"])
	f.driver("dana", 50*time.Millisecond, 50*time.Millisecond, tok["dana"])

	b := newBrowser(t, 1200, 900)
	b.Do("open the dashboard", chromedp.Navigate(th.url()))
	b.Until("the token dialog", `document.getElementById("login").open`)

	enter := func(b *browser, token string) {
		b.Do("enter a token", chromedp.SetValue(chromedp.CSS("#login-token"), token),
			chromedp.Click(chromedp.CSS("#login-form button")))
	}
	enter(b, "caps_not-a-real-token")
	b.Until("the dialog again, saying why", `document.getElementById("login").open &&
		document.getElementById("login-why").textContent.includes("refused")`)

	enter(b, tok["north"])
	b.Until("the page is ready", `document.body.dataset.ready === "true"`)
	b.Until("who the page is", `document.getElementById("identity").textContent.startsWith("vendor north")`)
	b.Until("north's orders delivered", `document.querySelectorAll("#orders tbody tr[data-status=delivered]").length >= 5`)
	// By now south has posted as many orders as north: none may show.
	stores := eval[[]string](b, `[...new Set([...document.querySelectorAll("#orders tbody td.store")].map(td => td.textContent))]`)
	if len(stores) != 1 || stores[0] != "north" {
		t.Errorf("vendor north's page shows orders of stores %v", stores)
	}
	if n := eval[int](b, `document.querySelectorAll("#f-store option").length`); n > 2 {
		t.Errorf("vendor north can choose among %d stores", n-1)
	}
	for _, sel := range []string{"#people", "#traffic"} {
		if !eval[bool](b, fmt.Sprintf(`document.querySelector(%q).hidden`, sel)) {
			t.Errorf("vendor north's page shows %s", sel)
		}
	}
	b.Until("the sign-out button", `!document.getElementById("sign-out").hidden`)

	// An admin, in another tab (its own session storage), sees both stores.
	admin := b.Tab()
	admin.Do("open the dashboard as admin", chromedp.Navigate(th.url()))
	admin.Until("the token dialog", `document.getElementById("login").open`)
	enter(admin, tok["boss"])
	admin.Until("both stores", `new Set([...document.querySelectorAll("#orders tbody td.store")].map(td => td.textContent)).size === 2`)
	admin.Until("people", `document.querySelectorAll("#people-table tbody tr").length >= 4`)
	// A chat token's page chats under the token's name, and sees no parcels.
	carol := b.Tab()
	carol.Do("open the dashboard as carol", chromedp.Navigate(th.url()))
	carol.Until("the token dialog", `document.getElementById("login").open`)
	enter(carol, tok["carol"])
	carol.Until("no parcels for chat", `!document.getElementById("orders-notice").hidden`)
	carol.Until("no name to choose", `document.getElementById("chat-name").closest("label").hidden`)
	carol.Do("join the lobby", chromedp.Click(chromedp.CSS("#chat-join button")))
	carol.Until("in the lobby", `!document.getElementById("chat-box").hidden`)
	carol.Do("say hi", chromedp.SetValue(chromedp.CSS("#chat-text"), "hi from carol"), chromedp.Click(chromedp.CSS("#chat-send button")))
	carol.Until("her message", `[...document.querySelectorAll("#chat-log li")].some(li => li.textContent.includes("carol: hi from carol"))`)

	// The vendor's page still shows only its own store.
	if n := eval[int](b, `[...document.querySelectorAll("#orders tbody td.store")].filter(td => td.textContent !== "north").length`); n != 0 {
		t.Errorf("vendor north's page shows %d orders of another store", n)
	}
}
