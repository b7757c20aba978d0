package hub

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/protocol"
)

// Who may make the engine keep a durable, and how many. A durable is a
// JetStream consumer: files on disk and state in memory on every engine
// server, kept while it is in use and for its idle lifetime after. A
// client that subscribes and unsubscribes with a new durable name in a
// loop left one consumer per name for thirty days (issue 12, item 5), so:
//
//   - each identity (role and name) holds at most MaxDurablesPerIdentity
//     durables it created, counted across the cluster in the CAPS_DURABLES
//     bucket: one slot per durable, taken before the consumer is created
//     and freed once the engine has deleted it;
//   - each stream has at most MaxDurables consumers;
//   - a durable of a session's own (a name not shared with it,
//     Permissions.Durable) is deleted by the engine after DurableIdle
//     without members; a shared one (a work queue, a mailbox) after
//     sharedDurableIdle, so that a vendor away for weeks is still told.
//
// A limit reached refuses the SUB with too_many_durables
// (caps_errors_total{code="too_many_durables"}).

// DurablesBucket is the key-value bucket where the hub counts the durables
// each identity created (hub.durableRegistry).
const DurablesBucket = "CAPS_DURABLES"

// durableSlot is what a slot of CAPS_DURABLES records: the consumer it
// counts and who made it.
type durableSlot struct {
	Stream   string    `json:"stream"`
	Consumer string    `json:"consumer"`
	Role     string    `json:"role"`
	Name     string    `json:"name"`
	Created  time.Time `json:"created"`
}

// durableRegistry counts the durables of each identity.
type durableRegistry struct {
	h  *Hub
	kv jetstream.KeyValue
}

// ownerOf is the key prefix of an identity's slots: a hash, since a name
// may hold characters bucket keys may not, and so that slots name nobody.
func ownerOf(id Identity) string {
	sum := sha256.Sum256([]byte(id.Role + "\x00" + id.Name))
	return hex.EncodeToString(sum[:8])
}

// setupDurables creates the bucket (the hub's own: no client topic reaches it).
func (h *Hub) setupDurables(ctx context.Context) error {
	kv, err := h.eng.EnsureKV(ctx, engine.KVSpec{
		Bucket: DurablesBucket,
		// A slot outlives any consumer it counts when nobody frees it (a
		// hub that died meanwhile): the engine forgets both in the end.
		TTL:          sharedDurableIdle + 24*time.Hour,
		MaxBytes:     durablesBucketBytes,
		MaxValueSize: 1 << 10,
	})
	if err != nil {
		return fmt.Errorf("durables bucket: %w", err)
	}
	h.registry = &durableRegistry{h: h, kv: kv}
	return nil
}

// durablesBucketBytes bounds CAPS_DURABLES: a slot is about 200 bytes, so
// this is room for hundreds of thousands; when it is full, new durables
// are refused (too_many_durables) until slots are freed.
const durablesBucketBytes = 64 << 20

