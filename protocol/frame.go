// Package protocol implements the CAPS wire protocol: length-prefixed binary
// frames carried over TCP, TLS or WebSocket. docs/PROTOCOL.md is the normative
// description; this package is its reference implementation and is meant to be
// used by any Go program that talks to a CAPS hub.
//
// Every frame has the same layout, so one decoder handles every operation:
//
//	length  uint32 big-endian   bytes that follow this field (7 ≤ length ≤ max frame size)
//	op      uint8               operation (OpHello, OpPub, …)
//	flags   uint8               operation-specific bit flags
//	id      uvarint             correlation id or subscription id
//	seq     uvarint             delivery/stream sequence, or the subscription id in an OK
//	topic   uvarint len, bytes  topic, pattern, or error code
//	key     uvarint len, bytes  message id (PUB/MSG) or durable name (SUB)
//	group   uvarint len, bytes  queue group (SUB)
//	payload remaining bytes     application bytes, passed through untouched
package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Version is the protocol version a client announces in its HELLO.
const Version = 1

// DefaultMaxFrame is the default largest frame (length field value) a peer accepts.
const DefaultMaxFrame = 1 << 20

// HeaderLen is the size of the length prefix.
const HeaderLen = 4

// minBody is op + flags + five one-byte uvarints: id, seq and the three empty field lengths.
const minBody = 2 + 1 + 1 + 1 + 1 + 1

// Op is a frame's operation code.
type Op uint8

// Operation codes. Values are part of the wire format and never change.
const (
	OpHello   Op = 0x01 // client → hub: first frame, payload is a JSON Hello
	OpWelcome Op = 0x02 // hub → client: handshake accepted, payload is a JSON Welcome
	OpPub     Op = 0x03 // client → hub: publish payload on topic; id>0 asks for an OK
	OpSub     Op = 0x04 // client → hub: subscribe to topic pattern (group, durable in key)
	OpUnsub   Op = 0x05 // client → hub: drop subscription id
	OpMsg     Op = 0x06 // hub → client: a delivery for subscription id, with seq
	OpAck     Op = 0x07 // client → hub: acknowledge delivery seq of subscription id
	OpOK      Op = 0x08 // hub → client: request id succeeded; seq carries a result number
	OpErr     Op = 0x09 // either way: error, topic holds the code, payload the text
	OpPing    Op = 0x0A // either way: are you there?
	OpPong    Op = 0x0B // either way: yes
	OpReq     Op = 0x0C // client → hub: request to a service on topic, answered by REPLY id
	OpReply   Op = 0x0D // hub → client: answer to REQ id
	OpNak     Op = 0x0E // client → hub: give delivery seq of subscription id to someone else now
	OpBye     Op = 0x0F // either way: orderly close follows; payload is the reason
	opMax     Op = OpBye
)

var opNames = [...]string{
	OpHello: "HELLO", OpWelcome: "WELCOME", OpPub: "PUB", OpSub: "SUB", OpUnsub: "UNSUB",
	OpMsg: "MSG", OpAck: "ACK", OpOK: "OK", OpErr: "ERR", OpPing: "PING", OpPong: "PONG",
	OpReq: "REQ", OpReply: "REPLY", OpNak: "NAK", OpBye: "BYE",
}

func (o Op) String() string {
	if o >= 1 && o <= opMax {
		return opNames[o]
	}
	return fmt.Sprintf("OP(0x%02x)", uint8(o))
}

// Valid reports whether o is a known operation.
func (o Op) Valid() bool { return o >= 1 && o <= opMax }

// Flags are per-frame bit flags.
type Flags uint8

const (
	// FlagAckRequired on MSG: the receiver must ACK (or NAK) seq.
	FlagAckRequired Flags = 1 << 0
	// FlagRedelivered on MSG: this delivery was made before and not acknowledged.
	FlagRedelivered Flags = 1 << 1
	// FlagHistory on MSG: the message is replayed history, not live.
	FlagHistory Flags = 1 << 2
	// FlagManualAck on SUB: the client acknowledges itself (durable subscriptions).
	FlagManualAck Flags = 1 << 3
	// FlagFatal on ERR: the sender closes the connection after this frame.
	FlagFatal Flags = 1 << 4
	// FlagDurable on PUB: fail unless the topic is stored by the engine.
	FlagDurable Flags = 1 << 5
	// FlagDeliverAll on SUB: a new durable starts from the first stored message, not the next one.
	FlagDeliverAll Flags = 1 << 6
	// FlagConfirm on ACK/NAK asks for an OK once the engine has it; the OK
	// carries the flag too, with the same id (sid) and seq.
	FlagConfirm Flags = 1 << 7
)

