// Package client is the Go client library for a CAPS hub.
//
// A [Conn] is one logical connection to a hub. It dials one of several hub
// addresses, performs the HELLO/WELCOME handshake, and from then on keeps
// itself connected: when the connection drops (network failure, missed
// heartbeats, BYE from a hub that shuts down) it reconnects with exponential
// backoff and jitter, rotating through the address list, resumes its session
// and subscribes again to everything it was subscribed to. Callers keep using
// the same *Conn and *Subscription values across reconnects.
//
//	c, err := client.Dial(ctx, client.DefaultAddrs(*hubFlag), client.Options{
//		Role: protocol.RoleDriver, Name: "dave",
//	})
//	if err != nil { … }
//	defer c.Close()
//	sub, err := c.Subscribe(ctx, "parcel.*.*.pickup", func(m *client.Msg) {
//		… // durable: acked automatically when the handler returns
//	}, client.Queue("drivers"), client.Durable("drivers"))
//	seq, err := c.Publish(ctx, "parcel.acme."+orderID+".in-transit.dana", body, client.WithMsgID(id))
//
// # Delivery guarantees
//
// Live subscriptions (no durable name) are at-most-once: messages published
// while the connection is down are not seen. Durable subscriptions are backed
// by a JetStream consumer on the hub; deliveries must be acknowledged, and
// anything unacknowledged when a connection drops is delivered again after
// the reconnect (or to another member of the durable). Acknowledged messages
// are never delivered again.
//
// [Conn.Publish] returns once the hub has answered; for a stored topic that
// means the message is on disk. When the connection drops while a Publish is
// waiting for its answer the call returns an error wrapping [ErrDisconnected]:
// the message may or may not have been stored, so publish again with the same
// [WithMsgID] and the hub's de-duplication stores it exactly once.
//
// # Handlers and flow control
//
// Every [Subscription] has its own goroutine that runs its handler, fed by a
// bounded buffer (see [Buffer]); a slow handler therefore never delays other
// subscriptions or the connection's read loop, and a handler may itself call
// Publish, Request or Msg.Ack on the same Conn. When a subscription's buffer
// is full, further deliveries for it are dropped (not queued without bound,
// and the read loop is never blocked): a live message is lost and reported
// once per overflow episode as [ErrSlowConsumer] through Options.OnError; a
// durable delivery is simply not acknowledged, so the hub redelivers it after
// the ack wait and nothing is lost. The hub's per-session in-flight limit for
// durables (MaxInFlight, 64 by default) is far below the default buffer size,
// so durable deliveries never overflow unless both are changed.
//
// # Concurrency
//
// All methods of Conn, Subscription and Msg are safe for concurrent use.
package client
