// Package dashboard is the hub side of the web dashboard: an App that
// serves the page's files on the hub's HTTP port and answers the page's
// requests over the same WebSocket every CAPS client uses (/ws), with the
// identity and permissions of the page's own session.
//
// Services (REQ topics), all JSON:
//
//	dashboard.hello    {}                    → Hello: who the page is and what it may see
//	dashboard.orders   {"cursor","limit"}    → OrdersReply: the most recent orders, or the changes since cursor
//	dashboard.people   {}                    → PeopleReply: clients on every hub, drivers' loads
//	dashboard.traffic  {"since"}             → TrafficReply: chart points after a time
//
// The page stays live by subscribing, with its own permissions, to the
// events that change what it shows (parcel events, the hub's
// client.connected and client.disconnected) and asking for what changed
// when they arrive, and every second or so besides: a driver taking a
// pickup changes an order without an event. Orders come from an index of
// the order events of the parcel stream that each hub keeps in memory, so these
// questions cost no engine round trip.
//
// What a session sees follows the hub's permissions, not roles: an order of
// store S is shown to a session that may subscribe to every event of S's
// orders (parcel.S.>: admins, loggers, the vendor of S); people and traffic
// to a session that may watch the hub's connection events
// (client.connected).
package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// Service names.
const (
	ServiceHello   = "dashboard.hello"
	ServiceOrders  = "dashboard.orders"
	ServicePeople  = "dashboard.people"
	ServiceTraffic = "dashboard.traffic"
)

// peopleTopic is the topic whose readers may see people and traffic.
const peopleTopic = "client.connected"

// Options configure the dashboard. Zero values select the defaults.
type Options struct {
	// Assets holds the page: index.html at its root, next to the scripts and
	// styles it loads. Nil serves no page (the services still work).
	Assets fs.FS
	// MaxOrders is how many orders each hub keeps in memory for the page
	// (default 5000; the orders in flight are kept first).
	MaxOrders int
	// SnapshotLimit is the most orders a page loads at once (default 1000).
	SnapshotLimit int
	// SampleEvery is the interval of the traffic charts (default 1s), and
	// History how far back they go (default 5m).
	SampleEvery, History time.Duration
	// LatencyWindow is how far back each latency quantile looks (default 10s).
	LatencyWindow time.Duration
	// LatencyMetric is the histogram the latency chart shows (default
	// caps_delivery_latency_seconds: from a durable message being stored to
	// its delivery, waiting for a free driver included); LatencyLabel names
	// it on the chart and LatencyHelp says what it measures.
	LatencyMetric, LatencyLabel, LatencyHelp string
	// GatherWait bounds how long the people service waits for the hubs
	// (default 1s), and GatherQuiet how long after the last answer (100ms).
	GatherWait, GatherQuiet time.Duration
	// Retry is how often to look for the parcel stream while it does not
	// exist (default 1s).
	Retry time.Duration
}

func (o *Options) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if o.MaxOrders <= 0 {
		o.MaxOrders = 5000
	}
	if o.SnapshotLimit <= 0 {
		o.SnapshotLimit = 1000
	}
	def(&o.SampleEvery, time.Second)
	def(&o.History, 5*time.Minute)
	def(&o.LatencyWindow, 10*time.Second)
	def(&o.GatherWait, time.Second)
	def(&o.GatherQuiet, 100*time.Millisecond)
	def(&o.Retry, time.Second)
	if o.LatencyMetric == "" {
		o.LatencyMetric = "caps_delivery_latency_seconds"
		o.LatencyLabel = "Delivery latency"
		o.LatencyHelp = "from a durable message (a pickup, a notification) being stored to its delivery to a subscriber, waiting for a free driver included"
	}
	if o.LatencyLabel == "" {
		o.LatencyLabel = o.LatencyMetric
	}
}

// App is the dashboard, a hub.App.
type App struct {
	opts    Options
	host    *hub.Host
	log     *slog.Logger
	nc      *nats.Conn
	orders  *orderIndex
	sampler *sampler
	// instance tells this run of this hub's index apart from others, whose
	// cursors mean nothing to it (a page that failed over, a restart).
	instance string
}

