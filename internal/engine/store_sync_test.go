package engine

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// syncEngine starts an embedded engine with SyncAlways and group sync, and a
// stream "T" on t.> (caps.t.t.>). syncFS, when not nil, stands in for
// syncfs(2); onSync sees every round.
func syncEngine(t *testing.T, dir string, syncFS func() error, onSync func(SyncInfo)) *Engine {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := Start(ctx, Config{DataDir: dir, Name: "gs", Logger: quiet(), SyncAlways: true, GroupSync: true,
		syncFS: syncFS, OnSync: onSync})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	if _, err := e.EnsureStream(ctx, StreamSpec{Name: "T", Topics: []string{"t.>"}}); err != nil {
		t.Fatal(err)
	}
	return e
}

func msg(subject, id, data string) *nats.Msg {
	m := &nats.Msg{Subject: Subject(subject), Data: []byte(data), Header: nats.Header{}}
	if id != "" {
		m.Header.Set(nats.MsgIdHdr, id)
	}
	return m
}

func streamT(t *testing.T, e *Engine) jetstream.Stream {
	t.Helper()
	s, err := e.JS.Stream(context.Background(), "T")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func streamMsgs(t *testing.T, e *Engine) uint64 {
	t.Helper()
	info, err := streamT(t, e).Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// gate is a sync that the test lets through one round at a time.
type gate struct {
	entered chan struct{} // a round has started syncing
	release chan struct{} // let one round finish
	opened  chan struct{} // closed: every round passes (the test is over)
	err     error
}

func newGate() *gate {
	g := &gate{entered: make(chan struct{}), release: make(chan struct{}), opened: make(chan struct{})}
	return g
}

func (g *gate) sync() error {
	select {
	case g.entered <- struct{}{}:
	case <-g.opened:
		return nil
	}
	select {
	case g.release <- struct{}{}:
	case <-g.opened:
	}
	return g.err
}

// The embedded server stops fsyncing each write only when the engine syncs
// instead.
func TestGroupSyncReplacesServerSync(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		groupSync, syncAlways bool
		serverSyncs, engine   bool
	}{
		{groupSync: true, syncAlways: true, serverSyncs: false, engine: true},
		{groupSync: false, syncAlways: true, serverSyncs: true, engine: false},
		{groupSync: true, syncAlways: false, serverSyncs: false, engine: false},
	} {
		e, err := Start(ctx, Config{DataDir: t.TempDir(), Logger: quiet(), SyncAlways: c.syncAlways, GroupSync: c.groupSync})
		if err != nil {
			t.Fatal(err)
		}
		if got := e.srv.JetStreamConfig().SyncAlways; got != c.serverSyncs || (e.sync != nil) != c.engine {
			t.Errorf("group sync %v, sync always %v: server syncs %v, engine syncs %v; want %v, %v",
				c.groupSync, c.syncAlways, got, e.sync != nil, c.serverSyncs, c.engine)
		}
		if err := e.Sync(ctx); err != nil {
			t.Errorf("Sync: %v", err)
		}
		e.Close()
	}
}

// A store is answered only after a sync round that started after the server
// stored it, and one round answers every store that waited for it.
func TestStoreAnsweredAfterItsSync(t *testing.T) {
	g := newGate()
	e := syncEngine(t, t.TempDir(), g.sync, nil)
	t.Cleanup(func() { close(g.opened) }) // before the engine closes

	<-g.entered // a round (the ticker's) is syncing, and stays in it
	const writers = 20
	answered := make(chan error, writers)
	for i := range writers {
		go func() {
			_, err := e.Store(context.Background(), msg("t.x", fmt.Sprintf("id-%d", i), "m"))
			answered <- err
		}()
	}
	waitWaiters(t, e, writers) // all stored by the server, all waiting for the next round
	if n := streamMsgs(t, e); n != writers {
		t.Fatalf("stream holds %d messages, want %d", n, writers)
	}
	e.sync.mu.Lock()
	theirs := e.sync.next
	e.sync.mu.Unlock()

	<-g.release // the round that began before the stores ends,
	<-g.entered // and the next one starts
	select {
	case <-theirs.done:
		t.Fatal("the stores were answered by a sync that started before they were stored")
	case err := <-answered:
		t.Fatalf("a store was answered (%v) before its sync finished", err)
	default:
	}
	<-g.release
	for range writers {
		if err := <-answered; err != nil {
			t.Fatal(err)
		}
	}
}

// waitWaiters waits until n stores wait for the next sync round.
func waitWaiters(t *testing.T, e *Engine, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		e.sync.mu.Lock()
		got := 0
		if e.sync.next != nil {
			got = e.sync.next.waiters
		}
		e.sync.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d stores wait for a sync, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// A failed sync is never an OK.
func TestStoreFailsWhenSyncFails(t *testing.T) {
	e := syncEngine(t, t.TempDir(), func() error { return errors.New("disk on fire") }, nil)
	_, err := e.Store(context.Background(), msg("t.x", "", "m"))
	if err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("Store with a failing sync: %v, want the sync's error", err)
	}
}

// Optimistic concurrency through Store: of writers racing on one order's
// subjects with the same expectation, exactly one wins; a message id already
// stored is answered as a duplicate with the first sequence.
func TestStoreExpectations(t *testing.T) {
	e := syncEngine(t, t.TempDir(), nil, nil)
	ctx := context.Background()
	order := Subject("t.o1.>")
	created, err := e.Store(ctx, msg("t.o1.created", "o1.created", "{}"), ExpectLastSubjectSeq(0, order))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Store(ctx, msg("t.o1.created", "o1.created-again", "{}"), ExpectLastSubjectSeq(0, order)); !IsWrongLastSequence(err) {
		t.Fatalf("a second creation: %v, want a wrong-last-sequence error", err)
	}
	const racers = 16
	var wins, losses atomic.Int32
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			_, err := e.Store(ctx, msg("t.o1.assigned", fmt.Sprintf("o1.assigned.%d", i), fmt.Sprintf("driver %d", i)),
				ExpectLastSubjectSeq(created.Sequence, order))
			switch {
			case err == nil:
				wins.Add(1)
			case IsWrongLastSequence(err):
				losses.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 || losses.Load() != racers-1 {
		t.Fatalf("%d won, %d lost; want exactly one winner", wins.Load(), losses.Load())
	}
	dup, err := e.Store(ctx, msg("t.o1.created", "o1.created", "retry"))
	if err != nil || !dup.Duplicate || dup.Sequence != created.Sequence {
		t.Fatalf("a retried id: %+v, %v; want a duplicate of sequence %d", dup, err, created.Sequence)
	}
	if n := streamMsgs(t, e); n != 2 {
		t.Fatalf("stream holds %d messages, want 2 (created, one assignment)", n)
	}
}

// Many writers: every one acknowledged, every message stored exactly once,
// at the sequence its writer was told, and every store waited for a sync.
func TestStoreConcurrentWriters(t *testing.T) {
	var waited atomic.Int64
	e := syncEngine(t, t.TempDir(), nil, func(i SyncInfo) { waited.Add(int64(i.Waiters)) })
	const writers, each = 48, 8
	type acked struct {
		seq  uint64
		data string
	}
	results := make(chan acked, writers*each)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				data := fmt.Sprintf("w%d-%d", w, i)
				id := ""
				if i%2 == 0 {
					id = data // half with ids, half without
				}
				ack, err := e.Store(context.Background(), msg(fmt.Sprintf("t.w%d", w), id, data))
				if err != nil {
					t.Error(err)
					return
				}
				results <- acked{ack.Sequence, data}
			}
		})
	}
	wg.Wait()
	close(results)
	s := streamT(t, e)
	seen := map[uint64]string{}
	for r := range results {
		if prev, dup := seen[r.seq]; dup {
			t.Fatalf("sequence %d told to %s and %s", r.seq, prev, r.data)
		}
		seen[r.seq] = r.data
		m, err := s.GetMsg(context.Background(), r.seq)
		if err != nil || string(m.Data) != r.data {
			t.Fatalf("%s was told sequence %d: %v, %v", r.data, r.seq, m, err)
		}
	}
	if n := streamMsgs(t, e); n != writers*each || len(seen) != writers*each {
		t.Fatalf("stream holds %d messages, %d acknowledged; want %d", n, len(seen), writers*each)
	}
	if w := waited.Load(); w != writers*each {
		t.Errorf("%d stores waited for a sync, want %d", w, writers*each)
	}
}

