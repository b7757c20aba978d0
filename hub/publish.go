package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
	"unsafe"

	"github.com/nats-io/nats.go"

	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/protocol"
)

// storedTopics are the topic patterns one stream stores.
type storedTopics struct {
	stream   string
	patterns [][]byte
}

// addStored records that stream stores topics (before the hub accepts
// connections: streamFor reads the list without a lock).
func (h *Hub) addStored(stream string, topics []string) {
	st := storedTopics{stream: stream}
	for _, t := range topics {
		st.patterns = append(st.patterns, []byte(t))
	}
	h.stored = append(h.stored, st)
}

// streamFor returns the stream that stores topic (or every topic of a
// pattern), or "" when it is live only.
func (h *Hub) streamFor(pattern []byte) string {
	for _, st := range h.stored {
		for _, t := range st.patterns {
			if protocol.Covers(t, pattern) {
				return st.stream
			}
		}
	}
	return ""
}

// runPubHooks runs the publish hooks whose pattern matches topic, with
// HookTimeout for them all. They see the message id key (PublishKey), so
// that an app can tell a retry from a new publish.
func (h *Hub) runPubHooks(ctx context.Context, info SessionInfo, key, topic, payload []byte) error {
	var t string
	var cancel context.CancelFunc
	for _, ph := range h.pubHooks {
		if !protocol.Match(ph.pattern, topic) {
			continue
		}
		if cancel == nil {
			t = string(topic)
			ctx, cancel = context.WithTimeout(withPublishKey(ctx, key), HookTimeout)
			defer cancel()
		}
		if err := h.contain(inPublishHook, func() error { return ph.fn(ctx, info, t, payload) }); err != nil {
			return err
		}
	}
	return nil
}

// publish sends a message into the engine. Stored topics go through
// JetStream and return once the engine has acknowledged them (so an OK to a
// client means it is on disk); live topics are handed to NATS.
func (h *Hub) publish(ctx context.Context, topic, key, payload []byte) (uint64, error) {
	return h.publishChecked(ctx, topic, key, payload, false, nil)
}

// publishChecked is publish for a message already checked (session_api.go).
// requireStored refuses a live topic; lm is the publishing session's cache
// of local subscriptions (nil: none).
func (h *Hub) publishChecked(ctx context.Context, topic, key, payload []byte, requireStored bool, lm *localMatches) (uint64, error) {
	if h.streamFor(topic) != "" {
		if !h.EngineReady() {
			return 0, engineUnavailable()
		}
		m := engineMsg(topic, key, payload)
		ctx, cancel := context.WithTimeout(ctx, storeTimeout)
		defer cancel()
		start := time.Now()
		// Store answers once the message is durable, sharing syncs to disk
		// between concurrent publishes (group sync), and, like
		// PublishStored, repeats a keyed publish whose answer was lost (NATS
		// node failover); de-duplication by the key makes that safe.
		ack, err := h.eng.Store(ctx, m)
		if err != nil {
			return 0, storeError(topic, err)
		}
		h.metrics.observePublish(true, time.Since(start))
		return ack.Sequence, nil
	}
	if requireStored {
		return 0, Reject(protocol.CodeBadRequest, fmt.Sprintf("topic %q is not stored", topic))
	}
	// A live publish that goes to the engine needs it connected; one that
	// only this hub's subscribers can want (router.needsEngine) is refused
	// only while the hub knows its engine is down (engineOK, kept by the
	// connection's handlers): asking both engine connections takes their
	// locks, 3 % of the pubsub scenario's CPU.
	toEngine := h.router.needsEngine(topic)
	if !h.engineOK.Load() || (toEngine && !h.EngineReady()) {
		return 0, engineUnavailable()
	}
	if err := h.publishLive(topic, key, payload, lm, toEngine); err != nil {
		return 0, Reject(protocol.CodeUnavailable, fmt.Sprintf("publish %s: %v", topic, err))
	}
	h.metrics.observePublish(false, 0)
	return 0, nil
}

// engineUnavailable refuses a publish while the engine is unreachable.
func engineUnavailable() error {
	return Reject(protocol.CodeUnavailable, "the engine is unavailable; nothing was stored, retry later")
}

