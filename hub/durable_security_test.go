package hub_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

// A durable name cannot be taken over: a client subscribing with another's
// durable name and a different pattern gets a durable of its own (the
// consumer is named after name and pattern), sees none of the owner's
// messages, and the owner finds everything that arrived meanwhile.
func TestDurableCannotBeRepointed(t *testing.T) {
	h := startHub(t, withStore)
	owner := dialRaw(t, h)
	owner.hello("client", "owner")
	owner.expect(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("store.a"), Key: []byte("vendor-a"), Flags: protocol.FlagManualAck}, protocol.OpOK, "")
	owner.c.Close()
	waitMetric(t, h, 0, "caps_connections", "role", "client")

	pub := dialRaw(t, h)
	pub.hello("client", "pub")
	pub.expect(&protocol.Frame{Op: protocol.OpPub, ID: 1, Topic: []byte("store.a"), Payload: []byte("for a")}, protocol.OpOK, "")

	thief := dialRaw(t, h)
	thief.hello("client", "thief")
	thief.expect(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("store.b"), Key: []byte("vendor-a")}, protocol.OpOK, "")
	thief.send(&protocol.Frame{Op: protocol.OpPing})
	if f := thief.nextOp(); f.Op != protocol.OpPong {
		t.Fatalf("thief got %s, want nothing of the owner's before its PONG", f)
	}
	thief.c.Close()

	back := dialRaw(t, h)
	back.hello("client", "owner-again")
	back.expect(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("store.a"), Key: []byte("vendor-a"), Flags: protocol.FlagManualAck}, protocol.OpOK, "")
	if m := back.nextOp(); m.Op != protocol.OpMsg || string(m.Payload) != "for a" {
		t.Fatalf("owner got %s, want what arrived while it was away", m)
	}
}

// Even if the engine's consumer is pointed at other topics behind the hub's
// back (by an operator, another program, an older hub sharing the engine),
// a member never receives a message outside the pattern it subscribed to.
func TestDurableDeliversOnlyWithinPattern(t *testing.T) {
	dir := t.TempDir()
	ns := startNATS(t, 0, dir)
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	h := startHub(t, func(c *hub.Config) { c.DataDir = ""; c.NATSURLs = ns.ClientURL(); withStore(c) })

	a := dialRaw(t, h)
	a.hello("client", "a")
	a.expect(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("store.a"), Key: []byte("d"), Flags: protocol.FlagManualAck}, protocol.OpOK, "")

	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	repoint := func(topic string) {
		t.Helper()
		c, err := js.Consumer(ctx, "TEST_STORE", hub.ConsumerName("d", "store.a"))
		if err != nil {
			t.Fatal(err)
		}
		cfg := c.CachedInfo().Config
		cfg.FilterSubject = hub.Subject(topic)
		if _, err := js.UpdateConsumer(ctx, "TEST_STORE", cfg); err != nil {
			t.Fatal(err)
		}
	}
	repoint("store.b")
	pub := dialRaw(t, h)
	pub.hello("client", "pub")
	pub.expect(&protocol.Frame{Op: protocol.OpPub, ID: 1, Topic: []byte("store.b"), Payload: []byte("not for a")}, protocol.OpOK, "")
	// Wait until the hub has been handed the store.b message and refused it.
	for deadline := time.Now().Add(20 * time.Second); ; {
		c, err := js.Consumer(ctx, "TEST_STORE", hub.ConsumerName("d", "store.a"))
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Delivered.Consumer > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the hub never consumed the repointed durable")
		}
		time.Sleep(10 * time.Millisecond)
	}
	repoint("store.a")
	pub.expect(&protocol.Frame{Op: protocol.OpPub, ID: 2, Topic: []byte("store.a"), Payload: []byte("for a")}, protocol.OpOK, "")
	if m := a.nextOp(); m.Op != protocol.OpMsg || string(m.Topic) != "store.a" {
		t.Fatalf("member of store.a got %s", m)
	}
}
