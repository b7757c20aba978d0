package hub

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/protocol"
)

// The engine as an App sees it: streams and buckets it declares by hub
// types, and, for what the hub does not wrap (an app's own consumers,
// key-value state, requests between hubs), the NATS connection and its
// JetStream context, which are nats.go's public types. An App built outside
// this module uses exactly these.

// StreamSpec declares a stream: which CAPS topics it stores and for how
// long. Publishes to its topics are acknowledged only once the engine has
// them, and they may be subscribed to durably and with history.
type StreamSpec struct {
	// Name of the JetStream stream (A-Z, 0-9, _ and -; by convention
	// upper case, e.g. "CAPS_PARCELS").
	Name string
	// Topics are CAPS topic patterns, e.g. "parcel.>".
	Topics []string
	// MaxAge drops messages older than this (0 = kept until a limit below).
	MaxAge time.Duration
	// MaxMsgsPerSubject keeps only the last n messages of each topic (0 = no
	// limit), e.g. a chat room's history.
	MaxMsgsPerSubject int64
	// MaxBytes bounds the stream's size (0 = no limit), and MaxMsgs its
	// number of messages; what happens when one is reached is Discard's.
	MaxBytes int64
	MaxMsgs  int64
	// MaxMsgSize is the largest message the stream stores, payload and
	// headers; a larger publish is refused with too_large.
	MaxMsgSize int32
	// Discard: the zero value, jetstream.DiscardOld, drops the oldest
	// messages to make room (a log); jetstream.DiscardNew refuses the new
	// one with store_full, for a stream whose messages must not be lost.
	Discard jetstream.DiscardPolicy
	// Duplicates is the window in which a message id is stored only once
	// (0 = two minutes).
	Duplicates time.Duration
}

// BucketSpec declares a key-value bucket.
type BucketSpec struct {
	// Bucket is the bucket's name (A-Z a-z 0-9 _ -).
	Bucket string
	// History is how many values of a key are kept (0 = 1).
	History uint8
	// TTL is the age after which an entry expires (0 = never).
	TTL time.Duration
	// MaxBytes bounds the bucket's size (0 = no limit): a full bucket
	// refuses new keys, but still takes a new value of an existing key no
	// larger than the one it replaces.
	MaxBytes int64
	// MaxValueSize bounds one value (0 = no limit beyond the engine's).
	MaxValueSize int32
}

// Subject returns the NATS subject a CAPS topic (or pattern) is stored and
// routed under in the engine: apps that read a stream with their own
// consumers filter on it.
func Subject(topic string) string { return engine.Subject(topic) }

// TopicOf returns the CAPS topic of a NATS subject the engine delivers.
func TopicOf(subject string) string { return engine.Topic(subject) }

// AddStream creates (idempotently) a stream and marks its topics as stored:
// publishes to them are acknowledged only once the engine has them, and they
// may be subscribed durably and with history.
func (x *Host) AddStream(ctx context.Context, spec StreamSpec) error {
	es := engine.StreamSpec{
		Name: spec.Name, Topics: spec.Topics, MaxAge: spec.MaxAge, MaxMsgsPerSubject: spec.MaxMsgsPerSubject,
		MaxBytes: spec.MaxBytes, MaxMsgs: spec.MaxMsgs, MaxMsgSize: spec.MaxMsgSize, Discard: spec.Discard,
		Duplicates: spec.Duplicates,
	}
	for _, t := range spec.Topics {
		if !protocol.ValidPattern([]byte(t)) {
			return fmt.Errorf("stream %s: invalid topic pattern %q", spec.Name, t)
		}
	}
	if _, err := x.h.eng.EnsureStream(ctx, es); err != nil {
		return err
	}
	x.h.addStored(spec.Name, spec.Topics)
	return nil
}

// KeyValue creates (idempotently) the bucket spec describes and returns it.
// On a cluster its reads come from the bucket's leader, so every hub reads
// its own writes and the other hubs'.
func (x *Host) KeyValue(ctx context.Context, spec BucketSpec) (jetstream.KeyValue, error) {
	return x.h.eng.EnsureKV(ctx, engine.KVSpec{
		Bucket: spec.Bucket, History: spec.History, TTL: spec.TTL, MaxBytes: spec.MaxBytes, MaxValueSize: spec.MaxValueSize,
	})
}

