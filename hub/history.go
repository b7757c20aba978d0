package hub

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/protocol"
)

// historyHold closes the gap between a subscription's history and its live
// feed. The session joins the live feed first, with its deliveries for that
// subscription held back; then the history is sent; then the held live
// messages follow, minus those the history already carried (matched by
// message id). So a message stored while the history is being read arrives
// once, in order, instead of falling between the two.
type historyHold struct {
	active atomic.Int32 // number of subscriptions being held; 0 keeps deliver fast
	mu     sync.Mutex
	subs   map[uint64]*heldFrames
}

type heldFrames struct {
	frames   []heldFrame
	overflow bool
}

type heldFrame struct {
	frame []byte
	f     protocol.Frame // shallow copy: its slices are owned by the message, never reused
}

// maxHeld bounds what one subscription buffers while its history is read; a
// topic busier than that is a slow consumer in the making.
const maxHeld = 8192

func (hh *historyHold) start(sid uint64) {
	hh.mu.Lock()
	if hh.subs == nil {
		hh.subs = map[uint64]*heldFrames{}
	}
	hh.subs[sid] = &heldFrames{}
	hh.mu.Unlock()
	hh.active.Add(1)
}

// hold keeps a live delivery back if its subscription is being held.
func (hh *historyHold) hold(frame []byte, f *protocol.Frame) bool {
	if hh.active.Load() == 0 {
		return false
	}
	hh.mu.Lock()
	defer hh.mu.Unlock()
	h := hh.subs[f.ID]
	if h == nil {
		return false
	}
	if len(h.frames) >= maxHeld {
		h.overflow = true
		return true
	}
	h.frames = append(h.frames, heldFrame{frame: frame, f: *f})
	return true
}

// release stops holding sid and returns the held frames whose message ids
// were not in the history.
func (hh *historyHold) release(sid uint64, seen map[string]bool) (frames []heldFrame, overflow bool) {
	hh.mu.Lock()
	h := hh.subs[sid]
	delete(hh.subs, sid)
	hh.mu.Unlock()
	if h == nil {
		return nil, false
	}
	hh.active.Add(-1)
	for _, x := range h.frames {
		if len(x.f.Key) > 0 && seen[string(x.f.Key)] {
			continue
		}
		frames = append(frames, x)
	}
	return frames, h.overflow
}

// subscribeWithHistory joins the live feed of ts with deliveries held, sends
// the history (send), then releases the held live ones.
func (h *Hub) subscribeWithHistory(s *Session, ts *topicSub, send func() (map[string]bool, error)) error {
	s.hist.start(ts.sid)
	h.router.join(ts, s)
	seen, err := send()
	frames, overflow := s.hist.release(ts.sid, seen)
	for i := range frames {
		s.deliverNow(frames[i].frame, &frames[i].f)
	}
	if overflow {
		s.notify(protocol.CodeSlowConsumer, "too many live messages arrived while the history was read; some were dropped")
	}
	return err
}

// sendHistory replays to s, marked FlagHistory, the last n stored messages
// matching pattern that s may receive (a topic its deny_subscribe
// patterns match is skipped, as it is live: history is a delivery like any
// other). It returns the message ids it sent, for the hold (above).
func (h *Hub) sendHistory(ctx context.Context, s *Session, pattern string, n int, sid uint64) (seen map[string]bool, err error) {
	stream := h.streamFor([]byte(pattern))
	if stream == "" {
		return nil, Reject(protocol.CodeBadRequest, fmt.Sprintf("topic %q has no history", pattern))
	}
	msgs, err := h.lastStored(ctx, stream, pattern, n)
	if err != nil {
		return nil, Reject(protocol.CodeUnavailable, fmt.Sprintf("history of %s: %v", pattern, err))
	}
	perms := s.perms.Load()
	ring := make([]jetstream.Msg, 0, min(n, len(msgs)))
	for _, m := range msgs {
		if perms.deniedDelivery([]byte(engine.Topic(m.Subject()))) {
			continue
		}
		if len(ring) == n {
			copy(ring, ring[1:])
			ring = ring[:n-1]
		}
		ring = append(ring, m)
	}
	if len(ring) > 0 {
		// Replay only what is on disk (group sync): the newest message
		// decides for all of them.
		if meta, err := ring[len(ring)-1].Metadata(); err == nil {
			if err := h.eng.WaitDurable(ctx, meta.Timestamp); err != nil {
				return nil, Reject(protocol.CodeUnavailable, fmt.Sprintf("history of %s: %v", pattern, err))
			}
		}
	}
	for _, m := range ring {
		meta, _ := m.Metadata()
		var seq uint64
		if meta != nil {
			seq = meta.Sequence.Stream
		}
		f := protocol.Frame{
			Op: protocol.OpMsg, Flags: protocol.FlagHistory, ID: sid, Seq: seq,
			Topic: []byte(engine.Topic(m.Subject())), Key: []byte(clientKey(m.Headers().Get(nats.MsgIdHdr))), Payload: m.Data(),
		}
		if len(f.Key) > 0 {
			if seen == nil {
				seen = map[string]bool{}
			}
			seen[string(f.Key)] = true
		}
		s.deliverNow(f.Encode(), &f)
	}
	return seen, nil
}

