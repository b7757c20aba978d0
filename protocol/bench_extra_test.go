package protocol_test

import (
	"bytes"
	"io"
	"testing"

	"github.com/caps-hub/caps/protocol"
)

// A reader that starts small decodes frames larger than its buffer and long
// runs of small ones, split anywhere, the same as a default one.
func TestReaderSizeSmallStart(t *testing.T) {
	var stream []byte
	var want []protocol.Frame
	for i := 0; i < 300; i++ {
		f := protocol.Frame{Op: protocol.OpMsg, ID: uint64(i), Topic: []byte("a.b"), Payload: bytes.Repeat([]byte{byte(i)}, (i*37)%3000)}
		stream = f.Append(stream)
		want = append(want, f)
	}
	for _, chunk := range []int{1, 7, 512, 100000} {
		rd := protocol.NewReaderSize(&chunked{b: stream, n: chunk}, 0, 64)
		for i, w := range want {
			f, err := rd.Next()
			if err != nil {
				t.Fatalf("chunk %d frame %d: %v", chunk, i, err)
			}
			if f.ID != w.ID || !bytes.Equal(f.Payload, w.Payload) {
				t.Fatalf("chunk %d frame %d: got id %d, %d bytes", chunk, i, f.ID, len(f.Payload))
			}
		}
		if _, err := rd.Next(); err != io.EOF {
			t.Fatalf("chunk %d: want EOF, got %v", chunk, err)
		}
	}
}

// BenchmarkDecodeSmallStart: a reader that starts at 512 bytes (as the hub's
// do) reaches the default's speed once reads keep filling it.
func BenchmarkDecodeSmallStart(b *testing.B) {
	buf, size := msgStream(61)
	rd := protocol.NewReaderSize(&cycleReader{buf: buf}, 0, 512)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := rd.Next(); err != nil {
			b.Fatal(err)
		}
	}
}

// chunked serves b at most n bytes per Read.
type chunked struct {
	b []byte
	n int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.n)], c.b)
	c.b = c.b[n:]
	return n, nil
}
