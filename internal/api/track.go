package api

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// The customer's tracking page, at the order's trackingURL
// (/track/<code>): no token, an unguessable code (not the order id) that
// leads to one order, its status and timeline kept current with
// server-sent events from a subscription to that order's topics only. Its
// assets are embedded; nothing is fetched from elsewhere.

//go:embed trackpage
var trackFiles embed.FS

// trackView is what the page shows of an order: nothing of the store's
// other orders, nor of the hub's internals.
type trackView struct {
	Store       string      `json:"store"`
	Status      string      `json:"status"`
	Address     string      `json:"address"`
	Driver      string      `json:"driver,omitempty"`
	PIN         string      `json:"pin,omitempty"`
	Attempt     int         `json:"attempt"`
	MaxAttempts int         `json:"maxAttempts"`
	Timeline    []trackStep `json:"timeline"`
}

type trackStep struct {
	Status string    `json:"status"`
	Time   time.Time `json:"time"`
	Reason string    `json:"reason,omitempty"`
}

func trackViewOf(o *parcel.Order, s *parcel.Secrets) trackView {
	v := trackView{Store: o.Store, Status: string(o.Status), Address: o.Address, Attempt: o.Attempt, MaxAttempts: o.MaxAttempts,
		Timeline: make([]trackStep, 0, len(o.Timeline))}
	if o.Status != parcel.StatusCreated {
		v.Driver = o.Driver
	}
	if o.RequirePIN && s != nil {
		v.PIN = s.PIN
	}
	for _, st := range o.Timeline {
		v.Timeline = append(v.Timeline, trackStep{Status: string(st.Status), Time: st.Time, Reason: st.Reason})
	}
	return v
}

// Bounds of the tracking page's event streams.
const (
	maxStreamsPerAddr = 8
	maxStreams        = 10_000
	// streamLife ends a stream after a while (the browser reconnects), so
	// no response is held forever.
	streamLife = 10 * time.Minute
	// keepAlive is sent on a quiet stream, so proxies keep it open.
	keepAlive = 20 * time.Second
)

// streamCount counts the open event streams, in all and per address.
type streamCount struct {
	mu     sync.Mutex
	total  int
	byAddr map[string]int
}

func (c *streamCount) open(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.total >= maxStreams || c.byAddr[addr] >= maxStreamsPerAddr {
		return false
	}
	c.total++
	c.byAddr[addr]++
	return true
}

func (c *streamCount) close(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total--
	if c.byAddr[addr]--; c.byAddr[addr] <= 0 {
		delete(c.byAddr, addr)
	}
}

func (a *API) registerTracking(mux *http.ServeMux) {
	static, _ := fs.Sub(trackFiles, "trackpage")
	page, _ := fs.ReadFile(static, "index.html")
	mux.Handle("GET "+trackAssets, http.StripPrefix(trackAssets, assetHeaders(http.FileServerFS(static))))
	mux.HandleFunc("GET "+TrackPath+"{code}", func(w http.ResponseWriter, r *http.Request) {
		if !a.trackAllowed(w, r) {
			return
		}
		if _, _, err := a.cfg.Orders.OrderByTrackingCode(r.Context(), r.PathValue("code")); err != nil {
			a.trackError(w, err)
			return
		}
		pageHeaders(w)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(page)
	})
	mux.HandleFunc("GET "+TrackPath+"{code}/events", a.trackEvents)
}

// pageHeaders keep the page to itself: its own scripts and styles only,
// not framed, not sniffed, no referrer carrying the code elsewhere.
func pageHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
}

func (a *API) trackAllowed(w http.ResponseWriter, r *http.Request) bool {
	if ok, wait := a.byTrack.allow(remoteHost(r), time.Now()); !ok {
		writeProblem(w, limited(wait))
		return false
	}
	return true
}

func (a *API) trackError(w http.ResponseWriter, err error) {
	if errors.Is(err, parcel.ErrNoSuchCode) {
		writeProblem(w, newProblem(http.StatusNotFound, protocol.CodeNotFound, "no order has this tracking link"))
		return
	}
	writeProblem(w, newProblem(http.StatusServiceUnavailable, protocol.CodeUnavailable, "the order cannot be read now; retry later"))
}

// trackEvents streams the order's view: at once, then at each change of
// the order (a subscription to its topics), until the client leaves, the
// order is finished, the stream is old, or the hub stops.
func (a *API) trackEvents(w http.ResponseWriter, r *http.Request) {
	if !a.trackAllowed(w, r) {
		return
	}
	code, addr := r.PathValue("code"), remoteHost(r)
	o, _, err := a.cfg.Orders.OrderByTrackingCode(r.Context(), code)
	if err != nil {
		a.trackError(w, err)
		return
	}
	if !a.streams.open(addr) {
		writeProblem(w, newProblem(http.StatusTooManyRequests, protocol.CodeRateLimited, "too many tracking pages open from your address"))
		return
	}
	defer a.streams.close(addr)
	changed := make(chan *nats.Msg, 8)
	sub, err := a.host.NATS().ChanSubscribe(hub.Subject(parcel.OrderTopics(o.Store, o.OrderID)), changed)
	if err != nil {
		a.trackError(w, err)
		return
	}
	defer sub.Unsubscribe()

	rc := http.NewResponseController(w)
	// A stream outlives the hub's request timeout: neither deadline may end
	// it (a read deadline passing would end the request's context too).
	_ = rc.SetWriteDeadline(time.Time{})
	_ = rc.SetReadDeadline(time.Time{})
	pageHeaders(w)
	w.Header().Set("Content-Type", "text/event-stream")
	ctx, cancel := context.WithTimeout(r.Context(), streamLife)
	defer cancel()
	stop := context.AfterFunc(a.stopping, cancel)
	defer stop()
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	for {
		// Read after subscribing: a change between the two is not missed.
		o, s, err := a.cfg.Orders.OrderByTrackingCode(ctx, code)
		if err != nil {
			return // removed meanwhile, or the engine is away: the page reconnects
		}
		b, _ := json.Marshal(trackViewOf(o, s))
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil || rc.Flush() != nil {
			return
		}
		if o.Status.Terminal() {
			return
		}
		if !a.waitForChange(ctx, w, rc, tick.C, changed) {
			return
		}
	}
}

// waitForChange waits for the order to change (true), sending keep-alives
// meanwhile; false when the stream is to end.
func (a *API) waitForChange(ctx context.Context, w http.ResponseWriter, rc *http.ResponseController, tick <-chan time.Time, changed chan *nats.Msg) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case <-tick:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil || rc.Flush() != nil {
				return false
			}
		case <-changed:
			for len(changed) > 0 {
				<-changed // several changes at once: one read
			}
			return true
		}
	}
}

// trackAssets is where the tracking page's script and style are served.
const trackAssets = "/trackpage/"

func assetHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Cache-Control", "public, max-age=300")
		next.ServeHTTP(w, r)
	})
}
