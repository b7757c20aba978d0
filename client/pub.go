package client

import (
	"context"
	"errors"
	"fmt"
	"unsafe"

	"github.com/caps-hub/caps/protocol"
)

// PubOpt configures a publish.
type PubOpt func(*pubOptions)

type pubOptions struct {
	key   string
	flags protocol.Flags
}

// WithMsgID sets the message id (the frame's key). On stored topics the
// engine de-duplicates by it: publishing again with the same id, for example
// after ErrDisconnected, stores the message once.
func WithMsgID(id string) PubOpt { return func(o *pubOptions) { o.key = id } }

// WithDurable makes the publish fail unless the topic is stored by the engine.
func WithDurable() PubOpt { return func(o *pubOptions) { o.flags |= protocol.FlagDurable } }

func pubFrame(topic string, payload []byte, opts []PubOpt) protocol.Frame {
	var o pubOptions
	for _, opt := range opts {
		opt(&o)
	}
	// Read-only views of the strings, not copies: the frame is only
	// validated and encoded (copied into the write buffer), never kept.
	return protocol.Frame{Op: protocol.OpPub, Flags: o.flags, Topic: bytesOf(topic), Key: bytesOf(o.key), Payload: payload}
}

// bytesOf returns the bytes of s without copying them; they must not be modified.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// Publish sends payload on topic and waits for the hub's answer. seq is the
// stream sequence the message was stored at (the message is on disk), or 0
// for a live topic. A refusal is a *protocol.Error (errors.As). When the
// connection is down Publish waits for it to come back, bounded by ctx; when
// it drops after the message was sent, the error wraps ErrDisconnected.
func (c *Conn) Publish(ctx context.Context, topic string, payload []byte, opts ...PubOpt) (uint64, error) {
	f := pubFrame(topic, payload, opts)
	if !protocol.ValidTopic(f.Topic) {
		return 0, fmt.Errorf("publish %q: %w", topic, badTopic())
	}
	cl, err := c.roundTrip(ctx, &f)
	if err != nil {
		return 0, fmt.Errorf("publish %q: %w", topic, err)
	}
	return cl.seq, nil
}

// PublishAsync queues payload for topic and returns without waiting for the
// hub (fire and forget, id 0). The hub reports a failure with an ERR that
// reaches Options.OnError. It fails at once with ErrDisconnected while the
// connection is down, and waits only while more than 4 MiB are already
// queued for the socket (backpressure; so does Publish).
func (c *Conn) PublishAsync(topic string, payload []byte, opts ...PubOpt) error {
	f := pubFrame(topic, payload, opts)
	if !protocol.ValidTopic(f.Topic) {
		return fmt.Errorf("publish %q: %w", topic, badTopic())
	}
	t := c.cur.Load()
	if t == nil || t.isDead() {
		if c.isClosed() {
			return fmt.Errorf("publish %q: %w", topic, ErrClosed)
		}
		return fmt.Errorf("publish %q: %w", topic, ErrDisconnected)
	}
	if n := f.Size() - protocol.HeaderLen; n > t.maxSend {
		return fmt.Errorf("publish %q: %d bytes, limit %d: %w", topic, n, t.maxSend, ErrTooLarge)
	}
	if err := t.enqueue(&f, true); err != nil {
		return fmt.Errorf("publish %q: %w", topic, err)
	}
	return nil
}

// Request sends payload to service ("parcel.track", "chat.who"…) and returns
// the reply. An unknown service is a *protocol.Error with code not_found.
func (c *Conn) Request(ctx context.Context, service string, payload []byte) ([]byte, error) {
	f := protocol.Frame{Op: protocol.OpReq, Topic: []byte(service), Payload: payload}
	cl, err := c.roundTrip(ctx, &f)
	if err != nil {
		return nil, fmt.Errorf("request %q: %w", service, err)
	}
	return cl.payload, nil
}

// Flush waits until the hub has read everything sent before it: it sends a
// PING and waits for the PONG. Useful after PublishAsync. When the
// connection is down it waits for it to come back (bounded by ctx).
func (c *Conn) Flush(ctx context.Context) error {
	for {
		t, err := c.transport(ctx)
		if err != nil {
			return fmt.Errorf("flush: %w", err)
		}
		cl := newCall()
		if err := t.flush(cl); err != nil {
			continue // died before the PING was queued
		}
		select {
		case <-cl.done:
			if cl.err != nil {
				return fmt.Errorf("flush: %w", cl.err)
			}
			return nil
		case <-ctx.Done():
			t.cancelFlush(cl)
			return fmt.Errorf("flush: %w", ctx.Err())
		}
	}
}

// roundTrip sends f with a fresh correlation id and waits for its answer.
// Until f is queued on a live connection, a lost connection only delays it.
func (c *Conn) roundTrip(ctx context.Context, f *protocol.Frame) (*call, error) {
	for {
		t, err := c.transport(ctx)
		if err != nil {
			return nil, err
		}
		f.ID = c.nextID()
		if n := f.Size() - protocol.HeaderLen; n > t.maxSend {
			return nil, fmt.Errorf("%d bytes, limit %d: %w", n, t.maxSend, ErrTooLarge)
		}
		cl := newCall()
		if err := t.register(f.ID, cl); err != nil {
			continue // died before anything was sent: wait for the next one
		}
		if err := t.enqueue(f, true); err != nil {
			t.unregister(f.ID)
			if errors.Is(err, ErrDisconnected) {
				continue
			}
			return nil, err
		}
		select {
		case <-cl.done:
			return cl, cl.err
		case <-ctx.Done():
			t.unregister(f.ID)
			return nil, ctx.Err()
		}
	}
}

func (c *Conn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

func badTopic() error {
	return &protocol.Error{Code: protocol.CodeBadTopic, Text: "invalid topic (checked locally)"}
}
