package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caps-hub/caps/internal/auth"
	"github.com/caps-hub/caps/protocol"
)

// conns opens Conns idle, authenticated connections and reports the time to
// open them all and the hub's memory per connection, read from its /metrics
// before and after (each after a garbage collection). The clients are bare
// sockets that did the handshake, so that they cost the bench next to
// nothing; they ping the hub so that it does not drop them as dead.
func (e *env) conns(ctx context.Context, tg *target) (res Result, err error) {
	o := e.opts
	res.Unit = "conns/s"
	res.Conns = o.Conns
	raiseFileLimit(o.Conns*2 + 1024)

	addr, metricsURL, gcURL, token := tg.addr, o.MetricsURL, "", tg.token
	if tg.embedded {
		root, err := e.tempDir()
		if err != nil {
			return res, err
		}
		dir, err := os.MkdirTemp(root, "conns-")
		if err != nil {
			return res, err
		}
		tok, hash := auth.NewToken()
		token = tok
		authFile := filepath.Join(dir, "tokens.yaml")
		entry := auth.EntryYAML(auth.Entry{Name: "bench", Role: protocol.RoleClient, SHA256: hash})
		if err := os.WriteFile(authFile, []byte("tokens:\n"+entry), 0o600); err != nil {
			return res, err
		}
		if o.HubProcess != nil {
			spec := HubProcessSpec{Addr: freeAddr(), HTTPAddr: freeAddr(), DataDir: filepath.Join(dir, "data"), AuthFile: authFile, SyncAlways: o.SyncAlways}
			stop, err := o.HubProcess(ctx, spec)
			if err != nil {
				return res, fmt.Errorf("hub process: %w", err)
			}
			defer stop()
			addr = spec.Addr
			metricsURL = "http://" + spec.HTTPAddr + "/metrics"
			gcURL = "http://" + spec.HTTPAddr + "/debug/gc"
			res.MemoryNote = "hub in its own process; clients in the bench process"
		} else {
			a, err := auth.Load(authFile)
			if err != nil {
				return res, err
			}
			htg, stop, err := e.startHub(ctx, hubSpec{auth: a, httpAddr: "127.0.0.1:0"})
			if err != nil {
				return res, err
			}
			defer stop()
			addr = htg.addr
			metricsURL = "http://" + htg.hub.HTTPAddr().String() + "/metrics"
			res.MemoryNote = "hub in the bench process: includes the bench's own client sockets"
		}
	} else if metricsURL == "" {
		host, _, _ := net.SplitHostPort(addr)
		metricsURL = "http://" + net.JoinHostPort(host, "8080") + "/metrics"
	}
	if gcURL == "" && metricsURL != "" && !tg.embedded {
		gcURL = strings.TrimSuffix(metricsURL, "/metrics") + "/debug/pprof/heap?gc=1"
	}
	// Three collections: each one frees garbage and halves the goroutine
	// stacks that use less than a quarter of theirs (the handshake grew
	// them), as an idle hub's periodic collections do over a few minutes.
	collect := func() {
		for i := 0; i < 3; i++ {
			if gcURL != "" {
				httpGet(ctx, gcURL)
			} else {
				runtime.GC()
			}
		}
	}

	collect()
	before, merr := scrape(ctx, metricsURL)

	start := time.Now()
	held, hb, err := openConns(ctx, addr, token, o.Conns)
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	res.ConnectSeconds = time.Since(start).Seconds()
	res.Count = uint64(len(held))
	res.Seconds = res.ConnectSeconds
	if res.ConnectSeconds > 0 {
		res.Rate = float64(len(held)) / res.ConnectSeconds
	}
	if err != nil {
		return res, err
	}

	// Keep them alive (a ping per heartbeat) while the hub settles.
	stopPing := keepAlive(held, hb)
	defer stopPing()
	// The hub answers WELCOME before it has finished with a session (its
	// client.connected event is stored first): wait until its goroutine
	// count stops moving before reading its memory.
	if err := settle(ctx, metricsURL, before[storedPublishes]+float64(len(held))); err != nil {
		return res, err
	}
	collect()
	after, merr2 := scrape(ctx, metricsURL)
	if o.MemProfile != "" && gcURL != "" && strings.HasSuffix(gcURL, "/debug/gc") {
		base := strings.TrimSuffix(gcURL, "/debug/gc")
		saveURL(ctx, base+"/debug/pprof/heap", o.MemProfile+".hub")
		saveURL(ctx, base+"/debug/pprof/goroutine?debug=1", o.MemProfile+".hub-goroutines.txt")
	}
	if merr != nil || merr2 != nil {
		err := merr
		if err == nil {
			err = merr2
		}
		res.MemoryNote = fmt.Sprintf("no metrics: %v; give --metrics URL", err)
		return res, nil
	}
	n := float64(len(held))
	heap := (after["go_memstats_heap_inuse_bytes"] + after["go_memstats_stack_inuse_bytes"]) -
		(before["go_memstats_heap_inuse_bytes"] + before["go_memstats_stack_inuse_bytes"])
	res.HeapPerConnB = heap / n
	res.StackPerConnB = (after["go_memstats_stack_inuse_bytes"] - before["go_memstats_stack_inuse_bytes"]) / n
	res.RSSPerConnB = (after["process_resident_memory_bytes"] - before["process_resident_memory_bytes"]) / n
	res.HubGoroutinesPC = (after["go_goroutines"] - before["go_goroutines"]) / n
	return res, nil
}

