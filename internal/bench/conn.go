package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/caps-hub/caps/client"
)

// pubsubConn is the part of a client that the live scenarios need, for a
// CAPS hub (through the client library) and for NATS (through nats.go), so
// that both see exactly the same load.
type pubsubConn interface {
	// Subscribe calls fn, from one goroutine, for every message on topic.
	// payload is valid only during the call.
	Subscribe(ctx context.Context, topic string, fn func(payload []byte)) error
	// Publish queues a message without waiting for an answer.
	Publish(topic string, payload []byte) error
	// Flush waits until the server has seen everything published so far.
	Flush(ctx context.Context) error
	// Err returns the first asynchronous error (rate limits, slow consumer…).
	Err() error
	Close()
}

// asyncErr keeps the first asynchronous error of a connection.
type asyncErr struct {
	mu  sync.Mutex
	err error
}

func (a *asyncErr) set(err error) {
	a.mu.Lock()
	if a.err == nil {
		a.err = err
	}
	a.mu.Unlock()
}

func (a *asyncErr) get() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// dial connects to tg as a client called name. buffer is the number of
// deliveries a subscription may hold before its handler runs.
func (e *env) dial(ctx context.Context, tg *target, name string, buffer int) (pubsubConn, error) {
	if tg.kind == kindNATS {
		ae := &asyncErr{}
		nc, err := nats.Connect(tg.addr, nats.Name(name), nats.NoReconnect(),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { ae.set(err) }))
		if err != nil {
			return nil, fmt.Errorf("connect to %s: %w", tg.name, err)
		}
		return &natsPubSub{nc: nc, ae: ae}, nil
	}
	ae := &asyncErr{}
	c, err := client.Dial(ctx, []string{tg.addr}, client.Options{
		Name:        name,
		Token:       tg.token,
		NoReconnect: true,
		OnError:     ae.set,
	})
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", tg.name, err)
	}
	return &capsPubSub{c: c, ae: ae, buffer: buffer}, nil
}

type capsPubSub struct {
	c      *client.Conn
	ae     *asyncErr
	buffer int
}

func (p *capsPubSub) Subscribe(ctx context.Context, topic string, fn func([]byte)) error {
	_, err := p.c.Subscribe(ctx, topic, func(m *client.Msg) { fn(m.Payload) }, client.Buffer(p.buffer))
	return err
}

func (p *capsPubSub) Publish(topic string, payload []byte) error {
	return p.c.PublishAsync(topic, payload)
}

func (p *capsPubSub) Flush(ctx context.Context) error { return p.c.Flush(ctx) }

func (p *capsPubSub) Err() error {
	if err := p.ae.get(); err != nil {
		return err
	}
	if err := p.c.Err(); err != nil && !errors.Is(err, client.ErrClosed) {
		return err
	}
	return nil
}

func (p *capsPubSub) Close() { p.c.Close() }

type natsPubSub struct {
	nc *nats.Conn
	ae *asyncErr
}

func (p *natsPubSub) Subscribe(ctx context.Context, topic string, fn func([]byte)) error {
	sub, err := p.nc.Subscribe(topic, func(m *nats.Msg) { fn(m.Data) })
	if err != nil {
		return err
	}
	// The window keeps what is pending far below any limit; no limit means no
	// silent drop if it did not.
	_ = sub.SetPendingLimits(-1, -1)
	return p.Flush(ctx)
}

func (p *natsPubSub) Publish(topic string, payload []byte) error { return p.nc.Publish(topic, payload) }

func (p *natsPubSub) Flush(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second) // nats.go wants a deadline
	defer cancel()
	return p.nc.FlushWithContext(ctx)
}

func (p *natsPubSub) Err() error {
	if err := p.ae.get(); err != nil {
		return err
	}
	if err := p.nc.LastError(); err != nil {
		return err
	}
	return nil
}

func (p *natsPubSub) Close() { p.nc.Close() }

// closeAll closes every connection in cs.
func closeAll(cs []pubsubConn) {
	var wg sync.WaitGroup
	for _, c := range cs {
		if c != nil {
			wg.Add(1)
			go func() { defer wg.Done(); c.Close() }()
		}
	}
	wg.Wait()
}
