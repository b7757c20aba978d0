package engine

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A stream or bucket created without limits (as every one was before they
// had any) gets the limits of its spec when the hub starts again, and the
// engine then enforces them with errors the hub can name.
func TestLimitsAppliedToExistingStreamsAndBuckets(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := Start(ctx, Config{DataDir: t.TempDir(), Name: "limits", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	// Yesterday's stream: unbounded, keeps the oldest.
	if _, err := e.EnsureStream(ctx, StreamSpec{Name: "L", Topics: []string{"l.>"}}); err != nil {
		t.Fatal(err)
	}
	spec := StreamSpec{Name: "L", Topics: []string{"l.>"}, MaxAge: time.Hour, MaxBytes: 4096, MaxMsgs: 100,
		MaxMsgSize: 512, Discard: jetstream.DiscardNew}
	s, err := e.EnsureStream(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	c := s.CachedInfo().Config
	if c.MaxBytes != 4096 || c.MaxMsgs != 100 || c.MaxMsgSize != 512 || c.Discard != jetstream.DiscardNew || c.MaxAge != time.Hour {
		t.Fatalf("stream not updated to its limits: %+v", c)
	}

	pub := func(size int) error {
		_, err := e.PublishStored(ctx, &nats.Msg{Subject: Subject("l.x"), Data: bytes.Repeat([]byte("x"), size)})
		return err
	}
	if err := pub(1000); !IsTooLarge(err) || IsFull(err) {
		t.Fatalf("a message over MaxMsgSize: %v; want IsTooLarge", err)
	}
	var full error
	for range 40 { // 40 × ~400 bytes is well over 4096
		if full = pub(400); full != nil {
			break
		}
	}
	if !IsFull(full) || IsTooLarge(full) {
		t.Fatalf("a DiscardNew stream at MaxBytes: %v; want IsFull", full)
	}
	if info, _ := s.Info(ctx); info.State.Bytes > 4096 {
		t.Errorf("stream holds %d bytes, over its 4096", info.State.Bytes)
	}

	// Yesterday's bucket: unbounded.
	if _, err := e.EnsureKV(ctx, KVSpec{Bucket: "LB"}); err != nil {
		t.Fatal(err)
	}
	kv, err := e.EnsureKV(ctx, KVSpec{Bucket: "LB", TTL: time.Hour, MaxBytes: 2048, MaxValueSize: 256})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := e.JS.Stream(ctx, "KV_LB")
	if c := st.CachedInfo().Config; c.MaxBytes != 2048 || c.MaxMsgSize != 256 || c.MaxAge != time.Hour || c.Discard != jetstream.DiscardNew {
		t.Fatalf("bucket not updated to its limits: %+v", c)
	}
	if _, err := kv.Put(ctx, "big", bytes.Repeat([]byte("v"), 300)); !IsTooLarge(err) {
		t.Fatalf("a value over MaxValueSize: %v; want IsTooLarge", err)
	}
	var i int
	for i = 0; i < 40; i++ {
		if _, full = kv.Put(ctx, "k"+string(rune('a'+i)), bytes.Repeat([]byte("v"), 200)); full != nil {
			break
		}
	}
	if !IsFull(full) {
		t.Fatalf("a full bucket: %v; want IsFull", full)
	}
	// A full bucket still takes a new value of a key it has (presence refreshes).
	if _, err := kv.Put(ctx, "ka", bytes.Repeat([]byte("w"), 200)); err != nil {
		t.Errorf("rewriting an existing key in a full bucket: %v", err)
	}
}