// storedPublishes counts the hub's stored publishes; each new session
// stores one (its client.connected event) before it starts reading.
const storedPublishes = `caps_publishes_total{kind="stored"}`

// settle waits (at most a minute) until the hub has stored wantStored
// publishes, when it reports them, and its goroutine count has stayed the
// same for half a second.
func settle(ctx context.Context, metricsURL string, wantStored float64) error {
	deadline := time.Now().Add(time.Minute)
	last, stable := -1.0, 0
	for stable < 5 && time.Now().Before(deadline) {
		m, err := scrape(ctx, metricsURL)
		if err != nil {
			return nil // no metrics: nothing to wait for
		}
		if n, ok := m[storedPublishes]; ok && n < wantStored {
			stable = 0
		} else if g := m["go_goroutines"]; g == last {
			stable++
		} else {
			last, stable = g, 0
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// saveURL writes what url serves to path (a profile), logging nothing on failure.
func saveURL(ctx context.Context, url, path string) {
	if body, err := httpGet(ctx, url); err == nil {
		_ = os.WriteFile(path, []byte(body), 0o644)
	}
}

// openConns dials n connections with a bounded number in flight and
// authenticates each. It returns the heartbeat interval the hub announced.
func openConns(ctx context.Context, addr, token string, n int) ([]net.Conn, time.Duration, error) {
	hello, _ := json.Marshal(protocol.Hello{Version: protocol.Version, Role: protocol.RoleClient, Name: "bench", Token: token})
	helloFrame := (&protocol.Frame{Op: protocol.OpHello, Payload: hello}).Encode()
	conns := make([]net.Conn, n)
	var next atomic.Int64
	var hbMS atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				c, hb, err := handshake(ctx, addr, helloFrame)
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = fmt.Errorf("connection %d: %w", i+1, err)
					}
					mu.Unlock()
					next.Store(int64(n)) // stop the others
					return
				}
				conns[i] = c
				mu.Unlock()
				hbMS.Store(int64(hb))
			}
		}()
	}
	wg.Wait()
	out := conns[:0]
	for _, c := range conns {
		if c != nil {
			out = append(out, c)
		}
	}
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	return out, time.Duration(hbMS.Load()) * time.Millisecond, firstErr
}

func handshake(ctx context.Context, addr string, hello []byte) (net.Conn, int, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, 0, err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(hello); err != nil {
		c.Close()
		return nil, 0, err
	}
	f, err := protocol.NewReader(c, 0).Next()
	if err != nil {
		c.Close()
		return nil, 0, err
	}
	if f.Op != protocol.OpWelcome {
		c.Close()
		if f.Op == protocol.OpErr {
			return nil, 0, protocol.AsError(f)
		}
		return nil, 0, fmt.Errorf("expected WELCOME, got %s", f.Op)
	}
	var w protocol.Welcome
	_ = json.Unmarshal(f.Payload, &w)
	c.SetDeadline(time.Time{})
	return c, w.HeartbeatMS, nil
}

// keepAlive pings every connection from one goroutine a little more often
// than the hub's dead-peer limit (twice its heartbeat) requires. Not more
// often: each PONG wakes the connection's write side in the hub for a moment,
// and the point is to measure idle connections.
func keepAlive(conns []net.Conn, hb time.Duration) (stop func()) {
	if hb <= 0 {
		return func() {}
	}
	ping := (&protocol.Frame{Op: protocol.OpPing}).Encode()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(hb * 9 / 10)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			for _, c := range conns {
				c.SetWriteDeadline(time.Now().Add(time.Second))
				c.Write(ping)
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// scrape reads the numeric samples from a Prometheus text page, keyed by
// name and labels as written (`name{label="v"}`).
func scrape(ctx context.Context, url string) (map[string]float64, error) {
	if url == "" {
		return nil, errors.New("no metrics URL")
	}
	body, err := httpGet(ctx, url)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		name, val := line[:i], line[i+1:]
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] = v
		}
	}
	if _, ok := out["go_memstats_heap_inuse_bytes"]; !ok {
		return out, fmt.Errorf("%s has no go_memstats_heap_inuse_bytes", url)
	}
	return out, nil
}

func httpGet(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var b strings.Builder
	if _, err := bufio.NewReader(resp.Body).WriteTo(&b); err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return b.String(), nil
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:0"
	}
	defer l.Close()
	return l.Addr().String()
}

// raiseFileLimit lifts the soft limit on open files towards want (up to the
// hard limit): every connection is a file, twice over when both ends are here.
func raiseFileLimit(want int) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return
	}
	if rl.Cur >= uint64(want) || rl.Cur >= rl.Max {
		return
	}
	rl.Cur = min(uint64(want), rl.Max)
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
}