// New returns the dashboard application.
func New(opts Options) *App {
	opts.defaults()
	return &App{opts: opts, instance: uuid.NewString()[:8]}
}

// Setup starts the order index and the traffic sampler, registers the
// services and serves the page. It implements hub.App.
func (a *App) Setup(ctx context.Context, host *hub.Host) error {
	a.host = host
	a.log = host.Logger().With("app", "dashboard")
	a.nc = host.NATS()
	a.orders = newOrderIndex(a.opts.MaxOrders, a.log)
	keep := int(a.opts.History / a.opts.SampleEvery)
	a.sampler = newSampler(host.Gatherer(), a.opts.LatencyMetric, a.opts.SampleEvery, a.opts.LatencyWindow, max(keep, 1))

	sub, err := answerSessions(a.nc, host)
	if err != nil {
		return fmt.Errorf("dashboard: %w", err)
	}
	host.Handle(ServiceHello, a.hello)
	host.Handle(ServiceOrders, a.ordersService)
	host.Handle(ServicePeople, a.peopleService)
	host.Handle(ServiceTraffic, a.trafficService)
	if a.opts.Assets != nil {
		pg, err := newPages(a.opts.Assets, pageConfig{Auth: host.Authenticated()})
		if err != nil {
			sub.Unsubscribe()
			return fmt.Errorf("dashboard: %w", err)
		}
		host.HandleHTTP(pg.register)
	}

	go func() {
		<-ctx.Done()
		_ = sub.Unsubscribe()
	}()
	go a.orders.run(ctx, host.JetStream(), a.opts.Retry)
	go a.sampler.run(ctx)
	return nil
}

// Hello answers dashboard.hello: who the page is and what it may see.
type Hello struct {
	Session string `json:"session"`
	Hub     string `json:"hub"`
	Role    string `json:"role"`
	Name    string `json:"name"`
	Store   string `json:"store,omitempty"`
	// Orders is "all" (every store's), "store" (Store's only) or "none".
	Orders  string `json:"orders"`
	People  bool   `json:"people"`
	Traffic bool   `json:"traffic"`
	// Open is true when the hub runs without authentication.
	Open bool `json:"open"`
}

func (a *App) hello(_ context.Context, s hub.SessionInfo, _ []byte) ([]byte, error) {
	store := parcel.StoreOf(s)
	h := Hello{Session: s.ID, Hub: s.Hub, Role: s.Role, Name: s.Name, Store: store, Orders: "none"}
	switch {
	case a.mayReceiveStore(s.ID, "*"):
		h.Orders = "all"
	case store != "" && a.mayReceiveStore(s.ID, store):
		h.Orders = "store"
	}
	h.People = a.host.MayReceive(s.ID, peopleTopic)
	h.Traffic = h.People
	h.Open = !a.host.Authenticated()
	return json.Marshal(h)
}

// mayReceiveStore reports whether session id may see every event of
// store's orders, parcel.<store>.> ("*": of every store).
func (a *App) mayReceiveStore(id, store string) bool {
	return a.host.MayReceive(id, parcel.StorePattern(store))
}

// storeFilter tells which stores' orders a session may see. It caches the
// answers: a session's permissions do not change while it lives.
type storeFilter struct {
	a   *App
	id  string
	all bool

	mu    sync.Mutex
	cache map[string]bool
}

func (a *App) newFilter(id string) *storeFilter {
	return &storeFilter{a: a, id: id, all: a.mayReceiveStore(id, "*"), cache: map[string]bool{}}
}

