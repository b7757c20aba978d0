package parcel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/protocol"
)

// DriverConfig configures a simulated driver.
type DriverConfig struct {
	ClientConfig
	// Name identifies the driver: the hub lets only the driver holding an
	// order move it on, by this name. Run each driver under its own name.
	Name string
	// PickupDelay is the time from receiving a pickup to reporting
	// in-transit, DeliverDelay from in-transit to delivered (the classroom's
	// are 1s and 3s, the caps driver command's defaults; zero here is no wait).
	PickupDelay, DeliverDelay time.Duration
	// Capacity is how many orders the driver carries at once (default 5).
	Capacity int
	// Grace bounds how long a stopping driver keeps delivering the parcels
	// already in transit (default DeliverDelay plus 5s).
	Grace time.Duration
	// FailRate is the share of delivery attempts that fail (0 to 1, default
	// 0): the driver reports failed (recipient absent) instead of delivered,
	// and returns the parcel to its store after the order's last attempt.
	FailRate float64
	// PIN, when set, gives the customer's PIN for an order that needs proof
	// of delivery. Without it such an attempt fails (no PIN given).
	PIN func(ctx context.Context, orderID string) (string, error)
	// OnDelivered, when set, learns of each delivery the hub accepted.
	OnDelivered func(orderID string, at time.Time)
}

// RunDriver runs a driver: it takes pickups from the drivers' work queue,
// waits PickupDelay, reports in-transit and prints
// "DRIVER[<name>]: picked up <orderID>", waits DeliverDelay, reports
// delivered and prints "DRIVER[<name>]: delivered <orderID>". Each pickup is
// acknowledged once the hub has accepted its in-transit, so a driver that
// vanishes before that has its pickups handed to another driver; parcels it
// had in transit wait for it, and it delivers them when it starts again under
// the same name. An event the hub refuses (the order was handed over
// meanwhile) drops the order.
//
// When ctx ends the driver stops taking pickups (those not yet in transit go
// back to the queue at once), delivers the parcels already in transit, and
// returns nil. It returns an error when the hub stays unreachable past
// Timeout or refuses it.
func RunDriver(ctx context.Context, cfg DriverConfig) error {
	cfg.defaults()
	if cfg.PickupDelay < 0 || cfg.DeliverDelay < 0 {
		return errors.New("driver delays must not be negative")
	}
	if cfg.FailRate < 0 || cfg.FailRate > 1 {
		return fmt.Errorf("fail rate %v: want a share between 0 and 1", cfg.FailRate)
	}
	if cfg.Capacity <= 0 {
		cfg.Capacity = 5
	}
	if cfg.Grace <= 0 {
		cfg.Grace = cfg.DeliverDelay + 5*time.Second
	}
	if !protocol.ValidName(cfg.Name) {
		return fmt.Errorf("driver name %q: 1-32 letters, digits, _ or -, starting with a letter or digit", cfg.Name)
	}
	// A driver restarted under its name may find its previous run still
	// holding it, until the hub notices that run's connection is gone.
	cfg.Options.RetryNameTaken = true
	s, err := dial(ctx, cfg.ClientConfig, protocol.RoleDriver, cfg.Name)
	if err != nil {
		return err
	}
	defer s.Close()

	// Pickups in hand stop when ctx ends; parcels in transit get the grace period.
	pickCtx, stopPicking := context.WithCancel(ctx)
	defer stopPicking()
	deliverCtx, stopDelivering := context.WithCancel(context.WithoutCancel(ctx))
	defer stopDelivering()
	d := &driver{
		cfg: cfg, s: s, out: &lines{w: cfg.Out},
		pickCtx: pickCtx, deliverCtx: deliverCtx,
		slots: make(chan struct{}, cfg.Capacity),
		jobs:  map[string]*job{},
	}
	// Parcels already in the van first, then new pickups.
	d.resume(ctx)
	sub, err := s.Subscribe(ctx, PickupPattern, d.onPickup,
		client.Durable(DriversDurable), client.ManualAck(), client.MaxInFlight(cfg.Capacity), client.DeliverAll())
	if err != nil {
		return fmt.Errorf("driver %s: subscribe to pickups: %w", cfg.Name, err)
	}
	cfg.Log.Info("driver ready", "name", cfg.Name, "capacity", cfg.Capacity)
	cfg.ready()

	var result error
	select {
	case <-ctx.Done():
	case <-s.lost:
		result = s.lostErr
	}
	// No new pickups; those not yet in transit go back to the queue.
	_ = sub.Unsubscribe()
	d.mu.Lock()
	d.stopping = true
	d.mu.Unlock()
	stopPicking()
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(cfg.Grace):
		cfg.Log.Warn("driver stopping with parcels still in transit", "name", cfg.Name)
		stopDelivering()
		<-done
	}
	return result
}