// storeError names why the engine did not store a message: a limit of its
// stream (the client must not simply retry) or the engine itself.
func storeError(topic []byte, err error) error {
	switch {
	case engine.IsTooLarge(err):
		return Reject(protocol.CodeTooLarge, fmt.Sprintf("store %s: the message is larger than its stream accepts", topic))
	case engine.IsFull(err):
		return Reject(protocol.CodeStoreFull, fmt.Sprintf("store %s: its stream is full (%v); nothing was stored", topic, err))
	}
	return Reject(protocol.CodeUnavailable, fmt.Sprintf("store %s: %v", topic, err))
}

func engineMsg(topic, key, payload []byte) *nats.Msg {
	m := &nats.Msg{Subject: engine.SubjectPrefix + string(topic), Data: payload}
	if len(key) > 0 {
		m.Header = nats.Header{nats.MsgIdHdr: []string{string(key)}}
	}
	return m
}

// publishLive hands a live message to the engine for every other hub and
// subscriber (on its no-echo connection, so it does not come back here),
// then to this hub's own subscribers directly (router.deliverLocal). The
// engine first: a publish it refuses reaches nobody, so a client that
// retries after the error does not deliver twice. When no one but this hub
// can listen on the engine, the engine is skipped (toEngine false:
// router.needsEngine).
//
// The engine publish does not allocate: the subject is built in a buffer on
// the stack and lent to nats.go as a string, which it copies into its
// outbound buffer before returning. A message id needs a header, and so a
// nats.Msg.
func (h *Hub) publishLive(topic, key, payload []byte, lm *localMatches, toEngine bool) error {
	if toEngine {
		var err error
		if len(key) > 0 {
			err = h.eng.Live.PublishMsg(engineMsg(topic, key, payload))
		} else {
			var buf [len(engine.SubjectPrefix) + protocol.MaxTopicLen]byte
			subj := append(append(buf[:0], engine.SubjectPrefix...), topic...)
			err = h.eng.Live.Publish(unsafe.String(unsafe.SliceData(subj), len(subj)), payload)
		}
		if err != nil {
			return err
		}
	}
	// Local subscribers get the id as the client published it, as they
	// would from the engine (clientKey): key is the engine's, scoped.
	ck := clientKey(unsafe.String(unsafe.SliceData(key), len(key)))
	h.router.deliverLocal(topic, unsafe.Slice(unsafe.StringData(ck), len(ck)), payload, lm)
	return nil
}

// eventName is how a topic appears in EVENT lines and classroom objects.
func (h *Hub) eventName(topic []byte) string {
	for _, n := range h.eventNamers {
		if protocol.Match(n.pattern, topic) {
			return h.nameOf(n.fn, topic)
		}
	}
	return string(topic)
}

// nameOf names topic with an app's namer; a namer that panics names
// nothing (the topic itself), contained.
func (h *Hub) nameOf(fn func(string) string, topic []byte) (name string) {
	defer func() {
		if h.contained(inAppFunc, recover()) != nil {
			name = string(topic)
		}
	}()
	return fn(string(topic))
}

// logEvent prints the classroom hub's EVENT line for a routed event.
func (h *Hub) logEvent(topic, payload []byte) {
	if h.events.quiet {
		return
	}
	for _, p := range h.privateEvents {
		if protocol.Match(p, topic) {
			return
		}
	}
	// Formatted straight into a reused buffer (eventline.go): json.Marshal
	// of an eventLine cost 6 allocations and most of the time per event.
	event := topic
	for _, n := range h.eventNamers {
		if protocol.Match(n.pattern, topic) {
			event = []byte(h.nameOf(n.fn, topic))
			break
		}
	}
	h.events.writeEvent(event, topic, time.Now(), payload)
}

// clientEvent publishes client.connected / client.disconnected.
func (h *Hub) clientEvent(topic string, s *Session) {
	ev := struct {
		SessionInfo
		Time   time.Time `json:"time"`
		Reason string    `json:"reason,omitempty"`
	}{SessionInfo: s.infoSnapshot(), Time: time.Now().UTC()}
	if topic == "client.disconnected" && s.closeErr != nil {
		ev.Reason = s.closeErr.Error()
	}
	b, _ := json.Marshal(ev)
	if _, err := h.publish(context.Background(), []byte(topic), nil, b); err != nil {
		h.log.Debug("publish client event", "topic", topic, "err", err)
	}
	h.logEvent([]byte(topic), b)
}