func (f *storeFilter) allows(store string) bool {
	if f.all {
		return true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.cache[store]
	if !ok {
		v = protocol.ValidName(store) && f.a.mayReceiveStore(f.id, store)
		f.cache[store] = v
	}
	return v
}

type ordersRequest struct {
	Cursor string `json:"cursor"`
	Limit  int    `json:"limit"`
}

// OrdersReply answers dashboard.orders.
type OrdersReply struct {
	// Orders are the most recent orders, most recent first (Reset), or the
	// orders that changed since the cursor asked with.
	Orders []*OrderView `json:"orders"`
	// Removed lists orders removed since the cursor: always empty (the
	// index forgets orders only by trimming, which a page does itself).
	Removed []string `json:"removed"`
	// Reset is true when Orders is a whole snapshot: the page drops what it
	// had. It is, when asked without a cursor, with one from another hub
	// or run, or when too much changed to tell.
	Reset bool `json:"reset"`
	// Cursor is what to ask with next time.
	Cursor string `json:"cursor"`
	// Loaded is false while the hub is still reading the parcel stream (or
	// waiting for it to exist): the list may be incomplete.
	Loaded bool `json:"loaded"`
	Limit  int  `json:"limit"`
	// Now is the hub's clock (Unix ms), for the page to time the stages of
	// orders against the clock that stamped them.
	Now int64 `json:"now"`
}

func (a *App) ordersService(_ context.Context, s hub.SessionInfo, payload []byte) ([]byte, error) {
	var req ordersRequest
	if err := decodeRequest(payload, &req); err != nil {
		return nil, err
	}
	if req.Limit <= 0 || req.Limit > a.opts.SnapshotLimit {
		req.Limit = a.opts.SnapshotLimit
	}
	allows := a.newFilter(s.ID).allows
	reply := OrdersReply{Limit: req.Limit, Loaded: a.orders.Loaded(), Now: time.Now().UnixMilli()}
	ok := false
	if inst, seqText, found := strings.Cut(req.Cursor, ":"); found && inst == a.instance {
		if since, err := strconv.ParseUint(seqText, 10, 64); err == nil {
			var next uint64
			reply.Orders, next, ok = a.orders.changes(since, req.Limit, allows)
			reply.Cursor = a.cursor(next)
		}
	}
	if !ok {
		var next uint64
		reply.Orders, next = a.orders.recent(req.Limit, allows)
		reply.Removed, reply.Reset, reply.Cursor = nil, true, a.cursor(next)
	}
	if reply.Orders == nil {
		reply.Orders = []*OrderView{}
	}
	if reply.Removed == nil {
		reply.Removed = []string{}
	}
	return json.Marshal(reply)
}

func (a *App) cursor(seq uint64) string { return a.instance + ":" + strconv.FormatUint(seq, 10) }

func (a *App) peopleService(ctx context.Context, s hub.SessionInfo, _ []byte) ([]byte, error) {
	if !a.host.MayReceive(s.ID, peopleTopic) {
		return nil, hub.Reject(protocol.CodeForbidden, fmt.Sprintf("%s %s may not see who is connected", s.Role, s.Name))
	}
	all, err := gatherSessions(ctx, a.nc, a.opts.GatherWait, a.opts.GatherQuiet)
	if err != nil {
		return nil, hub.Reject(protocol.CodeUnavailable, "asking the hubs for their clients: "+err.Error())
	}
	return json.Marshal(people(all, a.orders.loads()))
}

type trafficRequest struct {
	Since int64 `json:"since"` // Unix ms: the points after it
}

func (a *App) trafficService(_ context.Context, s hub.SessionInfo, payload []byte) ([]byte, error) {
	if !a.host.MayReceive(s.ID, peopleTopic) {
		return nil, hub.Reject(protocol.CodeForbidden, fmt.Sprintf("%s %s may not see the hub's traffic", s.Role, s.Name))
	}
	var req trafficRequest
	if err := decodeRequest(payload, &req); err != nil {
		return nil, err
	}
	samples, totals := a.sampler.since(req.Since)
	return json.Marshal(a.trafficReply(samples, totals))
}

func (a *App) trafficReply(samples []Sample, totals Totals) TrafficReply {
	if samples == nil {
		samples = []Sample{}
	}
	return TrafficReply{
		Hub: a.host.HubName(), Latency: a.opts.LatencyLabel, LatencyHelp: a.opts.LatencyHelp,
		Window: a.opts.LatencyWindow.Milliseconds(), Every: a.opts.SampleEvery.Milliseconds(),
		Samples: samples, Totals: totals,
	}
}

// decodeRequest reads a service's JSON body; an empty body is {}.
func decodeRequest(payload []byte, v any) error {
	if len(payload) == 0 {
		return nil
	}
	if err := json.Unmarshal(payload, v); err != nil {
		return hub.Reject(protocol.CodeBadRequest, "request body must be a JSON object: "+err.Error())
	}
	return nil
}
