package parcel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/protocol"
)

// VendorConfig configures a simulated store.
type VendorConfig struct {
	ClientConfig
	// Store is the store's name; the vendor connects under it.
	Store string
	// Interval between orders (default 5s). The first is posted at once.
	Interval time.Duration
	// Orders to post; 0 posts forever. With N > 0 RunVendor returns nil once
	// all N are confirmed delivered.
	Orders int
	// Faker makes the orders (default: a randomly seeded one).
	Faker *Faker
	// PINEvery asks for proof of delivery (requirePIN) on every PINEvery-th
	// order (0: none).
	PINEvery int
	// OnPosted and OnThanked, when set, learn of each order stored by the
	// hub and each delivery notification printed (the demo keeps score).
	OnPosted  func(p Parcel, at time.Time)
	OnThanked func(orderID string, at time.Time)
}

// RunVendor runs a vendor: it posts an order every Interval and prints
// "VENDOR[<store>]: Thank you for delivering <orderID>" once per delivered
// order of its store, including those delivered while it was offline. It
// returns nil when all Orders are confirmed delivered, or when ctx ends if
// it posts forever (Orders 0); an error wrapping ErrInterrupted when ctx
// ends before all Orders are delivered, ErrUnreachable when the hub stays
// unreachable past Timeout, or the hub's refusal.
func RunVendor(ctx context.Context, cfg VendorConfig) error {
	cfg.defaults()
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.Faker == nil {
		cfg.Faker = NewFaker(0)
	}
	if !protocol.ValidName(cfg.Store) {
		return fmt.Errorf("store %q: 1-32 letters, digits, _ or -, starting with a letter or digit", cfg.Store)
	}
	v := &vendor{
		cfg:     cfg,
		out:     &lines{w: cfg.Out},
		mine:    map[string]bool{},
		seen:    newSeenSet(100_000),
		allDone: make(chan struct{}),
	}
	s, err := dial(ctx, cfg.ClientConfig, protocol.RoleVendor, cfg.Store)
	if err != nil {
		return err
	}
	defer s.Close()
	v.s = s

	// Subscribe before posting, so no notification can be missed. The
	// durable keeps what arrives while this vendor is away; a brand-new one
	// starts with everything stored for the store.
	if _, err := s.Subscribe(ctx, MailboxPattern(cfg.Store), v.onDelivered,
		client.Durable(VendorDurable(cfg.Store)), client.ManualAck(), client.DeliverAll()); err != nil {
		return fmt.Errorf("vendor %s: subscribe to deliveries: %w", cfg.Store, err)
	}
	cfg.Log.Info("vendor ready", "store", cfg.Store, "interval", cfg.Interval, "orders", cfg.Orders)
	cfg.ready()

	posted := make(chan error, 1)
	go func() { posted <- v.post(ctx) }()
	select {
	case <-ctx.Done():
		return v.interrupted()
	case <-s.lost:
		return s.lostErr
	case err := <-posted:
		if err != nil {
			return err
		}
	}
	if cfg.Orders == 0 {
		return nil
	}
	select {
	case <-ctx.Done():
		return v.interrupted()
	case <-s.lost:
		return s.lostErr
	case <-v.allDone:
		cfg.Log.Info("vendor done: every order delivered", "store", cfg.Store, "orders", cfg.Orders)
		return nil
	}
}

// ErrInterrupted is returned by a vendor with a number of orders to see
// through that was stopped before all were delivered.
var ErrInterrupted = errors.New("interrupted")

