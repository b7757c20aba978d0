package client

import "errors"

var (
	// ErrClosed: the Conn (or the Subscription) has been closed.
	ErrClosed = errors.New("caps client: closed")
	// ErrDisconnected: the connection to the hub was lost while the operation
	// was in flight, so its outcome is unknown. A Publish that fails with it
	// can be repeated with the same message id (WithMsgID) to be stored once.
	ErrDisconnected = errors.New("caps client: disconnected")
	// ErrSlowConsumer: a subscription's buffer was full and a delivery was
	// dropped (see the package documentation). Reported through Options.OnError.
	ErrSlowConsumer = errors.New("caps client: slow consumer, delivery dropped")
	// ErrHubClosing: the hub sent BYE; the Conn reconnects.
	ErrHubClosing = errors.New("caps client: hub said bye")
	// ErrTooLarge: the frame would exceed the hub's max_frame.
	ErrTooLarge = errors.New("caps client: frame too large for the hub")
	// ErrAcked: Ack or Nak was already called for this message.
	ErrAcked = errors.New("caps client: message already acknowledged")
)
