package parcel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/internal/engine"
)

// Headers of a stored order event besides the engine's own.
const (
	// keyHeader carries the digest of the client's message id (keyDigest):
	// part of the order's state, compared only within that order, so no
	// client can affect another order with it (the engine's de-duplication
	// uses the hub's event id instead).
	keyHeader = "Caps-Key"
)

// orderStore reads and writes order events in the parcel stream: the one
// place the parcel service talks to the engine about orders.
//
// Every write is conditional: it carries the stream sequence of the order's
// last event as JetStream's Nats-Expected-Last-Subject-Sequence over the
// order's wildcard (Nats-Expected-Last-Subject-Sequence-Subject:
// parcel.*.<orderID>.>), so a write made against a state that has changed
// since — another hub, another session — is refused by the engine and
// changes nothing. Its message id is the hub's (eventIDFor).
//
// A cache of the last record of recent orders saves the read before a
// write: a write from a stale entry is refused by the engine like any other
// race, and the dispatcher reads the order then and judges again. Only a
// successful write trusts the cache; a refusal or a retry recognised is
// confirmed against a fresh read.
type orderStore struct {
	// save stores a message and returns once it is as durable as the
	// engine's policy says (hub.Host.Store, engine.Engine.Store): for what a
	// client is told is done. put stores it and returns once the engine has
	// it, which with the embedded engine's group sync is on disk with the
	// next sync, within ~200 ms (a JetStream publish): for the assignment
	// recorded while a pickup is handed out, which waits for no one.
	save, put func(ctx context.Context, m *nats.Msg) (*jetstream.PubAck, error)
	stream    jetstream.Stream
	cache     *recordCache
	// committed is the room the orders take in the stream, as this hub
	// knows it: what is stored plus what the orders in flight will still
	// store (orderFootprint), measured on the engine every few seconds (every
	// hub's orders), plus the whole lifecycle of each order this hub accepted
	// since. New orders are refused on it, so that the orders accepted can
	// always finish, however fast new ones arrive.
	committed atomic.Int64
	// reserved counts, ever growing, the bytes reserved for orders this hub
	// accepted: a measurement keeps those reserved while it ran
	// (setMeasured), which its reading of the engine may not include.
	reserved atomic.Int64
}

// reserve holds n bytes of the store for an order just accepted.
func (s *orderStore) reserve(n int64) {
	s.reserved.Add(n)
	s.committed.Add(n)
}

// setMeasured makes measured, read from the engine by a measurement that
// began when reserved was mark, the committed room, plus what was reserved
// since mark. Storing measured alone lost those: a sweep measuring while a
// vendor posted orders took them back, the store accepted more orders than
// it had room to finish, and accepted orders got stuck on a full stream
// (TestStoreFullRefusesNewOrdersOnly under -race). An order reserved during
// the read may be counted twice, which only refuses new orders a little
// early until the next measurement.
func (s *orderStore) setMeasured(mark, measured int64) {
	for {
		cur := s.committed.Load()
		if s.committed.CompareAndSwap(cur, measured+s.reserved.Load()-mark) {
			return
		}
	}
}

// errConflict: the order changed since the state a write was judged against.
var errConflict = errors.New("the order changed meanwhile")

// errNoOrder: no event of that order is stored.
var errNoOrder = ErrNoSuchOrder

// last returns an order's last record and its sequence: from the cache
// when fresh is false and it has one, else from the stream leader. store
// is the order's store if the caller knows it ("" if not): the read is
// faster, and if the order is of another store, it is found all the same.
// It returns errNoOrder when the order has no event.
func (s *orderStore) last(ctx context.Context, id, store string, fresh bool) (*Record, uint64, error) {
	if !fresh {
		if r, seq, ok := s.cache.get(id); ok {
			return r, seq, nil
		}
	}
	// Not a direct get: the stream leader answers, so a hub reads what any
	// other hub has written (a follower may lag behind).
	pattern := orderPattern("*", id)
	if store != "" {
		pattern = orderPattern(store, id)
	}
	m, err := s.stream.GetLastMsgForSubject(ctx, engine.Subject(pattern))
	if errors.Is(err, jetstream.ErrMsgNotFound) && store != "" {
		return s.last(ctx, id, "", true) // of another store, or none
	}
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		s.cache.drop(id)
		return nil, 0, errNoOrder
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read order %s: %w", id, err)
	}
	r, err := decodeRecord(m.Data, m.Header)
	if err != nil {
		return nil, 0, fmt.Errorf("order %s, event %d: %w", id, m.Sequence, err)
	}
	s.cache.put(id, r, m.Sequence)
	return r, m.Sequence, nil
}

