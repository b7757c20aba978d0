package webhook

import (
	"context"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/engine"
)

// Engine is what the service needs of the engine. *engine.Engine is one;
// HostEngine makes one of the view a hub gives its apps, so the service
// runs as part of a hub.App.
type Engine interface {
	JetStream() jetstream.JetStream
	EnsureKV(ctx context.Context, spec engine.KVSpec) (jetstream.KeyValue, error)
	EnsureStreamConfig(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error)
	Store(ctx context.Context, m *nats.Msg, opts ...engine.StoreOption) (*jetstream.PubAck, error)
	Sync(ctx context.Context) error
}

// HostEngine is the engine as an app sees it through its hub.Host.
func HostEngine(h *hub.Host) Engine { return hostEngine{h} }

type hostEngine struct{ h *hub.Host }

func (e hostEngine) JetStream() jetstream.JetStream { return e.h.JetStream() }

func (e hostEngine) EnsureKV(ctx context.Context, spec engine.KVSpec) (jetstream.KeyValue, error) {
	return e.h.KeyValue(ctx, hub.BucketSpec{Bucket: spec.Bucket, History: spec.History, TTL: spec.TTL,
		MaxBytes: spec.MaxBytes, MaxValueSize: spec.MaxValueSize})
}

func (e hostEngine) EnsureStreamConfig(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	return e.h.EnsureStream(ctx, cfg)
}

// Store ignores opts: the service passes none.
func (e hostEngine) Store(ctx context.Context, m *nats.Msg, _ ...engine.StoreOption) (*jetstream.PubAck, error) {
	return e.h.Store(ctx, m)
}

func (e hostEngine) Sync(ctx context.Context) error { return e.h.Sync(ctx) }