// JetStream returns the hub's JetStream context, for what an app does with
// the engine beyond AddStream and KeyValue (its own consumers, direct gets).
// Subjects are Subject(topic).
func (x *Host) JetStream() jetstream.JetStream { return x.h.eng.JS }

// NATS returns the hub's connection to the engine, for requests and
// subscriptions between the hubs of a cluster on subjects of an app's own
// (outside Subject's prefix, so no client can reach them).
func (x *Host) NATS() *nats.Conn { return x.h.eng.NC }

// EnsureStream creates (idempotently) a stream of an app's own from a full
// JetStream configuration, for what StreamSpec does not offer (a
// work-queue retention, per-subject discard). Its subjects must lie outside
// the CAPS topic space (not under Subject's prefix), so that no client can
// reach them; streams of topics are AddStream's. The replica count is the
// hub's, as for AddStream.
func (x *Host) EnsureStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	for _, subj := range cfg.Subjects {
		if strings.HasPrefix(subj, engine.SubjectPrefix) {
			return nil, fmt.Errorf("stream %s: subject %q is a CAPS topic; declare topics with AddStream", cfg.Name, subj)
		}
	}
	return x.h.eng.EnsureStreamConfig(ctx, cfg)
}

// Store stores m (a subject of a stream, with any JetStream headers: a
// message id, expectations) and returns the engine's acknowledgement, the
// way the hub stores its clients' publishes: within storeTimeout, once m is
// as durable as --sync-always says (on disk; concurrent stores share a sync,
// docs/ARCHITECTURE.md), and a message with an id (Nats-Msg-Id) is sent
// again when an attempt gets no answer (a NATS failover), which the stream's
// de-duplication makes safe. No permission or hook applies; for a topic,
// Subject(topic) is its subject.
func (x *Host) Store(ctx context.Context, m *nats.Msg) (*jetstream.PubAck, error) {
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	return x.h.eng.Store(ctx, m)
}

// Sync returns once everything the engine acknowledged before the call is
// on disk. An app that writes through JetStream or a bucket directly (not
// Store) calls it before it promises a client that the write is kept: with
// the embedded engine's group sync, nats-server does not fsync each write
// itself. It returns at once where the server syncs every write, or
// replication is the durability.
func (x *Host) Sync(ctx context.Context) error { return x.h.eng.Sync(ctx) }

// WaitDurable returns once a message a stream stored at stored (its
// JetStream timestamp, jetstream.MsgMetadata.Timestamp) is on disk. An app
// that hands stored messages to clients from consumers or direct gets of
// its own calls it first, as the hub does for durable subscriptions and
// history: usually at once, else after the next sync (milliseconds).
func (x *Host) WaitDurable(ctx context.Context, stored time.Time) error {
	return x.h.eng.WaitDurable(ctx, stored)
}

// LastMessages returns the last n stored messages matching pattern (a
// stored topic or pattern: AddStream's), oldest first, once they are on
// disk — what the hub replays as a subscription's history, for an app's own
// services (chat's history). The work is bounded by n, not by the stream:
// at most 2n messages are read, and nothing is left in the engine after.
// n is the app's to bound (a client's number must not reach it unchecked).
func (x *Host) LastMessages(ctx context.Context, pattern string, n int) ([]jetstream.Msg, error) {
	h := x.h
	stream := h.streamFor([]byte(pattern))
	if stream == "" {
		return nil, fmt.Errorf("%q is not a stored topic", pattern)
	}
	if n <= 0 {
		return nil, nil
	}
	msgs, err := h.lastStored(ctx, stream, pattern, n)
	if err != nil {
		return nil, fmt.Errorf("last messages of %s: %w", pattern, err)
	}
	if len(msgs) > n {
		msgs = msgs[len(msgs)-n:]
	}
	if len(msgs) > 0 {
		meta, err := msgs[len(msgs)-1].Metadata()
		if err != nil {
			return nil, fmt.Errorf("last messages of %s: %w", pattern, err)
		}
		if err := h.eng.WaitDurable(ctx, meta.Timestamp); err != nil {
			return nil, fmt.Errorf("last messages of %s: %w", pattern, err)
		}
	}
	return msgs, nil
}
