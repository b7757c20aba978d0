package chat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// presenceStore keeps who holds which name and who is in which room, for
// the whole cluster, in a JetStream KV bucket:
//
//	name.<name>         → record: the session holding the name
//	room.<room>.<name>  → record: that name is in the room
//	guests.last         → the number of the last guest name handed out
//
// Each hub writes the records of its own sessions and rewrites them every
// ttl/3. A record not rewritten for ttl belongs to a hub that died; any hub
// may then delete it, and the one whose revision-guarded delete succeeds
// announces the departure, so it is announced once.
type presenceStore struct {
	kv  jetstream.KeyValue
	ttl time.Duration
	now func() time.Time
}

// record is the value of every key.
type record struct {
	Name    string    `json:"name"`
	Room    string    `json:"room,omitempty"`
	Session string    `json:"session"`
	Hub     string    `json:"hub"`
	Since   time.Time `json:"since"`
}

func nameKey(name string) string { return "name." + name }

// guestKey holds the number of the last guest name handed out (a decimal
// number, not a record): guest names count up across the cluster.
const guestKey = "guests.last"

func memberKey(room, name string) string { return "room." + room + "." + name }

// errTaken: another live session holds the name.
var errTaken = errors.New("name is in use")

// errLost: the key now belongs to another session.
var errLost = errors.New("record taken over by another session")

func (p *presenceStore) stale(e jetstream.KeyValueEntry) bool {
	return p.now().Sub(e.Created()) > p.ttl
}

func (p *presenceStore) get(ctx context.Context, key string) (jetstream.KeyValueEntry, record, error) {
	e, err := p.kv.Get(ctx, key)
	if err != nil {
		return nil, record{}, err
	}
	var r record
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		// Not ours to understand: treat as a leftover anyone may replace.
		return e, record{}, nil
	}
	return e, r, nil
}

// claim writes rec under key unless another live session owns it. A record
// left by predecessor (the session a reconnecting client names in its
// HELLO) or not refreshed for ttl is taken over. It returns the revision
// written and whether an earlier record was taken over from predecessor.
func (p *presenceStore) claim(ctx context.Context, key string, rec record, predecessor string, exclusive bool) (rev uint64, resumed bool, err error) {
	val, _ := json.Marshal(rec)
	for attempt := 0; attempt < 4; attempt++ {
		rev, err = p.kv.Create(ctx, key, val)
		if err == nil {
			return rev, false, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return 0, false, fmt.Errorf("claim %s: %w", key, err)
		}
		e, old, err := p.get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // deleted meanwhile: create again
		}
		if err != nil {
			return 0, false, fmt.Errorf("claim %s: %w", key, err)
		}
		resumed = predecessor != "" && old.Session == predecessor
		mine := old.Session == rec.Session
		if exclusive && !resumed && !mine && !p.stale(e) {
			return 0, false, errTaken
		}
		rev, err = p.kv.Update(ctx, key, val, e.Revision())
		if err == nil {
			return rev, resumed || mine, nil
		}
		// Changed between Get and Update: look again.
	}
	return 0, false, fmt.Errorf("claim %s: it keeps changing", key)
}

// refresh rewrites a record this hub owns so that it does not go stale. A
// record that vanished (deleted as stale while the engine was unreachable)
// is created again; one that another session took over is errLost.
func (p *presenceStore) refresh(ctx context.Context, key string, rec record, rev uint64) (uint64, error) {
	val, _ := json.Marshal(rec)
	if rev != 0 {
		if nrev, err := p.kv.Update(ctx, key, val, rev); err == nil {
			return nrev, nil
		}
	}
	e, old, err := p.get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		nrev, err := p.kv.Create(ctx, key, val)
		if err != nil {
			return 0, fmt.Errorf("refresh %s: %w", key, err)
		}
		return nrev, nil
	case err != nil:
		return 0, fmt.Errorf("refresh %s: %w", key, err)
	case old.Session != rec.Session:
		return 0, errLost
	}
	nrev, err := p.kv.Update(ctx, key, val, e.Revision())
	if err != nil {
		return 0, fmt.Errorf("refresh %s: %w", key, err)
	}
	return nrev, nil
}

