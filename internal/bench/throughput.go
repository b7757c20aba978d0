package bench

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Payload marks: the first byte of every bench message says what it is.
const (
	markProbe byte = 'p' // readiness probe, not counted
	markData  byte = 'd'
)

// drainTimeout bounds the wait for the last messages after a run.
const drainTimeout = 15 * time.Second

// counter is one subscriber's count, padded to its own cache line.
type counter struct {
	n     atomic.Uint64
	probe atomic.Bool
	_     [48]byte
}

var runSeq atomic.Uint64

// topicFor names a fresh topic for one run, so runs never see each other's messages.
func topicFor(scenario string) string {
	return fmt.Sprintf("bench.%s.r%d.%d", scenario, time.Now().UnixNano()%1e9, runSeq.Add(1))
}

// throughput publishes as fast as the slowest of nsubs subscribers takes the
// messages (at most Window ahead of it) for Duration, then waits for the
// rest. Rate is deliveries per second: messages × subscribers.
func (e *env) throughput(ctx context.Context, tg *target, nsubs int) (res Result, err error) {
	o := e.opts
	scenario := "pubsub"
	res.Unit = "msgs/s"
	if nsubs > 1 {
		scenario = "fanout"
		res.Unit = "deliveries/s"
	}
	topic := topicFor(scenario)
	window := min(o.Window, max(16, (4<<20)/o.Size))

	counts := make([]counter, nsubs)
	conns := make([]pubsubConn, 0, nsubs+1)
	defer func() { closeAll(conns) }()
	for i := 0; i < nsubs; i++ {
		c, err := e.dial(ctx, tg, fmt.Sprintf("bench-sub-%d", i), window+64)
		if err != nil {
			return res, err
		}
		conns = append(conns, c)
		cnt := &counts[i]
		if err := c.Subscribe(ctx, topic, func(p []byte) {
			if len(p) > 0 && p[0] == markProbe {
				cnt.probe.Store(true)
				return
			}
			cnt.n.Add(1)
		}); err != nil {
			return res, fmt.Errorf("subscribe: %w", err)
		}
	}
	pub, err := e.dial(ctx, tg, "bench-pub", 64)
	if err != nil {
		return res, err
	}
	conns = append(conns, pub)
	if err := probe(ctx, pub, topic, func() bool {
		for i := range counts {
			if !counts[i].probe.Load() {
				return false
			}
		}
		return true
	}); err != nil {
		return res, err
	}

	lowest := func() uint64 {
		m := counts[0].n.Load()
		for i := 1; i < len(counts); i++ {
			m = min(m, counts[i].n.Load())
		}
		return m
	}
	payload := make([]byte, o.Size)
	for i := range payload {
		payload[i] = 'x'
	}
	payload[0] = markData

	start := time.Now()
	deadline := start.Add(o.Duration)
	var sent, low uint64
	for {
		if sent&255 == 0 {
			if time.Now().After(deadline) || ctx.Err() != nil {
				break
			}
			if err := firstErr(conns); err != nil {
				return res, err
			}
		}
		if sent-low >= uint64(window) {
			// Full: wait until the slowest subscriber is half a window
			// behind, then publish a burst (not one message per wake-up).
			if low, err = waitFor(ctx, conns, lowest, sent-uint64(window/2), 10*time.Second); err != nil {
				return res, fmt.Errorf("subscribers stalled at %d of %d: %w", low, sent, err)
			}
		}
		if err := pub.Publish(topic, payload); err != nil {
			return res, fmt.Errorf("publish: %w", err)
		}
		sent++
	}
	low, _ = waitFor(ctx, conns, lowest, sent, drainTimeout)
	elapsed := time.Since(start)
	var delivered uint64
	for i := range counts {
		delivered += counts[i].n.Load()
	}
	res.Count = delivered
	res.Lost = sent*uint64(nsubs) - min(delivered, sent*uint64(nsubs))
	res.Seconds = elapsed.Seconds()
	res.Rate = float64(delivered) / elapsed.Seconds()
	res.MBps = res.Rate * float64(o.Size) / 1e6
	if err := firstErr(conns); err != nil {
		return res, err
	}
	if low < sent {
		return res, fmt.Errorf("%d deliveries lost", res.Lost)
	}
	return res, nil
}

// probe publishes probes until ready reports that every subscriber got one:
// then every subscription is in place end to end.
func probe(ctx context.Context, pub pubsubConn, topic string, ready func() bool) error {
	deadline := time.Now().Add(10 * time.Second)
	for !ready() {
		if time.Now().After(deadline) {
			return errors.New("subscriptions not ready after 10s")
		}
		if err := pub.Publish(topic, []byte{markProbe}); err != nil {
			return fmt.Errorf("probe: %w", err)
		}
		if err := pub.Flush(ctx); err != nil {
			return fmt.Errorf("probe: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// waitFor waits until get() ≥ want, giving up after limit without progress.
func waitFor(ctx context.Context, conns []pubsubConn, get func() uint64, want uint64, limit time.Duration) (uint64, error) {
	v := get()
	last, lastChange := v, time.Now()
	for spins := 0; v < want; spins++ {
		// Out of the way of the goroutines that do the work, but back
		// within about 100µs (time.Sleep would take a millisecond).
		shortWait(50 * time.Microsecond)
		v = get()
		if v != last {
			last, lastChange = v, time.Now()
			continue
		}
		if spins%64 == 0 {
			if err := ctx.Err(); err != nil {
				return v, err
			}
			if err := firstErr(conns); err != nil {
				return v, err
			}
			if time.Since(lastChange) > limit {
				return v, fmt.Errorf("no progress for %s", limit)
			}
		}
	}
	return v, nil
}

func firstErr(conns []pubsubConn) error {
	for _, c := range conns {
		if err := c.Err(); err != nil {
			return err
		}
	}
	return nil
}
