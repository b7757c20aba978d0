package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/internal/engine"
)

// Engine names. Subjects are outside engine.SubjectPrefix: no client topic
// reaches them, so no client can read a task (or subscribe to a secret).
const (
	bucketName  = "CAPS_WEBHOOKS"      // one key per store: its endpoints
	tasksStream = "CAPS_WEBHOOK_TASKS" // pending deliveries, a work queue
	logStream   = "CAPS_WEBHOOK_LOG"   // attempts, the last LogSize per endpoint
	taskPrefix  = "caps.wh.task."
	logPrefix   = "caps.wh.log."

	// Headers of a task message: the event it carries.
	hdrEventID   = "Caps-Event-Id"
	hdrEventType = "Caps-Event-Type"
)

func taskSubject(id string) string { return taskPrefix + id }
func logSubject(id string) string  { return logPrefix + id }

// taskDuplicates is the task stream's de-duplication window: a source event
// handed again within it (after a crash, before its ack) queues nothing new.
// Past it a repeat is possible, and is delivered with the same webhook-id.
const taskDuplicates = 10 * time.Minute

// Service is the webhook machinery of one hub: endpoints, the source
// consumer and the delivery workers. See the package documentation.
type Service struct {
	cfg       Config
	eng       Engine
	js        jetstream.JetStream
	log       *slog.Logger
	met       *metrics
	guard     guard
	client    *http.Client
	transport *http.Transport

	kv    jetstream.KeyValue
	tasks jetstream.Stream
	logs  jetstream.Stream

	mu      sync.Mutex
	stores  map[string]viewStore // this hub's view of the bucket
	where   map[string]string    // endpoint id → store
	workers map[string]context.CancelFunc
	runCtx  context.Context // nil until Start; workers live in it
	stopped bool

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// viewStore is a store's record as this hub last saw it.
type viewStore struct {
	rev  uint64
	rec  storeRecord
	keys map[string][]byte // endpoint id → signing key
}

// New checks the configuration and registers the metrics. It does no I/O;
// Start brings the service up.
func New(cfg Config) (*Service, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	g := guard{allowHTTP: cfg.AllowHTTP, allowPrivate: cfg.AllowPrivate}
	client, tr := newClient(g, cfg.TLS, cfg.RequestTimeout, cfg.MaxInFlight)
	return &Service{
		cfg: cfg, eng: cfg.Engine, js: cfg.Engine.JetStream(), log: cfg.Logger.With("component", "webhook"), met: met,
		guard: g, client: client, transport: tr,
		stores: map[string]viewStore{}, where: map[string]string{}, workers: map[string]context.CancelFunc{},
	}, nil
}

// ackWait is the task consumers' AckWait: an attempt in flight for longer
// is presumed lost (its hub died) and handed to another hub.
func (s *Service) ackWait() time.Duration { return 2*s.cfg.RequestTimeout + 5*time.Second }

// Start creates the bucket and streams (idempotently), loads the endpoints,
// starts a worker for each enabled one and, with a Source, the source
// consumer. It returns once all that runs; the service stops when ctx ends
// or Stop is called.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	if s.runCtx != nil || s.stopped {
		s.mu.Unlock()
		return errors.New("webhook: Start called twice")
	}
	runCtx, cancel := context.WithCancel(ctx)
	s.runCtx, s.cancel = runCtx, cancel
	s.mu.Unlock()
	if err := s.start(ctx); err != nil {
		s.Stop()
		return err
	}
	return nil
}

