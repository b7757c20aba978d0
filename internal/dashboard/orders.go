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

	"github.com/caps-hub/caps/internal/parcel"
)

// OrderView is an order as the dashboard shows it: the dispatcher's record
// (without the message ids it keeps to recognise retries) and the revision
// of that record in the orders bucket.
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

// inFlight reports whether a driver holds the order and has not delivered it.
func (v *OrderView) inFlight() bool {
	return v.Driver != "" && (v.Status == parcel.StatusAssigned || v.Status == parcel.StatusInTransit)
}

// orderIndex mirrors the dispatcher's orders bucket in memory, kept current
// by a watcher on the bucket, so that snapshots, driver loads and live
// updates cost no engine round trip per page. Every hub keeps its own (the
// bucket is shared, so they agree) and serves its own pages.
//
// It holds at most max orders: when it grows past that it forgets the
// delivered orders that changed longest ago first, then the oldest others,
// so the orders in flight (and the drivers' loads) stay exact as long as
// fewer than max are in flight.
type orderIndex struct {
	max int
	log *slog.Logger

	mu     sync.RWMutex
	byID   map[string]*OrderView
	loaded bool
	seq    uint64 // of the latest change
	// removed remembers the latest removals from the bucket (by seq), so a
	// page can be told to drop them; floor is the oldest seq from which the
	// changes can still be told (older removals have been forgotten).
	removed []removal
	floor   uint64
}

type removal struct {
	id, store string
	seq       uint64
}

// maxRemoved bounds the removals remembered for pages.
const maxRemoved = 1024

func newOrderIndex(max int, log *slog.Logger) *orderIndex {
	return &orderIndex{max: max, log: log, byID: map[string]*OrderView{}}
}

// run watches the bucket until ctx ends. The bucket belongs to the parcel
// dispatcher; run waits for it to exist, and starts over (reloading every
// order) if the watch breaks.
func (x *orderIndex) run(ctx context.Context, js jetstream.JetStream, retry time.Duration) {
	warned := false
	for ctx.Err() == nil {
		kv, err := js.KeyValue(ctx, parcel.BucketName)
		if err == nil {
			err = x.watch(ctx, kv)
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			if !warned {
				x.log.Info("dashboard: no orders bucket yet (is the parcel dispatcher running?); waiting for it")
				warned = true
			}
		} else if err != nil {
			x.log.Warn("dashboard: watching orders; starting over", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}

// watch loads every order, then applies changes until ctx ends or the
// watcher stops.
func (x *orderIndex) watch(ctx context.Context, kv jetstream.KeyValue) error {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("orders watcher closed")
			}
			if e == nil { // every existing order has been delivered
				x.mu.Lock()
				x.loaded = true
				x.mu.Unlock()
				continue
			}
			x.apply(e)
		}
	}
}

// apply records one bucket entry.
func (x *orderIndex) apply(e jetstream.KeyValueEntry) {
	deleted := e.Operation() == jetstream.KeyValueDelete || e.Operation() == jetstream.KeyValuePurge
	v := &OrderView{Rev: e.Revision()}
	if !deleted {
		if err := json.Unmarshal(e.Value(), &v.Order); err != nil {
			x.log.Warn("dashboard: unreadable order record", "key", e.Key(), "err", err)
			return
		}
		for i := range v.Timeline {
			v.Timeline[i].Key = "" // message ids stay in the hub
		}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	old := x.byID[e.Key()]
	if old != nil && old.Rev >= v.Rev {
		return
	}
	if deleted {
		if old == nil {
			return // never seen: no page shows it
		}
		delete(x.byID, e.Key())
		x.seq++
		x.removed = append(x.removed, removal{id: e.Key(), store: old.Store, seq: x.seq})
		if len(x.removed) > maxRemoved {
			x.floor = x.removed[0].seq
			x.removed = append(x.removed[:0], x.removed[1:]...)
		}
		return
	}
	x.seq++
	v.seq = x.seq
	x.byID[e.Key()] = v
	// Trim in batches, not on every insert: sorting is O(n log n).
	if len(x.byID) > x.max+x.max/8 {
		x.trimLocked()
	}
}

// trimLocked forgets orders until max are left: delivered ones first,
// least recently changed first.
func (x *orderIndex) trimLocked() {
	all := make([]*OrderView, 0, len(x.byID))
	for _, v := range x.byID {
		all = append(all, v)
	}
	slices.SortFunc(all, func(a, b *OrderView) int {
		ad, bd := a.Status == parcel.StatusDelivered, b.Status == parcel.StatusDelivered
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

// Loaded reports whether the initial load of the bucket has finished.
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
// and those removed, with the seq to ask from next time. ok is false when
// since is too old to answer (removals forgotten) or more than limit
// changed: the page must then load a fresh snapshot.
func (x *orderIndex) changes(since uint64, limit int, visible func(store string) bool) (changed []*OrderView, removed []string, next uint64, ok bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if since < x.floor || since > x.seq {
		return nil, nil, x.seq, false
	}
	for _, v := range x.byID {
		if v.seq > since && visible(v.Store) {
			if len(changed) == limit {
				return nil, nil, x.seq, false
			}
			changed = append(changed, v)
		}
	}
	for _, r := range x.removed {
		if r.seq > since && visible(r.store) {
			removed = append(removed, r.id)
		}
	}
	return changed, removed, x.seq, true
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
