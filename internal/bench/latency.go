package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

func spinYield() { runtime.Gosched() }

// latencyHist records latencies in nanoseconds, 1µs to 60s, 3 significant digits.
type latencyHist struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
}

func newLatencyHist() *latencyHist {
	return &latencyHist{h: hdrhistogram.New(1_000, int64(60*time.Second), 3)}
}

func (l *latencyHist) record(d time.Duration) {
	v := max(int64(d), 1_000)
	l.mu.Lock()
	_ = l.h.RecordValue(min(v, l.h.HighestTrackableValue()))
	l.mu.Unlock()
}

// fill writes the percentiles, in microseconds, into r.
func (l *latencyHist) fill(r *Result) {
	l.mu.Lock()
	defer l.mu.Unlock()
	us := func(ns int64) float64 { return float64(ns) / 1e3 }
	r.P50us = us(l.h.ValueAtQuantile(50))
	r.P90us = us(l.h.ValueAtQuantile(90))
	r.P99us = us(l.h.ValueAtQuantile(99))
	r.P999us = us(l.h.ValueAtQuantile(99.9))
	r.MaxUs = us(l.h.Max())
}

// pacer sends on a constant-rate schedule: message i is due at start + i/rate.
// Go's timers sleep no less than about a millisecond here, so the last
// stretch before a due time is waited out with shortWait: a nanosleep on
// Linux (microsecond precision, no processor burnt), elsewhere yielding.
type pacer struct {
	start    time.Time
	interval float64 // nanoseconds between messages
}

// due returns the intended send time of message i, as an offset from start.
func (p pacer) due(i int) time.Duration { return time.Duration(float64(i) * p.interval) }

// wait returns once message i is due.
func (p pacer) wait(ctx context.Context, i int) error {
	due := p.due(i)
	for {
		now := time.Since(p.start)
		if now >= due {
			return nil
		}
		if due-now > 2*time.Millisecond {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(due - now - time.Millisecond):
			}
			continue
		}
		shortWait(due - now)
	}
}

// latency publishes Rate messages per second for Duration from one
// connection to a subscriber on another and records, for each message, the
// time from its intended send time on the schedule to its arrival. Measuring
// from the schedule, not from the moment the publisher got round to sending,
// keeps a stall from hiding the latency of every message queued behind it
// (coordinated omission).
func (e *env) latency(ctx context.Context, tg *target) (res Result, err error) {
	o := e.opts
	res.Unit = "msgs/s"
	topic := topicFor("latency")
	n := int(float64(o.Rate) * o.Duration.Seconds())
	if n < 1 {
		n = 1
	}
	hist := newLatencyHist()
	var got atomic.Uint64
	var probed atomic.Bool
	var start atomic.Pointer[time.Time] // set before the first data message

	var conns []pubsubConn
	defer func() { closeAll(conns) }()
	sub, err := e.dial(ctx, tg, "bench-lat-sub", min(n, 1<<16)+64)
	if err != nil {
		return res, err
	}
	conns = append(conns, sub)
	if err := sub.Subscribe(ctx, topic, func(b []byte) {
		if len(b) < 9 || b[0] != markData {
			probed.Store(true)
			return
		}
		sent := time.Duration(binary.LittleEndian.Uint64(b[1:9]))
		hist.record(time.Since(*start.Load()) - sent)
		got.Add(1)
	}); err != nil {
		return res, fmt.Errorf("subscribe: %w", err)
	}
	pub, err := e.dial(ctx, tg, "bench-lat-pub", 64)
	if err != nil {
		return res, err
	}
	conns = append(conns, pub)
	if err := probe(ctx, pub, topic, probed.Load); err != nil {
		return res, err
	}

	payload := make([]byte, max(o.Size, 9))
	for i := range payload {
		payload[i] = 'x'
	}
	payload[0] = markData
	p := pacer{start: time.Now(), interval: 1e9 / float64(o.Rate)}
	start.Store(&p.start)
	for i := 0; i < n; i++ {
		if err := p.wait(ctx, i); err != nil {
			return res, err
		}
		binary.LittleEndian.PutUint64(payload[1:9], uint64(p.due(i)))
		if err := pub.Publish(topic, payload); err != nil {
			return res, fmt.Errorf("publish: %w", err)
		}
		if i&255 == 0 {
			if err := firstErr(conns); err != nil {
				return res, err
			}
		}
	}
	last, _ := waitFor(ctx, conns, got.Load, uint64(n), drainTimeout)
	elapsed := time.Since(p.start)
	res.Count = last
	res.Lost = uint64(n) - min(last, uint64(n))
	res.Seconds = elapsed.Seconds()
	res.Rate = float64(last) / elapsed.Seconds()
	hist.fill(&res)
	if err := firstErr(conns); err != nil {
		return res, err
	}
	if res.Lost > 0 {
		return res, fmt.Errorf("%d of %d messages lost", res.Lost, n)
	}
	return res, nil
}