func (s *Service) start(ctx context.Context) error {
	var err error
	if s.kv, err = s.eng.EnsureKV(ctx, engine.KVSpec{Bucket: bucketName, History: 1}); err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	s.tasks, err = s.eng.EnsureStreamConfig(ctx, jetstream.StreamConfig{
		Name:        tasksStream,
		Description: "CAPS webhook deliveries waiting for their endpoint (one subject per endpoint)",
		Subjects:    []string{taskPrefix + "*"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.WorkQueuePolicy,
		// Full is full: a new task is refused (and its endpoint disabled),
		// never an older one dropped to make room.
		Discard:              jetstream.DiscardNew,
		DiscardNewPerSubject: true,
		MaxMsgsPerSubject:    s.cfg.MaxPending,
		MaxBytes:             s.cfg.MaxQueueBytes,
		MaxMsgs:              -1,
		MaxMsgSize:           int32(s.cfg.MaxEventBytes + 4<<10),
		// Workers give a task up once it is older than the retry window;
		// the age limit only bounds the disk should no worker run for a day.
		MaxAge:     s.cfg.RetryWindow + s.cfg.BackoffMax + 24*time.Hour,
		Duplicates: taskDuplicates,
	})
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	s.logs, err = s.eng.EnsureStreamConfig(ctx, jetstream.StreamConfig{
		Name:              logStream,
		Description:       "CAPS webhook delivery attempts, the last ones of each endpoint",
		Subjects:          []string{logPrefix + "*"},
		Storage:           jetstream.FileStorage,
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		MaxMsgsPerSubject: int64(s.cfg.LogSize),
		MaxBytes:          int64(s.cfg.MaxEndpoints) * int64(s.cfg.LogSize) * 2048,
		MaxMsgs:           -1,
		MaxAge:            s.cfg.LogMaxAge,
		Duplicates:        time.Minute,
	})
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	ready := make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.watch(s.runCtx, ready)
	}()
	select {
	case <-ready:
	case <-ctx.Done():
		return fmt.Errorf("webhook: load endpoints: %w", ctx.Err())
	}
	if s.cfg.Source.Map != nil {
		cons, err := s.ensureSourceConsumer(ctx)
		if err != nil {
			return fmt.Errorf("webhook: source consumer: %w", err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.runSource(s.runCtx, cons)
		}()
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.refreshStats(s.runCtx)
	}()
	s.log.Info("webhook service started", "endpoints", s.endpointCount(), "source", s.cfg.Source.Stream)
	return nil
}

// Stop stops the workers and the source consumer and waits for them.
// Attempts in flight are abandoned and handed back to the engine at once,
// so another hub (or this one, restarted) makes them again.
func (s *Service) Stop() {
	s.mu.Lock()
	s.stopped = true
	cancel := s.cancel
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	s.wg.Wait()
	s.transport.CloseIdleConnections()
}

// watch keeps this hub's view of the endpoints current, and the workers
// with it. It closes ready once the stored endpoints are loaded.
func (s *Service) watch(ctx context.Context, ready chan struct{}) {
	for ctx.Err() == nil {
		err := s.watchOnce(ctx, ready)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("webhook: endpoint watch ended; watching again", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (s *Service) watchOnce(ctx context.Context, ready chan struct{}) error {
	w, err := s.kv.Watch(ctx, storeKey("*"))
	if err != nil {
		return err
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watcher closed")
			}
			if e == nil { // the initial values are all in
				select {
				case <-ready:
				default:
					close(ready)
				}
				continue
			}
			store := e.Key()[len(storeKey("")):]
			var sr storeRecord
			if e.Operation() == jetstream.KeyValuePut {
				if err := json.Unmarshal(e.Value(), &sr); err != nil {
					s.log.Error("webhook: unreadable endpoints record; ignored", "store", store, "err", err)
					continue
				}
			}
			s.applyStore(store, e.Revision(), &sr)
		}
	}
}

// applyStore puts a store's record into the view (unless the view already
// has a newer one) and starts or stops workers to match.
func (s *Service) applyStore(store string, rev uint64, sr *storeRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.stores[store]
	if ok && rev <= old.rev {
		return
	}
	vs := viewStore{rev: rev, rec: storeRecord{Endpoints: slices.Clone(sr.Endpoints)}, keys: map[string][]byte{}}
	enabled := map[string]bool{}
	for _, r := range vs.rec.Endpoints {
		key, err := secretKey(r.Secret)
		if err != nil {
			s.log.Error("webhook: endpoint with an unreadable secret; not delivered", "store", store, "endpoint", r.ID, "err", err)
			continue
		}
		vs.keys[r.ID] = key
		s.where[r.ID] = store
		if r.enabled() {
			enabled[r.ID] = true
		}
	}
	for _, r := range old.rec.Endpoints {
		if vs.rec.find(r.ID) == nil {
			delete(s.where, r.ID)
		}
		if !enabled[r.ID] {
			if stop, ok := s.workers[r.ID]; ok {
				stop()
				delete(s.workers, r.ID)
			}
		}
	}
	s.stores[store] = vs
	for id := range enabled {
		if _, running := s.workers[id]; !running && s.runCtx != nil && !s.stopped {
			s.startWorkerLocked(id)
		}
	}
	s.countEndpointsLocked()
}

func (s *Service) startWorkerLocked(id string) {
	ctx, cancel := context.WithCancel(s.runCtx)
	s.workers[id] = cancel
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.runWorker(ctx, id)
	}()
}

func (s *Service) countEndpointsLocked() {
	var on, off int
	for _, vs := range s.stores {
		for i := range vs.rec.Endpoints {
			if vs.rec.Endpoints[i].enabled() {
				on++
			} else {
				off++
			}
		}
	}
	s.met.endpoints.WithLabelValues("enabled").Set(float64(on))
	s.met.endpoints.WithLabelValues("disabled").Set(float64(off))
}

// endpointCount counts the endpoints of every store in this hub's view.
func (s *Service) endpointCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, vs := range s.stores {
		n += len(vs.rec.Endpoints)
	}
	return n
}

