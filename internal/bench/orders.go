package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// driverCapacity is how many orders each driver carries at once, on both
// targets (the parcel driver's --capacity).
const driverCapacity = 16

// orderBook is what the vendors of one run share: when each order was
// posted, how many completed, and the lifecycle latencies.
type orderBook struct {
	mu     sync.Mutex
	posted map[string]time.Time
	done   atomic.Uint64
	hist   *latencyHist
	// per vendor: orders posted and not yet delivered, for the window
	inflight []atomic.Int64
	wake     []chan struct{}
}

func newOrderBook(vendors int) *orderBook {
	b := &orderBook{posted: map[string]time.Time{}, hist: newLatencyHist(), inflight: make([]atomic.Int64, vendors), wake: make([]chan struct{}, vendors)}
	for i := range b.wake {
		b.wake[i] = make(chan struct{}, 1)
	}
	return b
}

func (b *orderBook) post(v int, id string) {
	b.mu.Lock()
	b.posted[id] = time.Now()
	b.mu.Unlock()
	b.inflight[v].Add(1)
}

func (b *orderBook) unpost(v int, id string) {
	b.mu.Lock()
	delete(b.posted, id)
	b.mu.Unlock()
	b.inflight[v].Add(-1)
}

// complete records a delivered notification; a repeat is not counted.
func (b *orderBook) complete(v int, id string) {
	b.mu.Lock()
	t, ok := b.posted[id]
	delete(b.posted, id)
	b.mu.Unlock()
	if !ok {
		return
	}
	b.hist.record(time.Since(t))
	b.done.Add(1)
	b.inflight[v].Add(-1)
	select {
	case b.wake[v] <- struct{}{}:
	default:
	}
}

