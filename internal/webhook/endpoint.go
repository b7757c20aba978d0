package webhook

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/protocol"
)

// Endpoint is a receiver registered by a store, as the API shows it (the
// signing secret is given once, by Create).
type Endpoint struct {
	ID        string    `json:"id"`
	Store     string    `json:"store"`
	URL       string    `json:"url"`
	Events    []string  `json:"events,omitempty"` // empty: every event type
	CreatedAt time.Time `json:"createdAt"`
	// Enabled is false once the endpoint was disabled; DisabledReason and
	// DisabledAt say why and when.
	Enabled        bool       `json:"enabled"`
	DisabledReason string     `json:"disabledReason,omitempty"`
	DisabledAt     *time.Time `json:"disabledAt,omitempty"`
	// FailingSince is the first failed attempt since the last success: an
	// endpoint failing for longer than the retry window is disabled.
	FailingSince *time.Time `json:"failingSince,omitempty"`
}

// NewEndpoint is what Create needs.
type NewEndpoint struct {
	Store  string
	URL    string
	Events []string // event types to receive; empty: all
}

// endpointRecord is an endpoint as stored, secret included.
type endpointRecord struct {
	ID             string     `json:"id"`
	URL            string     `json:"url"`
	Events         []string   `json:"events,omitempty"`
	Secret         string     `json:"secret"`
	CreatedAt      time.Time  `json:"createdAt"`
	DisabledReason string     `json:"disabledReason,omitempty"`
	DisabledAt     *time.Time `json:"disabledAt,omitempty"`
	FailingSince   *time.Time `json:"failingSince,omitempty"`
}

func (r *endpointRecord) enabled() bool { return r.DisabledAt == nil }

func (r *endpointRecord) wants(eventType string) bool {
	return len(r.Events) == 0 || slices.Contains(r.Events, eventType)
}

func (r *endpointRecord) public(store string) Endpoint {
	return Endpoint{
		ID: r.ID, Store: store, URL: r.URL, Events: slices.Clone(r.Events), CreatedAt: r.CreatedAt,
		Enabled: r.enabled(), DisabledReason: r.DisabledReason, DisabledAt: r.DisabledAt, FailingSince: r.FailingSince,
	}
}

// storeRecord is one store's endpoints: one key in the bucket, so that
// every change to a store's endpoints (the per-store cap included) is one
// compare-and-set, and two hubs cannot both add the eleventh.
type storeRecord struct {
	Endpoints []endpointRecord `json:"endpoints"`
}

func (s *storeRecord) find(id string) *endpointRecord {
	for i := range s.Endpoints {
		if s.Endpoints[i].ID == id {
			return &s.Endpoints[i]
		}
	}
	return nil
}

func storeKey(store string) string { return "store." + store }

// Limits on what a caller may put in an endpoint.
const (
	maxEventFilters = 32
	maxEventType    = 64
)

var eventTypeRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

func validStore(store string) error {
	if !protocol.ValidName(store) {
		return badRequest("store %q: want 1-32 letters, digits, _ or -, starting with a letter or digit", store)
	}
	return nil
}

func (s *Service) validEvents(events []string) ([]string, error) {
	if len(events) > maxEventFilters {
		return nil, badRequest("%d event types; at most %d", len(events), maxEventFilters)
	}
	var out []string
	for _, e := range events {
		if !eventTypeRE.MatchString(e) {
			return nil, badRequest("event type %q: want 1-%d letters, digits, '.', '_' or '-'", e, maxEventType)
		}
		if len(s.cfg.EventTypes) > 0 && !slices.Contains(s.cfg.EventTypes, e) {
			return nil, badRequest("unknown event type %q; known: %v", e, s.cfg.EventTypes)
		}
		if !slices.Contains(out, e) {
			out = append(out, e)
		}
	}
	return out, nil
}

func newEndpointID() string {
	b := make([]byte, 12)
	rand.Read(b) // never fails (crypto/rand)
	return "ep_" + hex.EncodeToString(b)
}

