package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/danielgtaylor/huma/v2"

	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// Order is an order as the API shows it.
type Order struct {
	OrderID  string `json:"orderID" format:"uuid"`
	Store    string `json:"store"`
	Status   string `json:"status" enum:"created,assigned,in-transit,delivered,failed,returned,cancelled"`
	Customer string `json:"customer"`
	Address  string `json:"address"`
	Phone    string `json:"phone,omitempty"`
	Note     string `json:"note,omitempty"`
	// RequirePIN: delivered is accepted only with the customer's PIN.
	RequirePIN bool   `json:"requirePIN"`
	PIN        string `json:"pin,omitempty" doc:"The proof-of-delivery PIN the customer gives the driver (orders with requirePIN)."`
	// TrackingURL is the customer's tracking page.
	TrackingURL string    `json:"trackingURL,omitempty" format:"uri" doc:"The customer's tracking page (an unguessable link, not the order id)."`
	Driver      string    `json:"driver,omitempty" doc:"The driver holding the order (or who held it last)."`
	Attempt     int       `json:"attempt" doc:"The current delivery attempt (1 to maxAttempts)."`
	MaxAttempts int       `json:"maxAttempts"`
	Created     time.Time `json:"created,omitzero"`
	Updated     time.Time `json:"updated,omitzero" doc:"When its latest event happened."`
	// Timeline is the order's events, oldest first (GET of one order).
	Timeline []parcel.Step `json:"timeline,omitempty"`
}

// NewOrderBody is the body of POST /orders.
type NewOrderBody struct {
	Store      string `json:"store,omitempty" maxLength:"32" doc:"The store the order is for: on a hub without tokens, required; for an admin's token, required; for a vendor's, its own (may be omitted)."`
	Customer   string `json:"customer" minLength:"1" maxLength:"200"`
	Address    string `json:"address" minLength:"1" maxLength:"200"`
	Phone      string `json:"phone,omitempty" maxLength:"200"`
	Note       string `json:"note,omitempty" maxLength:"500" doc:"A note for the driver."`
	RequirePIN bool   `json:"requirePIN,omitempty" doc:"Proof of delivery: the driver must give the customer's PIN to report it delivered."`
}

type createOrderInput struct {
	IdempotencyKey string `header:"Idempotency-Key" maxLength:"255" doc:"Retrying a POST with the same key returns the order the first created (200, Idempotent-Replayed: true) and creates none, also when the retries race; the same key with a different order is refused (422, rule idempotency-mismatch)."`
	Body           NewOrderBody
}

type orderOutput struct {
	Status   int
	Location string `header:"Location"`
	Replayed bool   `header:"Idempotent-Replayed"`
	Body     Order
}

type orderIDInput struct {
	OrderID string `path:"orderID" maxLength:"64"`
	Store   string `query:"store" maxLength:"32" doc:"The store, on a hub without tokens (required there) or for an admin (optional)."`
}

type listInput struct {
	Status []string `query:"status,explode" enum:"created,assigned,in-transit,delivered,failed,returned,cancelled" maxItems:"7" doc:"Only orders in one of these statuses."`
	Cursor string   `query:"cursor" maxLength:"200" doc:"The nextCursor of the previous page."`
	Limit  int      `query:"limit" minimum:"1" maximum:"100" default:"20"`
	Store  string   `query:"store" maxLength:"32" doc:"The store, on a hub without tokens or for an admin (required there)."`
}

// OrderList is a page of a store's orders, the most recently created first.
type OrderList struct {
	Items []Order `json:"items"`
	// NextCursor continues the list; absent on the last page.
	NextCursor string `json:"nextCursor,omitempty"`
}

type listOutput struct {
	Body OrderList
}

var bearer = []map[string][]string{{securityName: {}}}

// errStatuses are the problem statuses an order operation may answer.
var errStatuses = []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusTooManyRequests, http.StatusServiceUnavailable}

func (a *API) registerOrders(api huma.API) {
	huma.Register(api, huma.Operation{
		OperationID: "create-order", Method: http.MethodPost, Path: "/orders", Tags: []string{"orders"},
		Summary:     "Create an order",
		Description: "Creates an order: drivers connected over TCP are offered it at once, and its store's vendors and webhooks hear of it.",
		Security:    bearer, DefaultStatus: http.StatusCreated, MaxBodyBytes: a.cfg.MaxBodyBytes,
		Errors: append(slices.Clone(errStatuses), http.StatusConflict, http.StatusRequestEntityTooLarge, http.StatusUnprocessableEntity),
	}, a.createOrder)
	huma.Register(api, huma.Operation{
		OperationID: "get-order", Method: http.MethodGet, Path: "/orders/{orderID}", Tags: []string{"orders"},
		Summary: "Get an order with its timeline", Security: bearer,
		Errors: append(slices.Clone(errStatuses), http.StatusNotFound),
	}, a.getOrder)
	huma.Register(api, huma.Operation{
		OperationID: "list-orders", Method: http.MethodGet, Path: "/orders", Tags: []string{"orders"},
		Summary: "List a store's orders", Description: "The most recently created first, filtered by status, a page at a time (cursor).",
		Security: bearer, Errors: errStatuses,
	}, a.listOrders)
	huma.Register(api, huma.Operation{
		OperationID: "cancel-order", Method: http.MethodPost, Path: "/orders/{orderID}/cancel", Tags: []string{"orders"},
		Summary:     "Cancel an order",
		Description: "Only an order not yet in transit can be cancelled (409, rule not-cancellable, after). Cancelling a cancelled order again changes nothing.",
		Security:    bearer, Errors: append(slices.Clone(errStatuses), http.StatusNotFound, http.StatusConflict),
	}, a.cancelOrder)
}

