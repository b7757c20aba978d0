package hostile_test

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/auth"
	"github.com/caps-hub/caps/internal/chat"
	"github.com/caps-hub/caps/internal/dashboard"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/web"
)

// target is a hub under attack: its CAPS and HTTP addresses.
type target struct {
	*hubtest.Hub
	tcp, http string
}

// setup configures a target hub before it starts.
type setup struct {
	hub  func(*hub.Config)
	chat chat.AppConfig
}

// startTarget runs a hub as `caps hub` runs it — the parcel dispatcher,
// chat and the dashboard — with HTTP on loopback.
func startTarget(t *testing.T, s setup) *target {
	t.Helper()
	off := false
	cfg := hub.Config{
		HTTPAddr: "127.0.0.1:0", SyncAlways: &off, ShutdownTimeout: 5 * time.Second,
		Apps: []hub.App{
			parcel.NewDispatcher(parcel.Options{}),
			chat.NewApp(s.chat),
			dashboard.New(dashboard.Options{Assets: web.Dashboard()}),
		},
	}
	if s.hub != nil {
		s.hub(&cfg)
	}
	h := hubtest.Start(t, cfg)
	return &target{Hub: h, tcp: h.Addr().String(), http: h.HTTPAddr().String()}
}

// withTokens gives the hub an auth file with these entries and returns
// each entry's token by name.
func withTokens(t *testing.T, entries ...auth.Entry) (func(*hub.Config), map[string]string) {
	t.Helper()
	tokens := map[string]string{}
	var yaml strings.Builder
	yaml.WriteString("tokens:\n")
	for _, e := range entries {
		tok, hash := auth.NewToken()
		e.SHA256 = hash
		tokens[e.Name] = tok
		yaml.WriteString(auth.EntryYAML(e))
	}
	path := filepath.Join(t.TempDir(), "auth.yaml")
	if err := os.WriteFile(path, []byte(yaml.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := auth.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return func(c *hub.Config) { c.Auth = a }, tokens
}

// get requests url (with a bearer token when given) and returns the status
// and the body.
func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	c := &http.Client{Timeout: wait}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric reads one sample from the target's /metrics: series is the name
// with its labels as exposed (`caps_stream_bytes{stream="CHAT_ROOMS"}`).
// ok is false when the series is absent.
func (tg *target) metric(t *testing.T, series string) (v float64, ok bool) {
	t.Helper()
	status, body := get(t, "http://"+tg.http+"/metrics", "")
	if status != http.StatusOK {
		t.Fatalf("/metrics: %d %s", status, body)
	}
	return sample(body, series)
}

// sample finds a series in a Prometheus text exposition.
func sample(body, series string) (float64, bool) {
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}
