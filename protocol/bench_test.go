package protocol_test

import (
	"bytes"
	"testing"

	"github.com/caps-hub/caps/protocol"
)

// cycleReader serves a pre-encoded buffer over and over without allocating.
type cycleReader struct {
	buf []byte
	off int
}

func (c *cycleReader) Read(p []byte) (int, error) {
	n := copy(p, c.buf[c.off:])
	c.off += n
	if c.off == len(c.buf) {
		c.off = 0
	}
	return n, nil
}

// msgStream returns n MSG frames with 128-byte payloads, back to back.
func msgStream(n int) (buf []byte, frameSize int) {
	payload := bytes.Repeat([]byte("p"), 128)
	for i := 0; i < n; i++ {
		f := protocol.Frame{Op: protocol.OpMsg, Flags: protocol.FlagAckRequired, ID: 5, Seq: uint64(100000 + i),
			Topic: []byte("parcel.pickup.acme"), Key: []byte("0b6f4b1e-3f2a-4c1d-9a57-8e2c1d0f5a11"), Payload: payload}
		buf = f.Append(buf)
		frameSize = f.Size()
	}
	return buf, frameSize
}

// The MSG frame sizes are all equal, and 4096 is not a multiple of them, so
// frames regularly straddle the Reader's buffer refills.
func newBenchReader() (*protocol.Reader, int) {
	buf, size := msgStream(61)
	return protocol.NewReader(&cycleReader{buf: buf}, 0), size
}

func BenchmarkDecode(b *testing.B) {
	rd, size := newBenchReader()
	b.SetBytes(int64(size))
	b.ReportAllocs()
	for b.Loop() {
		f, err := rd.Next()
		if err != nil || f.Op != protocol.OpMsg {
			b.Fatalf("%v %v", f, err)
		}
	}
}

func BenchmarkDecodeBytes(b *testing.B) {
	buf, size := msgStream(1)
	var f protocol.Frame
	b.SetBytes(int64(size))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := protocol.Decode(buf, 0, &f); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	f := protocol.Frame{Op: protocol.OpMsg, Flags: protocol.FlagAckRequired, ID: 5, Seq: 123456,
		Topic: []byte("parcel.pickup.acme"), Key: []byte("0b6f4b1e-3f2a-4c1d-9a57-8e2c1d0f5a11"), Payload: bytes.Repeat([]byte("p"), 128)}
	buf := make([]byte, 0, f.Size())
	b.SetBytes(int64(f.Size()))
	b.ReportAllocs()
	for b.Loop() {
		buf = f.Append(buf[:0])
	}
	if len(buf) != f.Size() {
		b.Fatal("bad size")
	}
}

var matchSink bool

func BenchmarkMatch(b *testing.B) {
	for _, c := range []struct{ name, pattern, topic string }{
		{"literal", "parcel.pickup.acme", "parcel.pickup.acme"},
		{"star", "parcel.*.acme", "parcel.pickup.acme"},
		{"tail", "parcel.>", "parcel.pickup.acme"},
		{"miss-early", "chat.>", "parcel.pickup.acme"},
		{"miss-late", "parcel.pickup.acme", "parcel.pickup.acmf"},
	} {
		p, t := []byte(c.pattern), []byte(c.topic)
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				matchSink = protocol.Match(p, t)
			}
		})
	}
}

// Reader.Next allocates nothing per frame in steady state.
func TestReaderNextZeroAllocs(t *testing.T) {
	rd, _ := newBenchReader()
	for i := 0; i < 200; i++ { // warm up
		if _, err := rd.Next(); err != nil {
			t.Fatal(err)
		}
	}
	allocs := testing.AllocsPerRun(10000, func() {
		if _, err := rd.Next(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Reader.Next allocates %v times per frame", allocs)
	}

	// Also when frames arrive one byte at a time.
	buf, _ := msgStream(3)
	one := protocol.NewReader(&oneByteCycle{buf: buf}, 0)
	for i := 0; i < 10; i++ {
		if _, err := one.Next(); err != nil {
			t.Fatal(err)
		}
	}
	if allocs := testing.AllocsPerRun(1000, func() { one.Next() }); allocs != 0 {
		t.Errorf("Reader.Next over one-byte reads allocates %v times per frame", allocs)
	}
}

func TestEncodeZeroAllocs(t *testing.T) {
	f := protocol.Frame{Op: protocol.OpPub, ID: 1, Topic: []byte("a.b"), Payload: make([]byte, 128)}
	buf := make([]byte, 0, f.Size())
	if allocs := testing.AllocsPerRun(1000, func() { buf = f.Append(buf[:0]) }); allocs != 0 {
		t.Errorf("Append into a big enough buffer allocates %v times", allocs)
	}
	var g protocol.Frame
	enc := f.Encode()
	if allocs := testing.AllocsPerRun(1000, func() { protocol.Decode(enc, 0, &g) }); allocs != 0 {
		t.Errorf("Decode allocates %v times", allocs)
	}
}

// oneByteCycle is cycleReader one byte per Read.
type oneByteCycle struct {
	buf []byte
	off int
}

func (c *oneByteCycle) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	p[0] = c.buf[c.off]
	c.off = (c.off + 1) % len(c.buf)
	return 1, nil
}

var validSink bool

// BenchmarkValidTopic: the check every publish makes, in the client and in
// the hub, on a topic like the bench's.
func BenchmarkValidTopic(b *testing.B) {
	t := []byte("bench.pubsub.r123456789.1")
	b.ReportAllocs()
	for b.Loop() {
		validSink = protocol.ValidTopic(t)
	}
}