func (a *API) createOrder(ctx context.Context, in *createOrderInput) (*orderOutput, error) {
	store, err := callerOf(ctx).storeFor(in.Body.Store, true)
	if err != nil {
		return nil, err
	}
	b := in.Body
	o, sec, replayed, err := a.cfg.Orders.CreateOrder(ctx, parcel.NewOrder{Store: store, Customer: b.Customer, Address: b.Address,
		Phone: b.Phone, Note: b.Note, RequirePIN: b.RequirePIN}, in.IdempotencyKey)
	if err != nil {
		return nil, problemOf(err)
	}
	out := &orderOutput{Status: http.StatusCreated, Location: Prefix + "/orders/" + o.OrderID, Replayed: replayed,
		Body: a.view(ctx, o, sec)}
	if replayed {
		out.Status = http.StatusOK
	}
	return out, nil
}

func (a *API) getOrder(ctx context.Context, in *orderIDInput) (*orderOutput, error) {
	store, err := callerOf(ctx).storeFor(in.Store, false)
	if err != nil {
		return nil, err
	}
	o, sec, err := a.cfg.Orders.StoreOrder(ctx, store, in.OrderID)
	if err != nil {
		return nil, problemOf(err)
	}
	return &orderOutput{Status: http.StatusOK, Body: a.view(ctx, o, sec)}, nil
}

func (a *API) cancelOrder(ctx context.Context, in *orderIDInput) (*orderOutput, error) {
	store, err := callerOf(ctx).storeFor(in.Store, false)
	if err != nil {
		return nil, err
	}
	o, err := a.cfg.Orders.CancelOrder(ctx, store, in.OrderID)
	if err != nil {
		return nil, problemOf(err)
	}
	_, sec, err := a.cfg.Orders.StoreOrder(ctx, store, o.OrderID)
	if err != nil {
		return nil, problemOf(err)
	}
	return &orderOutput{Status: http.StatusOK, Body: a.view(ctx, o, sec)}, nil
}

// listCursor is where a page of the list ends: the last order shown.
type listCursor struct {
	Created int64  `json:"c"`
	OrderID string `json:"o"`
}

func (a *API) listOrders(ctx context.Context, in *listInput) (*listOutput, error) {
	store, err := callerOf(ctx).storeFor(in.Store, true)
	if err != nil {
		return nil, err
	}
	var after *listCursor
	if in.Cursor != "" {
		after = &listCursor{}
		b, err := base64.RawURLEncoding.DecodeString(in.Cursor)
		if err != nil || json.Unmarshal(b, after) != nil || after.OrderID == "" {
			return nil, newProblem(http.StatusBadRequest, protocol.CodeBadRequest, "cursor is not one this API gave (use a page's nextCursor)")
		}
	}
	recs, err := a.cfg.Orders.StoreOrders(ctx, store)
	if err != nil {
		return nil, problemOf(err)
	}
	limit := in.Limit
	if limit <= 0 {
		limit = 20
	}
	out := &listOutput{Body: OrderList{Items: []Order{}}}
	for _, r := range recs {
		if after != nil && !olderThan(r, after) {
			continue
		}
		if len(in.Status) > 0 && !slices.Contains(in.Status, string(r.Status)) {
			continue
		}
		if len(out.Body.Items) == limit {
			last := out.Body.Items[limit-1]
			c, _ := json.Marshal(listCursor{Created: last.Created.UnixNano(), OrderID: last.OrderID})
			out.Body.NextCursor = base64.RawURLEncoding.EncodeToString(c)
			break
		}
		out.Body.Items = append(out.Body.Items, summary(r))
	}
	return out, nil
}

// olderThan reports whether r comes after the cursor in the list's order
// (newest first, ties by order id).
func olderThan(r *parcel.Record, c *listCursor) bool {
	if n := r.Created.UnixNano(); n != c.Created {
		return n < c.Created
	}
	return r.OrderID > c.OrderID
}

func summary(r *parcel.Record) Order {
	return Order{OrderID: r.OrderID, Store: r.Store, Status: string(r.Status), Customer: r.Customer, Address: r.Address,
		Phone: r.Phone, Note: r.Note, RequirePIN: r.RequirePIN, Driver: r.Driver, Attempt: r.Attempt, MaxAttempts: r.MaxAttempts,
		Created: r.Created, Updated: r.Time}
}

// view is an order with its timeline, PIN and tracking link.
func (a *API) view(ctx context.Context, o *parcel.Order, sec *parcel.Secrets) Order {
	v := Order{OrderID: o.OrderID, Store: o.Store, Status: string(o.Status), Customer: o.Customer, Address: o.Address,
		Phone: o.Phone, Note: o.Note, RequirePIN: o.RequirePIN, Driver: o.Driver, Attempt: o.Attempt, MaxAttempts: o.MaxAttempts,
		Timeline: o.Timeline}
	if n := len(o.Timeline); n > 0 {
		v.Created, v.Updated = o.Timeline[0].Time, o.Timeline[n-1].Time
	}
	if sec != nil {
		if o.RequirePIN {
			v.PIN = sec.PIN
		}
		v.TrackingURL = a.trackingURL(ctx, sec.TrackingCode)
	}
	return v
}

// TrackPath is where the customer's tracking pages are served.
const TrackPath = "/track/"

func (a *API) trackingURL(ctx context.Context, code string) string {
	base := strings.TrimRight(a.cfg.PublicURL, "/")
	if base == "" {
		base, _ = ctx.Value(requestBaseKey{}).(string)
	}
	return base + TrackPath + code
}

// requestBaseKey holds the scheme and host a request came to (requestBase).
type requestBaseKey struct{}

func requestBase(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}