// After Close, Store fails at once instead of waiting.
func TestStoreAfterClose(t *testing.T) {
	e := syncEngine(t, t.TempDir(), nil, nil)
	e.Close()
	done := make(chan error, 1)
	go func() {
		_, err := e.Store(context.Background(), msg("t.x", "", "late"))
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Store after Close succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Store after Close did not return")
	}
	if err := e.sync.wait(context.Background()); !errors.Is(err, errEngineClosed) {
		t.Fatalf("waiting for a sync after Close: %v", err)
	}
}

// killChildEnv names the data directory of TestStoreSurvivesKill9's child.
const killChildEnv = "CAPS_ENGINE_KILL9_CHILD_DIR"

// TestStoreSurvivesKill9 runs writers storing with group sync in a child
// process (this test binary, TestKill9Child), kills it with SIGKILL while
// they write, restarts the engine on the same data directory, and checks that
// every store the child was told succeeded is there, at the sequence it was
// told. (A kill -9 does not lose the page cache; the sync is what a power cut
// needs, and TestStoreAnsweredAfterItsSync shows no store is answered before
// it.)
func TestStoreSurvivesKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a child process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestKill9Child$", "-test.count", "1")
	cmd.Env = append(os.Environ(), killChildEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[uint64]string{}
	lines := bufio.NewScanner(out)
	killed := false
	for lines.Scan() {
		var seq uint64
		var id string
		if _, err := fmt.Sscanf(lines.Text(), "ACK %d %s", &seq, &id); err != nil {
			continue
		}
		if prev, dup := acked[seq]; dup {
			t.Errorf("sequence %d acknowledged for %s and %s", seq, prev, id)
		}
		acked[seq] = id
		if len(acked) >= 400 && !killed {
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			killed = true // keep reading what it printed before it died
		}
	}
	_ = cmd.Wait()
	if !killed {
		t.Fatalf("the child stopped after %d acknowledgements without being killed", len(acked))
	}

	e := syncEngine(t, dir, nil, nil)
	s := streamT(t, e)
	for seq, id := range acked {
		m, err := s.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatalf("acknowledged %s (sequence %d) is lost: %v", id, seq, err)
		}
		if got := m.Header.Get(nats.MsgIdHdr); got != id {
			t.Fatalf("sequence %d holds %s, but %s was acknowledged there", seq, got, id)
		}
	}
	t.Logf("%d acknowledged stores survived kill -9", len(acked))
}

// TestKill9Child is TestStoreSurvivesKill9's child: 32 writers storing until
// killed, printing each acknowledgement.
func TestKill9Child(t *testing.T) {
	dir := os.Getenv(killChildEnv)
	if dir == "" {
		t.Skip("the child of TestStoreSurvivesKill9")
	}
	e := syncEngine(t, dir, nil, nil)
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Go(func() {
			for i := 0; ; i++ {
				id := fmt.Sprintf("w%d-%d", w, i)
				ack, err := e.Store(context.Background(), msg(fmt.Sprintf("t.w%d", w), id, strings.Repeat("x", 200)))
				if err != nil {
					fmt.Fprintf(os.Stderr, "child: %v\n", err)
					return
				}
				fmt.Printf("ACK %d %s\n", ack.Sequence, id)
			}
		})
	}
	wg.Wait()
}
