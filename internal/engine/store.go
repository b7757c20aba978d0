package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamSpec describes a stream the hub needs: which CAPS topics it stores and
// for how long. Applications (parcel, chat) declare theirs; the hub creates them.
type StreamSpec struct {
	Name              string
	Topics            []string // CAPS topic patterns, e.g. "parcel.>"
	MaxAge            time.Duration
	MaxMsgsPerSubject int64 // e.g. 50 for a chat room's history
	MaxBytes          int64
	Duplicates        time.Duration // de-duplication window for message ids
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
		Duplicates:        spec.Duplicates,
		Discard:           jetstream.DiscardOld,
	}
	if cfg.MaxMsgsPerSubject == 0 {
		cfg.MaxMsgsPerSubject = -1
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = -1
	}
	if cfg.Duplicates == 0 {
		cfg.Duplicates = 2 * time.Minute
	}
	s, err := e.JS.CreateOrUpdateStream(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", spec.Name, err)
	}
	return s, nil
}

// KVSpec describes a key-value bucket.
type KVSpec struct {
	Bucket  string
	History uint8
	TTL     time.Duration // age after which an entry expires (0 = never)
}

// EnsureKV creates the bucket or updates it to spec. It is idempotent.
func (e *Engine) EnsureKV(ctx context.Context, spec KVSpec) (jetstream.KeyValue, error) {
	cfg := jetstream.KeyValueConfig{
		Bucket:   spec.Bucket,
		History:  max(spec.History, 1),
		TTL:      spec.TTL,
		Storage:  jetstream.FileStorage,
		Replicas: e.Replicas,
	}
	kv, err := e.JS.CreateOrUpdateKeyValue(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("kv bucket %s: %w", spec.Bucket, err)
	}
	return kv, nil
}

// IsNotFound reports whether err means a missing stream, consumer or key.
func IsNotFound(err error) bool {
	return errors.Is(err, jetstream.ErrKeyNotFound) ||
		errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, jetstream.ErrConsumerNotFound)
}
