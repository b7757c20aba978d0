package engine

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamSpec describes a stream the hub needs: which CAPS topics it stores,
// for how long and how much of them. Applications (parcel, chat) declare
// theirs; the hub creates them. A zero limit is no limit, so every stream a
// client can write to should set MaxBytes and MaxAge (docs/SECURITY.md).
type StreamSpec struct {
	Name              string
	Topics            []string // CAPS topic patterns, e.g. "parcel.>"
	MaxAge            time.Duration
	MaxMsgsPerSubject int64 // e.g. 50 for a chat room's history
	MaxBytes          int64
	MaxMsgs           int64
	// MaxMsgSize is the largest message the stream stores, payload and
	// headers; a larger one is refused (IsTooLarge).
	MaxMsgSize int32
	// Discard says what happens when MaxBytes or MaxMsgs is reached: the
	// zero value, jetstream.DiscardOld, drops the oldest messages (a log);
	// jetstream.DiscardNew refuses the new one (IsFull), for a stream whose
	// messages must not be lost to make room.
	Discard    jetstream.DiscardPolicy
	Duplicates time.Duration // de-duplication window for message ids
}

// EnsureStream creates the stream or updates it to spec. It is idempotent.
func (e *Engine) EnsureStream(ctx context.Context, spec StreamSpec) (jetstream.Stream, error) {
	subjects := make([]string, len(spec.Topics))
	for i, t := range spec.Topics {
		subjects[i] = Subject(t)
	}
	cfg := jetstream.StreamConfig{
		Name:              spec.Name,
		Subjects:          subjects,
		Storage:           jetstream.FileStorage,
		Retention:         jetstream.LimitsPolicy,
		Replicas:          e.Replicas,
		MaxAge:            spec.MaxAge,
		MaxMsgsPerSubject: spec.MaxMsgsPerSubject,
		MaxBytes:          spec.MaxBytes,
		MaxMsgs:           spec.MaxMsgs,
		MaxMsgSize:        spec.MaxMsgSize,
		Duplicates:        spec.Duplicates,
		Discard:           spec.Discard,
	}
	// JetStream's "no limit" is -1.
	for _, n := range []*int64{&cfg.MaxMsgsPerSubject, &cfg.MaxBytes, &cfg.MaxMsgs} {
		if *n <= 0 {
			*n = -1
		}
	}
	if cfg.MaxMsgSize <= 0 {
		cfg.MaxMsgSize = -1
	}
	if cfg.Duplicates == 0 {
		cfg.Duplicates = 2 * time.Minute
	}
	var s jetstream.Stream
	err := e.retryPlacement(ctx, "stream "+spec.Name, func(ctx context.Context) error {
		var err error
		s, err = e.ensureStream(ctx, cfg, false)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", spec.Name, err)
	}
	return s, nil
}

// EnsureStreamConfig creates the stream described by a full JetStream
// configuration, or updates it to that configuration; it is idempotent. It
// is for engine-internal streams that no CAPS topic names (their subjects are
// outside SubjectPrefix, so no client can subscribe to them) and that need
// settings StreamSpec does not offer, such as a work-queue retention or
// per-subject discard. The replica count is the engine's, as for EnsureStream.
func (e *Engine) EnsureStreamConfig(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	var s jetstream.Stream
	err := e.retryPlacement(ctx, "stream "+cfg.Name, func(ctx context.Context) error {
		var err error
		s, err = e.ensureStream(ctx, cfg, false)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", cfg.Name, err)
	}
	return s, nil
}

// ensureStream creates the stream, and only when one with another
// configuration exists reads it and updates it. Create comes first because
// it is idempotent (an identical stream is simply returned) and because every
// hub of a cluster runs this at start, often at the same moment: a stream
// info or update request that arrives while another hub's create of the same
// replicated stream is in flight is not answered until it times out.
//
// For a bucket's stream (bucket true), reads are served directly by any
// replica only when there is one replica; see EnsureKV.
func (e *Engine) ensureStream(ctx context.Context, want jetstream.StreamConfig, bucket bool) (jetstream.Stream, error) {
	want.Replicas = e.Replicas
	want.AllowDirect = bucket && want.Replicas <= 1
	s, err := e.JS.CreateStream(ctx, want)
	if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return s, err
	}
	cur, err := e.JS.Stream(ctx, want.Name)
	if err != nil {
		return nil, err
	}
	have := cur.CachedInfo().Config
	want.Replicas = e.replicasOf(want.Name, have.Replicas)
	want.AllowDirect = bucket && want.Replicas <= 1
	if sameStream(have, want) {
		return cur, nil
	}
	e.log.Info("engine: updating stream", "stream", want.Name, "replicas", want.Replicas)
	return e.JS.UpdateStream(ctx, want)
}

// sameStream compares the fields EnsureStream sets (the server fills in others).
func sameStream(a, b jetstream.StreamConfig) bool {
	return slices.Equal(slices.Sorted(slices.Values(a.Subjects)), slices.Sorted(slices.Values(b.Subjects))) &&
		a.Storage == b.Storage && a.Retention == b.Retention && a.Replicas == b.Replicas &&
		a.MaxAge == b.MaxAge && a.MaxMsgsPerSubject == b.MaxMsgsPerSubject && a.MaxBytes == b.MaxBytes &&
		a.MaxMsgs == b.MaxMsgs && a.MaxMsgSize == b.MaxMsgSize &&
		a.Duplicates == b.Duplicates && a.Discard == b.Discard && a.AllowDirect == b.AllowDirect &&
		a.AllowRollup == b.AllowRollup && a.DenyDelete == b.DenyDelete &&
		a.DiscardNewPerSubject == b.DiscardNewPerSubject
}

// replicasOf returns the replica count an existing stream should have:
// e.Replicas when the operator chose it, else the one it has, so a hub
// started while part of the cluster is down (and counting fewer servers)
// never scales streams down, and hubs that count differently never fight.
// An operator changes the count of existing streams with --replicas.
func (e *Engine) replicasOf(name string, have int) int {
	if !e.autoReplicas || have <= 0 {
		return e.Replicas
	}
	if have != e.Replicas {
		e.log.Info("engine: keeping the replica count of an existing stream (pass --replicas to change it)",
			"stream", name, "replicas", have, "auto", e.Replicas)
	}
	return have
}

// retryPlacement runs op until it succeeds, ctx ends, or it fails for a
// reason waiting cannot fix. A JetStream cluster refuses to create replicated
// streams while it has no leader or too few servers up to place the
// replicas; the hub then waits, saying so every few seconds.
func (e *Engine) retryPlacement(ctx context.Context, what string, op func(context.Context) error) error {
	start := time.Now()
	var last time.Time
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := op(actx)
		cancel()
		if err == nil || !placementRetryable(err) || ctx.Err() != nil {
			if code := apiErrorCode(err); code == errCodeReplicasNotSupported {
				return fmt.Errorf("%w (the NATS server is not in a cluster: start the hub with --replicas 1)", err)
			}
			return err
		}
		// A blip (a create racing another hub's) is retried quietly; a wait
		// that lasts is reported every few seconds.
		if time.Since(start) >= time.Second && time.Since(last) >= 5*time.Second {
			e.log.Warn("waiting for the engine to create "+what+": "+placementReason(err, e.Replicas)+"; retrying",
				"replicas", e.Replicas, "waited", time.Since(start).Round(time.Second), "err", err)
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (gave up waiting: %w)", err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// errNotVisibleYet: a stream was created, but the server answering the next
// request has not applied its creation yet.
var errNotVisibleYet = errors.New("created but not visible yet")

// placementRetryable reports whether a stream or bucket creation error may
// go away by itself: the cluster is electing a leader, or some of its
// servers are not (yet) up.
func placementRetryable(err error) bool {
	if errors.Is(err, errNotVisibleYet) {
		return true
	}
	switch apiErrorCode(err) {
	case errCodeClusterNoPeers, errCodeClusterNotAvail, errCodeInsufficientResources:
		return true
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrConnectionReconnecting)
}

func placementReason(err error, replicas int) string {
	switch apiErrorCode(err) {
	case errCodeClusterNoPeers, errCodeInsufficientResources:
		return fmt.Sprintf("the cluster cannot place %d replicas now (too few JetStream servers up, or out of storage); "+
			"if it has fewer than %d servers, start the hub with --replicas 1", replicas, replicas)
	case errCodeClusterNotAvail:
		return "the JetStream cluster has no leader: " + electionRule
	}
	if errors.Is(err, errNotVisibleYet) {
		return "the cluster has not finished creating it"
	}
	return "JetStream did not answer in time"
}

// KVSpec describes a key-value bucket.
type KVSpec struct {
	Bucket  string
	History uint8
	TTL     time.Duration // age after which an entry expires (0 = never)
	// MaxBytes bounds the bucket's size (0 = no limit). A full bucket
	// refuses new keys (IsFull) but still takes a new value of an existing
	// key that is no larger than the one it replaces.
	MaxBytes int64
	// MaxValueSize bounds one value (0 = no limit beyond the engine's).
	MaxValueSize int32
}

var bucketNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// EnsureKV creates the bucket or updates it to spec, and binds it. It is
// idempotent.
//
// A replicated bucket answers reads from its stream leader only (direct gets
// off). With direct gets any replica answers a read, and a follower that has
// not yet applied a write answers with the value before it: a hub would not
// see the order another hub has just stored, and the parcel dispatcher would
// refuse its driver ("no such order"); the cluster tests caught exactly that.
// Read from the leader, a bucket gives every hub read-your-writes. A
// single-replica bucket keeps direct gets: its one server is always current.
//
// The bucket's stream is laid out as nats.go's CreateKeyValue lays it out
// (the KV_<bucket> stream of the JetStream key-value design), so that the
// jetstream KeyValue API binds to it; it is created (and updated) here rather
// than by CreateKeyValue, which would turn direct gets back on.
func (e *Engine) EnsureKV(ctx context.Context, spec KVSpec) (jetstream.KeyValue, error) {
	if !bucketNameRE.MatchString(spec.Bucket) {
		return nil, fmt.Errorf("kv bucket %q: a name is letters, digits, _ and -", spec.Bucket)
	}
	if spec.History > jetstream.KeyValueMaxHistory {
		return nil, fmt.Errorf("kv bucket %s: history %d is more than %d", spec.Bucket, spec.History, jetstream.KeyValueMaxHistory)
	}
	history := max(int64(spec.History), 1)
	dup := 2 * time.Minute
	if spec.TTL > 0 && spec.TTL < dup {
		dup = spec.TTL
	}
	cfg := jetstream.StreamConfig{
		Name:              "KV_" + spec.Bucket,
		Subjects:          []string{"$KV." + spec.Bucket + ".>"},
		MaxMsgsPerSubject: history,
		MaxBytes:          spec.MaxBytes,
		MaxAge:            spec.TTL,
		MaxMsgSize:        spec.MaxValueSize,
		Storage:           jetstream.FileStorage,
		AllowRollup:       true,
		DenyDelete:        true,
		Duplicates:        dup,
		MaxMsgs:           -1,
		MaxConsumers:      -1,
		Discard:           jetstream.DiscardNew,
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = -1
	}
	if cfg.MaxMsgSize <= 0 {
		cfg.MaxMsgSize = -1
	}
	var kv jetstream.KeyValue
	err := e.retryPlacement(ctx, "bucket "+spec.Bucket, func(ctx context.Context) error {
		if _, err := e.ensureStream(ctx, cfg, true); err != nil {
			return err
		}
		var err error
		kv, err = e.JS.KeyValue(ctx, spec.Bucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			// Just created: the server that answered has not applied it yet.
			return fmt.Errorf("%w: %w", errNotVisibleYet, err)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("kv bucket %s: %w", spec.Bucket, err)
	}
	return kv, nil
}

// IsTooLarge reports whether err is the engine refusing a message or value
// larger than its stream's MaxMsgSize.
func IsTooLarge(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.ErrorCode == errCodeMessageTooLarge ||
		apiErr.ErrorCode == errCodeStoreFailed && strings.Contains(apiErr.Description, "too large")
}

// IsFull reports whether err is the engine refusing a message because its
// stream (or bucket) is at a limit and discards new messages: MaxBytes,
// MaxMsgs, or MaxMsgsPerSubject with a per-subject discard.
func IsFull(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeStoreFailed &&
		strings.Contains(apiErr.Description, "maximum")
}

// IsNotFound reports whether err means a missing stream, consumer or key.
func IsNotFound(err error) bool {
	return errors.Is(err, jetstream.ErrKeyNotFound) ||
		errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, jetstream.ErrConsumerNotFound)
}

// storeAttempt bounds one attempt of PublishStored for a message with an id.
const storeAttempt = 2 * time.Second

// PublishStored stores m in its stream and returns the engine's
// acknowledgement. A message with a message id (the Nats-Msg-Id header) is
// sent again, with the same id, when an attempt gets no answer within
// storeAttempt: when the hub's NATS connection has just moved to another
// server, or a stream is electing a new leader, an answer can be lost for
// good (the hub's reply subject may not yet be known on the server that
// answers), and the stream's de-duplication makes the repeat safe: the message
// is stored once and the answer carries its sequence. A message without an id
// is sent once, since a repeat could store it twice.
func (e *Engine) PublishStored(ctx context.Context, m *nats.Msg) (*jetstream.PubAck, error) {
	if m.Header.Get(nats.MsgIdHdr) == "" {
		return e.JS.PublishMsg(ctx, m)
	}
	for {
		actx, cancel := context.WithTimeout(ctx, storeAttempt)
		ack, err := e.JS.PublishMsg(actx, m)
		cancel()
		if err == nil || ctx.Err() != nil || !storeRetryable(err) {
			return ack, err
		}
		e.log.Debug("engine: store attempt failed, sending again with the same message id", "subject", m.Subject, "err", err)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Retry runs op until it succeeds, fails for a reason waiting cannot fix
// (storeRetryable says which may pass), or ctx ends; each attempt has 5 s.
// For the first reads and writes of a stream or bucket just created, which
// a cluster answers "no response from stream" while it elects the new
// stream's leader (a hub starting beside others failed so: "resume key: no
// response from stream").
func Retry(ctx context.Context, op func(context.Context) error) error {
	wait := 50 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := op(actx)
		cancel()
		if err == nil || !storeRetryable(err) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (gave up waiting: %w)", err, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// storeRetryable: the attempt got no answer (timeout), or no stream leader
// took it (no responders while one is elected), or the connection was moving.
func storeRetryable(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrDisconnected)
}
