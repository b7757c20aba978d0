package protocol

// Operation semantics (docs/PROTOCOL.md has the full text and hex examples).
//
// Handshake. The client's first frame is HELLO (payload: JSON Hello). The hub
// answers WELCOME (payload: JSON Welcome) or a fatal ERR and closes. Any other
// frame before HELLO is a fatal ERR "handshake". No HELLO within the handshake
// deadline (default 5 s) is a fatal ERR "handshake_timeout".
//
// PUB  id=correlation (0 = no answer wanted unless it fails), topic, key=message
//      id (optional; used for de-duplication of stored topics), payload.
//      Answer: OK id with seq = stream sequence (0 for live topics), or ERR id.
//      A topic covered by a stream (e.g. parcel.>, chat.>) is stored before the
//      OK is sent: an OK means the engine has it on disk.
//
// SUB  id=correlation, topic=pattern (wildcards * and >), group=queue group
//      (optional), key=durable name (optional), flags: FlagManualAck,
//      FlagDeliverAll. Payload: optional JSON SubOptions.
//      Answer: OK id with seq = subscription id (sid). Deliveries arrive as MSG
//      with id = sid. Live subscriptions to the same pattern (and group) share
//      one sid on a hub, so one encoded MSG frame serves every subscriber:
//      a client must map sid to its own handlers. Subscribing twice to the
//      same pattern and group returns the same sid.
//      A durable subscription (key set) is backed by a JetStream consumer named
//      after the durable. Every session anywhere that subscribes with the same
//      durable name shares that consumer: each stored message goes to one of
//      them, with FlagAckRequired, and must be ACKed within the ack wait or it
//      is redelivered (FlagRedelivered), possibly to another member. When a
//      session ends, its unacknowledged deliveries go to another member at once.
//
// UNSUB id=sid. Answer: none (ERR not_found if the sid is unknown).
//
// MSG  id=sid, seq=stream sequence (durable) or 0 (live), topic, key=message id,
//      payload, flags FlagAckRequired|FlagRedelivered|FlagHistory.
//
// ACK  id=sid, seq=sequence being acknowledged. With FlagConfirm the hub
//      answers, once the engine has stored the ack, with OK carrying
//      FlagConfirm, id=sid and seq=seq (or ERR id=sid). NAK: the same, but the
//      message is handed to another member now.
//
// REQ  id=correlation, topic=service name (e.g. "parcel.track", "chat.who"),
//      payload = request body. Answer: REPLY id with payload, or ERR id.
//
// PING/PONG either way. A peer idle for the heartbeat interval sends PING; a
//      peer that has sent nothing for two intervals is dead.
//
// ERR  id=correlation of the failed request (0 if none), topic=code, payload=text,
//      FlagFatal when the connection is closed after it.
//
// BYE  either way, payload = reason: the sender is closing in an orderly way
//      (the hub sends it on shutdown; clients then reconnect elsewhere).

import "fmt"

// Bounds on the numbers a SUB may carry (docs/PROTOCOL.md, SUB). A SUB with
// a number outside them is refused with bad_request: every number a client
// sends reaches an allocation, a duration or a loop bound in the hub.
const (
	// MaxHistory is the most stored messages a SUB may ask to replay.
	MaxHistory = 1000
	// MaxInFlightLimit is the largest max_inflight a durable member may ask for.
	MaxInFlightLimit = 1000
	// MinAckWaitMS and MaxAckWaitMS bound ack_wait_ms (when it is not 0).
	MinAckWaitMS = 100
	MaxAckWaitMS = 24 * 3600 * 1000
)

// SubOptions is the optional JSON payload of a SUB frame.
type SubOptions struct {
	// MaxInFlight caps unacknowledged durable deliveries to this session
	// (0 = hub default). A driver's --capacity.
	MaxInFlight int `json:"max_inflight,omitempty"`
	// AckWaitMS overrides the consumer's ack wait when the consumer is created.
	AckWaitMS int `json:"ack_wait_ms,omitempty"`
	// History asks for the last N stored messages on the pattern before live ones
	// (marked FlagHistory). Only for live subscriptions on stored topics.
	History int `json:"history,omitempty"`
}

// Validate checks every number against its documented bound.
func (o SubOptions) Validate() error {
	switch {
	case o.History < 0 || o.History > MaxHistory:
		return fmt.Errorf("history %d is out of range 0-%d", o.History, MaxHistory)
	case o.MaxInFlight < 0 || o.MaxInFlight > MaxInFlightLimit:
		return fmt.Errorf("max_inflight %d is out of range 0-%d", o.MaxInFlight, MaxInFlightLimit)
	case o.AckWaitMS != 0 && (o.AckWaitMS < MinAckWaitMS || o.AckWaitMS > MaxAckWaitMS):
		return fmt.Errorf("ack_wait_ms %d is out of range %d-%d (or 0 for the hub's default)", o.AckWaitMS, MinAckWaitMS, MaxAckWaitMS)
	}
	return nil
}
