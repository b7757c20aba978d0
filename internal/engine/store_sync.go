package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Group sync: how the embedded engine makes stored publishes durable.
//
// A single-replica file stream with nats-server's SyncAlways stores plain
// publishes one at a time, each with an fsync of its own, however many
// publishers wait (the stream's one goroutine handles them in turn), so a
// stream is capped at the disk's fsync rate whatever the concurrency.
// nats-server 2.15's atomic batches do share one fsync, but stage each batch
// in a file store of its own first, which costs what 10–30 plain publishes
// cost (docs/PERFORMANCE.md, "Group commit").
//
// So with group sync the embedded server runs without SyncAlways: a single-
// replica stream still writes each message to the operating system before
// acknowledging it (kill -9 loses nothing), and the engine makes it durable
// itself: Store waits, after the server's acknowledgement, for a sync round
// (syncfs(2) of the data directory's file system) that STARTED after that
// acknowledgement, and only then answers. One round serves every store that
// was acknowledged while the previous round ran, so N concurrent writers
// share one sync. A round covers everything the server wrote before it —
// message blocks, new block files and directories, consumer positions,
// buckets — and a round also runs every backgroundSync, so what no client
// waits for (a consumer's acknowledged position) is on disk soon after too.

// backgroundSync is how often a sync round runs with no store waiting: it
// bounds how long a consumer position or other bookkeeping written without a
// Store stays in the page cache (with nats-server's SyncAlways a consumer's
// position was written, synced, up to 100 ms after the acknowledgement).
const backgroundSync = 100 * time.Millisecond

// StoreOption adjusts one Store.
type StoreOption func(*storeOpts)

type storeOpts struct {
	expect    bool
	expectSeq uint64
	filter    string
}

// ExpectLastSubjectSeq makes the store succeed only if the last message
// stored on the subjects matching filter has sequence seq (0: there is none):
// JetStream's optimistic concurrency (Nats-Expected-Last-Subject-Sequence,
// and Nats-Expected-Last-Subject-Sequence-Subject when filter is not the
// message's own subject). filter may hold wildcards; "" means the message's
// subject. A mismatch fails with a *jetstream.APIError of ErrorCode 10071
// (see IsWrongLastSequence) and stores nothing.
func ExpectLastSubjectSeq(seq uint64, filter string) StoreOption {
	return func(o *storeOpts) {
		o.expect, o.expectSeq, o.filter = true, seq, filter
	}
}

// errCodeWrongLastSeq: an expected last (subject) sequence did not match
// (nats-server's server/errors.json, JSStreamWrongLastSequenceErrF).
const errCodeWrongLastSeq = 10071

// IsWrongLastSequence reports whether err is a store refused because the
// expected last sequence did not match (another writer got there first).
func IsWrongLastSequence(err error) bool {
	return apiErrorCode(err) == errCodeWrongLastSeq
}

// Store stores m in its stream and returns the engine's acknowledgement once
// m is as durable as the engine's policy says: with SyncAlways, on disk.
// Concurrent Stores share a sync (see above). Store sets m's headers for its
// options.
//
// A message with a message id (Nats-Msg-Id) that the stream already holds is
// not stored again: the acknowledgement says Duplicate and carries the first
// one's sequence (which is durable, too, when Store returns). Like
// PublishStored, Store sends a keyed message again when an answer is lost.
func (e *Engine) Store(ctx context.Context, m *nats.Msg, opts ...StoreOption) (*jetstream.PubAck, error) {
	if len(opts) > 0 {
		applyStoreOpts(m, opts) // apart: its options escape, and most stores have none
	}
	ack, err := e.PublishStored(ctx, m)
	if err != nil || e.sync == nil {
		return ack, err
	}
	if err := e.sync.wait(ctx); err != nil {
		return nil, fmt.Errorf("store on %s: %w", m.Subject, err)
	}
	return ack, nil
}

func applyStoreOpts(m *nats.Msg, opts []StoreOption) {
	var o storeOpts
	for _, opt := range opts {
		opt(&o)
	}
	if o.expect {
		if m.Header == nil {
			m.Header = nats.Header{}
		}
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(o.expectSeq, 10))
		if o.filter != "" && o.filter != m.Subject {
			m.Header.Set(jetstream.ExpectedLastSubjSeqSubjHeader, o.filter)
		}
	}
}

