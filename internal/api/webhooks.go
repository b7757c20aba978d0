package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/danielgtaylor/huma/v2"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/internal/webhook"
	"github.com/caps-hub/caps/protocol"
)

// The webhooks of the orders: internal/webhook, fed with the parcel
// stream (every stored order event becomes one webhook event, its id the
// event's own), and its endpoints managed over /api/v1/webhooks.

// eventTypes maps an order's status after an event to the webhook event
// type. An order offered again after a failed attempt is order.created
// again, with attempt + 1.
var eventTypes = map[parcel.Status]string{
	parcel.StatusCreated:   "order.created",
	parcel.StatusAssigned:  "order.assigned",
	parcel.StatusInTransit: "order.in_transit",
	parcel.StatusDelivered: "order.delivered",
	parcel.StatusFailed:    "order.failed",
	parcel.StatusCancelled: "order.cancelled",
	parcel.StatusReturned:  "order.returned",
}

// EventTypes are the webhook event types, for an endpoint's filter.
func EventTypes() []string {
	out := make([]string, 0, len(eventTypes))
	for _, t := range eventTypes {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

// orderEvent turns a stored order event into a webhook event for its
// store: its data is the order as it stands after the event (the stored
// record, which holds no secret), its id the event's id (the same every
// time the message is read: a repeat has the same webhook-id).
func orderEvent(m jetstream.Msg) (webhook.Event, string, bool) {
	var r parcel.Record
	if err := json.Unmarshal(m.Data(), &r); err != nil || r.EventID == "" || r.Store == "" {
		return webhook.Event{}, "", false
	}
	t, ok := eventTypes[r.Status]
	if !ok {
		return webhook.Event{}, "", false
	}
	return webhook.Event{ID: r.EventID, Type: t, Time: r.Time, Data: m.Data()}, r.Store, true
}

// startWebhooks runs the webhook service until ctx ends.
func (a *API) startWebhooks(ctx context.Context, h *hub.Host) error {
	wc := a.cfg.Webhooks
	wc.Engine = webhook.HostEngine(h)
	wc.Registerer = h.Metrics()
	wc.Logger = h.Logger()
	wc.HubName = h.HubName()
	wc.EventTypes = EventTypes()
	wc.Source = webhook.Source{Stream: parcel.StreamName, Subjects: []string{hub.Subject("parcel.>")}, Map: orderEvent}
	svc, err := webhook.New(wc)
	if err != nil {
		return err
	}
	if err := svc.Start(ctx); err != nil {
		return fmt.Errorf("webhooks: %w", err)
	}
	context.AfterFunc(ctx, svc.Stop)
	a.hooks = svc
	return nil
}

// WebhookBody is the body of POST /webhooks.
type WebhookBody struct {
	Store  string   `json:"store,omitempty" maxLength:"32" doc:"The store, on a hub without tokens or for an admin (required there)."`
	URL    string   `json:"url" minLength:"1" maxLength:"1024" doc:"Where events are POSTed: https, or http to a host the operator allowed (--webhook-allow-http)."`
	Events []string `json:"events,omitempty" maxItems:"7" doc:"The event types to receive (none: all): order.created, order.assigned, order.in_transit, order.delivered, order.failed, order.cancelled, order.returned."`
}

// Webhook is an endpoint as the API shows it.
type Webhook struct {
	webhook.Endpoint
	// Secret signs the deliveries (Standard Webhooks): shown only when the
	// endpoint is created.
	Secret string `json:"secret,omitempty" doc:"The signing secret (whsec_…), shown only in the answer to the POST that created the endpoint."`
	// Pending counts the deliveries waiting (GET of one endpoint).
	Pending *int `json:"pending,omitempty"`
}

type webhookOutput struct {
	Location string `header:"Location"`
	Body     Webhook
}

type createWebhookInput struct {
	Body WebhookBody
}

type webhookIDInput struct {
	ID    string `path:"id" maxLength:"64"`
	Store string `query:"store" maxLength:"32" doc:"The store, on a hub without tokens or for an admin (required there)."`
}

type storeInput struct {
	Store string `query:"store" maxLength:"32" doc:"The store, on a hub without tokens or for an admin (required there)."`
}

// WebhookList is a store's endpoints, oldest first.
type WebhookList struct {
	Items []webhook.Endpoint `json:"items"`
}

type webhookListOutput struct{ Body WebhookList }

type deliveriesInput struct {
	ID    string `path:"id" maxLength:"64"`
	Store string `query:"store" maxLength:"32" doc:"The store, on a hub without tokens or for an admin (required there)."`
	Limit int    `query:"limit" minimum:"1" maximum:"100" default:"50"`
}

// DeliveryLog is an endpoint's last delivery attempts, newest first.
type DeliveryLog struct {
	Items   []webhook.Attempt `json:"items"`
	Pending int               `json:"pending" doc:"Deliveries waiting for this endpoint."`
}

type deliveriesOutput struct{ Body DeliveryLog }

func (a *API) registerWebhooks(api huma.API) {
	errs := append(slices.Clone(errStatuses), http.StatusNotFound)
	huma.Register(api, huma.Operation{
		OperationID: "create-webhook", Method: http.MethodPost, Path: "/webhooks", Tags: []string{"webhooks"},
		Summary:     "Register a webhook endpoint",
		Description: "Every change of the store's orders is POSTed to the URL, signed with the secret in the answer (shown only here).",
		Security:    bearer, DefaultStatus: http.StatusCreated, MaxBodyBytes: a.cfg.MaxBodyBytes,
		Errors: append(slices.Clone(errStatuses), http.StatusConflict, http.StatusRequestEntityTooLarge, http.StatusUnprocessableEntity),
	}, a.createWebhook)
	huma.Register(api, huma.Operation{
		OperationID: "list-webhooks", Method: http.MethodGet, Path: "/webhooks", Tags: []string{"webhooks"},
		Summary: "List the store's webhook endpoints", Security: bearer, Errors: errStatuses,
	}, a.listWebhooks)
	huma.Register(api, huma.Operation{
		OperationID: "get-webhook", Method: http.MethodGet, Path: "/webhooks/{id}", Tags: []string{"webhooks"},
		Summary: "Get a webhook endpoint", Description: "With the number of deliveries waiting; a disabled endpoint says why.",
		Security: bearer, Errors: errs,
	}, a.getWebhook)
	huma.Register(api, huma.Operation{
		OperationID: "delete-webhook", Method: http.MethodDelete, Path: "/webhooks/{id}", Tags: []string{"webhooks"},
		Summary: "Remove a webhook endpoint", Description: "Its pending deliveries are dropped.",
		Security: bearer, DefaultStatus: http.StatusNoContent, Errors: errs,
	}, a.deleteWebhook)
	huma.Register(api, huma.Operation{
		OperationID: "enable-webhook", Method: http.MethodPost, Path: "/webhooks/{id}/enable", Tags: []string{"webhooks"},
		Summary: "Enable a disabled webhook endpoint again", Security: bearer, Errors: errs,
	}, a.enableWebhook)
	huma.Register(api, huma.Operation{
		OperationID: "webhook-deliveries", Method: http.MethodGet, Path: "/webhooks/{id}/deliveries", Tags: []string{"webhooks"},
		Summary: "An endpoint's delivery log", Description: "Its last delivery attempts, newest first: status, error, duration, result, next retry.",
		Security: bearer, Errors: errs,
	}, a.webhookDeliveries)
}

func (a *API) createWebhook(ctx context.Context, in *createWebhookInput) (*webhookOutput, error) {
	store, err := callerOf(ctx).storeFor(in.Body.Store, true)
	if err != nil {
		return nil, err
	}
	ep, secret, err := a.hooks.Create(ctx, webhook.NewEndpoint{Store: store, URL: in.Body.URL, Events: in.Body.Events})
	if err != nil {
		return nil, webhookProblem(err)
	}
	return &webhookOutput{Location: Prefix + "/webhooks/" + ep.ID, Body: Webhook{Endpoint: ep, Secret: secret}}, nil
}

func (a *API) listWebhooks(ctx context.Context, in *storeInput) (*webhookListOutput, error) {
	store, err := callerOf(ctx).storeFor(in.Store, true)
	if err != nil {
		return nil, err
	}
	eps, err := a.hooks.List(ctx, store)
	if err != nil {
		return nil, webhookProblem(err)
	}
	return &webhookListOutput{Body: WebhookList{Items: eps}}, nil
}

func (a *API) getWebhook(ctx context.Context, in *webhookIDInput) (*webhookOutput, error) {
	store, err := callerOf(ctx).storeFor(in.Store, true)
	if err != nil {
		return nil, err
	}
	ep, err := a.hooks.Get(ctx, store, in.ID)
	if err != nil {
		return nil, webhookProblem(err)
	}
	n, err := a.hooks.Pending(ctx, store, in.ID)
	if err != nil {
		return nil, webhookProblem(err)
	}
	return &webhookOutput{Body: Webhook{Endpoint: ep, Pending: &n}}, nil
}

type noContent struct{}

func (a *API) deleteWebhook(ctx context.Context, in *webhookIDInput) (*noContent, error) {
	store, err := callerOf(ctx).storeFor(in.Store, true)
	if err != nil {
		return nil, err
	}
	if err := a.hooks.Delete(ctx, store, in.ID); err != nil {
		return nil, webhookProblem(err)
	}
	return &noContent{}, nil
}

func (a *API) enableWebhook(ctx context.Context, in *webhookIDInput) (*webhookOutput, error) {
	store, err := callerOf(ctx).storeFor(in.Store, true)
	if err != nil {
		return nil, err
	}
	ep, err := a.hooks.Enable(ctx, store, in.ID)
	if err != nil {
		return nil, webhookProblem(err)
	}
	return &webhookOutput{Body: Webhook{Endpoint: ep}}, nil
}

func (a *API) webhookDeliveries(ctx context.Context, in *deliveriesInput) (*deliveriesOutput, error) {
	store, err := callerOf(ctx).storeFor(in.Store, true)
	if err != nil {
		return nil, err
	}
	log, err := a.hooks.Log(ctx, store, in.ID, in.Limit)
	if err != nil {
		return nil, webhookProblem(err)
	}
	n, err := a.hooks.Pending(ctx, store, in.ID)
	if err != nil {
		return nil, webhookProblem(err)
	}
	if log == nil {
		log = []webhook.Attempt{}
	}
	return &deliveriesOutput{Body: DeliveryLog{Items: log, Pending: n}}, nil
}

// webhookProblem maps the webhook service's errors (codes of the wire
// protocol, and too_many_webhooks) to problems.
func webhookProblem(err error) *Problem {
	var we *webhook.Error
	if !errors.As(err, &we) {
		return newProblem(http.StatusInternalServerError, protocol.CodeInternal, err.Error())
	}
	switch we.Code {
	case webhook.CodeBadRequest:
		return newProblem(http.StatusUnprocessableEntity, we.Code, we.Msg)
	case webhook.CodeNotFound:
		return newProblem(http.StatusNotFound, we.Code, we.Msg)
	case webhook.CodeTooMany:
		return newProblem(http.StatusConflict, we.Code, we.Msg)
	case webhook.CodeUnavailable:
		p := newProblem(http.StatusServiceUnavailable, we.Code, err.Error())
		p.retryAfter = 5
		return p
	}
	return newProblem(http.StatusInternalServerError, we.Code, err.Error())
}
