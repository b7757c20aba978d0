// Package webhook delivers events to the HTTP endpoints stores register,
// as Standard Webhooks (https://www.standardwebhooks.com): signed, retried
// for days, never lost across a hub crash, and with one slow or dead
// receiver delaying no other. It is generic over where events come from:
// the application gives a stream and a function that turns its messages
// into events.
//
// # Go API
//
//	svc, err := webhook.New(webhook.Config{
//		Engine:     eng,                  // *engine.Engine
//		Registerer: reg,                  // prometheus.Registerer (metrics)
//		AllowHTTP:  webhook.ParseHosts(flagAllowHTTP),
//		Source: webhook.Source{
//			Stream:   "CAPS_PARCELS",
//			Subjects: []string{engine.Subject("parcel.>")},
//			Map: func(m jetstream.Msg) (webhook.Event, string, bool) {
//				// the order event → Event{ID, Type: "order.delivered", Time, Data}, its store
//			},
//		},
//	})
//	err = svc.Start(ctx) // with the hub; svc.Stop() when it stops
//
//	ep, secret, err := svc.Create(ctx, webhook.NewEndpoint{Store: "rosa", URL: "https://shop.example/hooks", Events: nil})
//	eps, err := svc.List(ctx, "rosa")
//	ep, err = svc.Get(ctx, "rosa", id)
//	err = svc.Delete(ctx, "rosa", id)
//	ep, err = svc.Enable(ctx, "rosa", id)            // re-enable a disabled endpoint
//	log, err := svc.Log(ctx, "rosa", id, 50)         // last attempts, newest first
//	n, err := svc.Pending(ctx, "rosa", id)           // deliveries waiting
//
// Every method takes the store: an endpoint of another store is not_found,
// so an API that passes the caller's own store cannot leak another's. The
// signing secret ("whsec_" and the base64 of 32 random bytes) is returned
// by Create only. Errors are *Error with a code (CodeBadRequest,
// CodeNotFound, CodeTooMany, CodeUnavailable) for the API to map to HTTP.
//
// Run a Service on every hub, with the same Config: endpoints, queues and
// logs live in the engine, so every hub sees the same ones and shares the
// work (each delivery is made by one hub).
//
// # How an event travels
//
//  1. Source. A durable pull consumer (Source.Durable, shared by every hub)
//     reads the application's stream from the events that follow its
//     creation. Map turns a message into an Event and a store; for each
//     enabled endpoint of that store whose filter takes the event type, a
//     task (the JSON body, the event's id and type) is stored in the
//     CAPS_WEBHOOK_TASKS stream on subject caps.wh.task.<endpoint>, with the
//     message id "<event id>.<endpoint id>". Only then is the source message
//     acknowledged: a crash in between hands the message again, and the
//     stream refuses the repeated tasks as duplicates (for 10 minutes; a
//     later repeat is delivered again with the same webhook-id).
//  2. Delivery. Each endpoint has its own durable consumer on its subject
//     (a work queue: a task leaves the stream when it is settled), with at
//     most MaxInFlight tasks in flight across every hub. Each hub runs a
//     worker per enabled endpoint; a worker POSTs each task with a
//     RequestTimeout, then acknowledges it (2xx), or hands it back with a
//     delay (NakWithDelay: the engine redelivers it, whichever hub is
//     alive), or terminates it (410 Gone, or older than the retry window).
//     Since an endpoint's in-flight tasks are its own, a receiver that hangs
//     or fails holds its own MaxInFlight slots and nothing else; while it
//     fails, only those few deliveries are retried, the rest wait their turn
//     instead of each hammering it.
//  3. Log. Every attempt is appended to CAPS_WEBHOOK_LOG on
//     caps.wh.log.<endpoint>, which keeps the last LogSize of each endpoint.
//
// The subjects are outside engine.SubjectPrefix: no client topic reaches
// them. Endpoints (secrets included) are one KV entry per store in bucket
// CAPS_WEBHOOKS, changed by compare-and-set, so two hubs cannot together
// pass a store's cap; each hub watches the bucket to start and stop its
// workers. A hub learns of an endpoint created on another hub within
// milliseconds; events handled before that are not queued for it.
//
// # The request
//
//	POST <url>
//	Content-Type: application/json
//	webhook-id: <event id>                 (the same on every attempt)
//	webhook-timestamp: <unix seconds of this attempt>
//	webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">
//
//	{"type":"order.delivered","timestamp":"2026-05-04T10:00:00.000Z","data":{…}}
//
// The HMAC key is the secret's base64 part, decoded. Delivery is at least
// once: a receiver drops repeats by webhook-id. Events of one endpoint may
// arrive out of order (several are in flight, and retries come later).
//
// # Retries and disabling
//
// A failed attempt (no answer within RequestTimeout, a connection error, a
// refused destination, any status but 2xx, a redirect) is retried after
// BackoffBase (5s), then twice as long each time up to BackoffMax (2h),
// each wait randomised by ±20 %, for as long as the task is younger than
// RetryWindow (72h); a task that fails once past the window is given up.
// An endpoint disabled shows why and when (Endpoint.DisabledReason,
// DisabledAt); a disabled endpoint's pending deliveries are dropped and no
// new ones are queued for it: re-enabled (Enable), it receives the events
// that follow. A shop catches up on what it missed by reading its orders.
// An endpoint is disabled when:
//
//   - it has had no successful delivery for longer than RetryWindow (the
//     first failure since the last success is Endpoint.FailingSince);
//   - it answers 410 Gone;
//   - its backlog reaches MaxPending deliveries, or the deliveries stream
//     reaches MaxQueueBytes and its backlog is the largest: a receiver that
//     cannot keep up loses its queue rather than fill the hub's disk.
//
// # Server-side request forgery
//
// The URL is the shop's, the request the hub's, made from inside the
// operator's network. Only https is accepted, or http to the hosts in
// Config.AllowHTTP; no address that is loopback, private, link-local (the
// clouds' metadata service at 169.254.169.254), shared, reserved or
// multicast is connected to unless it is in Config.AllowPrivate. The check
// runs in the dialer's Control hook, on the address about to be connected
// to, after name resolution: a name that resolves to an internal address,
// now or only later (DNS rebinding), is refused all the same; literal
// addresses are also refused at Create, with a clear error. Proxies from
// the environment are not used, redirects are not followed, response
// headers are bounded (16 KiB) and at most 4 KiB of a response body is
// read (256 bytes kept in the log).
//
// # Limits and metrics
//
// MaxEndpointsPerStore (10), MaxEndpoints (1000, counted in this hub's view,
// so concurrent creations on several hubs can pass it by a few),
// MaxURLLength (1024), 32 event types per filter, MaxPending (10000 per
// endpoint), MaxQueueBytes (1 GiB), MaxEventBytes (64 KiB per body; a larger
// event is not delivered, and is counted as invalid). Metrics:
// caps_webhook_deliveries_total{result}, caps_webhook_attempt_seconds,
// caps_webhook_pending, caps_webhook_endpoints{state},
// caps_webhook_endpoints_disabled_total{reason} and
// caps_webhook_events_total{result}.
package webhook