// Frame is one decoded frame. Topic, Key, Group and Payload alias the buffer
// the frame was decoded from: they are valid until that buffer is reused.
type Frame struct {
	Op      Op
	Flags   Flags
	ID      uint64
	Seq     uint64
	Topic   []byte
	Key     []byte
	Group   []byte
	Payload []byte
}

// Errors returned by the decoder. They are sentinel values so callers can map
// them to error codes without string matching.
var (
	ErrFrameTooLarge = errors.New("frame too large")
	ErrFrameTooSmall = errors.New("frame too small")
	ErrUnknownOp     = errors.New("unknown operation")
	ErrMalformed     = errors.New("malformed frame")
)

// Size returns the encoded size of f, including the length prefix.
func (f *Frame) Size() int {
	return HeaderLen + 2 + uvarintLen(f.ID) + uvarintLen(f.Seq) +
		uvarintLen(uint64(len(f.Topic))) + len(f.Topic) +
		uvarintLen(uint64(len(f.Key))) + len(f.Key) +
		uvarintLen(uint64(len(f.Group))) + len(f.Group) +
		len(f.Payload)
}

// Append encodes f and appends it to dst, returning the extended slice.
func (f *Frame) Append(dst []byte) []byte {
	body := f.Size() - HeaderLen
	dst = binary.BigEndian.AppendUint32(dst, uint32(body))
	dst = append(dst, byte(f.Op), byte(f.Flags))
	dst = binary.AppendUvarint(dst, f.ID)
	dst = binary.AppendUvarint(dst, f.Seq)
	dst = binary.AppendUvarint(dst, uint64(len(f.Topic)))
	dst = append(dst, f.Topic...)
	dst = binary.AppendUvarint(dst, uint64(len(f.Key)))
	dst = append(dst, f.Key...)
	dst = binary.AppendUvarint(dst, uint64(len(f.Group)))
	dst = append(dst, f.Group...)
	dst = append(dst, f.Payload...)
	return dst
}

// Encode returns f encoded in a new slice.
func (f *Frame) Encode() []byte { return f.Append(make([]byte, 0, f.Size())) }

// EncodeOwned is Encode that also points f's Topic, Key, Group and Payload
// at their bytes in the encoding, as Parse of it would, so that f stays
// valid as long as the encoding does, whatever becomes of the slices f was
// built from. The fields are found from the end of the encoding (the
// payload last, each field after its length), without parsing it again.
func (f *Frame) EncodeOwned() []byte {
	b := f.Encode()
	end := len(b)
	f.Payload = b[end-len(f.Payload) : end : end]
	end -= len(f.Payload)
	f.Group = b[end-len(f.Group) : end : end]
	end -= len(f.Group) + uvarintLen(uint64(len(f.Group)))
	f.Key = b[end-len(f.Key) : end : end]
	end -= len(f.Key) + uvarintLen(uint64(len(f.Key)))
	f.Topic = b[end-len(f.Topic) : end : end]
	return b
}

// Parse decodes one complete frame body (the bytes after the length prefix)
// into f without allocating. The slices in f alias body.
func (f *Frame) Parse(body []byte) error {
	if len(body) < minBody {
		return ErrFrameTooSmall
	}
	op := Op(body[0])
	if !op.Valid() {
		return fmt.Errorf("%w 0x%02x", ErrUnknownOp, body[0])
	}
	f.Op = op
	f.Flags = Flags(body[1])
	p := body[2:]
	var n int
	if f.ID, n = binary.Uvarint(p); n <= 0 {
		return fmt.Errorf("%w: bad id", ErrMalformed)
	}
	p = p[n:]
	if f.Seq, n = binary.Uvarint(p); n <= 0 {
		return fmt.Errorf("%w: bad seq", ErrMalformed)
	}
	p = p[n:]
	var err error
	if f.Topic, p, err = field(p); err != nil {
		return err
	}
	if f.Key, p, err = field(p); err != nil {
		return err
	}
	if f.Group, p, err = field(p); err != nil {
		return err
	}
	f.Payload = p
	return nil
}

func field(p []byte) (val, rest []byte, err error) {
	l, n := binary.Uvarint(p)
	if n <= 0 {
		return nil, nil, fmt.Errorf("%w: bad field length", ErrMalformed)
	}
	p = p[n:]
	if l > uint64(len(p)) {
		return nil, nil, fmt.Errorf("%w: field length %d past end of frame", ErrMalformed, l)
	}
	if l == 0 {
		return nil, p, nil
	}
	return p[:l:l], p[l:], nil
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// Reset clears f so it can be reused.
func (f *Frame) Reset() { *f = Frame{} }

// String renders f for logs and test failures.
func (f *Frame) String() string {
	return fmt.Sprintf("%s flags=%#x id=%d seq=%d topic=%q key=%q group=%q payload=%q",
		f.Op, uint8(f.Flags), f.ID, f.Seq, f.Topic, f.Key, f.Group, f.Payload)
}
