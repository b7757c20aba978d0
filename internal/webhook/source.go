package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Event is what a source message becomes: one webhook message.
type Event struct {
	// ID identifies the event: it is the webhook-id header, the same on
	// every attempt, which receivers use to drop repeats. 1-128 of
	// A-Z a-z 0-9 _ - . :
	ID string
	// Type is the event type, e.g. "order.delivered".
	Type string
	// Time is when it happened (the payload's "timestamp").
	Time time.Time
	// Data is a JSON object: the payload's "data".
	Data json.RawMessage
}

var eventIDRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,128}$`)

// payload is the JSON body POSTed to an endpoint.
type payload struct {
	Type      string          `json:"type"`
	Timestamp string          `json:"timestamp"`
	Data      json.RawMessage `json:"data"`
}

// timestampLayout is RFC 3339 with milliseconds, in UTC.
const timestampLayout = "2006-01-02T15:04:05.000Z07:00"

// body checks ev and returns the JSON body of its webhook message.
func (s *Service) body(ev *Event) ([]byte, error) {
	if !eventIDRE.MatchString(ev.ID) {
		return nil, fmt.Errorf("event id %q: want 1-128 of A-Z a-z 0-9 _ - . :", ev.ID)
	}
	if !eventTypeRE.MatchString(ev.Type) {
		return nil, fmt.Errorf("event type %q: want 1-%d letters, digits, '.', '_' or '-'", ev.Type, maxEventType)
	}
	data := bytes.TrimSpace(ev.Data)
	if len(data) == 0 || data[0] != '{' || !json.Valid(data) {
		return nil, errors.New("event data is not a JSON object")
	}
	b, err := json.Marshal(payload{Type: ev.Type, Timestamp: ev.Time.UTC().Format(timestampLayout), Data: data})
	if err != nil {
		return nil, err
	}
	if len(b) > s.cfg.MaxEventBytes {
		return nil, fmt.Errorf("event body is %d bytes; the limit is %d", len(b), s.cfg.MaxEventBytes)
	}
	return b, nil
}

func (s *Service) ensureSourceConsumer(ctx context.Context) (jetstream.Consumer, error) {
	src := s.cfg.Source
	return s.js.CreateOrUpdateConsumer(ctx, src.Stream, jetstream.ConsumerConfig{
		Durable:        src.Durable,
		Description:    "CAPS webhooks: turns events into deliveries",
		FilterSubjects: src.Subjects,
		// Webhooks start with the events that follow their introduction,
		// not the stream's history; the durable keeps its place after that.
		DeliverPolicy: jetstream.DeliverNewPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       src.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: 256,
	})
}

// runSource reads the source until ctx ends, restarting the read after an
// error.
func (s *Service) runSource(ctx context.Context, cons jetstream.Consumer) {
	for ctx.Err() == nil {
		err := s.consumeSource(ctx, cons)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("webhook: source read ended; reading again", "stream", s.cfg.Source.Stream, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		if c, err := s.ensureSourceConsumer(ctx); err == nil {
			cons = c
		}
	}
}

func (s *Service) consumeSource(ctx context.Context, cons jetstream.Consumer) error {
	it, err := cons.Messages(jetstream.PullMaxMessages(64))
	if err != nil {
		return err
	}
	defer it.Stop()
	// Several events are handled at once: each waits for the engine to
	// store its tasks (an fsync each, with the hub's default), and those
	// waits overlap. Events need no order among themselves.
	var busy sync.WaitGroup
	defer busy.Wait()
	slots := make(chan struct{}, sourceConcurrency)
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return err
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err() // msg is handed again after AckWait
		}
		busy.Go(func() {
			defer func() { <-slots }()
			s.handleSource(ctx, msg)
		})
	}
}

// sourceConcurrency is how many source events one hub handles at once.
const sourceConcurrency = 16

// handleSource turns one source message into one task per endpoint that
// wants it, then acknowledges it. A failure before the ack leaves the
// message to be handed again; the tasks already written are then refused
// as duplicates (their message id is the event's and the endpoint's), so
// a repeat adds nothing.
func (s *Service) handleSource(ctx context.Context, msg jetstream.Msg) {
	ev, store, ok, err := s.mapEvent(msg)
	if err != nil {
		s.met.events.WithLabelValues("invalid").Inc()
		s.log.Error("webhook: source event not delivered", "subject", msg.Subject(), "err", err)
		s.settle(msg.Term())
		return
	}
	if !ok {
		s.met.events.WithLabelValues("ignored").Inc()
		s.settle(msg.Ack())
		return
	}
	meta, err := msg.Metadata()
	if err != nil {
		s.settle(msg.Term())
		return
	}
	if ev.ID == "" {
		ev.ID = s.cfg.Source.Stream + "-" + strconv.FormatUint(meta.Sequence.Stream, 10)
	}
	if ev.Time.IsZero() {
		ev.Time = meta.Timestamp
	}
	body, err := s.body(&ev)
	if err != nil {
		s.met.events.WithLabelValues("invalid").Inc()
		s.log.Error("webhook: source event not delivered", "subject", msg.Subject(), "seq", meta.Sequence.Stream, "err", err)
		s.settle(msg.Term())
		return
	}
	eps := s.wanting(store, ev.Type)
	for i := range eps {
		if err := s.queue(ctx, store, &eps[i], &ev, body); err != nil {
			if ctx.Err() != nil {
				return // stopping: the message is handed again
			}
			s.log.Warn("webhook: could not queue a delivery; the event is retried", "event", ev.ID, "endpoint", eps[i].ID, "err", err)
			s.settle(msg.NakWithDelay(time.Second))
			return
		}
	}
	if len(eps) == 0 {
		s.met.events.WithLabelValues("ignored").Inc()
	} else {
		s.met.events.WithLabelValues("queued").Inc()
	}
	s.settle(msg.Ack())
}

// mapEvent runs the application's mapper; a panic in it (a bug meeting an
// unexpected message) costs that message, not the hub.
func (s *Service) mapEvent(msg jetstream.Msg) (ev Event, store string, ok bool, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("the event mapper panicked: %v\n%s", p, debug.Stack())
		}
	}()
	ev, store, ok = s.cfg.Source.Map(msg)
	return ev, store, ok, nil
}

// queue writes the task of delivering ev to endpoint r. A backlog cap hit
// disables the endpoint that caused it; the event is then not queued for
// it (it is not an error: the others get theirs).
func (s *Service) queue(ctx context.Context, store string, r *endpointRecord, ev *Event, body []byte) error {
	m := nats.NewMsg(taskSubject(r.ID))
	m.Header.Set(nats.MsgIdHdr, ev.ID+"."+r.ID)
	m.Header.Set(hdrEventID, ev.ID)
	m.Header.Set(hdrEventType, ev.Type)
	m.Data = body
	for range 3 {
		// Store: the task is on disk before the source event is acknowledged.
		_, err := s.eng.Store(ctx, m)
		switch {
		case err == nil:
			return nil
		case storeError(err, "maximum messages per subject exceeded"):
			s.disable(ctx, store, r.ID, reasonBacklog, fmt.Sprintf(
				"%d deliveries were waiting, the most an endpoint may have: the receiver is not keeping up", s.cfg.MaxPending))
			return nil
		case storeError(err, "maximum bytes exceeded"):
			// The queue is full: the endpoint with the largest backlog
			// loses it, then this one is tried again.
			if err := s.disableLargestBacklog(ctx); err != nil {
				return err
			}
			if now, _, _, ok := s.lookup(r.ID); !ok || !now.enabled() {
				return nil // it was this endpoint: nothing is queued for it now
			}
		default:
			return err
		}
	}
	return errors.New("the deliveries queue stays full")
}

// storeError reports whether err is the engine refusing to store a message
// for the limit described by what (nats-server's error text).
func storeError(err error, what string) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Description == what
}

// disableLargestBacklog disables the endpoint with the most pending
// deliveries, which frees its share of the queue.
func (s *Service) disableLargestBacklog(ctx context.Context) error {
	info, err := s.tasks.Info(ctx, jetstream.WithSubjectFilter(taskPrefix+"*"))
	if err != nil {
		return fmt.Errorf("read the deliveries queue: %w", err)
	}
	var worst string
	var most uint64
	for subj, n := range info.State.Subjects {
		if n > most {
			worst, most = subj[len(taskPrefix):], n
		}
	}
	if worst == "" {
		return errors.New("the deliveries queue is full, yet no endpoint has a backlog")
	}
	_, store, _, ok := s.lookup(worst)
	if !ok {
		// Not in the view (deleted meanwhile): drop its tasks all the same.
		return s.purge(ctx, s.tasks, taskSubject(worst))
	}
	s.disable(ctx, store, worst, reasonBacklog, fmt.Sprintf(
		"the deliveries queue was full (%d bytes) and this endpoint had the largest backlog (%d deliveries)", info.State.Bytes, most))
	return nil
}

// settle logs a failed ack: the message is then handed again, which the
// de-duplication makes harmless.
func (s *Service) settle(err error) {
	if err != nil {
		s.log.Debug("webhook: ack failed", "err", err)
	}
}
