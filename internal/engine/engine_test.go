package engine

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// nats.go and nats-server keep a few process-wide goroutines alive.
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*Server).startGoRoutine.func1"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).Start.func1"),
		goleak.IgnoreTopFunction("time.Sleep"),
	)
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestCountServersOncePerAddress(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		urls []string
		want int
	}{
		{[]string{"nats://127.0.0.1:4222"}, 1},
		{[]string{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"}, 1},
		// A name given with --nats and the address the cluster announces.
		{[]string{"nats://localhost:4222", "nats://127.0.0.1:4222"}, 1},
		{[]string{"nats://127.0.0.1", "nats://127.0.0.1:4222"}, 1}, // default port
		{[]string{"nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.2:4222"}, 3},
		{[]string{"nats://[::1]:4222", "nats://127.0.0.1:4222"}, 2},
		{nil, 1},
	}
	for _, c := range cases {
		if got := countServers(ctx, c.urls); got != c.want {
			t.Errorf("countServers(%v) = %d, want %d", c.urls, got, c.want)
		}
	}
}

func TestParseRoute(t *testing.T) {
	for in, want := range map[string]string{
		"b:6222":                   "nats-route://b:6222",
		" nats-route://b:6222 ":    "nats-route://b:6222",
		"nats://10.0.0.2:6222":     "nats://10.0.0.2:6222",
		"[fd00::2]:6222":           "nats-route://[fd00::2]:6222",
		"nats-route://user:pw@b:1": "nats-route://user:pw@b:1",
	} {
		u, err := parseRoute(in)
		if err != nil || u.String() != want {
			t.Errorf("parseRoute(%q) = %v, %v; want %s", in, u, err, want)
		}
	}
	for _, bad := range []string{"", "b", "nats-route://b", ":6222x"} {
		if u, err := parseRoute(bad); err == nil {
			t.Errorf("parseRoute(%q) = %v, want an error", bad, u)
		}
	}
}

// An external engine that is not there: Start waits, then says so in words
// that tell the operator what to check.
func TestStartSaysWhyNoEngine(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	_, err = Start(context.Background(), Config{URLs: "nats://" + addr, ConnectTimeout: 1500 * time.Millisecond, Logger: quiet()})
	if err == nil || !strings.Contains(err.Error(), "no NATS server reachable at nats://"+addr) {
		t.Fatalf("Start against nothing: %v; want it to say no NATS server is reachable there", err)
	}
}

func TestEmbeddedStandalone(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := Start(ctx, Config{DataDir: t.TempDir(), Name: "solo", Logger: quiet(), HealthInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.Replicas != 1 || !e.Embedded() || !e.Ready() {
		t.Fatalf("replicas %d, embedded %v, ready %v; want 1, true, true", e.Replicas, e.Embedded(), e.Ready())
	}
	spec := StreamSpec{Name: "T", Topics: []string{"t.>"}, MaxAge: time.Hour}
	s1, err := e.EnsureStream(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := e.EnsureStream(ctx, spec) // idempotent
	if err != nil {
		t.Fatal(err)
	}
	if s1.CachedInfo().Created != s2.CachedInfo().Created {
		t.Error("EnsureStream created the stream again")
	}
	spec.MaxAge = 2 * time.Hour // a changed spec updates the stream
	s3, err := e.EnsureStream(ctx, spec)
	if err != nil || s3.CachedInfo().Config.MaxAge != 2*time.Hour {
		t.Fatalf("update: %v, max age %v", err, s3.CachedInfo().Config.MaxAge)
	}

	kv, err := e.EnsureKV(ctx, KVSpec{Bucket: "B", History: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	st, _ := e.JS.Stream(ctx, "KV_B")
	if c := st.CachedInfo().Config; !c.AllowDirect || c.MaxMsgsPerSubject != 3 {
		t.Errorf("single-replica bucket: direct gets %v, history %d; want true, 3", c.AllowDirect, c.MaxMsgsPerSubject)
	}
	if _, err := e.EnsureKV(ctx, KVSpec{Bucket: "B", History: 3}); err != nil {
		t.Fatalf("EnsureKV again: %v", err)
	}
	if _, err := e.EnsureKV(ctx, KVSpec{Bucket: "no.dots"}); err == nil {
		t.Error("EnsureKV accepted a bad bucket name")
	}

	// A keyed stored publish sent twice is stored once.
	m := &nats.Msg{Subject: Subject("t.x"), Data: []byte("1"), Header: nats.Header{nats.MsgIdHdr: []string{"id-1"}}}
	a1, err := e.PublishStored(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := e.PublishStored(ctx, m)
	if err != nil || a2.Sequence != a1.Sequence || !a2.Duplicate {
		t.Fatalf("second publish: %+v, %v; want a duplicate of sequence %d", a2, err, a1.Sequence)
	}
	if !e.JetStreamAvailable() {
		t.Error("JetStream reported unavailable on a healthy server")
	}

	// A stream from a full configuration: created once, updated when a
	// setting StreamSpec lacks (per-subject discard) changes.
	raw := jetstream.StreamConfig{Name: "RAW", Subjects: []string{"raw.*"}, Retention: jetstream.WorkQueuePolicy,
		Discard: jetstream.DiscardNew, MaxMsgsPerSubject: 2, Storage: jetstream.FileStorage}
	r1, err := e.EnsureStreamConfig(ctx, raw)
	if err != nil {
		t.Fatal(err)
	}
	if r2, err := e.EnsureStreamConfig(ctx, raw); err != nil || r2.CachedInfo().Created != r1.CachedInfo().Created {
		t.Fatalf("EnsureStreamConfig again: %v", err)
	}
	raw.DiscardNewPerSubject = true
	r3, err := e.EnsureStreamConfig(ctx, raw)
	if err != nil || !r3.CachedInfo().Config.DiscardNewPerSubject {
		t.Fatalf("update: %v, per-subject discard %v", err, r3.CachedInfo().Config.DiscardNewPerSubject)
	}
	for i := range 3 {
		_, err := e.JS.Publish(ctx, "raw.a", []byte("x"))
		if (err == nil) != (i < 2) {
			t.Errorf("publish %d to a subject holding 2 at most: %v", i+1, err)
		}
	}
}