// records returns every stored record of an order, oldest first, with the
// sequence of the last (errNoOrder when there is none).
func (s *orderStore) records(ctx context.Context, id string) ([]*Record, uint64, error) {
	subj := engine.Subject(orderPattern("*", id))
	var recs []*Record
	var seq, last uint64
	for range maxOrderEvents {
		m, err := s.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, 0, fmt.Errorf("read order %s: %w", id, err)
		}
		r, err := decodeRecord(m.Data, m.Header)
		if err != nil {
			return nil, 0, fmt.Errorf("order %s, event %d: %w", id, m.Sequence, err)
		}
		recs = append(recs, r)
		last, seq = m.Sequence, m.Sequence+1
	}
	if len(recs) == 0 {
		return nil, 0, errNoOrder
	}
	return recs, last, nil
}

// maxOrderEvents bounds how many events of one order are read.
const maxOrderEvents = 512

// write stores r as the order's next event after its event prevSeq (0 for a
// new order), and returns once it is durable (save). It returns errConflict
// when the order's last event is not prevSeq any more: for a new order,
// when any store has an event with its id; for the next events, when the
// order (its store's) has moved on.
//
// Every stored transition goes through this function, so the engine's
// batched store (group commit, issue 13 item 2) is a one-line change here.
func (s *orderStore) write(ctx context.Context, r *Record, prevSeq uint64) (uint64, []byte, error) {
	return s.writeWith(ctx, s.save, r, prevSeq)
}

// record is write without waiting for the sync to disk (put): an
// assignment. A power cut before the next sync undoes it: the pickup is
// handed out again after the restart, and if it goes to another driver the
// first one's in-transit is refused (not-holder) — never two holders.
// Waiting for a sync before every hand-over serialised the drivers' queue
// (measured with group sync: orders p99 3.6–5.5× raw JetStream's).
func (s *orderStore) record(ctx context.Context, r *Record, prevSeq uint64) (uint64, []byte, error) {
	return s.writeWith(ctx, s.put, r, prevSeq)
}

func (s *orderStore) writeWith(ctx context.Context, store func(context.Context, *nats.Msg) (*jetstream.PubAck, error), r *Record, prevSeq uint64) (uint64, []byte, error) {
	r.EventID = eventIDFor(r, prevSeq)
	data := appendRecord(make([]byte, 0, 512), r)
	h := nats.Header{
		nats.MsgIdHdr:                           []string{r.EventID},
		jetstream.ExpectedLastSubjSeqHeader:     []string{strconv.FormatUint(prevSeq, 10)},
		jetstream.ExpectedLastSubjSeqSubjHeader: []string{engine.Subject(expectPattern(r, prevSeq))},
	}
	if r.key != "" {
		h[keyHeader] = []string{r.key}
	}
	m := &nats.Msg{Subject: engine.Subject(topicOf(r)), Data: data, Header: h}
	ack, err := store(ctx, m)
	for wait := 10 * time.Millisecond; inProcess(err) && wait < time.Second; wait *= 2 {
		// A clustered stream is storing the very same event for someone
		// else right now: once it has, this write meets it (a duplicate, or
		// a wrong last sequence) and the caller judges again.
		select {
		case <-ctx.Done():
			return 0, nil, fmt.Errorf("store %s of order %s: %w", r.Event, r.OrderID, err)
		case <-time.After(wait):
		}
		ack, err = store(ctx, m)
	}
	if err != nil {
		if isConflict(err) {
			s.cache.drop(r.OrderID)
			return 0, nil, errConflict
		}
		return 0, nil, fmt.Errorf("store %s of order %s: %w", r.Event, r.OrderID, err)
	}
	if ack.Duplicate {
		// The engine holds this very event already: the same transition
		// from the same state, written by another hub or session (a
		// clustered stream checks the message id before the expected
		// sequence). Not this write's doing: the caller reads the order and
		// judges again (a retry of its own is recognised there).
		s.cache.drop(r.OrderID)
		return 0, nil, errConflict
	}
	s.cache.put(r.OrderID, r, ack.Sequence)
	if r.Event == EventPickup && r.Attempt == 1 {
		// Later records are a little larger (a driver, a longer id).
		s.reserve(lifecycleEvents * (storedSize(m) + int64(2*len(r.EventID))))
	}
	return ack.Sequence, data, nil
}