// reserve takes one of owner's slots for the consumer about to be created
// on stream, after checking the stream's limit. It returns a function that
// gives the slot back (the creation failed). A limit reached is a
// too_many_durables refusal.
func (r *durableRegistry) reserve(ctx context.Context, id Identity, stream, consumer string) (release func(), err error) {
	h := r.h
	str, err := h.eng.JS.Stream(ctx, stream)
	if err != nil {
		return nil, Reject(protocol.CodeUnavailable, fmt.Sprintf("stream %s: %v", stream, err))
	}
	if n := str.CachedInfo().State.Consumers; n >= h.cfg.MaxDurables {
		h.log.Warn("durable refused: the stream holds as many as it may", "stream", stream, "consumers", n, "max", h.cfg.MaxDurables, "role", id.Role, "name", id.Name)
		return nil, Reject(protocol.CodeTooManyDurables, fmt.Sprintf("%s holds %d durables, the most it may (--max-durables); reuse a durable name", stream, n))
	}
	owner := ownerOf(id)
	used, err := r.slots(ctx, owner)
	if err != nil {
		return nil, err
	}
	if len(used) >= h.cfg.MaxDurablesPerIdentity {
		// Free the slots of durables the engine has deleted (idle too long).
		if used, err = r.prune(ctx, owner, used); err != nil {
			return nil, err
		}
	}
	b, _ := json.Marshal(durableSlot{Stream: stream, Consumer: consumer, Role: id.Role, Name: id.Name, Created: time.Now().UTC()})
	for i := range h.cfg.MaxDurablesPerIdentity {
		key := owner + "." + strconv.Itoa(i)
		if _, taken := used[key]; taken {
			continue
		}
		_, err := r.kv.Create(ctx, key, b)
		switch {
		case err == nil:
			return func() { r.free(key) }, nil
		case errors.Is(err, jetstream.ErrKeyExists):
			continue // taken meanwhile, by another session of the same identity
		case engine.IsFull(err):
			h.log.Warn("durable refused: the durables bucket is full", "role", id.Role, "name", id.Name)
			return nil, Reject(protocol.CodeTooManyDurables, "the hub counts as many durables as it may; retry once idle ones have expired")
		default:
			return nil, Reject(protocol.CodeUnavailable, fmt.Sprintf("count durables: %v", err))
		}
	}
	return nil, Reject(protocol.CodeTooManyDurables, fmt.Sprintf("%s %q holds %d durables, the most one identity may (--max-durables-per-identity); reuse a durable name, or let one expire (unused for %s)",
		id.Role, id.Name, h.cfg.MaxDurablesPerIdentity, h.cfg.DurableIdle))
}

// slots returns owner's slots (key → nothing).
func (r *durableRegistry) slots(ctx context.Context, owner string) (map[string]struct{}, error) {
	l, err := r.kv.ListKeysFiltered(ctx, owner+".*")
	if err != nil {
		return nil, Reject(protocol.CodeUnavailable, fmt.Sprintf("count durables: %v", err))
	}
	used := map[string]struct{}{}
	for k := range l.Keys() {
		used[k] = struct{}{}
	}
	return used, nil
}

// prune frees the slots of owner whose consumer no longer exists, or that
// count a consumer another slot counts, and returns the slots left.
func (r *durableRegistry) prune(ctx context.Context, owner string, used map[string]struct{}) (map[string]struct{}, error) {
	seen := map[string]bool{}
	for key := range used {
		e, err := r.kv.Get(ctx, key)
		if err != nil {
			if engine.IsNotFound(err) {
				delete(used, key)
				continue
			}
			return nil, Reject(protocol.CodeUnavailable, fmt.Sprintf("count durables: %v", err))
		}
		var slot durableSlot
		stale := json.Unmarshal(e.Value(), &slot) != nil || seen[slot.Stream+"/"+slot.Consumer]
		if !stale {
			_, err := r.h.eng.JS.Consumer(ctx, slot.Stream, slot.Consumer)
			switch {
			case engine.IsNotFound(err):
				stale = true
			case err != nil:
				return nil, Reject(protocol.CodeUnavailable, fmt.Sprintf("count durables: %v", err))
			}
		}
		seen[slot.Stream+"/"+slot.Consumer] = true
		if stale {
			if err := r.kv.Delete(ctx, key, jetstream.LastRevision(e.Revision())); err == nil {
				delete(used, key)
			}
		}
	}
	return used, nil
}

// free gives a slot back.
func (r *durableRegistry) free(key string) {
	ctx, cancel := context.WithTimeout(context.Background(), engineCallTimeout)
	defer cancel()
	if err := r.kv.Delete(ctx, key); err != nil {
		r.h.log.Debug("free durable slot", "key", key, "err", err)
	}
}

// privateConsumerName is the consumer behind durable name on pattern when
// it is the session's own (not a name its permissions share): the owner's
// hash is part of it, so another identity using the same name reaches
// another consumer. '~' cannot appear in a durable name, so no shared
// durable's consumer (ConsumerName) is ever named the same.
func privateConsumerName(id Identity, name, pattern string) string {
	return "~" + ownerOf(id) + "~" + ConsumerName(name, pattern)
}

// reservedDurable reports whether durable name is one some role is granted
// to share (Hub.sharedDurables).
func (h *Hub) reservedDurable(name string) bool {
	for _, g := range h.sharedDurables {
		if durableGrantMatches(g, name) {
			return true
		}
	}
	return false
}