// Create registers an endpoint and returns it with its signing secret,
// which is shown only here. Errors: bad_request (store, URL, filter),
// too_many_webhooks (a cap), unavailable (the engine).
func (s *Service) Create(ctx context.Context, ne NewEndpoint) (Endpoint, string, error) {
	if err := validStore(ne.Store); err != nil {
		return Endpoint{}, "", err
	}
	u, err := s.guard.checkURL(ne.URL, s.cfg.MaxURLLength)
	if err != nil {
		return Endpoint{}, "", err
	}
	events, err := s.validEvents(ne.Events)
	if err != nil {
		return Endpoint{}, "", err
	}
	// The total is counted in this hub's view: two hubs creating at once
	// can pass it by a few, the per-store cap (checked in the write) not.
	if n := s.endpointCount(); n >= s.cfg.MaxEndpoints {
		return Endpoint{}, "", tooMany("the hub has %d webhook endpoints, its limit", n)
	}
	rec := endpointRecord{
		ID: newEndpointID(), URL: u.String(), Events: events, Secret: newSecret(),
		CreatedAt: time.Now().UTC().Truncate(time.Millisecond),
	}
	// A full store is refused before anything is created for the new
	// endpoint (the write below checks again, atomically).
	if sr, _, err := s.readStore(ctx, ne.Store); err != nil {
		return Endpoint{}, "", err
	} else if len(sr.Endpoints) >= s.cfg.MaxEndpointsPerStore {
		return Endpoint{}, "", tooMany("store %q has %d webhook endpoints, the limit", ne.Store, len(sr.Endpoints))
	}
	// The consumer first: once the record is visible, tasks may be queued
	// for it, and the hub that delivers them must find it.
	if err := s.ensureTaskConsumer(ctx, rec.ID); err != nil {
		return Endpoint{}, "", unavailable("create the endpoint's queue", err)
	}
	_, err = s.updateStore(ctx, ne.Store, func(sr *storeRecord) error {
		if len(sr.Endpoints) >= s.cfg.MaxEndpointsPerStore {
			return tooMany("store %q has %d webhook endpoints, the limit", ne.Store, len(sr.Endpoints))
		}
		sr.Endpoints = append(sr.Endpoints, rec)
		return nil
	})
	if err != nil {
		s.deleteTaskConsumer(context.WithoutCancel(ctx), rec.ID)
		return Endpoint{}, "", err
	}
	s.log.Info("webhook endpoint created", "store", ne.Store, "endpoint", rec.ID, "url", rec.URL, "events", rec.Events)
	return rec.public(ne.Store), rec.Secret, nil
}

// List returns a store's endpoints, oldest first.
func (s *Service) List(ctx context.Context, store string) ([]Endpoint, error) {
	if err := validStore(store); err != nil {
		return nil, err
	}
	sr, _, err := s.readStore(ctx, store)
	if err != nil {
		return nil, err
	}
	out := make([]Endpoint, 0, len(sr.Endpoints))
	for i := range sr.Endpoints {
		out = append(out, sr.Endpoints[i].public(store))
	}
	return out, nil
}

// Get returns one of a store's endpoints; an endpoint of another store is
// not_found, as if it did not exist.
func (s *Service) Get(ctx context.Context, store, id string) (Endpoint, error) {
	if err := validStore(store); err != nil {
		return Endpoint{}, err
	}
	sr, _, err := s.readStore(ctx, store)
	if err != nil {
		return Endpoint{}, err
	}
	if r := sr.find(id); r != nil {
		return r.public(store), nil
	}
	return Endpoint{}, notFound(store, id)
}

// Delete removes an endpoint, its pending deliveries and its log.
func (s *Service) Delete(ctx context.Context, store, id string) error {
	if err := validStore(store); err != nil {
		return err
	}
	_, err := s.updateStore(ctx, store, func(sr *storeRecord) error {
		i := slices.IndexFunc(sr.Endpoints, func(r endpointRecord) bool { return r.ID == id })
		if i < 0 {
			return notFound(store, id)
		}
		sr.Endpoints = slices.Delete(sr.Endpoints, i, i+1)
		return nil
	})
	if err != nil {
		return err
	}
	// The record is gone, so no hub queues more for it; what is queued and
	// logged goes too.
	s.deleteTaskConsumer(ctx, id)
	if err := s.purge(ctx, s.tasks, taskSubject(id)); err != nil {
		s.log.Warn("webhook: purge a deleted endpoint's deliveries", "endpoint", id, "err", err)
	}
	if err := s.purge(ctx, s.logs, logSubject(id)); err != nil {
		s.log.Warn("webhook: purge a deleted endpoint's log", "endpoint", id, "err", err)
	}
	s.log.Info("webhook endpoint deleted", "store", store, "endpoint", id)
	return nil
}

