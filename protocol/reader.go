package protocol

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Reader decodes frames from a byte stream. A frame split across many reads
// and many frames arriving in one read decode the same. After the buffer has
// grown to fit the largest frame seen, Next allocates nothing. The buffer
// grows with the bytes that arrive, never ahead of them: a peer makes a
// Reader hold no more than it has sent (and twice that at most).
type Reader struct {
	r        io.Reader
	buf      []byte
	start    int // first unconsumed byte
	end      int // one past the last buffered byte
	maxFrame int
	frame    Frame
	grow     bool // the last read filled the buffer: double it when it empties
}

// growReadMax bounds how far the buffer grows to read more frames per
// system call; a single larger frame still gets a buffer its size.
const growReadMax = 64 << 10

// NewReader returns a Reader that refuses frames longer than maxFrame bytes
// (DefaultMaxFrame when maxFrame ≤ 0).
func NewReader(r io.Reader, maxFrame int) *Reader { return NewReaderSize(r, maxFrame, 4096) }

// NewReaderSize is NewReader with a first buffer of size bytes (at least
// 64). The buffer grows when a frame does not fit, and when reads keep
// filling it (up to 64 KiB), so a server can start its many mostly idle
// connections small and still read a busy one in big gulps.
func NewReaderSize(r io.Reader, maxFrame, size int) *Reader {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	return &Reader{r: r, buf: make([]byte, max(size, 64)), maxFrame: maxFrame}
}

// SetMaxFrame changes the largest frame Next accepts (a server reads the
// handshake under a small limit, then the session under its own).
func (d *Reader) SetMaxFrame(n int) {
	if n <= 0 {
		n = DefaultMaxFrame
	}
	d.maxFrame = n
}

// Prefill buffers b ahead of the stream: Next decodes it before anything
// read from the stream afterwards. It is for bytes a caller read before the
// Reader existed (the server peeks at a connection's first bytes to tell
// which protocol it speaks) and must not be called once Next has read from
// the stream.
func (d *Reader) Prefill(b []byte) {
	if need := d.end + len(b); need > len(d.buf) {
		nb := make([]byte, max(need, len(d.buf)))
		copy(nb, d.buf[d.start:d.end])
		d.end -= d.start
		d.start = 0
		d.buf = nb
	}
	d.end += copy(d.buf[d.end:], b)
}

// Buffered reports how many bytes are read from the stream but not yet decoded.
// A writer may use it to decide when to flush replies.
func (d *Reader) Buffered() int { return d.end - d.start }

// Next returns the next frame. The frame and its slices are valid until the
// next call to Next. Errors wrapping ErrFrameTooLarge, ErrFrameTooSmall,
// ErrUnknownOp and ErrMalformed mean the stream cannot be trusted any further.
func (d *Reader) Next() (*Frame, error) {
	if err := d.fill(HeaderLen); err != nil {
		return nil, err
	}
	// Compare before converting to int: on 32-bit platforms a length of 2³¹
	// or more would turn negative and pass for a too-small frame.
	l := binary.BigEndian.Uint32(d.buf[d.start:])
	if uint64(l) > uint64(d.maxFrame) {
		return nil, errTooLarge(uint64(l), d.maxFrame)
	}
	n := int(l)
	if n < minBody {
		return nil, errTooSmall(n)
	}
	if err := d.fill(HeaderLen + n); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	body := d.buf[d.start+HeaderLen : d.start+HeaderLen+n]
	d.start += HeaderLen + n
	if err := d.frame.Parse(body); err != nil {
		return nil, err
	}
	return &d.frame, nil
}

// The errors of Next are made apart from it: their arguments took stack
// space in Next's frame, which a server's idle connection keeps while Next
// waits for a read.

//go:noinline
func errTooLarge(l uint64, maxFrame int) error {
	return fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, l, maxFrame)
}

//go:noinline
func errTooSmall(n int) error { return fmt.Errorf("%w: %d bytes", ErrFrameTooSmall, n) }

// fill makes sure at least need bytes are buffered, reading as much as the
// stream offers in each call so that coalesced frames cost one read.
func (d *Reader) fill(need int) error {
	if d.end-d.start >= need {
		return nil
	}
	if d.start == d.end {
		// Nothing buffered: start again at the front, which costs no copy
		// and gives the read the whole buffer.
		d.start, d.end = 0, 0
		if d.grow && len(d.buf) < growReadMax {
			d.buf = make([]byte, 2*len(d.buf))
		}
		d.grow = false
	}
	if d.start+need > len(d.buf) {
		// Move the partial frame to the front.
		copy(d.buf, d.buf[d.start:d.end])
		d.end -= d.start
		d.start = 0
	}
	for d.end-d.start < need {
		if d.end == len(d.buf) {
			// A frame larger than the buffer: grow it as the frame's bytes
			// arrive (doubling, up to the frame's size), not at once to the
			// size its length prefix announces. Otherwise four bytes from each
			// of many connections would make the reader hold MaxFrame for
			// each (20000 × 1 MiB), for nothing sent.
			nb := make([]byte, min(2*len(d.buf), d.start+need))
			copy(nb, d.buf[d.start:d.end])
			d.end -= d.start
			d.start = 0
			d.buf = nb
		}
		free := len(d.buf) - d.end
		m, err := d.r.Read(d.buf[d.end:])
		if m == free && free >= len(d.buf)/2 {
			d.grow = true // more was probably waiting
		}
		d.end += m
		if err != nil {
			if d.end-d.start >= need {
				return nil
			}
			if err == io.EOF && d.end-d.start > 0 {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// Decode parses exactly one whole frame (with its length prefix) from b, as
// carried in one WebSocket message. It returns the bytes after the frame.
func Decode(b []byte, maxFrame int, f *Frame) (rest []byte, err error) {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	if len(b) < HeaderLen {
		return b, fmt.Errorf("%w: %d bytes", ErrFrameTooSmall, len(b))
	}
	l := binary.BigEndian.Uint32(b)
	if uint64(l) > uint64(maxFrame) {
		return b, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, l, maxFrame)
	}
	n := int(l)
	if n < minBody {
		return b, fmt.Errorf("%w: %d bytes", ErrFrameTooSmall, n)
	}
	if len(b)-HeaderLen < n {
		return b, fmt.Errorf("%w: length %d, have %d", ErrMalformed, n, len(b)-HeaderLen)
	}
	if err := f.Parse(b[HeaderLen : HeaderLen+n]); err != nil {
		return b, err
	}
	return b[HeaderLen+n:], nil
}
