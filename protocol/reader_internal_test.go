package protocol

import (
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

// A length prefix alone does not make a Reader allocate the frame it
// announces: the buffer grows with the bytes that arrive. (It used to
// allocate the whole frame at once: 4 bytes from each of 20000 connections
// made a hub hold 20 GB.)
func TestReaderGrowsWithTheBytesNotThePrefix(t *testing.T) {
	head := binary.BigEndian.AppendUint32(nil, 1<<20)
	for _, sent := range []int{0, 1000, 100_000} {
		in := io.MultiReader(strings.NewReader(string(head)), strings.NewReader(strings.Repeat("x", sent)))
		d := NewReaderSize(in, 1<<20, 512)
		if _, err := d.Next(); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("%d bytes of a 1 MiB frame: %v", sent, err)
		}
		if got, limit := len(d.buf), 2*(sent+len(head))+512; got > limit {
			t.Errorf("%d bytes of a 1 MiB frame sent: the buffer holds %d bytes (at most %d)", sent, got, limit)
		}
	}
	// A whole big frame still decodes, however it is split.
	f := Frame{Op: OpPub, Topic: []byte("a.b"), Payload: make([]byte, 300_000)}
	b := f.Encode()
	d := NewReaderSize(&trickle{b: b, n: 7777}, 1<<20, 512)
	got, err := d.Next()
	if err != nil || len(got.Payload) != 300_000 || string(got.Topic) != "a.b" {
		t.Fatalf("a 300 KB frame in pieces: %v %v", got, err)
	}
}

// trickle reads b n bytes at a time.
type trickle struct {
	b []byte
	n int
}

func (r *trickle) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	k := copy(p, r.b[:min(r.n, len(r.b))])
	r.b = r.b[k:]
	return k, nil
}
