package dashboard

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/internal/parcel"
)

// OrderView is an order as the dashboard shows it: its state and timeline,
// folded from its events, and the stream sequence of its latest event.
type OrderView struct {
	parcel.Order
	Rev uint64 `json:"rev"`
	// seq orders the changes this hub's index has seen, for pages that ask
	// for the changes since their last look.
	seq uint64
}

// changed returns the time of the order's latest step.
func (v *OrderView) changed() time.Time {
	if n := len(v.Timeline); n > 0 {
		return v.Timeline[n-1].Time
	}
	return time.Time{}
}

// inFlight reports whether a driver holds the order and has not finished it.
func (v *OrderView) inFlight() bool {
	return v.Driver != "" && !v.Status.Terminal()
}

// orderIndex folds the parcel stream's order events into the orders they
// make, in memory, kept current by an ordered consumer on the stream, so
// that snapshots, driver loads and live updates cost no engine round trip
// per page. Every hub keeps its own (the stream is shared, so they agree)
// and serves its own pages.
//
// It holds at most max orders: when it grows past that it forgets the
// finished orders that changed longest ago first, then the oldest others,
// so the orders in flight (and the drivers' loads) stay exact as long as
// fewer than max are in flight.
type orderIndex struct {
	max int
	log *slog.Logger

	mu     sync.RWMutex
	byID   map[string]*OrderView
	loaded bool
	seq    uint64 // of the latest change
}

func newOrderIndex(max int, log *slog.Logger) *orderIndex {
	return &orderIndex{max: max, log: log, byID: map[string]*OrderView{}}
}

// run follows the parcel stream until ctx ends. The stream belongs to the
// parcel dispatcher; run waits for it to exist, and starts over (reloading
// every order) if following it breaks.
func (x *orderIndex) run(ctx context.Context, js jetstream.JetStream, retry time.Duration) {
	warned := false
	for ctx.Err() == nil {
		err := x.follow(ctx, js)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			if !warned {
				x.log.Info("dashboard: no parcel stream yet (is the parcel dispatcher running?); waiting for it")
				warned = true
			}
		} else if err != nil {
			x.log.Warn("dashboard: following the orders; starting over", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}

// follow reads every order event from the start of the stream, then the
// new ones as they come, until ctx ends or the consumer fails.
func (x *orderIndex) follow(ctx context.Context, js jetstream.JetStream) error {
	cons, err := js.OrderedConsumer(ctx, parcel.StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{engine.Subject("parcel.*.*.>")}, // order events, not the layout before v2
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return err
	}
	// Starting over keeps what is known: events already folded in are
	// skipped (by their sequence), so pages' cursors stay good.
	x.mu.Lock()
	x.loaded = x.loaded || cons.CachedInfo().NumPending == 0
	x.mu.Unlock()
	failed := make(chan error, 1)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		meta, err := m.Metadata()
		if err != nil {
			return
		}
		var r parcel.Record
		if err := json.Unmarshal(m.Data(), &r); err != nil || r.OrderID == "" {
			x.log.Warn("dashboard: unreadable order event", "subject", m.Subject(), "err", err)
		} else {
			x.apply(&r, meta.Sequence.Stream)
		}
		if meta.NumPending == 0 {
			x.mu.Lock()
			x.loaded = true
			x.mu.Unlock()
		}
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrStreamNotFound) {
			select {
			case failed <- err:
			default:
			}
		}
	}))
	if err != nil {
		return err
	}
	defer cc.Stop()
	select {
	case <-ctx.Done():
		return nil
	case err := <-failed:
		return err
	}
}

// apply folds one order event into its order.
func (x *orderIndex) apply(r *parcel.Record, seq uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	old := x.byID[r.OrderID]
	if old != nil && old.Rev >= seq {
		return
	}
	// A new view, not the old one changed: pages encode the views recent
	// and friends returned after the lock is released (changed in place,
	// the race detector caught Apply writing an order a page was encoding).
	v := &OrderView{}
	if old != nil {
		*v = *old
		v.Timeline = slices.Clip(slices.Clone(old.Timeline))
	}
	x.byID[r.OrderID] = v
	v.Apply(r)
	v.Rev = seq
	x.seq++
	v.seq = x.seq
	// Trim in batches, not on every insert: sorting is O(n log n).
	if len(x.byID) > x.max+x.max/8 {
		x.trimLocked()
	}
}

// trimLocked forgets orders until max are left: finished ones first,
// least recently changed first.
func (x *orderIndex) trimLocked() {
	all := make([]*OrderView, 0, len(x.byID))
	for _, v := range x.byID {
		all = append(all, v)
	}
	slices.SortFunc(all, func(a, b *OrderView) int {
		ad, bd := a.Status.Terminal(), b.Status.Terminal()
		if ad != bd {
			if ad {
				return -1
			}
			return 1
		}
		return a.changed().Compare(b.changed())
	})
	for _, v := range all[:len(all)-x.max] {
		delete(x.byID, v.OrderID)
	}
}

// Loaded reports whether the initial read of the stream has finished.
func (x *orderIndex) Loaded() bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.loaded
}

// recent returns up to limit orders that visible accepts, most recently
// changed first, and the seq of the latest change they include.
func (x *orderIndex) recent(limit int, visible func(store string) bool) ([]*OrderView, uint64) {
	x.mu.RLock()
	out := make([]*OrderView, 0, min(limit, len(x.byID)))
	for _, v := range x.byID {
		if visible(v.Store) {
			out = append(out, v)
		}
	}
	seq := x.seq
	x.mu.RUnlock()
	slices.SortFunc(out, func(a, b *OrderView) int {
		return cmp.Or(b.changed().Compare(a.changed()), cmp.Compare(a.OrderID, b.OrderID))
	})
	if len(out) > limit {
		out = out[:limit]
	}
	return out, seq
}

// changes returns the orders visible accepts that changed after seq since,
// with the seq to ask from next time. ok is false when since is ahead of
// the index or more than limit changed: the page must then load a fresh
// snapshot.
func (x *orderIndex) changes(since uint64, limit int, visible func(store string) bool) (changed []*OrderView, next uint64, ok bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if since > x.seq {
		return nil, x.seq, false
	}
	for _, v := range x.byID {
		if v.seq > since && visible(v.Store) {
			if len(changed) == limit {
				return nil, x.seq, false
			}
			changed = append(changed, v)
		}
	}
	return changed, x.seq, true
}

// loads returns how many orders each driver holds and has not delivered.
func (x *orderIndex) loads() map[string]int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := map[string]int{}
	for _, v := range x.byID {
		if v.inFlight() {
			out[v.Driver]++
		}
	}
	return out
}
