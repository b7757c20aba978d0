// Package classroom reads and writes the classroom dialect of CAPS: bare JSON
// objects {"event":…,"payload":…} written back to back on a TCP stream with
// no delimiter, as the Node.js classroom clients do with
// socket.write(JSON.stringify({event, payload})).
//
// Because nothing frames the objects, TCP may deliver two of them in one read
// or one of them across several reads. The Decoder therefore does not rely on
// read boundaries: it runs a small JSON syntax scanner over the stream and
// cuts it at the end of each top-level object. A malformed object is reported
// as a recoverable *Error and the decoder resynchronises on the next
// top-level '{'; an object larger than the limit is reported and skipped
// without being buffered. docs/PROTOCOL.md ("Classroom dialect and
// WebSocket") is the normative description.
package classroom

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Object is one classroom message.
type Object struct {
	// Event names the message: "pickup", "in-transit", "delivered", "message"…
	Event string
	// Payload is the raw JSON value of the "payload" member (nil when absent).
	Payload json.RawMessage
}

// Error codes of a recoverable *Error.
const (
	CodeBadJSON  = "bad_json"         // bytes that are not a JSON object
	CodeBadEvent = "bad_event"        // a JSON object without a string "event"
	CodeTooLarge = "object_too_large" // an object over the size limit
)

// Error is a recoverable decoding error: the offending bytes have been (or
// will be) skipped and the next call to Next continues with the stream.
type Error struct {
	Code   string
	Offset int64 // stream offset of the byte where the problem was found
	Msg    string
}

func (e *Error) Error() string { return fmt.Sprintf("%s at byte %d: %s", e.Code, e.Offset, e.Msg) }

// ErrUnsynced means the stream has carried more than the size limit of bytes
// without a '{' to resynchronise on: it is not the classroom dialect, or not
// any more. It is fatal.
var ErrUnsynced = errors.New("no JSON object in sight: cannot resynchronise the stream")

// DefaultMaxObject is the size limit when NewDecoder is given none.
const DefaultMaxObject = 1 << 20

// Decoder splits a byte stream into classroom objects.
type Decoder struct {
	r        io.Reader
	max      int
	buf      []byte // read buffer
	pos      int    // next byte of buf to scan
	obj      []byte // the object being collected (nil while not collecting)
	sc       scanner
	off      int64 // stream offset of buf[pos]
	mode     mode
	skipped  int   // bytes skipped while resynchronising
	pending  error // a read error to return once buffered bytes are used up
	deferred error // a decoding error to return on the next call
}

type mode uint8

const (
	modeBetween  mode = iota // at top level, between objects
	modeObject               // inside an object, collecting it
	modeOversize             // inside an object over the limit, scanning without collecting
	modeResync               // after a syntax error: skipping to the next '{'
)

// NewDecoder returns a decoder reading r that refuses objects longer than
// maxObject bytes (DefaultMaxObject when maxObject ≤ 0).
func NewDecoder(r io.Reader, maxObject int) *Decoder {
	if maxObject <= 0 {
		maxObject = DefaultMaxObject
	}
	return &Decoder{r: r, max: maxObject}
}

// Next returns the next object's bytes, exactly as sent (valid until the next
// call). Errors:
//   - *Error: one malformed or oversized object (or a run of stray bytes); the
//     stream goes on, call Next again;
//   - ErrUnsynced: fatal, see its text;
//   - io.EOF: the stream ended between objects; io.ErrUnexpectedEOF: inside one;
//   - any other error from the reader (a read timeout leaves the decoder
//     intact: calling Next again carries on where it stopped).
func (d *Decoder) Next() ([]byte, error) {
	if err := d.deferred; err != nil {
		d.deferred = nil
		return nil, err
	}
	for {
		if d.mode == modeResync && d.skipped > d.max {
			return nil, ErrUnsynced
		}
		if d.pos == len(d.buf) {
			if d.pending != nil {
				err := d.pending
				d.pending = nil
				return nil, d.eof(err)
			}
			if err := d.read(); err != nil {
				return nil, err
			}
			continue
		}
		obj, err := d.scan()
		if obj != nil || err != nil {
			return obj, err
		}
	}
}