// waitRoom blocks vendor v while it has window orders in flight.
func (b *orderBook) waitRoom(ctx context.Context, v, window int) error {
	for b.inflight[v].Load() >= int64(window) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-b.wake[v]:
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

func newOrder(store string, n int) ([]byte, string) {
	id := uuid.NewString()
	ev := parcel.Event{
		Parcel: parcel.Parcel{Store: store, OrderID: id, Customer: fmt.Sprintf("Customer %d", n), Address: fmt.Sprintf("%d Bench Street, Seattle", n)},
		Time:   time.Now().UTC(),
	}
	b, _ := json.Marshal(ev)
	return b, id
}

// runVendors posts orders from every vendor until Duration is over, each
// keeping at most OrdersWindow in flight, then waits (bounded) for the
// deliveries of everything posted. post publishes one order and returns
// once it is stored.
func (e *env) runVendors(ctx context.Context, book *orderBook, stores []string, post func(ctx context.Context, v int, store string, payload []byte, id string) error) (res Result, err error) {
	o := e.opts
	res.Unit = "lifecycles/s"
	start := time.Now()
	stopAt := start.Add(o.Duration)
	var wg sync.WaitGroup
	errs := make([]error, len(stores))
	var posted atomic.Uint64
	for v, store := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; time.Now().Before(stopAt); n++ {
				if err := book.waitRoom(ctx, v, o.OrdersWindow); err != nil {
					errs[v] = err
					return
				}
				payload, id := newOrder(store, n)
				book.post(v, id)
				if err := post(ctx, v, store, payload, id); err != nil {
					book.unpost(v, id)
					errs[v] = fmt.Errorf("vendor %s: %w", store, err)
					return
				}
				posted.Add(1)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	total := posted.Load()
	done, _ := waitFor(ctx, nil, book.done.Load, total, 30*time.Second)
	elapsed := time.Since(start)
	res.Count = done
	res.Lost = total - min(done, total)
	res.Seconds = elapsed.Seconds()
	res.Rate = float64(done) / elapsed.Seconds()
	book.hist.fill(&res)
	if res.Lost > 0 {
		return res, fmt.Errorf("%d of %d orders not delivered within 30s", res.Lost, total)
	}
	return res, nil
}

func (e *env) orders(ctx context.Context, tg *target) (Result, error) {
	if tg.kind == kindNATS {
		return e.ordersNATS(ctx, tg)
	}
	return e.ordersCAPS(ctx, tg)
}

// ordersCAPS runs the parcel service's own drivers (zero delays) against the
// hub's dispatcher, and vendors that post as fast as their window allows.
func (e *env) ordersCAPS(ctx context.Context, tg *target) (Result, error) {
	o := e.opts
	run := runSeq.Add(1)
	book := newOrderBook(o.Vendors)
	base := client.Options{Token: tg.token, NoReconnect: true}

	dctx, stopDrivers := context.WithCancel(ctx)
	var dwg sync.WaitGroup
	ready := make(chan struct{}, o.Drivers)
	derrs := make(chan error, o.Drivers)
	defer func() { stopDrivers(); dwg.Wait() }()
	for i := 0; i < o.Drivers; i++ {
		dwg.Add(1)
		go func() {
			defer dwg.Done()
			err := parcel.RunDriver(dctx, parcel.DriverConfig{
				ClientConfig: parcel.ClientConfig{
					Hub: []string{tg.addr}, Timeout: 10 * time.Second, Options: base,
					OnReady: func() { ready <- struct{}{} },
				},
				Name:     fmt.Sprintf("bench-driver-%d-%d", run, i),
				Capacity: driverCapacity,
			})
			if err != nil {
				derrs <- err
			}
		}()
	}
	for i := 0; i < o.Drivers; i++ {
		select {
		case <-ready:
		case err := <-derrs:
			return Result{}, fmt.Errorf("driver: %w", err)
		case <-time.After(30 * time.Second):
			return Result{}, errors.New("drivers not ready after 30s")
		case <-ctx.Done():
			return Result{}, ctx.Err()
		}
	}

	stores := make([]string, o.Vendors)
	conns := make([]*client.Conn, o.Vendors)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for v := range stores {
		stores[v] = fmt.Sprintf("bench%d-%d", run, v)
		opts := base
		opts.Role, opts.Name = protocol.RoleVendor, stores[v]
		c, err := client.Dial(ctx, []string{tg.addr}, opts)
		if err != nil {
			return Result{}, fmt.Errorf("vendor %s: %w", stores[v], err)
		}
		conns[v] = c
		_, err = c.Subscribe(ctx, parcel.MailboxPattern(stores[v]), func(m *client.Msg) {
			var ev parcel.Event
			if json.Unmarshal(m.Payload, &ev) == nil {
				actx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if m.Ack(actx) == nil {
					book.complete(v, ev.OrderID)
				}
				cancel()
			}
		}, client.Durable(parcel.VendorDurable(stores[v])), client.ManualAck(), client.DeliverAll())
		if err != nil {
			return Result{}, fmt.Errorf("vendor %s: subscribe: %w", stores[v], err)
		}
	}
	res, err := e.runVendors(ctx, book, stores, func(ctx context.Context, v int, store string, payload []byte, id string) error {
		_, err := conns[v].Publish(ctx, parcel.Topic(store, id, parcel.EventPickup, ""), payload, client.WithMsgID(id+"."+parcel.EventPickup))
		return err
	})
	select {
	case derr := <-derrs:
		if err == nil {
			err = fmt.Errorf("driver: %w", derr)
		}
	default:
	}
	return res, err
}

// ordersNATS does with raw JetStream what the parcel service does: the same
// stored publishes with message ids, a durable work queue shared by the
// drivers, a durable per vendor, every ack confirmed — without a dispatcher.
func (e *env) ordersNATS(ctx context.Context, tg *target) (res Result, err error) {
	o := e.opts
	run := runSeq.Add(1)
	prefix := fmt.Sprintf("r%d", run)
	subj := func(event, store string) string { return prefix + "." + rawTopic(event, store) }
	book := newOrderBook(o.Vendors)

	var ncs []*nats.Conn
	var stops []func()
	defer func() {
		for _, s := range stops {
			s()
		}
		for _, nc := range ncs {
			nc.Close()
		}
	}()
	connect := func(name string) (*nats.Conn, jetstream.JetStream, error) {
		nc, err := nats.Connect(tg.addr, nats.Name(name), nats.NoReconnect())
		if err != nil {
			return nil, nil, fmt.Errorf("connect to %s: %w", tg.name, err)
		}
		ncs = append(ncs, nc)
		js, err := jetstream.New(nc)
		return nc, js, err
	}
	_, admin, err := connect("bench-admin")
	if err != nil {
		return res, err
	}
	streamName := "BENCH_PARCELS_" + prefix
	if _, err := admin.CreateStream(ctx, jetstream.StreamConfig{
		Name: streamName, Subjects: []string{prefix + ".parcel.>"}, Storage: jetstream.FileStorage,
		Retention: jetstream.LimitsPolicy, Duplicates: 2 * time.Minute, MaxAge: time.Hour,
	}); err != nil {
		return res, fmt.Errorf("create stream: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = admin.DeleteStream(dctx, streamName)
	}()
	durable := func(name, filter string, maxAck int) (jetstream.Consumer, error) {
		return admin.CreateOrUpdateConsumer(ctx, streamName, jetstream.ConsumerConfig{
			Durable: name, FilterSubject: filter, AckPolicy: jetstream.AckExplicitPolicy,
			AckWait: 30 * time.Second, DeliverPolicy: jetstream.DeliverAllPolicy, MaxDeliver: -1, MaxAckPending: maxAck,
		})
	}
	if _, err := durable(parcel.DriversDurable, subj(parcel.EventPickup, "*"), 10000); err != nil {
		return res, fmt.Errorf("drivers consumer: %w", err)
	}

	// Drivers: each takes up to driverCapacity pickups at a time; for each it
	// stores in-transit, acks the pickup (confirmed), stores delivered.
	for i := 0; i < o.Drivers; i++ {
		_, js, err := connect(fmt.Sprintf("bench-driver-%d", i))
		if err != nil {
			return res, err
		}
		cons, err := js.Consumer(ctx, streamName, parcel.DriversDurable)
		if err != nil {
			return res, err
		}
		jobs := make(chan jetstream.Msg, driverCapacity)
		name := fmt.Sprintf("bench-driver-%d-%d", run, i)
		wctx, stopWorkers := context.WithCancel(context.WithoutCancel(ctx))
		var wg sync.WaitGroup
		for w := 0; w < driverCapacity; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-wctx.Done():
						return
					case m := <-jobs:
						natsDeliver(wctx, js, m, name, prefix)
					}
				}
			}()
		}
		cc, err := cons.Consume(func(m jetstream.Msg) {
			select {
			case jobs <- m:
			case <-wctx.Done():
			}
		}, jetstream.PullMaxMessages(driverCapacity))
		if err != nil {
			stopWorkers()
			return res, fmt.Errorf("drivers consume: %w", err)
		}
		stops = append(stops, func() { cc.Stop(); stopWorkers(); wg.Wait() })
	}

	stores := make([]string, o.Vendors)
	vjs := make([]jetstream.JetStream, o.Vendors)
	for v := range stores {
		stores[v] = fmt.Sprintf("bench%d-%d", run, v)
		_, js, err := connect("bench-vendor-" + stores[v])
		if err != nil {
			return res, err
		}
		vjs[v] = js
		if _, err := durable(parcel.VendorDurable(stores[v]), subj(parcel.EventDelivered, stores[v]), 1000); err != nil {
			return res, fmt.Errorf("vendor consumer: %w", err)
		}
		cons, err := js.Consumer(ctx, streamName, parcel.VendorDurable(stores[v]))
		if err != nil {
			return res, err
		}
		cc, err := cons.Consume(func(m jetstream.Msg) {
			var ev parcel.Event
			if json.Unmarshal(m.Data(), &ev) == nil {
				actx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if m.DoubleAck(actx) == nil {
					book.complete(v, ev.OrderID)
				}
				cancel()
			}
		})
		if err != nil {
			return res, fmt.Errorf("vendor consume: %w", err)
		}
		stops = append(stops, cc.Stop)
	}
	return e.runVendors(ctx, book, stores, func(ctx context.Context, v int, store string, payload []byte, id string) error {
		_, err := vjs[v].Publish(ctx, subj(parcel.EventPickup, store), payload, jetstream.WithMsgID(id+"."+parcel.EventPickup))
		return err
	})
}

// natsDeliver is a zero-delay driver's work on one pickup, in raw JetStream.
func natsDeliver(ctx context.Context, js jetstream.JetStream, m jetstream.Msg, driver, prefix string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var ev parcel.Event
	if err := json.Unmarshal(m.Data(), &ev); err != nil {
		_ = m.Term()
		return
	}
	ev.Driver = driver
	for _, event := range []string{parcel.EventInTransit, parcel.EventDelivered} {
		ev.Time = time.Now().UTC()
		b, _ := json.Marshal(ev)
		if _, err := js.Publish(ctx, prefix+"."+rawTopic(event, ev.Store), b, jetstream.WithMsgID(ev.OrderID+"."+event)); err != nil {
			return // redelivered after the ack wait
		}
		if event == parcel.EventInTransit {
			if err := m.DoubleAck(ctx); err != nil {
				return
			}
		}
	}
}

// rawTopic is the raw-JetStream side's subject of an event: the layout the
// bench has always used there (parcel.<event>.<store>), so that side of the
// comparison stays what it was.
func rawTopic(event, store string) string { return "parcel." + event + "." + store }