type driver struct {
	cfg        DriverConfig
	s          *session
	out        *lines
	pickCtx    context.Context
	deliverCtx context.Context
	slots      chan struct{}
	wg         sync.WaitGroup

	mu       sync.Mutex
	jobs     map[string]*job // orders in hand, by jobKey
	stopping bool            // no new jobs
}

// job is one order in the driver's hands. Its pickup may have been
// delivered to this driver more than once (after a reconnect): every copy
// is acknowledged once the in-transit is accepted.
type job struct {
	ev      Event
	rec     Record // the order as the hub handed it (attempts, proof of delivery)
	msgs    []*client.Msg
	transit bool // in-transit accepted
	// returning: the order failed its last attempt; the parcel goes back.
	returning bool
}

func (d *driver) onPickup(m *client.Msg) {
	// The hub checked the order when it was posted: read it once.
	var rec Record
	err := json.Unmarshal(m.Payload, &rec)
	if err == nil {
		rec.OrderID, err = NormalizeID(rec.OrderID)
	}
	if err != nil || rec.Store == "" {
		d.cfg.Log.Warn("unreadable pickup; dropping it", "err", err)
		d.ack(m)
		return
	}
	ev := Event{Parcel: rec.Parcel()}
	d.mu.Lock()
	if d.stopping {
		d.mu.Unlock()
		return // not acknowledged: the hub gives it to another driver
	}
	key := jobKey(rec.OrderID, rec.Attempt)
	if j := d.jobs[key]; j != nil {
		// A second copy of a pickup in hand (a later attempt at the same
		// order is a new job: it may come while the failed one winds up).
		if j.transit {
			d.mu.Unlock()
			d.ack(m)
			return
		}
		j.msgs = append(j.msgs, m)
		d.mu.Unlock()
		return
	}
	j := &job{ev: ev, rec: rec, msgs: []*client.Msg{m}}
	d.jobs[key] = j
	d.wg.Add(1)
	d.mu.Unlock()
	go d.run(j)
}

// resume asks the hub for the parcels this driver already carries (it
// stopped, or died, before delivering them): it delivers those in transit
// and returns those whose last attempt failed.
func (d *driver) resume(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	b, err := d.s.Request(rctx, HeldService, nil)
	if err != nil {
		d.cfg.Log.Warn("could not ask the hub for parcels left in transit", "driver", d.cfg.Name, "err", err)
		return
	}
	var orders []Order
	if err := json.Unmarshal(b, &orders); err != nil {
		d.cfg.Log.Warn("unreadable answer to "+HeldService, "err", err)
		return
	}
	for _, o := range orders {
		d.mu.Lock()
		key := jobKey(o.OrderID, o.Attempt)
		if d.stopping || d.jobs[key] != nil {
			d.mu.Unlock()
			continue
		}
		j := &job{ev: Event{Parcel: o.Parcel()}, transit: true, returning: o.Status == StatusFailed,
			rec: Record{Attempt: o.Attempt, MaxAttempts: o.MaxAttempts, RequirePIN: o.RequirePIN}}
		d.jobs[key] = j
		d.wg.Add(1)
		d.mu.Unlock()
		d.cfg.Log.Info("resuming a parcel left in transit", "driver", d.cfg.Name, "order", o.OrderID)
		go d.run(j)
	}
}