// interrupted is the result of a vendor stopped by its context: fine for
// one posting forever, an error for one that was to see N orders delivered.
func (v *vendor) interrupted() error {
	if v.cfg.Orders == 0 {
		return nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	return fmt.Errorf("vendor %s: %w with %d of %d orders posted and %d confirmed delivered",
		v.cfg.Store, ErrInterrupted, v.posted, v.cfg.Orders, v.confirmed)
}

type vendor struct {
	cfg VendorConfig
	s   *session
	out *lines

	mu        sync.Mutex
	mine      map[string]bool // posted by this run and not yet confirmed
	posted    int
	confirmed int
	seen      *seenSet // printed already (a redelivery is not printed again)
	allDone   chan struct{}
	closed    bool
}

// post posts the orders, one per interval; it returns when all are posted
// (never, with Orders 0) or ctx ends.
func (v *vendor) post(ctx context.Context) error {
	t := time.NewTicker(v.cfg.Interval)
	defer t.Stop()
	for i := 0; v.cfg.Orders == 0 || i < v.cfg.Orders; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
		if err := v.postOne(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
	return nil
}

func (v *vendor) postOne(ctx context.Context) error {
	p := v.cfg.Faker.Order(v.cfg.Store)
	v.mu.Lock()
	n := v.posted + 1
	v.mu.Unlock()
	needPIN := v.cfg.PINEvery > 0 && n%v.cfg.PINEvery == 0
	// Known as ours before it is posted: its notification may come back
	// before the OK does.
	v.mu.Lock()
	v.mine[p.OrderID] = true
	v.mu.Unlock()
	payload := marshalEvent(Event{Parcel: p, RequirePIN: needPIN, Time: time.Now().UTC()})
	err := v.s.publish(ctx, Topic(v.cfg.Store, p.OrderID, EventPickup, ""), payload, msgID(p.OrderID, EventPickup), v.cfg.Timeout)
	if err != nil {
		v.mu.Lock()
		delete(v.mine, p.OrderID)
		v.mu.Unlock()
		if permanent(err) {
			return fmt.Errorf("vendor %s: the hub refused order %s: %w", v.cfg.Store, p.OrderID, err)
		}
		return fmt.Errorf("vendor %s: post order %s: %w", v.cfg.Store, p.OrderID, err)
	}
	v.cfg.Log.Debug("order posted", "store", v.cfg.Store, "order", p.OrderID, "customer", p.Customer)
	if v.cfg.OnPosted != nil {
		v.cfg.OnPosted(p, time.Now())
	}
	v.mu.Lock()
	v.posted++
	v.checkDoneLocked()
	v.mu.Unlock()
	return nil
}

// onDelivered prints the thank-you once per order, then acknowledges. An
// acknowledgement whose answer is lost (the connection dropped) may or may
// not have been stored: if not, the notification comes again and is
// acknowledged without a second thank-you. Either way the order counts as
// confirmed once the vendor has printed it and tried to acknowledge it.
func (v *vendor) onDelivered(m *client.Msg) {
	var ev Record
	if err := json.Unmarshal(m.Payload, &ev); err != nil || ev.OrderID == "" {
		v.cfg.Log.Warn("unreadable delivery notification; dropping it", "topic", m.Topic, "err", err)
		_ = m.Ack(context.Background())
		return
	}
	id := ev.OrderID
	v.mu.Lock()
	first := v.seen.add(id)
	v.mu.Unlock()
	if first {
		v.out.printf("VENDOR[%s]: Thank you for delivering %s", v.cfg.Store, id)
		if v.cfg.OnThanked != nil {
			v.cfg.OnThanked(id, time.Now())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), v.cfg.Timeout)
	defer cancel()
	if err := m.Ack(ctx); err != nil && !errors.Is(err, client.ErrClosed) {
		v.cfg.Log.Debug("ack of delivery notification not confirmed; if it comes again it is not printed again", "order", id, "err", err)
	}
	v.mu.Lock()
	if v.mine[id] {
		delete(v.mine, id)
		v.confirmed++
		v.checkDoneLocked()
	}
	v.mu.Unlock()
}

func (v *vendor) checkDoneLocked() {
	if v.cfg.Orders > 0 && !v.closed && v.posted == v.cfg.Orders && v.confirmed == v.cfg.Orders {
		v.closed = true
		close(v.allDone)
	}
}

// seenSet remembers up to max ids, forgetting the oldest first. Acknowledged
// notifications are never redelivered, so it only has to cover the few in
// flight; the bound keeps a vendor running forever from growing without end.
type seenSet struct {
	max  int
	ids  map[string]struct{}
	ring []string
	next int
}

func newSeenSet(max int) *seenSet { return &seenSet{max: max, ids: map[string]struct{}{}} }

// add records id and reports whether it is new.
func (s *seenSet) add(id string) bool {
	if _, ok := s.ids[id]; ok {
		return false
	}
	if len(s.ring) < s.max {
		s.ring = append(s.ring, id)
	} else {
		delete(s.ids, s.ring[s.next])
		s.ring[s.next] = id
		s.next = (s.next + 1) % s.max
	}
	s.ids[id] = struct{}{}
	return true
}
