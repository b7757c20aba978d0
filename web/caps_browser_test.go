package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
)

// browserApp gives the test page a service to call and a stored topic for a
// durable subscription, and serves the page itself, so that it is on the
// hub's origin like the dashboard.
type browserApp struct{}

func (browserApp) Setup(ctx context.Context, h *hub.Host) error {
	if err := h.AddStream(ctx, hub.StreamSpec{Name: "BROWSER", Topics: []string{"store.>"}}); err != nil {
		return err
	}
	h.Handle("echo", func(_ context.Context, s hub.SessionInfo, payload []byte) ([]byte, error) {
		return []byte(fmt.Sprintf("%s says %s", s.Name, payload)), nil
	})
	h.HandleHTTP(func(mux *http.ServeMux) {
		mux.HandleFunc("GET /test/page.html", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Write([]byte(testPage))
		})
	})
	return nil
}

// testPage drives caps.js through what the dashboard needs, talking with a
// native Go client (the test) on the other side of the hub, and leaves its
// findings in window.capsResult.
const testPage = `<!doctype html>
<html><head><meta charset="utf-8"><title>caps.js test</title></head>
<body>
<script type="module">
import { Client, CapsError } from '/caps.js';

const result = { states: [], got: [] };
const waitFor = (pred, what, ms = 10000) => new Promise((resolve, reject) => {
  const t0 = Date.now();
  const tick = () => {
    if (pred()) return resolve();
    if (Date.now() - t0 > ms) return reject(new Error('timed out waiting for ' + what));
    setTimeout(tick, 10);
  };
  tick();
});

try {
  const c = await Client.connect('/ws', { name: 'browser-1', onState: (s) => result.states.push(s), minBackoff: 50 });
  result.welcome = c.welcome.name;

  // Publish and receive, with two local subscriptions sharing the hub's sid.
  const a = await c.subscribe('news.*', (m) => result.got.push('a:' + m.topic + '=' + m.text()));
  const b = await c.subscribe('news.*', (m) => result.got.push('b:' + m.text()));
  result.sharedSid = a.sid === b.sid;
  result.liveSeq = await c.publish('news.today', 'hello');
  await waitFor(() => result.got.length === 2, 'both handlers');
  await b.unsubscribe();
  await c.publish('news.later', 'again');
  await waitFor(() => result.got.length === 3, 'the remaining handler');

  // Request and reply.
  result.echo = new TextDecoder().decode(await c.request('echo', 'ping'));

  // A durable subscription: stored messages, acknowledged with a confirmation.
  const stored = [];
  result.storedSeq = await c.publish('store.a', { n: 1 });
  await c.publish('store.a', { n: 2 });
  const d = await c.subscribe('store.>', async (m) => {
    stored.push(m.json().n);
    await m.ack({ confirm: true });
  }, { durable: 'browser-d', manualAck: true, deliverAll: true });
  await waitFor(() => stored.length === 2, 'two stored messages');
  result.stored = stored;
  result.durableSidIsBig = typeof d.sid === 'bigint';

  // Errors come back as CapsError with the hub's code.
  try {
    await c.publish('client.connected', '{}');
  } catch (e) {
    result.forbidden = e instanceof CapsError ? e.code : String(e);
  }
  try {
    await c.publish('bad..topic', 'x');
  } catch (e) {
    result.badTopic = e.code;
  }

  // The Go side answers when we are ready.
  const fromGo = [];
  await c.subscribe('to.browser', (m) => fromGo.push(m.text()));
  await c.publish('from.browser.ready', '1');
  await waitFor(() => fromGo.length === 1, 'the Go client');

  // Lose the connection: the client reconnects, subscribes again, and the
  // Go side's next message arrives on the same handler.
  c._ws.close();
  await waitFor(() => result.states.filter((s) => s === 'connected').length === 2, 'reconnect');
  await c.publish('from.browser.ready', '2');
  await waitFor(() => fromGo.length === 2, 'the Go client after the reconnect');
  result.fromGo = fromGo;
  c.close();
  result.finalState = c.state;
} catch (e) {
  result.error = String(e && e.stack || e);
}
window.capsResult = JSON.stringify(result);
document.body.insertAdjacentHTML('beforeend', '<div id="done">done</div>');
</script>
</body></html>`