func (d *driver) run(j *job) {
	defer d.wg.Done()
	id := j.ev.OrderID
	defer func() {
		d.mu.Lock()
		delete(d.jobs, jobKey(id, j.rec.Attempt))
		d.mu.Unlock()
	}()
	// Wait for room in the van; the pickup stays ours (unacknowledged) meanwhile.
	select {
	case d.slots <- struct{}{}:
	case <-d.pickCtx.Done():
		return // not acknowledged: the hub hands it to another driver
	}
	defer func() { <-d.slots }()

	ev := Event{Parcel: j.ev.Parcel, Driver: d.cfg.Name, Time: time.Now().UTC()}
	d.mu.Lock()
	resumed := j.transit // already in transit when this driver started
	d.mu.Unlock()
	if !resumed {
		if !sleep(d.pickCtx, d.cfg.PickupDelay) {
			return
		}
		// Once started, the in-transit report is seen through even if the
		// driver is told to stop: it may already be accepted, and then the
		// parcel is ours to deliver.
		if err := d.report(d.deliverCtx, EventInTransit, ev); err != nil {
			d.settle(j, err)
			return
		}
		d.out.printf("DRIVER[%s]: picked up %s", d.cfg.Name, id)
		d.settle(j, nil)
	}

	if !sleep(d.deliverCtx, d.cfg.DeliverDelay) {
		d.cfg.Log.Warn("parcel left in transit", "driver", d.cfg.Name, "order", id)
		return
	}
	ev.Time = time.Now().UTC()
	if j.returning {
		d.finish(j, EventReturned, ev, "returned %s to %s", id, ev.Store)
		return
	}
	event, line := EventDelivered, "delivered %s"
	switch {
	case d.cfg.FailRate > 0 && rand.Float64() < d.cfg.FailRate:
		event, line = EventFailed, "failed %s (recipient absent)"
		ev.Reason = "recipient-absent"
	case j.rec.RequirePIN:
		pin, err := d.pin(id)
		if err != nil {
			event, line = EventFailed, "failed %s (no PIN)"
			ev.Reason, ev.Detail = "other", "the customer gave no PIN"
		}
		ev.PIN = pin
	}
	if !d.finish(j, event, ev, line, id) || event != EventFailed {
		return
	}
	if j.rec.Attempt >= j.rec.MaxAttempts && j.rec.MaxAttempts > 0 {
		// The last attempt failed: the parcel goes back to its store.
		if !sleep(d.deliverCtx, d.cfg.DeliverDelay) {
			return
		}
		ev.Time, ev.Reason, ev.Detail, ev.PIN = time.Now().UTC(), "", "", ""
		d.finish(j, EventReturned, ev, "returned %s to %s", id, ev.Store)
	}
}

// finish reports the end of an attempt (delivered, failed, returned) and
// prints its line; it reports whether the hub accepted it.
func (d *driver) finish(j *job, event string, ev Event, format string, args ...any) bool {
	id := j.ev.OrderID
	if err := d.report(d.deliverCtx, event, ev); err != nil {
		if d.deliverCtx.Err() == nil {
			d.cfg.Log.Warn(event+" refused; dropping the order", "driver", d.cfg.Name, "order", id, "err", err)
		}
		return false
	}
	d.out.printf("DRIVER[%s]: "+format, append([]any{d.cfg.Name}, args...)...)
	if event == EventDelivered && d.cfg.OnDelivered != nil {
		d.cfg.OnDelivered(id, time.Now())
	}
	return true
}

// pin asks for an order's PIN.
func (d *driver) pin(id string) (string, error) {
	if d.cfg.PIN == nil {
		return "", errors.New("no PIN source")
	}
	ctx, cancel := context.WithTimeout(d.deliverCtx, d.cfg.Timeout)
	defer cancel()
	return d.cfg.PIN(ctx, id)
}

// report publishes one of the driver's events.
func (d *driver) report(ctx context.Context, event string, ev Event) error {
	return d.s.publish(ctx, Topic(ev.Store, ev.OrderID, event, d.cfg.Name), marshalEvent(ev), msgID(ev.OrderID, event), d.cfg.Timeout)
}

// settle acknowledges every copy of j's pickup once its in-transit was
// accepted, or once it was refused (the order is not ours to carry: handed
// over to another driver, or already gone). When the in-transit could not
// be sent at all (stopping, hub unreachable) the pickup is left
// unacknowledged, for the hub to give to another driver.
func (d *driver) settle(j *job, err error) {
	if err != nil && !permanent(err) {
		if d.pickCtx.Err() == nil {
			d.cfg.Log.Warn("could not report in-transit; leaving the order to another driver", "driver", d.cfg.Name, "order", j.ev.OrderID, "err", err)
		}
		return
	}
	if err != nil {
		d.cfg.Log.Warn("pickup refused; dropping the order", "driver", d.cfg.Name, "order", j.ev.OrderID, "err", err)
	}
	d.mu.Lock()
	j.transit = true
	msgs := j.msgs
	j.msgs = nil
	d.mu.Unlock()
	for _, m := range msgs {
		d.ack(m)
	}
}

// ack acknowledges a pickup. A failure is harmless: the order's state is in
// the hub, and a redelivered copy is refused or recognised.
func (d *driver) ack(m *client.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Ack(ctx); err != nil && !errors.Is(err, client.ErrClosed) {
		d.cfg.Log.Debug("pickup ack failed", "driver", d.cfg.Name, "seq", m.Seq, "err", err)
	}
}

// jobKey names a job: one attempt at an order.
func jobKey(orderID string, attempt int) string { return orderID + "#" + strconv.Itoa(attempt) }

// sleep waits d or until ctx ends, reporting whether the full time passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