// Enable re-enables a disabled endpoint: it receives the events that
// happen from now on (those of the time it was disabled are not queued).
func (s *Service) Enable(ctx context.Context, store, id string) (Endpoint, error) {
	if err := validStore(store); err != nil {
		return Endpoint{}, err
	}
	if _, err := s.Get(ctx, store, id); err != nil {
		return Endpoint{}, err
	}
	// Its queue is kept while it is disabled; this restores it should
	// anything have removed it. Whatever a hub queued while it was being
	// disabled goes: it receives the events that follow, none of before.
	if err := s.ensureTaskConsumer(ctx, id); err != nil {
		return Endpoint{}, unavailable("create the endpoint's queue", err)
	}
	if err := s.purge(ctx, s.tasks, taskSubject(id)); err != nil {
		return Endpoint{}, unavailable("empty the endpoint's queue", err)
	}
	var out Endpoint
	_, err := s.updateStore(ctx, store, func(sr *storeRecord) error {
		r := sr.find(id)
		if r == nil {
			return notFound(store, id)
		}
		if r.enabled() {
			out = r.public(store)
			return errUnchanged
		}
		r.DisabledAt, r.DisabledReason, r.FailingSince = nil, "", nil
		out = r.public(store)
		return nil
	})
	if err != nil {
		return Endpoint{}, err
	}
	s.log.Info("webhook endpoint enabled", "store", store, "endpoint", id)
	return out, nil
}

// Pending returns how many deliveries wait for an endpoint, in flight
// included.
func (s *Service) Pending(ctx context.Context, store, id string) (int, error) {
	if _, err := s.Get(ctx, store, id); err != nil {
		return 0, err
	}
	info, err := s.js.Consumer(ctx, tasksStream, id)
	if err != nil {
		return 0, unavailable("read the endpoint's queue", err)
	}
	ci := info.CachedInfo()
	return int(ci.NumPending) + ci.NumAckPending, nil
}

// errUnchanged tells updateStore that fn changed nothing: no write.
var errUnchanged = errors.New("unchanged")

// readStore reads a store's record from the bucket (not the view: the API
// answers with what is stored, whichever hub wrote it).
func (s *Service) readStore(ctx context.Context, store string) (storeRecord, uint64, error) {
	var sr storeRecord
	e, err := s.kv.Get(ctx, storeKey(store))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return sr, 0, nil
	}
	if err != nil {
		return sr, 0, unavailable("read the store's endpoints", err)
	}
	if err := json.Unmarshal(e.Value(), &sr); err != nil {
		return sr, 0, fmt.Errorf("store %s: stored endpoints unreadable: %w", store, err)
	}
	return sr, e.Revision(), nil
}

// updateStore applies fn to a store's record with compare-and-set, again
// on a conflict with another writer, and applies the result to this hub's
// view at once (so that the caller's next event sees it). fn returning
// errUnchanged skips the write; any other error is returned as is.
func (s *Service) updateStore(ctx context.Context, store string, fn func(*storeRecord) error) (storeRecord, error) {
	key := storeKey(store)
	for range 50 {
		sr, rev, err := s.readStore(ctx, store)
		if err != nil {
			return sr, err
		}
		if err := fn(&sr); err != nil {
			if errors.Is(err, errUnchanged) {
				return sr, nil
			}
			return sr, err
		}
		data, err := json.Marshal(sr)
		if err != nil {
			return sr, err
		}
		var newRev uint64
		switch {
		case rev == 0:
			newRev, err = s.kv.Create(ctx, key, data)
		default:
			newRev, err = s.kv.Update(ctx, key, data, rev)
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue // another hub wrote in between: read again
		}
		if err == nil {
			// On disk before the caller is told (the engine's group sync).
			err = s.eng.Sync(ctx)
		}
		if err != nil {
			return sr, unavailable("store the endpoints", err)
		}
		s.applyStore(store, newRev, &sr)
		return sr, nil
	}
	return storeRecord{}, &Error{Code: CodeUnavailable, Msg: "too many concurrent changes to the store's endpoints; retry"}
}
