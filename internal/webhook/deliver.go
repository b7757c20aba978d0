package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"
)

// Attempt is one delivery attempt, as the delivery log keeps it.
type Attempt struct {
	EventID   string    `json:"eventId"`
	EventType string    `json:"eventType"`
	Attempt   int       `json:"attempt"` // 1 for the first
	At        time.Time `json:"at"`
	// Status is the receiver's HTTP status (0 when there was no answer);
	// Error says what went wrong, if anything.
	Status     int    `json:"status,omitempty"`
	Error      string `json:"error,omitempty"`
	DurationMS int64  `json:"durationMs"`
	// Result is delivered, retry, gave_up or disabled (see the Result
	// constants); NextRetry is when a retry is due.
	Result    string     `json:"result"`
	NextRetry *time.Time `json:"nextRetry,omitempty"`
	// Response is the start of the receiver's answer, for debugging.
	Response string `json:"response,omitempty"`
	Hub      string `json:"hub,omitempty"`
}

// Bounds on what is read of a receiver's answer.
const (
	maxResponseRead = 4 << 10 // read (then the connection is dropped)
	maxResponseLog  = 256     // kept in the log
	maxErrorLog     = 300
)

// bookkeepingTimeout bounds the engine writes that follow an attempt.
const bookkeepingTimeout = 10 * time.Second

// runWorker delivers an endpoint's tasks until ctx ends (the endpoint was
// disabled or deleted, or the service stops).
func (s *Service) runWorker(ctx context.Context, id string) {
	for ctx.Err() == nil {
		err := s.consumeTasks(ctx, id)
		if ctx.Err() != nil {
			return
		}
		level := slog.LevelWarn
		if errors.Is(err, jetstream.ErrConsumerDeleted) {
			level = slog.LevelDebug // deleted on another hub: this one's watch stops the worker
		}
		s.log.Log(ctx, level, "webhook: delivery worker restarting", "endpoint", id, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (s *Service) consumeTasks(ctx context.Context, id string) error {
	// The queue exists (Create made it); this brings its settings to this
	// version's (in-flight bound, AckWait), and restores it should anything
	// have removed it. Only for an endpoint this hub knows: one deleted
	// meanwhile must not get its queue back.
	if !s.knows(id) {
		return errors.New("unknown endpoint")
	}
	if err := s.ensureTaskConsumer(ctx, id); err != nil {
		return fmt.Errorf("open the endpoint's queue: %w", err)
	}
	cons, err := s.js.Consumer(ctx, tasksStream, id)
	if err != nil {
		return fmt.Errorf("open the endpoint's queue: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(s.cfg.MaxInFlight))
	if err != nil {
		return err
	}
	defer it.Stop()
	var inflight sync.WaitGroup
	defer inflight.Wait()
	slots := make(chan struct{}, s.cfg.MaxInFlight)
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return err
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			s.settle(msg.Nak())
			return ctx.Err()
		}
		inflight.Add(1)
		go func() {
			defer inflight.Done()
			defer func() { <-slots }()
			s.attempt(ctx, id, msg)
		}()
	}
}

// attempt makes one delivery attempt of a task and settles it: ack on
// success, a delayed nak for a retry, term when it is given up.
func (s *Service) attempt(ctx context.Context, id string, msg jetstream.Msg) {
	r, store, key, ok := s.lookup(id)
	if !ok || !r.enabled() {
		s.met.deliveries.WithLabelValues(ResultDropped).Inc()
		s.settle(msg.Term())
		return
	}
	meta, err := msg.Metadata()
	if err != nil {
		s.settle(msg.Term())
		return
	}
	a := Attempt{
		EventID: msg.Headers().Get(hdrEventID), EventType: msg.Headers().Get(hdrEventType),
		Attempt: int(meta.NumDelivered), Hub: s.cfg.HubName,
	}
	s.post(ctx, r.URL, key, msg.Data(), &a)
	if ctx.Err() != nil && a.Status == 0 {
		// Cut short by a stop, a disabling or a deletion: hand it back now,
		// unlogged. (An attempt that got its answer is recorded below.)
		s.settle(msg.Nak())
		return
	}
	s.met.attempt.Observe(float64(a.DurationMS) / 1000)
	// The bookkeeping outlives the worker: disabling the endpoint (below)
	// stops it, and what follows must still be written.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bookkeepingTimeout)
	defer cancel()
	switch {
	case a.Status >= 200 && a.Status < 300:
		a.Result = ResultDelivered
		s.settle(msg.Ack())
		s.markSuccess(ctx, store, r)
	case a.Status == http.StatusGone:
		a.Result = ResultDisabled
		s.settle(msg.Term())
		s.disable(ctx, store, id, reasonGone, "the receiver answered 410 Gone")
	default:
		// Retried while younger than the retry window, so its last attempt
		// comes after the window: an endpoint that failed all along has then
		// been failing for longer than the window, and is disabled below.
		if time.Since(meta.Timestamp) > s.cfg.RetryWindow {
			a.Result = ResultGaveUp
			s.settle(msg.Term())
		} else {
			delay := s.backoff(a.Attempt)
			a.Result = ResultRetry
			next := time.Now().Add(delay).UTC().Truncate(time.Millisecond)
			a.NextRetry = &next
			s.settle(msg.NakWithDelay(delay))
		}
		if s.markFailure(ctx, store, r, &a) {
			a.Result, a.NextRetry = ResultDisabled, nil
		}
	}
	s.met.deliveries.WithLabelValues(a.Result).Inc()
	s.appendLog(ctx, id, &a)
}

// post makes the HTTP request and fills in a's outcome.
func (s *Service) post(ctx context.Context, target string, key, body []byte, a *Attempt) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	start := time.Now()
	a.At = start.UTC().Truncate(time.Millisecond)
	defer func() { a.DurationMS = time.Since(start).Milliseconds() }()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		a.Error = clip(err.Error(), maxErrorLog)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "caps-webhooks/1")
	req.Header.Set("webhook-id", a.EventID)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(start.Unix(), 10))
	req.Header.Set("webhook-signature", sign(key, a.EventID, start, body))
	resp, err := s.client.Do(req)
	if err != nil {
		a.Error = s.describe(err)
		return
	}
	defer resp.Body.Close()
	a.Status = resp.StatusCode
	got, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponseRead))
	if len(got) > maxResponseLog {
		got = got[:maxResponseLog]
	}
	if len(got) > 0 {
		a.Response = clip(string(bytes.ToValidUTF8(got, []byte("?"))), maxResponseLog)
	}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		a.Error = "redirect not followed (to " + clip(resp.Header.Get("Location"), 200) + ")"
	} else if resp.StatusCode >= 300 {
		a.Error = "HTTP " + strconv.Itoa(resp.StatusCode)
	}
}

