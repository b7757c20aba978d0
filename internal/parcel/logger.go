package parcel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/protocol"
)

// LoggerConfig configures the event logger.
type LoggerConfig struct {
	ClientConfig
	// Name the logger connects under (default "logger").
	Name string
	// Pattern to record (default ">": everything the hub lets a logger see).
	Pattern string
	// Observe, when set, sees every event recorded (the demo keeps score).
	Observe func(topic string, payload []byte)
}

// LogLine is one line of the logger's output (JSON lines).
type LogLine struct {
	Time  time.Time `json:"time"`            // when the logger received it
	Event string    `json:"event"`           // "pickup", "client.connected", … or the logger's own "logger.*"
	Topic string    `json:"topic,omitempty"` // the topic it was published on
	// Payload is the event's payload: itself when it is JSON, else a string.
	Payload json.RawMessage `json:"payload,omitempty"`
	Hub     string          `json:"hub,omitempty"` // the hub it came through
	Error   string          `json:"error,omitempty"`
}

// RunLogger records every event the hub lets it see as JSON lines on Out,
// including client.connected and client.disconnected. It keeps going across
// hub restarts, reconnecting by itself and noting the gap with
// "logger.disconnected" and "logger.connected" lines. It returns nil when
// ctx ends, or an error when the hub stays unreachable past Timeout.
func RunLogger(ctx context.Context, cfg LoggerConfig) error {
	cfg.defaults()
	if cfg.Name == "" {
		cfg.Name = "logger"
	}
	if cfg.Pattern == "" {
		cfg.Pattern = ">"
	}
	l := &eventLogger{cfg: cfg}
	userState := cfg.Options.OnState
	cfg.Options.OnState = func(st client.State) {
		switch st {
		case client.StateReconnecting:
			l.write(LogLine{Time: time.Now().UTC(), Event: "logger.disconnected"})
		case client.StateConnected:
			if l.connectedBefore.Swap(true) {
				l.write(LogLine{Time: time.Now().UTC(), Event: "logger.connected"})
			}
		}
		if userState != nil {
			userState(st)
		}
	}
	userErr := cfg.Options.OnError
	cfg.Options.OnError = func(err error) {
		if errors.Is(err, client.ErrSlowConsumer) {
			l.write(LogLine{Time: time.Now().UTC(), Event: "logger.dropped", Error: err.Error()})
		}
		if userErr != nil {
			userErr(err)
		}
	}
	s, err := dial(ctx, cfg.ClientConfig, protocol.RoleLogger, cfg.Name)
	if err != nil {
		return err
	}
	defer s.Close()
	l.s = s
	if _, err := s.Subscribe(ctx, cfg.Pattern, l.record, client.Buffer(16384)); err != nil {
		return fmt.Errorf("logger: subscribe to %q: %w", cfg.Pattern, err)
	}
	cfg.Log.Info("logger recording", "pattern", cfg.Pattern)
	cfg.ready()
	select {
	case <-ctx.Done():
		return nil
	case <-s.lost:
		return s.lostErr
	}
}

type eventLogger struct {
	cfg             LoggerConfig
	s               *session
	mu              sync.Mutex
	connectedBefore atomic.Bool
}

func (l *eventLogger) record(m *client.Msg) {
	hubAddr := ""
	if l.s != nil {
		hubAddr = l.s.Addr()
	}
	l.write(LogLine{
		Time:    time.Now().UTC(),
		Event:   EventName(m.Topic),
		Topic:   m.Topic,
		Payload: jsonOrString(m.Payload),
		Hub:     hubAddr,
	})
	if l.cfg.Observe != nil {
		l.cfg.Observe(m.Topic, m.Payload)
	}
}

func (l *eventLogger) write(line LogLine) {
	b, err := json.Marshal(line)
	if err != nil {
		return
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.cfg.Out.Write(b); err != nil {
		l.cfg.Log.Error("logger: write", "err", err)
	}
}

func jsonOrString(p []byte) json.RawMessage {
	if len(p) > 0 && json.Valid(p) {
		return p
	}
	b, _ := json.Marshal(string(p))
	return b
}