// expectPattern is the subjects whose last sequence a write of r after
// prevSeq expects: every store's events of the id for a new order (another
// store may not reuse it), the order's own store's afterwards. Every write
// but the first of one order names the same pattern, so a cluster also
// orders concurrent writes of one order before proposing them.
func expectPattern(r *Record, prevSeq uint64) string {
	if prevSeq == 0 {
		return orderPattern("*", r.OrderID)
	}
	return orderPattern(r.Store, r.OrderID)
}

// lifecycleEvents is how many events an order stores when all goes well
// (pickup, assigned, in-transit, delivered).
const lifecycleEvents = 4

// measure sets committed from the engine: the bytes stored, plus, for each
// order in flight, the events it has still to store at the stream's average
// event size. An order is in flight when it has a pickup and none of the
// finishing events, counted by subject: each order has one subject of each.
func (s *orderStore) measure(ctx context.Context) (stored, committed int64, err error) {
	mark := s.reserved.Load()
	info, err := s.stream.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	count := func(pattern string) (int64, error) {
		c, err := s.stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
			FilterSubject: engine.Subject(pattern), DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
			AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true, InactiveThreshold: time.Minute,
		})
		if err != nil {
			return 0, err
		}
		n := int64(c.CachedInfo().NumPending)
		_ = s.stream.DeleteConsumer(ctx, c.CachedInfo().Name)
		return n, nil
	}
	var inFlight int64
	for i, p := range []string{Topic("*", "*", EventPickup, ""), Topic("*", "*", EventDelivered, "*"), Topic("*", "*", EventReturned, "*"), Topic("*", "*", EventCancelled, "")} {
		n, err := count(p)
		if err != nil {
			return 0, 0, fmt.Errorf("count orders on %s: %w", p, err)
		}
		if i == 0 {
			inFlight += n
		} else {
			inFlight -= n
		}
	}
	stored = int64(info.State.Bytes)
	avg := int64(0)
	if info.State.Msgs > 0 {
		avg = stored / int64(info.State.Msgs)
	}
	committed = stored + max(inFlight, 0)*(lifecycleEvents-1)*avg
	s.setMeasured(mark, committed)
	return stored, s.committed.Load(), nil
}

// storedSize is about what the file store counts for m: its record header
// and checksum, subject, headers and data.
func storedSize(m *nats.Msg) int64 {
	n := 22 + 8 + len(m.Subject) + len(m.Data) + len("NATS/1.0\r\n\r\n")
	n += 64 // the engine's own headers and index entries
	for k, vs := range m.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return int64(n)
}

// isConflict reports whether a conditional store lost its race.
// jsErrDuplicateInProcess is JetStream's "duplicate message id is in
// process" (a clustered stream proposing the same message id meanwhile).
const jsErrDuplicateInProcess = 10158

// inProcess reports whether err is a write of a message id a clustered
// stream is storing at this moment.
func inProcess(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrDuplicateInProcess
}

func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return false
}

// topicOf is the topic r is stored on.
func topicOf(r *Record) string {
	return Topic(r.Store, r.OrderID, r.Event, r.Driver)
}

func decodeRecord(data []byte, h nats.Header) (*Record, error) {
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("corrupt order event: %w", err)
	}
	if r.OrderID == "" || r.Store == "" || r.Status == "" {
		return nil, errors.New("corrupt order event: no order id, store or status")
	}
	r.key = h.Get(keyHeader)
	return &r, nil
}

// recordCache keeps the last record of the most recent orders. It forgets
// the oldest first; a forgotten order is read again from the stream.
type recordCache struct {
	max int

	mu    sync.Mutex
	byID  map[string]cachedRecord
	order []string // insertion order, for forgetting
	next  int
}

type cachedRecord struct {
	r   *Record
	seq uint64
}

func newRecordCache(max int) *recordCache {
	return &recordCache{max: max, byID: make(map[string]cachedRecord, max)}
}

func (c *recordCache) get(id string) (*Record, uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byID[id]
	return e.r, e.seq, ok
}

func (c *recordCache) put(id string, r *Record, seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byID[id]; ok {
		if e.seq <= seq {
			c.byID[id] = cachedRecord{r, seq}
		}
		return
	}
	if len(c.order) < c.max {
		c.order = append(c.order, id)
	} else {
		delete(c.byID, c.order[c.next])
		c.order[c.next] = id
		c.next = (c.next + 1) % c.max
	}
	c.byID[id] = cachedRecord{r, seq}
}

func (c *recordCache) drop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.byID, id) // its slot in order is reused when its turn comes
}