// lastStored reads the last n messages of stream matching pattern, or a
// few more (at most 2n; history filters some out), oldest first. The work
// is bounded by n, not by the stream: a pattern with few messages is read
// whole, and one with many is read from a start sequence found by counting
// (the engine counts a filter's messages from a sequence without reading
// them): back from the end by doubling steps until n are in reach, then by
// halving to a start with n to 2n after it. A stream of a million messages
// costs some forty counts and 2n reads, instead of a million reads — a
// stall any subscriber could cause (issue 12, item 1).
func (h *Hub) lastStored(ctx context.Context, stream, pattern string, n int) ([]jetstream.Msg, error) {
	filter := engine.Subject(pattern)
	pending := func(start uint64) (uint64, error) {
		c, err := h.historyConsumer(ctx, stream, filter, start)
		if err != nil {
			return 0, err
		}
		defer h.dropConsumer(stream, c)
		return c.CachedInfo().NumPending, nil
	}
	want := uint64(n)
	c, err := h.historyConsumer(ctx, stream, filter, 1)
	if err != nil {
		return nil, err
	}
	if c.CachedInfo().NumPending > 2*want {
		h.dropConsumer(stream, c)
		str, err := h.eng.JS.Stream(ctx, stream)
		if err != nil {
			return nil, err
		}
		st := str.CachedInfo().State
		// lo: a start with at least n after it; hi: one with fewer.
		lo, hi := st.FirstSeq, st.LastSeq+1
		for span := 2 * want; ; span *= 2 {
			if span >= st.LastSeq-st.FirstSeq+1 {
				break // lo = FirstSeq: it has all (more than 2n)
			}
			s := st.LastSeq - span + 1
			p, err := pending(s)
			if err != nil {
				return nil, err
			}
			if p >= want {
				lo = s
				if p <= 2*want {
					hi = lo
				}
				break
			}
			hi = s
		}
		for hi > lo+1 {
			mid := lo + (hi-lo)/2
			p, err := pending(mid)
			if err != nil {
				return nil, err
			}
			if p < want {
				hi = mid
				continue
			}
			lo = mid
			if p <= 2*want {
				break
			}
		}
		if c, err = h.historyConsumer(ctx, stream, filter, lo); err != nil {
			return nil, err
		}
	}
	defer h.dropConsumer(stream, c)
	left := int(min(c.CachedInfo().NumPending, 2*want+1))
	out := make([]jetstream.Msg, 0, left)
	for left > 0 {
		batch, err := c.Fetch(min(left, 256), jetstream.FetchMaxWait(historyFetchWait))
		if err != nil {
			return nil, err
		}
		got := 0
		for m := range batch.Messages() {
			got++
			out = append(out, m)
		}
		if got == 0 {
			break
		}
		left -= got
	}
	if len(out) > 2*n {
		out = out[len(out)-2*n:]
	}
	return out, nil
}

// historyConsumer creates a short-lived consumer reading filter's messages
// of stream from sequence start, for lastStored. It holds no state the
// engine must keep (no acknowledgements, in memory) and is deleted after
// use (dropConsumer); if the hub dies first, the engine deletes it once
// it has been idle for historyConsumerIdle.
func (h *Hub) historyConsumer(ctx context.Context, stream, filter string, start uint64) (jetstream.Consumer, error) {
	cfg := jetstream.ConsumerConfig{
		FilterSubject:     filter,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		MemoryStorage:     true,
		Replicas:          1,
		InactiveThreshold: historyConsumerIdle,
	}
	if start > 1 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, start
	}
	return h.eng.JS.CreateConsumer(ctx, stream, cfg)
}

// dropConsumer deletes a consumer lastStored made, within its own deadline
// (the request's may have run out).
func (h *Hub) dropConsumer(stream string, c jetstream.Consumer) {
	ctx, cancel := context.WithTimeout(context.Background(), engineCallTimeout)
	defer cancel()
	if err := h.eng.JS.DeleteConsumer(ctx, stream, c.CachedInfo().Name); err != nil && !engine.IsNotFound(err) {
		h.log.Debug("delete history consumer", "stream", stream, "err", err)
	}
}