// eof turns io.EOF inside an object into io.ErrUnexpectedEOF.
func (d *Decoder) eof(err error) error {
	if err == io.EOF && (d.mode == modeObject || d.mode == modeOversize) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// read refills buf. It keeps a read error for after the bytes that came with it.
func (d *Decoder) read() error {
	if cap(d.buf) == 0 {
		d.buf = make([]byte, 0, 4096)
	}
	n, err := d.r.Read(d.buf[:cap(d.buf)])
	d.buf = d.buf[:n]
	d.pos = 0
	if err != nil {
		if n == 0 {
			return d.eof(err)
		}
		d.pending = err
	}
	return nil
}

// scan consumes buffered bytes until it completes an object, finds an error,
// or runs out of bytes (nil, nil).
func (d *Decoder) scan() ([]byte, error) {
	for d.pos < len(d.buf) {
		switch d.mode {
		case modeBetween, modeResync:
			// Look for the start of the next object, skipping whitespace
			// silently and anything else with one error per run.
			i := d.pos
			for i < len(d.buf) && d.buf[i] != '{' {
				i++
			}
			stray := d.mode == modeBetween && !isSpace(d.buf[d.pos:i])
			start := d.off
			d.skip(i - d.pos)
			if stray {
				d.mode = modeResync
				return nil, &Error{Code: CodeBadJSON, Offset: start, Msg: "expected '{' to start an object"}
			}
			if d.mode == modeResync && d.skipped > d.max {
				return nil, ErrUnsynced
			}
			if i == len(d.buf) {
				return nil, nil
			}
			d.mode = modeObject
			d.skipped = 0
			d.sc.reset()
			d.obj = d.obj[:0]
		case modeObject, modeOversize:
			start := d.pos
			done, err := d.scanObject()
			if d.mode == modeObject {
				d.obj = append(d.obj, d.buf[start:d.pos]...)
				if len(d.obj) > d.max {
					// Too large: report it once, then keep scanning without
					// collecting until it ends (or turns out malformed).
					d.obj = d.obj[:0]
					tooLarge := &Error{Code: CodeTooLarge, Offset: d.off, Msg: fmt.Sprintf("object larger than %d bytes", d.max)}
					switch {
					case err != nil:
						// Report both, in stream order, however the
						// bytes were split across reads.
						d.mode, d.skipped = modeResync, 0
						d.deferred = err
					case done:
						d.mode = modeBetween
					default:
						d.mode = modeOversize
					}
					return nil, tooLarge
				}
			}
			if err != nil {
				d.mode, d.skipped = modeResync, 0
				return nil, err
			}
			if done {
				oversize := d.mode == modeOversize
				d.mode = modeBetween
				if !oversize {
					return d.obj, nil
				}
			}
		}
	}
	return nil, nil
}

// scanObject feeds bytes to the scanner until the object ends or is malformed.
// On a syntax error the offending byte is not consumed, so that a '{' in it
// can start the next object.
func (d *Decoder) scanObject() (done bool, err error) {
	for d.pos < len(d.buf) {
		if d.sc.state == stString {
			// Fast path: most bytes are plain string contents.
			i := d.pos
			for i < len(d.buf) {
				if c := d.buf[i]; c == '"' || c == '\\' || c < 0x20 {
					break
				}
				i++
			}
			d.off += int64(i - d.pos)
			d.pos = i
			if i == len(d.buf) {
				break
			}
		}
		c := d.buf[d.pos]
		r := d.sc.step(c)
		if r == scanError {
			return false, &Error{Code: CodeBadJSON, Offset: d.off, Msg: d.sc.err}
		}
		d.pos++
		d.off++
		if r == scanEnd {
			return true, nil
		}
	}
	return false, nil
}

func (d *Decoder) skip(n int) {
	d.pos += n
	d.off += int64(n)
	d.skipped += n
}

func isSpace(b []byte) bool {
	for _, c := range b {
		if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			return false
		}
	}
	return true
}

// Parse checks that b (a complete JSON object, as returned by Next) is a
// classroom object: its "event" member must be a non-empty string. "payload"
// may be any JSON value or absent. Other members are ignored.
func Parse(b []byte) (Object, error) {
	var raw struct {
		Event   json.RawMessage `json:"event"`
		Payload json.RawMessage `json:"payload"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return Object{}, &Error{Code: CodeBadJSON, Msg: err.Error()}
	}
	var o Object
	if len(raw.Event) == 0 || raw.Event[0] != '"' || json.Unmarshal(raw.Event, &o.Event) != nil || o.Event == "" {
		return Object{}, &Error{Code: CodeBadEvent, Msg: `an object needs "event": a non-empty string`}
	}
	if len(raw.Payload) > 0 && !bytes.Equal(raw.Payload, []byte("null")) {
		o.Payload = raw.Payload
	}
	return o, nil
}

// Append appends the object {"event":event,"payload":payload} to dst.
// payload is written as is when it is valid JSON, as a JSON string when it is
// not, and as null when it is empty.
func Append(dst []byte, event string, payload []byte) []byte {
	dst = append(dst, `{"event":`...)
	dst = appendString(dst, event)
	dst = append(dst, `,"payload":`...)
	switch {
	case len(payload) == 0:
		dst = append(dst, "null"...)
	case json.Valid(payload):
		dst = append(dst, payload...)
	default:
		dst = appendString(dst, string(payload))
	}
	return append(dst, '}')
}

// Encode returns the object {"event":event,"payload":payload}; see Append.
func Encode(event string, payload []byte) []byte {
	return Append(make([]byte, 0, len(event)+len(payload)+24), event, payload)
}

func appendString(dst []byte, s string) []byte {
	b, _ := json.Marshal(s) // never fails for a string
	return append(dst, b...)
}