// Sync returns once everything the engine acknowledged before the call is
// on disk: for writes made without Store (a bucket update) whose durability
// a caller is about to promise. It returns at once when the engine has no
// group sync (the server syncs each write itself, or replication is the
// durability).
func (e *Engine) Sync(ctx context.Context) error {
	if e.sync == nil {
		return nil
	}
	return e.sync.wait(ctx)
}

// WaitDurable returns once a message the stream stored at stored (its
// JetStream timestamp, from this server's clock) is on disk: at once when a
// sync that started later has finished, else after the next one. Durable
// deliveries wait for it, so that no subscriber is handed a message a power
// cut could still take back (nats-server with SyncAlways hands consumers
// only synced messages). It returns at once without group sync.
func (e *Engine) WaitDurable(ctx context.Context, stored time.Time) error {
	if e.sync == nil {
		return nil
	}
	return e.sync.waitAfter(ctx, stored)
}

// SyncInfo describes one sync round, for metrics.
type SyncInfo struct {
	Waiters int           // stores (and Syncs) the round answered; 0 for a background round
	Took    time.Duration // the sync itself
	Err     error
}

// groupSync runs sync rounds: one at a time, each answering every waiter that
// joined before it started.
type groupSync struct {
	syncFS func() error // syncfs of the data directory's file system; tests replace it
	onSync func(SyncInfo)

	mu     sync.Mutex
	next   *syncRound // the round that starts next: waiters join it
	closed bool
	// synced is when the last successful round started: everything written
	// before then is on disk.
	synced time.Time

	kick     chan struct{} // a waiter joined
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

type syncRound struct {
	waiters int
	err     error
	done    chan struct{} // closed when the round has synced
}

var errEngineClosed = errors.New("engine closed")

func newGroupSync(syncFS func() error, onSync func(SyncInfo)) *groupSync {
	g := &groupSync{
		syncFS: syncFS, onSync: onSync,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	go g.run()
	return g
}

// waitAfter returns once everything written at t is on disk.
func (g *groupSync) waitAfter(ctx context.Context, t time.Time) error {
	g.mu.Lock()
	done := g.synced.After(t)
	g.mu.Unlock()
	if done {
		return nil
	}
	return g.wait(ctx)
}

// wait joins the next round and waits for it.
func (g *groupSync) wait(ctx context.Context) error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return errEngineClosed
	}
	r := g.next
	if r == nil {
		r = &syncRound{done: make(chan struct{})}
		g.next = r
	}
	r.waiters++
	g.mu.Unlock()
	select {
	case g.kick <- struct{}{}:
	default: // a kick is pending already
	}
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		// The message is stored; whether it reached the disk is not known.
		return fmt.Errorf("waiting for the sync to disk: %w", ctx.Err())
	}
}

func (g *groupSync) run() {
	defer close(g.done)
	t := time.NewTicker(backgroundSync)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			g.round(true) // answer whoever joined before Close
			return
		case <-g.kick:
		case <-t.C:
		}
		g.round(false)
	}
}

// round takes the waiting round (if any) and syncs.
func (g *groupSync) round(last bool) {
	g.mu.Lock()
	r := g.next
	g.next = nil
	g.closed = g.closed || last
	g.mu.Unlock()
	start := time.Now()
	err := g.syncFS()
	info := SyncInfo{Took: time.Since(start), Err: err}
	if err != nil {
		err = fmt.Errorf("sync to disk: %w", err)
	} else {
		g.mu.Lock()
		g.synced = start
		g.mu.Unlock()
	}
	if r != nil {
		info.Waiters = r.waiters
		r.err = err
		close(r.done)
	}
	if g.onSync != nil {
		g.onSync(info)
	}
}

// close runs a last round for the waiters and stops; later waits fail.
func (g *groupSync) close() {
	g.stopOnce.Do(func() { close(g.stop) })
	<-g.done
}

// dirSyncer returns a function that syncs the file system holding dir, and
// closes what it opened once the engine closes.
func dirSyncer(dir string) (syncFS func() error, closeFn func() error, err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("open data dir for syncing: %w", err)
	}
	return func() error { return syncFileSystem(f) }, f.Close, nil
}
