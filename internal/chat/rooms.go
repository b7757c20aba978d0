package chat

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/protocol"
)

// roomCount keeps the rooms with stored messages under MaxRooms. A room
// costs disk from its first message on (its last History messages are
// kept for MaxAge), so that is where the limit applies: joining is free,
// and bounded per client instead. The count is the rooms stream's number of
// subjects, shared by every hub; rooms started on several hubs at the same
// instant may pass it by that many.
type roomCount struct {
	js  jetstream.JetStream
	max int

	mu     sync.Mutex
	stream jetstream.Stream     // looked up at first use: on a cluster, a stream another hub has just created may not be visible yet at start
	known  map[string]time.Time // rooms seen with messages, and when
}

// roomKnownFor is how long a room seen with messages is taken to still have
// them without asking the engine again.
const roomKnownFor = time.Minute

// admit lets a message into room unless it would be the first of a room
// beyond MaxRooms.
func (r *roomCount) admit(ctx context.Context, room string) error {
	r.mu.Lock()
	seen, ok := r.known[room]
	stream := r.stream
	r.mu.Unlock()
	if ok && time.Since(seen) < roomKnownFor {
		return nil
	}
	if stream == nil {
		s, err := r.js.Stream(ctx, RoomsStream)
		if err != nil {
			return hub.Reject(protocol.CodeUnavailable, fmt.Sprintf("cannot reach the rooms' stream (%v); retry", err))
		}
		r.mu.Lock()
		r.stream, stream = s, s
		r.mu.Unlock()
	}
	_, err := stream.GetLastMsgForSubject(ctx, engine.Subject(RoomTopic(room)))
	switch {
	case err == nil:
		r.remember(room)
		return nil
	case !errors.Is(err, jetstream.ErrMsgNotFound):
		return hub.Reject(protocol.CodeUnavailable, fmt.Sprintf("cannot look room %s up (engine unavailable); retry", room))
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return hub.Reject(protocol.CodeUnavailable, fmt.Sprintf("cannot count the rooms (engine unavailable): %v; retry", err))
	}
	if info.State.NumSubjects >= uint64(r.max) {
		return hub.Reject(protocol.CodeTooManyRooms, fmt.Sprintf("this hub keeps messages of at most %d rooms, and all are in use; post in an existing room", r.max))
	}
	r.remember(room)
	return nil
}

func (r *roomCount) remember(room string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if len(r.known) >= 2*r.max {
		for k, t := range r.known {
			if now.Sub(t) >= roomKnownFor {
				delete(r.known, k)
			}
		}
	}
	r.known[room] = now
}