func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no Chromium on this machine: skipping the browser test (.ci/run installs Debian's chromium)")
	return ""
}

func TestCapsJSInHeadlessChromium(t *testing.T) {
	browser := findChromium(t)
	h := hubtest.Start(t, hub.Config{HTTPAddr: "127.0.0.1:0", Name: "browser-test", Apps: []hub.App{browserApp{}}})

	// The native side: answer the page each time it says it is ready.
	gctx, gcancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer gcancel()
	g, err := client.Dial(gctx, []string{h.Addr().String()}, client.Options{Name: "go-side"})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if _, err := g.Subscribe(gctx, "from.browser.ready", func(m *client.Msg) {
		go g.Publish(gctx, "to.browser", []byte("hi from go #"+string(m.Payload)))
	}); err != nil {
		t.Fatal(err)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
	)
	actx, acancel := chromedp.NewExecAllocator(gctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	var mu sync.Mutex
	var console []string
	if err := chromedp.Listen(bctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch e := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			var parts []string
			for _, a := range e.Args {
				parts = append(parts, string(a.Value)+a.Description)
			}
			console = append(console, string(e.Type)+": "+strings.Join(parts, " "))
		case *runtime.EventExceptionThrown:
			console = append(console, fmt.Sprintf("exception: %s %v", e.ExceptionDetails.Text, e.ExceptionDetails.Exception))
		}
	}); err != nil {
		t.Fatalf("start %s: %v", browser, err)
	}

	url := "http://" + h.HTTPAddr().String() + "/test/page.html"
	err = chromedp.Do(bctx, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.ID("done")))
	var raw string
	if err == nil {
		raw, err = chromedp.Run(bctx, chromedp.Evaluate[string](`window.capsResult`))
	}
	if err != nil {
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("browser: %v\nconsole:\n%s", err, strings.Join(console, "\n"))
	}
	var res struct {
		States          []string `json:"states"`
		Got             []string `json:"got"`
		Welcome         string   `json:"welcome"`
		SharedSid       bool     `json:"sharedSid"`
		LiveSeq         int      `json:"liveSeq"`
		Echo            string   `json:"echo"`
		StoredSeq       int      `json:"storedSeq"`
		Stored          []int    `json:"stored"`
		DurableSidIsBig bool     `json:"durableSidIsBig"`
		Forbidden       string   `json:"forbidden"`
		BadTopic        string   `json:"badTopic"`
		FromGo          []string `json:"fromGo"`
		FinalState      string   `json:"finalState"`
		Error           string   `json:"error"`
	}
	if err := json.Unmarshal([]byte(raw), &res); err != nil {
		t.Fatalf("result %q: %v", raw, err)
	}
	mu.Lock()
	logs := strings.Join(console, "\n")
	mu.Unlock()
	if res.Error != "" {
		t.Fatalf("page failed: %s\nresult: %s\nconsole:\n%s", res.Error, raw, logs)
	}
	check := func(what string, ok bool) {
		t.Helper()
		if !ok {
			t.Errorf("%s: result %s\nconsole:\n%s", what, raw, logs)
		}
	}
	t.Logf("page result: %s", raw)
	check("welcome", res.Welcome == "browser-1")
	check("shared sid", res.SharedSid)
	check("live publish", res.LiveSeq == 0)
	check("deliveries", strings.Join(res.Got, ",") == "a:news.today=hello,b:hello,a:news.later=again")
	check("request", res.Echo == "browser-1 says ping")
	check("stored publish", res.StoredSeq > 0)
	check("durable", fmt.Sprint(res.Stored) == "[1 2]" && res.DurableSidIsBig)
	check("errors", res.Forbidden == "forbidden" && res.BadTopic == "bad_topic")
	check("Go interplay and reconnect", strings.Join(res.FromGo, ",") == "hi from go #1,hi from go #2")
	check("states", strings.Join(res.States, ",") == "connected,reconnecting,connected,closed" && res.FinalState == "closed")
}
