// Package api is the hub's REST API under /api/v1, for a shop's backend:
// orders created, read, listed and cancelled over HTTP, and the webhooks
// that tell the shop of every change (internal/webhook fed with the order
// events), described by an
// OpenAPI 3.1 document generated from the Go types (huma) and served at
// /api/v1/openapi.json. It is a hub.App on the hub's HTTP port.
//
// Callers authenticate with the tokens of the TCP side (Authorization:
// Bearer <token>, checked by the hub's Authenticator): a vendor acts for its
// own store, an admin for any store it names; other roles are refused. On a
// hub without an Authenticator (open), the store is given in the request,
// as a TCP vendor on an open hub names itself.
//
// Errors are RFC 9457 problem documents carrying the wire protocol's error
// code (Problem). Requests are bounded (body size, unknown fields and query
// parameters refused) and rate-limited per remote address and per token.
package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/danielgtaylor/huma/v2/adapters/humago"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/internal/webhook"
	"github.com/caps-hub/caps/protocol"
)

// Prefix is where the API is served.
const Prefix = "/api/v1"

// Config configures the API. Zero values select the defaults.
type Config struct {
	// Orders is the hub's parcel dispatcher; required.
	Orders *parcel.Dispatcher
	// PublicURL is the hub's HTTP address as customers reach it
	// ("https://track.example.com"), for the orders' trackingURL. Empty:
	// the scheme and Host of each request.
	PublicURL string
	// AddrRate and AddrBurst bound the requests of one remote address per
	// second (defaults 20 and 40); TokenRate and TokenBurst those made with
	// one token (defaults 50 and 100), whichever address they come from.
	AddrRate   float64
	AddrBurst  int
	TokenRate  float64
	TokenBurst int
	// MaxBodyBytes bounds a request body (default 16 KiB; an order's fields
	// take at most some 1.5 KB).
	MaxBodyBytes int64
	// TrackRate and TrackBurst bound the tracking page's requests of one
	// remote address per second (defaults 5 and 20).
	TrackRate  float64
	TrackBurst int
	// Webhooks configures the order webhooks' delivery (retry window,
	// allowed http hosts…); Engine, Source, Registerer, Logger, HubName
	// and EventTypes are set by the API.
	Webhooks webhook.Config
}

func (c *Config) defaults() {
	if c.AddrRate <= 0 {
		c.AddrRate = 20
	}
	if c.AddrBurst <= 0 {
		c.AddrBurst = 2 * int(math.Ceil(c.AddrRate))
	}
	if c.TokenRate <= 0 {
		c.TokenRate = 50
	}
	if c.TokenBurst <= 0 {
		c.TokenBurst = 2 * int(math.Ceil(c.TokenRate))
	}
	if c.TrackRate <= 0 {
		c.TrackRate = 5
	}
	if c.TrackBurst <= 0 {
		c.TrackBurst = 20
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = 16 << 10
	}
}

// maxLimiterKeys bounds the addresses and tokens the rate limits remember.
const maxLimiterKeys = 10_000

// API serves /api/v1 on the hub's HTTP port. It is a hub.App.
type API struct {
	cfg    Config
	host   *hub.Host
	byAddr *keyedLimiter
	byTok  *keyedLimiter
	hooks  *webhook.Service
	// The tracking page's.
	byTrack *keyedLimiter
	streams streamCount
	// stopping ends when the hub's HTTP server begins to shut down: the
	// tracking page's event streams end then.
	stopping context.Context
}

// New returns the API; add it to hub.Config.Apps after cfg.Orders.
func New(cfg Config) *API {
	cfg.defaults()
	return &API{cfg: cfg,
		byAddr:  newKeyedLimiter(cfg.AddrRate, cfg.AddrBurst, maxLimiterKeys),
		byTok:   newKeyedLimiter(cfg.TokenRate, cfg.TokenBurst, maxLimiterKeys),
		byTrack: newKeyedLimiter(cfg.TrackRate, cfg.TrackBurst, maxLimiterKeys),
		streams: streamCount{byAddr: map[string]int{}}}
}

// Setup registers the routes on the hub's HTTP server.
func (a *API) Setup(ctx context.Context, h *hub.Host) error {
	if a.cfg.Orders == nil {
		return errors.New("api: Config.Orders is required")
	}
	a.host = h
	stopping, stop := context.WithCancel(context.WithoutCancel(ctx))
	a.stopping = stopping
	h.OnHTTPShutdown(stop)
	context.AfterFunc(ctx, stop)
	if err := a.startWebhooks(ctx, h); err != nil {
		return err
	}
	h.HandleHTTP(a.register)
	return nil
}

// securityName is the OpenAPI security scheme of the bearer token.
const securityName = "bearer"

func (a *API) register(mux *http.ServeMux) {
	cfg := huma.DefaultConfig("CAPS API", "1.0.0")
	cfg.Info.Description = "Orders and webhooks of the CAPS delivery hub. Errors are RFC 9457 problem documents with the wire protocol's error code."
	// The document is served by serveSpec (once built, no lazy build on a
	// request); no docs page (it would load scripts from elsewhere), no
	// $schema links in bodies.
	cfg.OpenAPIPath, cfg.DocsPath, cfg.SchemasPath, cfg.CreateHooks = "", "", "", nil
	cfg.RejectUnknownQueryParameters = true
	cfg.Components.SecuritySchemes = map[string]*huma.SecurityScheme{
		securityName: {Type: "http", Scheme: "bearer", Description: "A token of the hub's auth file (caps token new), of a vendor or an admin."},
	}
	api := humago.NewWithPrefix(mux, Prefix, cfg)
	api.UseMiddleware(a.guard(api))
	a.registerOrders(api)
	a.registerWebhooks(api)
	a.registerTracking(mux)

	spec, err := json.Marshal(api.OpenAPI())
	if err != nil {
		panic(fmt.Sprintf("api: the OpenAPI document does not encode: %v", err)) // a bug of this package's types
	}
	mux.HandleFunc("GET "+Prefix+"/openapi.json", func(w http.ResponseWriter, r *http.Request) {
		if ok, wait := a.byAddr.allow(remoteHost(r), time.Now()); !ok {
			writeProblem(w, limited(wait))
			return
		}
		w.Header().Set("Content-Type", "application/openapi+json")
		w.Write(spec)
	})
	// Anything else under the prefix is an API path that does not exist,
	// not a page of the dashboard (which serves /).
	mux.HandleFunc(Prefix+"/", func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, newProblem(http.StatusNotFound, protocol.CodeNotFound, fmt.Sprintf("no API operation %s %s", r.Method, clip(r.URL.Path))))
	})
}

