package hub

import (
	"context"
	"errors"
	"fmt"

	"github.com/caps-hub/caps/protocol"
)

// StoreHook stores a client's publish on topics an app owns, in place of
// the hub's own stored publish: the app decides what is stored, on which
// subject, with which message id and which expectations of the engine (the
// parcel app writes each order event with optimistic concurrency on the
// order's subjects and an id it derives from what it validated). It runs
// after the permission check and the publish hooks. An error refuses the
// publish (a *protocol.Error keeps its code; others are "unavailable").
type StoreHook func(ctx context.Context, s SessionInfo, topic string, payload []byte) (Stored, error)

// Stored is what a StoreHook stored.
type Stored struct {
	// Seq is the stream sequence of the stored message, for the client's OK.
	Seq uint64
	// Payload is what was stored, for the hub's EVENT line (nil: the
	// client's payload).
	Payload []byte
}

// OnStore makes fn store the client publishes on topics matching pattern.
// The first registered hook whose pattern matches a topic stores it.
func (x *Host) OnStore(pattern string, fn StoreHook) {
	x.h.storeHooks = append(x.h.storeHooks, patternHook[StoreHook]{[]byte(pattern), fn})
}

// ErrDropDelivery is returned (or wrapped) by a DeliverHook to say that a
// durable message is to be delivered to no one: the hub terminates it, and
// it leaves the durable for good. The parcel app drops the pickup of an
// order that has moved on (cancelled, or taken by a driver meanwhile).
var ErrDropDelivery = errors.New("message dropped by the app")

// publishFrom stores or publishes a client's checked publish: through the
// store hook of the app that owns the topic, if any, else into the engine
// with the client's message id under scope (msgid.go). It returns the
// stored sequence (0 for a live topic) and the payload to show in the EVENT
// line. A store hook sees the client's message id (PublishKey) and chooses
// the ids it stores itself. lm is the publishing session's cache of local
// subscriptions (publishChecked).
func (h *Hub) publishFrom(ctx context.Context, info SessionInfo, scope string, topic, key, payload []byte, requireStored bool, lm *localMatches) (uint64, []byte, error) {
	for _, sh := range h.storeHooks {
		if !protocol.Match(sh.pattern, topic) {
			continue
		}
		if !h.EngineReady() {
			return 0, nil, Reject(protocol.CodeUnavailable, "the engine is unavailable; nothing was stored, retry later")
		}
		ctx, cancel := context.WithTimeout(withPublishKey(ctx, key), storeTimeout)
		defer cancel()
		var st Stored
		err := h.contain(inStoreHook, func() (err error) {
			st, err = sh.fn(ctx, info, string(topic), payload)
			return err
		})
		if err != nil {
			var pe *protocol.Error
			if !errors.As(err, &pe) {
				err = Reject(protocol.CodeUnavailable, fmt.Sprintf("store %s: %v", topic, err))
			}
			return 0, nil, err
		}
		if st.Payload == nil {
			st.Payload = payload
		}
		return st.Seq, st.Payload, nil
	}
	seq, err := h.publishChecked(ctx, topic, scopeKey(scope, key), payload, requireStored, lm)
	return seq, payload, err
}