// lookup returns an endpoint, its store and its signing key from the view.
func (s *Service) lookup(id string) (endpointRecord, string, []byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	store, ok := s.where[id]
	if !ok {
		return endpointRecord{}, "", nil, false
	}
	vs := s.stores[store]
	r := vs.rec.find(id)
	if r == nil {
		return endpointRecord{}, "", nil, false
	}
	return *r, store, vs.keys[id], true
}

// wanting returns the enabled endpoints of store whose filter takes eventType.
func (s *Service) wanting(store, eventType string) []endpointRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []endpointRecord
	for _, r := range s.stores[store].rec.Endpoints {
		if r.enabled() && r.wants(eventType) {
			out = append(out, r)
		}
	}
	return out
}

// knows reports whether this hub's view holds endpoint id.
func (s *Service) knows(id string) bool {
	_, _, _, ok := s.lookup(id)
	return ok
}

// refreshStats updates the pending gauge every StatsInterval.
func (s *Service) refreshStats(ctx context.Context) {
	t := time.NewTicker(s.cfg.StatsInterval)
	defer t.Stop()
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if info, err := s.tasks.Info(actx); err == nil {
			s.met.pending.Set(float64(info.State.Msgs))
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Service) ensureTaskConsumer(ctx context.Context, id string) error {
	_, err := s.js.CreateOrUpdateConsumer(ctx, tasksStream, jetstream.ConsumerConfig{
		Durable:       id,
		Description:   "CAPS webhook deliveries to endpoint " + id,
		FilterSubject: taskSubject(id),
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       s.ackWait(),
		MaxDeliver:    -1, // the worker gives up, after the retry window
		// One endpoint's attempts in flight, across every hub.
		MaxAckPending: s.cfg.MaxInFlight,
	})
	return err
}

func (s *Service) deleteTaskConsumer(ctx context.Context, id string) {
	err := s.js.DeleteConsumer(ctx, tasksStream, id)
	if err != nil && !engine.IsNotFound(err) {
		s.log.Warn("webhook: delete an endpoint's queue", "endpoint", id, "err", err)
	}
}

func (s *Service) purge(ctx context.Context, st jetstream.Stream, subject string) error {
	return st.Purge(ctx, jetstream.WithPurgeSubject(subject))
}
