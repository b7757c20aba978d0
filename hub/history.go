package hub

import (
	"sync"
	"sync/atomic"

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
