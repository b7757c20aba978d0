package bench_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/caps-hub/caps/internal/bench"
)

func TestMain(m *testing.M) {
	// The conns scenario starts its hub in a child process: this binary.
	if os.Getenv(bench.EnvHubSpec) != "" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		err := bench.ServeHubFromEnv(ctx, slog.New(slog.DiscardHandler))
		stop()
		if err != nil {
			os.Stderr.WriteString("bench hub: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*Server).startGoRoutine.func1"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).Start.func1"),
		goleak.IgnoreTopFunction("time.Sleep"),
	)
}

// tiny returns options for a run of a few hundred milliseconds per scenario.
func tiny(t *testing.T) bench.Options {
	return bench.Options{
		VsNATS:       true,
		Duration:     300 * time.Millisecond,
		Subs:         3,
		Rate:         2000,
		Vendors:      2,
		Drivers:      2,
		Conns:        20,
		Window:       256,
		OrdersWindow: 4,
		HubProcess:   bench.ChildHub([]string{os.Args[0], "-test.run=^$"}),
	}
}

// Every scenario runs end to end against an embedded hub and an embedded
// nats-server, and the JSON carries what the issue promises.
func TestAllScenarios(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rows, err := bench.Run(ctx, tiny(t), []string{"all"})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range rows {
		t.Logf("%s on %s: %.0f %s p50=%.0fµs p99=%.0fµs ratio=%.2f lost=%d %s", r.Scenario, r.Target, r.Rate, r.Unit, r.P50us, r.P99us, r.Ratio, r.Lost, r.Err)
		if r.Err != "" {
			t.Errorf("%s on %s: %s", r.Scenario, r.Target, r.Err)
			continue
		}
		if r.Rate <= 0 || r.Count == 0 {
			t.Errorf("%s on %s: nothing measured: %+v", r.Scenario, r.Target, r)
		}
		seen[r.Scenario+" "+strings.Fields(r.Target)[0]] = true
		if strings.HasPrefix(r.Target, "caps") && r.Scenario != "conns" && (r.NATSRate <= 0 || r.Ratio <= 0) {
			t.Errorf("%s: no comparison with NATS: %+v", r.Scenario, r)
		}
		if strings.HasPrefix(r.Target, "caps") && r.Scenario != "conns" && runtime.GOOS == "linux" && (r.CPUPerOpUs <= 0 || r.CPURatio <= 0) {
			t.Errorf("%s: no CPU per operation compared with NATS's: %+v", r.Scenario, r)
		}
		if (r.Scenario == "latency" || r.Scenario == "orders") && (r.P50us <= 0 || r.P99us < r.P50us || r.MaxUs < r.P99us) {
			t.Errorf("%s on %s: bad percentiles %+v", r.Scenario, r.Target, r)
		}
		if r.Scenario == "conns" && (r.Count != 20 || r.HubGoroutinesPC <= 0) {
			t.Errorf("conns: %+v", r)
		}
	}
	for _, sc := range bench.Scenarios {
		if !seen[sc+" caps"] {
			t.Errorf("no CAPS result for %s", sc)
		}
		if sc != "conns" && !seen[sc+" nats"] {
			t.Errorf("no NATS result for %s", sc)
		}
	}

	var buf bytes.Buffer
	if err := bench.WriteJSON(&buf, rows); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(&buf)
	n := 0
	for sc.Scan() {
		var obj map[string]any
		if err := json.Unmarshal(sc.Bytes(), &obj); err != nil {
			t.Fatalf("not JSON: %s", sc.Text())
		}
		n++
		for _, k := range []string{"scenario", "target", "rate"} {
			if _, ok := obj[k]; !ok {
				t.Errorf("JSON has no %q: %s", k, sc.Text())
			}
		}
		if obj["scenario"] != "conns" {
			for _, k := range []string{"nats_rate", "ratio"} {
				if _, ok := obj[k]; !ok {
					t.Errorf("JSON has no %q: %s", k, sc.Text())
				}
			}
		}
		if obj["scenario"] == "latency" {
			for _, k := range []string{"p50_us", "p99_us"} {
				if _, ok := obj[k]; !ok {
					t.Errorf("JSON has no %q: %s", k, sc.Text())
				}
			}
		}
	}
	if n != len(bench.Scenarios) {
		t.Errorf("%d JSON objects, want one per scenario (%d)", n, len(bench.Scenarios))
	}
	var table bytes.Buffer
	if err := bench.WriteTable(&table, rows); err != nil || !strings.Contains(table.String(), "ratio") {
		t.Errorf("table: %v\n%s", err, table.String())
	}
}

// Thousands of idle connections to a hub in its own process.
func TestConnsAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("opens thousands of connections")
	}
	o := tiny(t)
	o.VsNATS = false
	o.Conns = 3000
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rows, err := bench.Run(ctx, o, []string{"conns"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].Err != "" || rows[0].Count != 3000 {
		t.Fatalf("%+v", rows)
	}
	r := rows[0]
	t.Logf("%d conns in %.2fs: %.0f B heap+stack, %.0f B RSS, %.2f goroutines per connection", r.Count, r.ConnectSeconds, r.HeapPerConnB, r.RSSPerConnB, r.HubGoroutinesPC)
	// About one hub goroutine per idle connection (its reader); the count is
	// read from the live hub, so a session still settling may be off by one.
	if r.HeapPerConnB <= 0 || r.HubGoroutinesPC < 0.99 {
		t.Errorf("implausible memory reading: %+v", r)
	}
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	if _, err := bench.Run(ctx, bench.Options{}, []string{"nope"}); err == nil || !strings.Contains(err.Error(), "unknown scenario") {
		t.Errorf("unknown scenario: %v", err)
	}
	if _, err := bench.Run(ctx, bench.Options{Targets: []string{"http://x"}}, []string{"pubsub"}); err == nil {
		t.Error("bad target accepted")
	}
	if _, err := bench.Run(ctx, bench.Options{}, nil); err == nil {
		t.Error("no scenario accepted")
	}
}
