package parcel

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/engine"
)

// The sweeper keeps the parcel stream to its rules over time, on every hub
// (what one hub does, another finds done: each step is conditional or
// idempotent):
//
//   - a failed order with attempts left whose new offer was not stored (its
//     hub died in between) is offered again;
//   - a finished order (delivered, returned, cancelled) is removed once it
//     finished more than Retention ago — but a delivered order whose
//     vendor has a durable mailbox that has not yet acknowledged the
//     notification is kept, so that an offline vendor is still told;
//   - the stream's size is measured, with what the orders in flight will
//     still store (at every sweep, and each order this hub accepts counted
//     at once at its whole lifecycle's size): past fullRatio of MaxBytes
//     the dispatcher refuses new orders (store_full).
//
// Orders in flight are never removed, however old: the retention rule is
// that no accepted, unfinished order is ever discarded to make room.

func (d *Dispatcher) sweep(ctx context.Context) {
	first := time.NewTimer(time.Second)
	defer first.Stop()
	sweeps := time.NewTicker(d.opts.SweepEvery)
	defer sweeps.Stop()
	d.checkUsage(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-first.C:
		case <-sweeps.C:
		}
		d.sweepOnce(ctx)
		// Measured with the sweeps, not more often: counting the orders in
		// flight makes a consumer, which on a cluster is a meta-layer
		// operation; between two measurements each order this hub accepts
		// is counted at its whole lifecycle's size.
		d.checkUsage(ctx)
	}
}

// SweepNow runs one sweep (for tests and tools in the hub's process).
func (d *Dispatcher) SweepNow(ctx context.Context) {
	d.sweepOnce(ctx)
	d.checkUsage(ctx)
}

func (d *Dispatcher) sweepOnce(ctx context.Context) {
	log := d.host.Logger()
	if n, err := d.offerFailed(ctx); err != nil && ctx.Err() == nil {
		log.Warn("parcel sweeper: offering failed orders again", "err", err)
	} else if n > 0 {
		log.Info("parcel sweeper: offered failed orders again", "orders", n)
	}
	if n, err := d.removeFinished(ctx, time.Now().Add(-d.opts.Retention)); err != nil && ctx.Err() == nil {
		log.Warn("parcel sweeper: removing finished orders", "err", err)
	} else if n > 0 {
		log.Info("parcel sweeper: removed finished orders past their retention", "orders", n, "retention", d.opts.Retention)
	}
}

// offerFailed offers again the failed orders with attempts left.
func (d *Dispatcher) offerFailed(ctx context.Context) (int, error) {
	failed, err := d.lastPerOrder(ctx, Topic("*", "*", EventFailed, "*"), jetstream.DeliverLastPerSubjectPolicy)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, f := range failed {
		if f.Attempt >= f.MaxAttempts {
			continue
		}
		cur, seq, err := d.store.last(ctx, f.OrderID, f.Store, true)
		if err != nil || cur.Status != StatusFailed {
			continue
		}
		if next := reoffer(cur, d.host.HubName(), time.Now()); next != nil {
			if _, _, err := d.store.write(ctx, next, seq); err == nil {
				d.recorded(cur, next)
				n++
			}
		}
	}
	return n, nil
}

// removeFinished removes the orders that finished before cutoff.
func (d *Dispatcher) removeFinished(ctx context.Context, cutoff time.Time) (int, error) {
	var done []*Record
	err := scanStream(ctx, d.js, []string{
		Topic("*", "*", EventDelivered, "*"), Topic("*", "*", EventReturned, "*"), Topic("*", "*", EventCancelled, ""),
	}, jetstream.DeliverAllPolicy, func(m jetstream.Msg, meta *jetstream.MsgMetadata) bool {
		if !meta.Timestamp.Before(cutoff) {
			return false // in time order: the rest are younger
		}
		if r, err := decodeRecord(m.Data(), m.Headers()); err == nil {
			r.seq = meta.Sequence.Stream
			done = append(done, r)
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	told := map[string]uint64{} // store → its mailbox's ack floor (0: keep nothing back)
	n := 0
	for _, r := range done {
		if r.Event == EventDelivered && !d.vendorTold(ctx, told, r) {
			continue
		}
		cur, _, err := d.store.last(ctx, r.OrderID, r.Store, true)
		if err != nil || !cur.Status.Terminal() || !cur.Time.Before(cutoff) {
			continue
		}
		if err := d.store.stream.Purge(ctx, jetstream.WithPurgeSubject(engine.Subject(orderPattern(r.Store, r.OrderID)))); err != nil {
			return n, err
		}
		d.store.cache.drop(r.OrderID)
		if err := d.dropSecrets(ctx, r.OrderID); err != nil {
			d.host.Logger().Warn("parcel sweeper: removing an order's secrets (the bucket's TTL will)", "order", r.OrderID, "err", err)
		}
		n++
	}
	return n, nil
}

// vendorTold reports whether r's delivery notification is acknowledged by
// its store's durable mailbox, or there is no such mailbox to tell.
func (d *Dispatcher) vendorTold(ctx context.Context, floors map[string]uint64, r *Record) bool {
	floor, ok := floors[r.Store]
	if !ok {
		c, err := d.js.Consumer(ctx, StreamName, hub.ConsumerName(VendorDurable(r.Store), MailboxPattern(r.Store)))
		switch {
		case errors.Is(err, jetstream.ErrConsumerNotFound):
			floor = ^uint64(0) // nobody to tell
		case err != nil:
			floor = 0 // cannot tell: keep it for now
		default:
			floor = c.CachedInfo().AckFloor.Stream
		}
		floors[r.Store] = floor
	}
	return r.seq <= floor
}

// checkUsage measures the room the orders take, and says when new orders
// start or stop being refused.
func (d *Dispatcher) checkUsage(ctx context.Context) {
	stored, committed, err := d.store.measure(ctx)
	if err != nil {
		if ctx.Err() == nil {
			d.host.Logger().Debug("measure the order store", "err", err)
		}
		return
	}
	d.metrics.usage(stored, committed)
	full := d.nearlyFull()
	if was := d.full.Swap(full); was != full {
		if full {
			d.host.Logger().Warn("the order store is nearly full: new orders are refused until finished orders expire (--parcel-retention) or the limit is raised (--parcel-max-bytes)",
				"stored_bytes", stored, "committed_bytes", committed, "max_bytes", d.opts.MaxBytes)
		} else {
			d.host.Logger().Info("the order store has room again: new orders are accepted", "stored_bytes", stored, "committed_bytes", committed, "max_bytes", d.opts.MaxBytes)
		}
	}
}