// writeProblem writes p outside huma (routes of the mux itself).
func writeProblem(w http.ResponseWriter, p *Problem) {
	for k, v := range p.GetHeaders() {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(p.Status)
	json.NewEncoder(w).Encode(p)
}

func limited(wait time.Duration) *Problem {
	p := newProblem(http.StatusTooManyRequests, protocol.CodeRateLimited, fmt.Sprintf("too many requests; retry in %s", wait.Round(time.Millisecond)))
	p.retryAfter = int(math.Ceil(wait.Seconds()))
	return p
}

// caller is who makes a request.
type caller struct {
	// open: the hub has no Authenticator; the request names its store.
	open  bool
	role  string
	name  string
	store string // a vendor's store
}

type callerKey struct{}

// guard rate-limits every request by address, then authenticates those of
// operations that need a token, rate-limits them by token, and hands the
// caller to the handler in the context.
func (a *API) guard(api huma.API) func(huma.Context, func(huma.Context)) {
	return func(ctx huma.Context, next func(huma.Context)) {
		r, _ := humago.Unwrap(ctx)
		now := time.Now()
		if ok, wait := a.byAddr.allow(remoteHost(r), now); !ok {
			writeErr(api, ctx, limited(wait))
			return
		}
		ctx = huma.WithValue(ctx, requestBaseKey{}, requestBase(r))
		if len(ctx.Operation().Security) == 0 {
			next(ctx)
			return
		}
		if !a.host.Authenticated() {
			next(huma.WithValue(ctx, callerKey{}, caller{open: true}))
			return
		}
		token, ok := strings.CutPrefix(ctx.Header("Authorization"), "Bearer ")
		if !ok || strings.TrimSpace(token) == "" {
			ctx.SetHeader("WWW-Authenticate", `Bearer realm="caps"`)
			writeErr(api, ctx, newProblem(http.StatusUnauthorized, protocol.CodeAuth, "a token is required: Authorization: Bearer <token>"))
			return
		}
		sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
		if ok, wait := a.byTok.allow(hex.EncodeToString(sum[:16]), now); !ok {
			writeErr(api, ctx, limited(wait))
			return
		}
		id, err := a.host.AuthenticateToken(token)
		if err != nil {
			a.host.Logger().Warn("api: authentication failed", "remote", r.RemoteAddr, "err", err)
			ctx.SetHeader("WWW-Authenticate", `Bearer realm="caps", error="invalid_token"`)
			writeErr(api, ctx, newProblem(http.StatusUnauthorized, protocol.CodeAuth, "the token is not valid"))
			return
		}
		c := caller{role: id.Role, name: id.Name, store: id.Attr(parcel.StoreAttr)}
		if c.role != protocol.RoleVendor && c.role != protocol.RoleAdmin {
			writeErr(api, ctx, newProblem(http.StatusForbidden, protocol.CodeForbidden,
				fmt.Sprintf("%s %s may not use the orders API: vendors and admins may", c.role, c.name)))
			return
		}
		next(huma.WithValue(ctx, callerKey{}, c))
	}
}

func writeErr(api huma.API, ctx huma.Context, p *Problem) {
	for k, v := range p.GetHeaders() {
		ctx.SetHeader(k, v[0])
	}
	ctx.SetHeader("Content-Type", "application/problem+json")
	ctx.SetStatus(p.Status)
	json.NewEncoder(ctx.BodyWriter()).Encode(p)
}

func callerOf(ctx context.Context) caller {
	c, _ := ctx.Value(callerKey{}).(caller)
	return c
}

// storeFor is the store a request acts for, given (in its body or query)
// or not (""): a vendor's own (naming another is forbidden); on an open hub
// or for an admin, the one given, which needed says must be.
func (c caller) storeFor(given string, needed bool) (string, error) {
	switch {
	case c.role == protocol.RoleVendor:
		if given != "" && given != c.store {
			return "", newProblem(http.StatusForbidden, protocol.CodeForbidden, fmt.Sprintf("vendor %s acts for store %s only, not %s", c.name, c.store, clip(given)))
		}
		return c.store, nil
	case given == "" && (needed || c.open):
		return "", newProblem(http.StatusBadRequest, protocol.CodeBadRequest, "name the store (\"store\"): "+whyStore(c))
	case given != "" && !protocol.ValidName(given):
		return "", newProblem(http.StatusBadRequest, protocol.CodeBadRequest, fmt.Sprintf("store %q is not a valid name (1-32 letters, digits, _ or -)", clip(given)))
	}
	return given, nil
}

func whyStore(c caller) string {
	if c.open {
		return "this hub runs without tokens, so requests say which store they act for"
	}
	return "an admin acts for the store it names"
}

// remoteHost is the IP address of a request's peer.
func remoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func clip(s string) string {
	if len(s) > 60 {
		return s[:60] + "…"
	}
	return s
}
