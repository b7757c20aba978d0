package parcel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/protocol"
)

// ClientConfig is what every parcel client (vendor, driver, logger, track)
// needs to reach the hub.
type ClientConfig struct {
	// Hub lists hub addresses, tried in turn (see client.Dial).
	Hub []string
	// Timeout is how long the hub may stay unreachable, at start or later,
	// before the client gives up with an error (default 30s).
	Timeout time.Duration
	// Options are the base client options (TLS, Token, Dialer…); Role and
	// Name are set by the client that uses them.
	Options client.Options
	// Out receives the lines people read (default io.Discard).
	Out io.Writer
	// Log receives diagnostics (default: discard).
	Log *slog.Logger
	// OnReady, when set, is called once the client is connected and
	// subscribed, ready to work.
	OnReady func()
}

func (c *ClientConfig) ready() {
	if c.OnReady != nil {
		c.OnReady()
	}
}

func (c *ClientConfig) defaults() {
	if c.Timeout <= 0 {
		c.Timeout = 30 * time.Second
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if len(c.Hub) == 0 {
		c.Hub = client.DefaultAddrs("")
	}
}

// ErrUnreachable is returned when the hub stays unreachable past the timeout.
var ErrUnreachable = errors.New("hub unreachable")

// session is a client connection with a watchdog: when the connection is
// down for longer than the timeout, lost is closed.
type session struct {
	*client.Conn
	lost    chan struct{}
	lostErr error
	once    sync.Once

	mu    sync.Mutex
	timer *time.Timer
}

// dial connects as role/name, giving up after cfg.Timeout.
func dial(ctx context.Context, cfg ClientConfig, role, name string) (*session, error) {
	s := &session{lost: make(chan struct{})}
	opts := cfg.Options
	opts.Role, opts.Name = role, name
	if opts.Logger == nil {
		opts.Logger = cfg.Log
	}
	userState := opts.OnState
	opts.OnState = func(st client.State) {
		s.watch(st, cfg.Timeout, strings.Join(cfg.Hub, ","))
		if userState != nil {
			userState(st)
		}
	}
	dctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	c, err := client.Dial(dctx, cfg.Hub, opts)
	if err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("hub %s refused %s %s: %w", strings.Join(cfg.Hub, ","), role, name, pe)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: %s not reachable within %s (%v)", ErrUnreachable, strings.Join(cfg.Hub, ","), cfg.Timeout, err)
	}
	s.Conn = c
	// A Conn that gives up by itself (the hub refused this identity on a
	// reconnect: a revoked token) ends the client like an unreachable hub.
	go func() {
		<-c.Done()
		if err := c.Err(); err != nil && !errors.Is(err, client.ErrClosed) {
			s.fail(fmt.Errorf("connection to %s ended: %w", strings.Join(cfg.Hub, ","), err))
		}
	}()
	return s, nil
}

func (s *session) watch(st client.State, timeout time.Duration, hubs string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch st {
	case client.StateReconnecting:
		if s.timer == nil {
			s.timer = time.AfterFunc(timeout, func() {
				s.fail(fmt.Errorf("%w: lost the connection to %s and could not get it back within %s", ErrUnreachable, hubs, timeout))
			})
		}
	case client.StateConnected, client.StateClosed:
		if s.timer != nil {
			s.timer.Stop()
			s.timer = nil
		}
	}
}

func (s *session) fail(err error) {
	s.once.Do(func() {
		s.lostErr = err
		close(s.lost)
	})
}

// Close closes the connection and stops the watchdog.
func (s *session) Close() error {
	s.mu.Lock()
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	s.mu.Unlock()
	return s.Conn.Close()
}

// permanent reports whether a publish error will not go away by retrying:
// the hub refused it.
func permanent(err error) bool {
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		return errors.Is(err, client.ErrClosed) || errors.Is(err, client.ErrTooLarge)
	}
	switch pe.Code {
	case protocol.CodeUnavailable, protocol.CodeRateLimited, protocol.CodeShuttingDown,
		protocol.CodeSlowConsumer, protocol.CodeHeartbeat, protocol.CodeInternal:
		return false
	}
	return true
}

// publish publishes with a message id until the hub stores it or refuses
// it. A publish whose answer was lost (the connection dropped) or that the
// hub could not store right now is sent again with the same id, which the
// hub stores once. It gives up after timeout.
func (s *session) publish(ctx context.Context, topic string, payload []byte, id string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	wait := 100 * time.Millisecond
	for {
		_, err := s.Publish(ctx, topic, payload, client.WithMsgID(id))
		if err == nil || permanent(err) {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w: %v", ErrUnreachable, err)
		}
		if !errors.Is(err, client.ErrDisconnected) {
			// The hub answered "not now": wait a little.
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("%w: %v", ErrUnreachable, err)
			}
			wait = min(2*wait, 2*time.Second)
		}
	}
}

// lines serialises whole lines onto a writer shared by many goroutines.
type lines struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lines) printf(format string, args ...any) {
	b := fmt.Appendf(nil, format, args...)
	if len(b) == 0 || b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(b)
}

// SyncWriter makes w safe for whole-line writes from many goroutines, as
// the clients of one demo share standard output.
func SyncWriter(w io.Writer) io.Writer { return &syncWriter{w: w} }

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// VendorDurable is the durable subscription name of store's notifications.
// Store names (protocol.ValidName) are valid in durable names as they are.
func VendorDurable(store string) string { return "vendor-" + store }

// msgID is the message id of a parcel event: a retry carries the same one.
func msgID(orderID, event string) string { return orderID + "." + event }