// release deletes key if it still holds what session wrote (revision rev,
// or, when rev is 0 because the write never succeeded, a record of that
// session). It reports whether it deleted it.
func (p *presenceStore) release(ctx context.Context, key, session string, rev uint64) bool {
	if rev == 0 {
		e, old, err := p.get(ctx, key)
		if err != nil || old.Session != session {
			return false
		}
		rev = e.Revision()
	}
	return p.kv.Delete(ctx, key, jetstream.LastRevision(rev)) == nil
}

// liveEntry is a current record and its key.
type liveEntry struct {
	key string
	rev uint64
	rec record
	old bool // not refreshed for ttl
}

// list returns the records under the key filter ("room.lobby.>", ">").
func (p *presenceStore) list(ctx context.Context, filter string) ([]liveEntry, error) {
	w, err := p.kv.Watch(ctx, filter, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", filter, err)
	}
	defer w.Stop()
	var out []liveEntry
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return out, fmt.Errorf("list %s: watcher closed", filter)
			}
			if e == nil {
				return out, nil // the initial values are all in
			}
			le := liveEntry{key: e.Key(), rev: e.Revision(), old: p.stale(e)}
			_ = json.Unmarshal(e.Value(), &le.rec)
			out = append(out, le)
		case <-ctx.Done():
			return out, fmt.Errorf("list %s: %w", filter, ctx.Err())
		}
	}
}

// members returns the live members of room.
func (p *presenceStore) members(ctx context.Context, room string) ([]record, error) {
	es, err := p.list(ctx, "room."+room+".>")
	if err != nil {
		return nil, err
	}
	out := make([]record, 0, len(es))
	for _, e := range es {
		if !e.old {
			out = append(out, e.rec)
		}
	}
	return out, nil
}

// online reports whether a live session holds name.
func (p *presenceStore) online(ctx context.Context, name string) (bool, error) {
	e, err := p.kv.Get(ctx, nameKey(name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return !p.stale(e), nil
}

// sweep deletes the records that went stale and returns the room
// memberships this call removed (each is removed by exactly one caller
// cluster-wide, thanks to the revision-guarded delete).
func (p *presenceStore) sweep(ctx context.Context) ([]record, error) {
	es, err := p.list(ctx, ">")
	if err != nil {
		return nil, err
	}
	var gone []record
	for _, e := range es {
		if !e.old || e.key == guestKey {
			continue // the guest counter is not a record: it lives as long as the bucket keeps it
		}
		if p.kv.Delete(ctx, e.key, jetstream.LastRevision(e.rev)) != nil {
			continue // refreshed or removed meanwhile
		}
		if strings.HasPrefix(e.key, "room.") && e.rec.Room != "" && e.rec.Name != "" {
			gone = append(gone, e.rec)
		}
	}
	return gone, nil
}

// nextGuest returns the number of the next guest name: one more than the
// last, shared by every hub (compare-and-set on guestKey). The number only
// makes names likely to be free; claiming the name makes it certain.
func (p *presenceStore) nextGuest(ctx context.Context) (uint64, error) {
	for range 8 {
		e, err := p.kv.Get(ctx, guestKey)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			_, err = p.kv.Create(ctx, guestKey, []byte("1"))
			if err == nil {
				return 1, nil
			}
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // another hub counted first
			}
		}
		if err != nil {
			return 0, fmt.Errorf("count guests: %w", err)
		}
		n, _ := strconv.ParseUint(string(e.Value()), 10, 64)
		n++
		if _, err := p.kv.Update(ctx, guestKey, []byte(strconv.FormatUint(n, 10)), e.Revision()); err == nil {
			return n, nil
		}
		// Another hub counted meanwhile: count again.
	}
	return 0, errors.New("count guests: the counter keeps changing")
}
