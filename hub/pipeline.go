package hub

import (
	"context"
	"sync"

	"github.com/caps-hub/caps/protocol"
)

// Stored publishes are pipelined: once the read loop has checked a publish
// to a stored topic (rate, topic, permissions), the wait for the engine —
// the app's store hook, the write, the group sync — runs off the read loop,
// and the loop reads the session's next frame. A client with many stored
// publishes in flight (a driver carrying sixteen parcels, a bridge
// forwarding a backlog) then has them written together instead of one
// round trip to the engine after another, which is what lets the engine's
// group commit share a sync between them and nats.go share a socket write.
//
// Order: a session's stored publishes with the same ordering key are
// stored, and answered, in the order they were sent. The key is the topic,
// unless an app names a coarser one (Host.OrderPublishesBy: the parcel app
// keys an order's events by the order, so that a cancel sent right after
// its pickup is not stored first). Publishes with different keys may
// complete in any order; each is answered by its id.
//
// Bounds: at most maxPipelined publishes and maxPipelinedBytes of their
// payloads per session are in flight; past either, the read loop waits for
// one to finish (as it waited for every publish before). A payload larger
// than the byte bound goes alone.
const (
	maxPipelined      = 64
	maxPipelinedBytes = 4 << 20
)

// pipeline is a session's stored publishes in flight. It is created on a
// session's first stored publish: an idle connection does not carry it.
type pipeline struct {
	mu    sync.Mutex
	room  *sync.Cond // signalled when a publish ends
	n     int        // publishes in flight
	bytes int        // and their payloads' bytes
	// queues holds, per ordering key with a publish in flight, the
	// publishes waiting behind it; one goroutine per key stores them in turn.
	queues map[string]*keyQueue
}

// keyQueue is one ordering key's publishes, stored one after another.
type keyQueue struct {
	waiting []queuedPub
}

// queuedPub is a publish with the session as it was when it was sent (the
// read loop may change the session's identity afterwards).
type queuedPub struct {
	p     pubRequest
	info  SessionInfo
	scope string
}

func newPipeline() *pipeline {
	p := &pipeline{queues: map[string]*keyQueue{}}
	p.room = sync.NewCond(&p.mu)
	return p
}

// add waits for room for p and queues it under key. It returns the new
// queue when key had none: the caller starts its goroutine (run).
func (pl *pipeline) add(key string, p queuedPub) *keyQueue {
	size := len(p.p.Payload)
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for pl.n >= maxPipelined || (pl.n > 0 && pl.bytes+size > maxPipelinedBytes) {
		pl.room.Wait()
	}
	pl.n++
	pl.bytes += size
	if q := pl.queues[key]; q != nil {
		q.waiting = append(q.waiting, p)
		return nil
	}
	q := &keyQueue{waiting: []queuedPub{p}}
	pl.queues[key] = q
	return q
}

// run stores the publishes of q (key's) in order with store, until none
// waits.
func (pl *pipeline) run(key string, q *keyQueue, store func(queuedPub)) {
	for {
		pl.mu.Lock()
		if len(q.waiting) == 0 {
			delete(pl.queues, key)
			pl.mu.Unlock()
			return
		}
		p := q.waiting[0]
		q.waiting[0] = queuedPub{}
		q.waiting = q.waiting[1:]
		pl.mu.Unlock()

		store(p)

		pl.mu.Lock()
		pl.n--
		pl.bytes -= len(p.p.Payload)
		pl.mu.Unlock()
		pl.room.Broadcast() // the read loop waits for room, drain for none in flight
	}
}

// drain waits until no publish is in flight; nil pl: none ever was.
func (pl *pipeline) drain() {
	if pl == nil {
		return
	}
	pl.mu.Lock()
	for pl.n > 0 {
		pl.room.Wait()
	}
	pl.mu.Unlock()
}

// orderKeyHook names the ordering key of the stored publishes on the topics
// matching its pattern (Host.OrderPublishesBy).
type orderKeyHook = patternHook[func(topic string) string]

// OrderPublishesBy makes key(topic) the ordering key of a session's stored
// publishes on topics matching pattern: those with the same key are stored
// in the order the client sent them (by default, those on the same topic).
// An app whose topics name the same thing in several ways keys them by the
// thing — the parcel app by the order. The first registered pattern that
// matches a topic decides.
func (x *Host) OrderPublishesBy(pattern string, key func(topic string) string) {
	x.h.orderKeys = append(x.h.orderKeys, orderKeyHook{pattern: []byte(pattern), fn: key})
}

// orderKey is the ordering key of a stored publish on topic.
func (h *Hub) orderKey(topic []byte) string {
	for _, ok := range h.orderKeys {
		if protocol.Match(ok.pattern, topic) {
			var k string
			if h.contain(inAppFunc, func() error { k = ok.fn(string(topic)); return nil }) == nil {
				return k
			}
		}
	}
	return string(topic)
}

// isStored tells whether a publish on topic is stored (by the hub or an
// app's store hook), and so pipelined.
func (h *Hub) isStored(topic []byte) bool {
	for _, sh := range h.storeHooks {
		if protocol.Match(sh.pattern, topic) {
			return true
		}
	}
	return h.streamFor(topic) != ""
}

// publishPipelined stores p, checked by the read loop, off the read loop
// and reports the outcome to the dialect. It returns once p is queued: p's
// slices are copied (into one allocation), the read loop reuses their
// buffers.
func (s *Session) publishPipelined(ctx context.Context, p pubRequest) {
	h := s.hub
	if s.pipe == nil {
		s.pipe = newPipeline()
	}
	buf := make([]byte, 0, len(p.Topic)+len(p.Key)+len(p.Payload))
	buf = append(append(append(buf, p.Topic...), p.Key...), p.Payload...)
	nt, nk := len(p.Topic), len(p.Topic)+len(p.Key)
	p.Topic, p.Key, p.Payload = buf[:nt:nt], buf[nt:nk:nk], buf[nk:]
	if len(p.Key) == 0 {
		p.Key = nil
	}
	key := h.orderKey(p.Topic)
	q := s.pipe.add(key, queuedPub{p: p, info: s.info, scope: s.keyScope})
	if q == nil {
		return // key's goroutine stores it after those before it
	}
	// Not cancelled when the session ends: what the client sent is stored
	// (or refused) even if it closes right after; publishFrom bounds the
	// wait (storeTimeout), the publish hooks theirs (HookTimeout).
	ctx = context.WithoutCancel(ctx)
	s.work.Add(1)
	h.workers.run(func() {
		defer s.work.Done()
		s.pipe.run(key, q, func(qp queuedPub) {
			p := qp.p
			var seq uint64
			err := h.contain(inStoredPublish, func() (err error) {
				seq, err = s.store(ctx, qp.info, qp.scope, p, nil)
				return err
			})
			if err != nil {
				err = withCode(err, protocol.CodeRejected)
			}
			s.dialect.published(s, p.ID, seq, err)
		})
	})
}