// describe says in a line why a request failed.
func (s *Service) describe(err error) string {
	var refused *RefusedError
	switch {
	case errors.As(err, &refused):
		return refused.Error()
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("no answer within %s", s.cfg.RequestTimeout)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return clip(err.Error(), maxErrorLog)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// backoff is the wait before attempt n+1: BackoffBase doubled n-1 times,
// at most BackoffMax, randomised by ±20 % so that retries of many
// deliveries do not arrive together.
func (s *Service) backoff(n int) time.Duration {
	d := s.cfg.BackoffBase
	for i := 1; i < n && d < s.cfg.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, s.cfg.BackoffMax)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// markSuccess ends an endpoint's failing streak.
func (s *Service) markSuccess(ctx context.Context, store string, seen endpointRecord) {
	if seen.FailingSince == nil {
		return // the common case: no write
	}
	_, err := s.updateStore(ctx, store, func(sr *storeRecord) error {
		r := sr.find(seen.ID)
		if r == nil || r.FailingSince == nil {
			return errUnchanged
		}
		r.FailingSince = nil
		return nil
	})
	if err != nil {
		s.log.Warn("webhook: record a success", "endpoint", seen.ID, "err", err)
	}
}

// markFailure starts an endpoint's failing streak, or disables it when the
// streak is older than the retry window. It reports whether it disabled it.
func (s *Service) markFailure(ctx context.Context, store string, seen endpointRecord, a *Attempt) bool {
	now := time.Now().UTC().Truncate(time.Millisecond)
	if seen.FailingSince != nil && now.Sub(*seen.FailingSince) <= s.cfg.RetryWindow {
		return false // the streak is known, and not too long yet: no write
	}
	var since time.Time
	disabled := false
	_, err := s.updateStore(ctx, store, func(sr *storeRecord) error {
		disabled = false // fn runs again after a write conflict
		r := sr.find(seen.ID)
		if r == nil || !r.enabled() {
			return errUnchanged
		}
		if r.FailingSince == nil {
			r.FailingSince = &now
			return nil
		}
		if now.Sub(*r.FailingSince) <= s.cfg.RetryWindow {
			return errUnchanged
		}
		since = *r.FailingSince
		r.DisabledAt = &now
		r.DisabledReason = fmt.Sprintf("no successful delivery since %s, longer than the retry window (%s); last attempt: %s",
			since.Format(time.RFC3339), s.cfg.RetryWindow, a.outcome())
		disabled = true
		return nil
	})
	if err != nil {
		s.log.Warn("webhook: record a failure", "endpoint", seen.ID, "err", err)
		return false
	}
	if disabled {
		s.disabled(ctx, store, seen.ID, reasonFailing, "failing since "+since.Format(time.RFC3339))
	}
	return disabled
}

func (a *Attempt) outcome() string {
	if a.Error != "" {
		return a.Error
	}
	return "HTTP " + strconv.Itoa(a.Status)
}

// disable disables an endpoint (if it is enabled) for reason and drops its
// pending deliveries.
func (s *Service) disable(ctx context.Context, store, id, reason, why string) {
	now := time.Now().UTC().Truncate(time.Millisecond)
	changed := false
	_, err := s.updateStore(ctx, store, func(sr *storeRecord) error {
		changed = false // fn runs again after a write conflict
		r := sr.find(id)
		if r == nil || !r.enabled() {
			return errUnchanged
		}
		r.DisabledAt, r.DisabledReason = &now, why
		changed = true
		return nil
	})
	if err != nil {
		s.log.Warn("webhook: disable an endpoint", "endpoint", id, "err", err)
		return
	}
	if changed {
		s.disabled(ctx, store, id, reason, why)
	}
}

// disabled follows an endpoint's disabling: its queue is emptied (a
// disabled endpoint keeps no backlog; see the package doc), and it is
// counted and logged.
func (s *Service) disabled(ctx context.Context, store, id, reason, why string) {
	s.met.disabled.WithLabelValues(reason).Inc()
	s.log.Warn("webhook endpoint disabled", "store", store, "endpoint", id, "reason", why)
	if err := s.purge(ctx, s.tasks, taskSubject(id)); err != nil {
		s.log.Warn("webhook: drop a disabled endpoint's deliveries", "endpoint", id, "err", err)
	}
}

// appendLog adds an attempt to the endpoint's delivery log.
func (s *Service) appendLog(ctx context.Context, id string, a *Attempt) {
	data, err := json.Marshal(a)
	if err == nil {
		_, err = s.js.Publish(ctx, logSubject(id), data)
	}
	if err != nil {
		s.log.Warn("webhook: delivery log", "endpoint", id, "err", err)
	}
}

// Log returns an endpoint's last delivery attempts, newest first, at most
// limit of them (0 or more than Config.LogSize: LogSize).
func (s *Service) Log(ctx context.Context, store, id string, limit int) ([]Attempt, error) {
	if _, err := s.Get(ctx, store, id); err != nil {
		return nil, err
	}
	if limit <= 0 || limit > s.cfg.LogSize {
		limit = s.cfg.LogSize
	}
	var out []Attempt
	// The stream keeps LogSize attempts per endpoint; walk them from the
	// oldest, one "next message on this subject" read each.
	for seq := uint64(1); len(out) <= s.cfg.LogSize; {
		m, err := s.logs.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(logSubject(id)))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, unavailable("read the delivery log", err)
		}
		var a Attempt
		if err := json.Unmarshal(m.Data, &a); err == nil {
			out = append(out, a)
		}
		seq = m.Sequence + 1
	}
	slices.Reverse(out)
	return out[:min(limit, len(out))], nil
}
