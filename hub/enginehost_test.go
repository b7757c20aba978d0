package hub_test

import (
	"context"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/hub"
)

// engineApp keeps the Host it was given, for the test to use.
type engineApp struct{ host *hub.Host }

func (a *engineApp) Setup(_ context.Context, h *hub.Host) error { a.host = h; return nil }

// TestHostEngineAPI: an app's own stream (outside the topic space), stored
// messages with ids stored once, and topics refused where they do not belong.
func TestHostEngineAPI(t *testing.T) {
	app := &engineApp{}
	startHub(t, func(c *hub.Config) { c.Apps = []hub.App{app} })
	ctx := context.Background()
	x := app.host

	if _, err := x.EnsureStream(ctx, jetstream.StreamConfig{Name: "APP_OWN", Subjects: []string{"app.own.>"}}); err != nil {
		t.Fatal(err)
	}
	_, err := x.EnsureStream(ctx, jetstream.StreamConfig{Name: "APP_TOPICS", Subjects: []string{hub.Subject("orders.>")}})
	if err == nil || !strings.Contains(err.Error(), "AddStream") {
		t.Fatalf("a stream of topics through EnsureStream: %v", err)
	}
	m := &nats.Msg{Subject: "app.own.x", Data: []byte("one"), Header: nats.Header{nats.MsgIdHdr: []string{"id-1"}}}
	first, err := x.Store(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	again, err := x.Store(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Duplicate || again.Sequence != first.Sequence {
		t.Fatalf("stored twice: %+v then %+v", first, again)
	}
	kv, err := x.KeyValue(ctx, hub.BucketSpec{Bucket: "APP_KV"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if got := hub.TopicOf(hub.Subject("a.b")); got != "a.b" {
		t.Fatalf("TopicOf(Subject(a.b)) = %q", got)
	}
}
