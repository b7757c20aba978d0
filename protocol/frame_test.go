package protocol_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"math/rand"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/caps-hub/caps/protocol"
)

// cloneFrame deep-copies f, whose slices alias a decoder's buffer.
func cloneFrame(f *protocol.Frame) protocol.Frame {
	c := *f
	c.Topic = bytes.Clone(f.Topic)
	c.Key = bytes.Clone(f.Key)
	c.Group = bytes.Clone(f.Group)
	c.Payload = bytes.Clone(f.Payload)
	return c
}

// framesEqual compares frames field by field; nil and empty slices are equal.
func framesEqual(a, b *protocol.Frame) bool {
	return a.Op == b.Op && a.Flags == b.Flags && a.ID == b.ID && a.Seq == b.Seq &&
		bytes.Equal(a.Topic, b.Topic) && bytes.Equal(a.Key, b.Key) &&
		bytes.Equal(a.Group, b.Group) && bytes.Equal(a.Payload, b.Payload)
}

func frameListsEqual(a, b []protocol.Frame) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !framesEqual(&a[i], &b[i]) {
			return false
		}
	}
	return true
}

// readAll reads frames until an error, which must be a clean io.EOF.
func readAll(tb testing.TB, rd *protocol.Reader) []protocol.Frame {
	tb.Helper()
	var out []protocol.Frame
	for {
		f, err := rd.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			tb.Fatalf("after %d frames: %v", len(out), err)
		}
		out = append(out, cloneFrame(f))
	}
}

// sampleFrames covers every op and the encoding's corners: empty and long
// fields (multi-byte length prefixes), extreme ids, binary payloads.
func sampleFrames() []protocol.Frame {
	long := bytes.Repeat([]byte("x"), 300)
	bin := make([]byte, 256)
	for i := range bin {
		bin[i] = byte(i)
	}
	fs := []protocol.Frame{
		{Op: protocol.OpHello, Payload: []byte(`{"version":1,"role":"vendor","name":"acme"}`)},
		{Op: protocol.OpWelcome, Payload: []byte(`{"session":"s1","heartbeat_ms":10000}`)},
		{Op: protocol.OpPub, ID: 1, Topic: []byte("parcel.pickup.acme"), Key: []byte("id-1"), Payload: []byte("{}")},
		{Op: protocol.OpPub, Flags: protocol.FlagDurable, ID: math.MaxUint64, Topic: long, Key: long, Payload: bin},
		{Op: protocol.OpPub, Topic: []byte("a")}, // empty payload
		{Op: protocol.OpSub, ID: 2, Topic: []byte("parcel.>"), Group: []byte("drivers")},
		{Op: protocol.OpSub, Flags: protocol.FlagManualAck | protocol.FlagDeliverAll, ID: 3,
			Topic: []byte("parcel.pickup.*"), Key: []byte("drivers"), Group: long, Payload: []byte(`{"max_inflight":4}`)},
		{Op: protocol.OpUnsub, ID: 127},
		{Op: protocol.OpUnsub, ID: 128},
		{Op: protocol.OpMsg, Flags: protocol.FlagAckRequired | protocol.FlagRedelivered | protocol.FlagHistory,
			ID: 5, Seq: math.MaxUint64, Topic: []byte("chat.lobby"), Key: []byte("k"), Payload: bytes.Repeat(bin, 20)},
		{Op: protocol.OpAck, Flags: protocol.FlagConfirm, ID: 5, Seq: 1 << 35},
		{Op: protocol.OpNak, ID: 5, Seq: 16384},
		{Op: protocol.OpOK, ID: 2, Seq: 9},
		{Op: protocol.OpOK, Flags: protocol.FlagConfirm, ID: 5, Seq: 1 << 35},
		*protocol.ErrorFrame(4, protocol.CodeBadTopic, "bad topic", false),
		*protocol.ErrorFrame(0, protocol.CodeSlowConsumer, "", true),
		{Op: protocol.OpPing},
		{Op: protocol.OpPong, ID: 77},
		{Op: protocol.OpReq, ID: 8, Topic: []byte("parcel.track"), Payload: []byte(`{"orderID":"x"}`)},
		{Op: protocol.OpReply, ID: 8, Payload: []byte(`[]`)},
		{Op: protocol.OpBye, Flags: 0xff, Payload: []byte("bye")}, // undefined flags pass through
	}
	return fs
}

func encodeAll(fs []protocol.Frame) []byte {
	var b []byte
	for i := range fs {
		b = fs[i].Append(b)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	covered := map[protocol.Op]bool{}
	for _, f := range sampleFrames() {
		covered[f.Op] = true
		enc := f.Encode()
		if len(enc) != f.Size() {
			t.Errorf("%v: Size() = %d, encoded %d bytes", &f, f.Size(), len(enc))
		}
		if got := binary.BigEndian.Uint32(enc); int(got) != len(enc)-protocol.HeaderLen {
			t.Errorf("%v: length prefix %d, body is %d bytes", &f, got, len(enc)-protocol.HeaderLen)
		}
		// Append keeps what is already in dst.
		prefix := []byte("prefix")
		app := f.Append(bytes.Clone(prefix))
		if !bytes.HasPrefix(app, prefix) || !bytes.Equal(app[len(prefix):], enc) {
			t.Errorf("%v: Append onto a prefix gave %x", &f, app)
		}
		var g protocol.Frame
		rest, err := protocol.Decode(enc, 0, &g)
		if err != nil {
			t.Fatalf("%v: Decode: %v", &f, err)
		}
		if len(rest) != 0 || !framesEqual(&f, &g) {
			t.Errorf("round trip: got %v (rest %d), want %v", &g, len(rest), &f)
		}
		// Parse of the body alone is the same.
		var p protocol.Frame
		if err := p.Parse(enc[protocol.HeaderLen:]); err != nil || !framesEqual(&f, &p) {
			t.Errorf("Parse: %v, %v", err, &p)
		}
		// The decoded slices are capped: appending to one cannot overwrite the next field.
		if len(g.Topic) > 0 && cap(g.Topic) != len(g.Topic) {
			t.Errorf("%v: Topic has spare capacity %d", &f, cap(g.Topic)-len(g.Topic))
		}
	}
	for _, op := range allOps() {
		if !covered[op] {
			t.Errorf("sampleFrames has no %s", op)
		}
	}
}

// EncodeOwned encodes as Encode does and leaves f's fields pointing at the
// very bytes Parse of the encoding would.
func TestEncodeOwned(t *testing.T) {
	long := protocol.Frame{Op: protocol.OpMsg, ID: 300, Seq: 1 << 40, Topic: bytes.Repeat([]byte("t"), 200),
		Key: bytes.Repeat([]byte("k"), 130), Group: bytes.Repeat([]byte("g"), 129), Payload: bytes.Repeat([]byte("p"), 70000)}
	for _, f := range append(sampleFrames(), long) {
		want := f.Encode()
		src := f
		enc := f.EncodeOwned()
		if !bytes.Equal(enc, want) {
			t.Fatalf("%v: EncodeOwned differs from Encode", &src)
		}
		var p protocol.Frame
		if err := p.Parse(enc[protocol.HeaderLen:]); err != nil {
			t.Fatalf("%v: Parse: %v", &src, err)
		}
		for _, fl := range []struct {
			name      string
			got, want []byte
		}{{"topic", f.Topic, p.Topic}, {"key", f.Key, p.Key}, {"group", f.Group, p.Group}, {"payload", f.Payload, p.Payload}} {
			if len(fl.got) != len(fl.want) || (len(fl.got) > 0 && &fl.got[0] != &fl.want[0]) {
				t.Errorf("%v: %s is not the encoding's bytes", &src, fl.name)
			}
			if cap(fl.got) != len(fl.got) {
				t.Errorf("%v: %s has spare capacity %d", &src, fl.name, cap(fl.got)-len(fl.got))
			}
		}
	}
}

func TestDecodeRest(t *testing.T) {
	fs := sampleFrames()
	buf := encodeAll(fs)
	var got []protocol.Frame
	for len(buf) > 0 {
		var f protocol.Frame
		var err error
		if buf, err = protocol.Decode(buf, 0, &f); err != nil {
			t.Fatalf("frame %d: %v", len(got), err)
		}
		got = append(got, f)
	}
	if !frameListsEqual(got, fs) {
		t.Fatalf("Decode loop over a multi-frame message does not give the frames back")
	}
}

// chunkReader returns at most n bytes per Read.
type chunkReader struct {
	b []byte
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	m := min(c.n, len(p), len(c.b))
	copy(p, c.b[:m])
	c.b = c.b[m:]
	return m, nil
}

// randReader returns a random number of bytes (1..max) per Read, sometimes
// with io.EOF together with the last data.
type randReader struct {
	b   []byte
	rnd *rand.Rand
	max int
}

func (r *randReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	m := min(1+r.rnd.Intn(r.max), len(p), len(r.b))
	copy(p, r.b[:m])
	r.b = r.b[m:]
	if len(r.b) == 0 && r.rnd.Intn(2) == 0 {
		return m, io.EOF
	}
	return m, nil
}

// countReader counts Read calls.
type countReader struct {
	r     io.Reader
	reads int
}

func (c *countReader) Read(p []byte) (int, error) { c.reads++; return c.r.Read(p) }

func TestReaderSplitAndCoalesced(t *testing.T) {
	want := sampleFrames()
	// A frame much larger than the Reader's initial buffer forces it to grow.
	want = append(want, protocol.Frame{Op: protocol.OpMsg, ID: 1, Topic: []byte("big"), Payload: bytes.Repeat([]byte("0123456789"), 20000)})
	want = append(want, sampleFrames()...)
	stream := encodeAll(want)

	readers := map[string]func() io.Reader{
		"whole":            func() io.Reader { return bytes.NewReader(stream) },
		"iotest.OneByte":   func() io.Reader { return iotest.OneByteReader(bytes.NewReader(stream)) },
		"iotest.Half":      func() io.Reader { return iotest.HalfReader(bytes.NewReader(stream)) },
		"iotest.DataErr":   func() io.Reader { return iotest.DataErrReader(bytes.NewReader(stream)) },
		"onebyte":          func() io.Reader { return &chunkReader{stream, 1} },
		"chunk2":           func() io.Reader { return &chunkReader{stream, 2} },
		"chunk3":           func() io.Reader { return &chunkReader{stream, 3} },
		"chunk5":           func() io.Reader { return &chunkReader{stream, 5} },
		"chunk4095":        func() io.Reader { return &chunkReader{stream, 4095} },
		"random":           func() io.Reader { return &randReader{stream, rand.New(rand.NewSource(1)), 50} },
		"random-large":     func() io.Reader { return &randReader{stream, rand.New(rand.NewSource(2)), 9000} },
		"random-dataerror": func() io.Reader { return iotest.DataErrReader(&randReader{stream, rand.New(rand.NewSource(3)), 700}) },
	}
	for name, mk := range readers {
		t.Run(name, func(t *testing.T) {
			got := readAll(t, protocol.NewReader(mk(), 0))
			if !frameListsEqual(got, want) {
				t.Fatalf("decoded %d frames, want %d equal frames", len(got), len(want))
			}
		})
	}
}

// Bytes read ahead of the Reader (Prefill) decode first and join what the
// stream reads next, wherever the split falls, however small the buffer.
func TestReaderPrefill(t *testing.T) {
	want := sampleFrames()
	stream := encodeAll(want)
	for _, split := range []int{1, 3, 4, 5, 17, 64, 65, 200, len(stream) - 1, len(stream)} {
		for _, size := range []int{64, 512} {
			rd := protocol.NewReaderSize(&chunkReader{stream[split:], 7}, 0, size)
			rd.Prefill(stream[:split])
			if got := readAll(t, rd); !frameListsEqual(got, want) {
				t.Fatalf("prefilled %d bytes, buffer %d: decoded %d frames, want %d equal frames", split, size, len(got), len(want))
			}
		}
	}
}

func TestReaderManyFramesOneRead(t *testing.T) {
	var want []protocol.Frame
	for i := 0; i < 50; i++ {
		want = append(want, protocol.Frame{Op: protocol.OpMsg, ID: 5, Seq: uint64(i), Topic: []byte("chat.lobby"), Payload: []byte("hi")})
	}
	stream := encodeAll(want)
	if len(stream) > 4096 {
		t.Fatalf("test stream of %d bytes does not fit one read", len(stream))
	}
	cr := &countReader{r: bytes.NewReader(stream)}
	rd := protocol.NewReader(cr, 0)
	f, err := rd.Next()
	if err != nil {
		t.Fatal(err)
	}
	if f.Seq != 0 || rd.Buffered() != len(stream)-want[0].Size() {
		t.Errorf("after the first frame: seq %d, Buffered() = %d, want %d", f.Seq, rd.Buffered(), len(stream)-want[0].Size())
	}
	for i := 1; i < len(want); i++ {
		f, err := rd.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !framesEqual(f, &want[i]) {
			t.Fatalf("frame %d: %v, want %v", i, f, &want[i])
		}
	}
	if cr.reads != 1 {
		t.Errorf("50 coalesced frames took %d reads, want 1", cr.reads)
	}
	if rd.Buffered() != 0 {
		t.Errorf("Buffered() = %d at the end", rd.Buffered())
	}
	if _, err := rd.Next(); err != io.EOF {
		t.Errorf("at the end: %v, want io.EOF", err)
	}
}

// header builds a length prefix followed by body.
func header(n uint32, body ...byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, n), body...)
}

func TestFrameTooLarge(t *testing.T) {
	f := protocol.Frame{Op: protocol.OpPub, Topic: []byte("a"), Payload: make([]byte, 100)}
	enc := f.Encode()
	body := len(enc) - protocol.HeaderLen

	// Exactly at the limit is fine, one over is not.
	for _, max := range []int{body, body - 1} {
		var g protocol.Frame
		_, derr := protocol.Decode(enc, max, &g)
		_, rerr := protocol.NewReader(bytes.NewReader(enc), max).Next()
		for name, err := range map[string]error{"Decode": derr, "Reader": rerr} {
			if max == body && err != nil {
				t.Errorf("%s: frame of exactly max %d bytes: %v", name, max, err)
			}
			if max < body && !errors.Is(err, protocol.ErrFrameTooLarge) {
				t.Errorf("%s: body %d > max %d: %v, want ErrFrameTooLarge", name, body, max, err)
			}
		}
	}

	// The default limit is DefaultMaxFrame; the Reader refuses from the
	// header alone, without waiting for (or buffering) the body.
	for _, n := range []uint32{protocol.DefaultMaxFrame + 1, math.MaxUint32, 1 << 31} {
		hdr := header(n)
		if _, err := protocol.NewReader(bytes.NewReader(hdr), 0).Next(); !errors.Is(err, protocol.ErrFrameTooLarge) {
			t.Errorf("Reader: length %d: %v, want ErrFrameTooLarge", n, err)
		}
		if _, err := protocol.NewReader(bytes.NewReader(hdr), -1).Next(); !errors.Is(err, protocol.ErrFrameTooLarge) {
			t.Errorf("Reader(max -1): length %d: %v, want ErrFrameTooLarge", n, err)
		}
		var g protocol.Frame
		if _, err := protocol.Decode(hdr, 0, &g); !errors.Is(err, protocol.ErrFrameTooLarge) {
			t.Errorf("Decode: length %d: %v, want ErrFrameTooLarge", n, err)
		}
	}

	// A frame of exactly DefaultMaxFrame is accepted by default.
	big := protocol.Frame{Op: protocol.OpMsg}
	big.Payload = make([]byte, protocol.DefaultMaxFrame-(big.Size()-protocol.HeaderLen))
	enc = big.Encode()
	if len(enc)-protocol.HeaderLen != protocol.DefaultMaxFrame {
		t.Fatalf("test frame body is %d bytes", len(enc)-protocol.HeaderLen)
	}
	if f, err := protocol.NewReader(&chunkReader{enc, 65536}, 0).Next(); err != nil || len(f.Payload) != len(big.Payload) {
		t.Errorf("Reader: frame of DefaultMaxFrame: %v", err)
	}
	var g protocol.Frame
	if _, err := protocol.Decode(enc, 0, &g); err != nil {
		t.Errorf("Decode: frame of DefaultMaxFrame: %v", err)
	}
}

func TestMalformedFrames(t *testing.T) {
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"length 0", header(0), protocol.ErrFrameTooSmall},
		{"length 6", header(6, 0x0a, 0, 0, 0, 0, 0), protocol.ErrFrameTooSmall},
		{"op 0x00", header(7, 0x00, 0, 0, 0, 0, 0, 0), protocol.ErrUnknownOp},
		{"op 0x10", header(7, 0x10, 0, 0, 0, 0, 0, 0), protocol.ErrUnknownOp},
		{"op 0xff", header(7, 0xff, 0, 0, 0, 0, 0, 0), protocol.ErrUnknownOp},
		{"topic past end", header(7, 0x03, 0, 0, 0, 5, 0, 0), protocol.ErrMalformed},
		{"topic past end by one", header(7, 0x03, 0, 0, 0, 3, 'a', 'b'), protocol.ErrMalformed},
		{"key past end", header(8, 0x03, 0, 0, 0, 1, 'a', 2, 0), protocol.ErrMalformed},
		{"group past end", header(7, 0x04, 0, 0, 0, 0, 0, 1), protocol.ErrMalformed},
		{"huge field length", header(17, 0x03, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 0, 0), protocol.ErrMalformed},
		{"id runs off the end", header(7, 0x03, 0, 0x80, 0x80, 0x80, 0x80, 0x80), protocol.ErrMalformed},
		{"seq runs off the end", header(7, 0x03, 0, 0, 0x80, 0x80, 0x80, 0x80), protocol.ErrMalformed},
		{"field length runs off the end", header(7, 0x03, 0, 0, 0, 0, 0, 0x80), protocol.ErrMalformed},
		{"id overflows 64 bits", header(17, 0x03, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0), protocol.ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var f protocol.Frame
			if _, err := protocol.Decode(c.in, 0, &f); !errors.Is(err, c.want) {
				t.Errorf("Decode: %v, want %v", err, c.want)
			}
			if _, err := protocol.NewReader(bytes.NewReader(c.in), 0).Next(); !errors.Is(err, c.want) {
				t.Errorf("Reader: %v, want %v", err, c.want)
			}
			if _, err := protocol.NewReader(iotest.OneByteReader(bytes.NewReader(c.in)), 0).Next(); !errors.Is(err, c.want) {
				t.Errorf("Reader(one byte): %v, want %v", err, c.want)
			}
			if err := f.Parse(c.in[protocol.HeaderLen:]); !errors.Is(err, c.want) {
				t.Errorf("Parse: %v, want %v", err, c.want)
			}
		})
	}
	// Decode of a message shorter than its length prefix says.
	var f protocol.Frame
	ping := (&protocol.Frame{Op: protocol.OpPing}).Encode()
	for i := 0; i < len(ping); i++ {
		_, err := protocol.Decode(ping[:i], 0, &f)
		want := protocol.ErrMalformed
		if i < protocol.HeaderLen {
			want = protocol.ErrFrameTooSmall
		}
		if !errors.Is(err, want) {
			t.Errorf("Decode of %d of %d bytes: %v, want %v", i, len(ping), err, want)
		}
	}
}

func TestReaderEOF(t *testing.T) {
	ping := (&protocol.Frame{Op: protocol.OpPing}).Encode()
	pub := (&protocol.Frame{Op: protocol.OpPub, ID: 1, Topic: []byte("a.b"), Payload: []byte("payload")}).Encode()
	two := append(bytes.Clone(ping), pub...)

	// Nothing at all, or a stream ending between frames: clean io.EOF.
	for name, mk := range map[string]func([]byte) io.Reader{
		"whole":   func(b []byte) io.Reader { return bytes.NewReader(b) },
		"onebyte": func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b)) },
		"dataerr": func(b []byte) io.Reader { return iotest.DataErrReader(bytes.NewReader(b)) },
	} {
		rd := protocol.NewReader(mk(nil), 0)
		if _, err := rd.Next(); err != io.EOF {
			t.Errorf("%s: empty stream: %v, want io.EOF", name, err)
		}
		rd = protocol.NewReader(mk(two), 0)
		for i := 0; i < 2; i++ {
			if _, err := rd.Next(); err != nil {
				t.Fatalf("%s: frame %d: %v", name, i, err)
			}
		}
		if _, err := rd.Next(); err != io.EOF {
			t.Errorf("%s: after two frames: %v, want io.EOF", name, err)
		}
		// Ending anywhere inside the second frame: io.ErrUnexpectedEOF.
		for cut := len(ping) + 1; cut < len(two); cut++ {
			rd := protocol.NewReader(mk(two[:cut]), 0)
			if _, err := rd.Next(); err != nil {
				t.Fatalf("%s: cut %d: first frame: %v", name, cut, err)
			}
			if _, err := rd.Next(); err != io.ErrUnexpectedEOF {
				t.Errorf("%s: stream cut %d bytes into a %d-byte frame: %v, want io.ErrUnexpectedEOF",
					name, cut-len(ping), len(pub), err)
			}
		}
	}

	// Other read errors are passed through, not turned into EOF.
	boom := errors.New("boom")
	rd := protocol.NewReader(io.MultiReader(bytes.NewReader(pub[:5]), iotest.ErrReader(boom)), 0)
	if _, err := rd.Next(); !errors.Is(err, boom) {
		t.Errorf("read error mid-frame: %v, want boom", err)
	}
	rd = protocol.NewReader(iotest.ErrReader(boom), 0)
	if _, err := rd.Next(); !errors.Is(err, boom) {
		t.Errorf("read error before a frame: %v, want boom", err)
	}
	// An error returned together with the data that completes a frame does
	// not lose the frame.
	rd = protocol.NewReader(&errWithData{data: ping, err: boom}, 0)
	if f, err := rd.Next(); err != nil || f.Op != protocol.OpPing {
		t.Errorf("frame delivered with an error: %v, %v", f, err)
	}
}

// errWithData returns all its data and err in the same Read, then err.
type errWithData struct {
	data []byte
	err  error
}

func (e *errWithData) Read(p []byte) (int, error) {
	n := copy(p, e.data)
	e.data = e.data[n:]
	return n, e.err
}

func TestOpAndFrameStrings(t *testing.T) {
	names := map[protocol.Op]string{
		protocol.OpHello: "HELLO", protocol.OpWelcome: "WELCOME", protocol.OpPub: "PUB", protocol.OpSub: "SUB",
		protocol.OpUnsub: "UNSUB", protocol.OpMsg: "MSG", protocol.OpAck: "ACK", protocol.OpOK: "OK",
		protocol.OpErr: "ERR", protocol.OpPing: "PING", protocol.OpPong: "PONG", protocol.OpReq: "REQ",
		protocol.OpReply: "REPLY", protocol.OpNak: "NAK", protocol.OpBye: "BYE",
	}
	if len(allOps()) != len(names) {
		t.Errorf("%d valid ops, test knows %d", len(allOps()), len(names))
	}
	for op, name := range names {
		if op.String() != name || !op.Valid() {
			t.Errorf("op 0x%02x: String %q Valid %v, want %q true", uint8(op), op.String(), op.Valid(), name)
		}
	}
	for _, op := range []protocol.Op{0, 0x10, 0xff} {
		if op.Valid() || !strings.HasPrefix(op.String(), "OP(0x") {
			t.Errorf("op 0x%02x: Valid %v String %q", uint8(op), op.Valid(), op.String())
		}
	}
	f := protocol.Frame{Op: protocol.OpPub, ID: 1, Topic: []byte("a.b"), Payload: []byte("x")}
	if s := f.String(); !strings.Contains(s, "PUB") || !strings.Contains(s, `"a.b"`) {
		t.Errorf("String() = %q", s)
	}
	f.Reset()
	if !framesEqual(&f, &protocol.Frame{}) || f.Topic != nil {
		t.Errorf("Reset left %v", &f)
	}
}

func TestErrorFrame(t *testing.T) {
	for _, fatal := range []bool{false, true} {
		f := protocol.ErrorFrame(9, protocol.CodeNotFound, "no such sid", fatal)
		if f.Op != protocol.OpErr || f.ID != 9 || string(f.Topic) != "not_found" || string(f.Payload) != "no such sid" ||
			(f.Flags&protocol.FlagFatal != 0) != fatal {
			t.Errorf("ErrorFrame(fatal=%v) = %v", fatal, f)
		}
		var g protocol.Frame
		if _, err := protocol.Decode(f.Encode(), 0, &g); err != nil {
			t.Fatal(err)
		}
		e := protocol.AsError(&g)
		if e.Code != protocol.CodeNotFound || e.Text != "no such sid" || e.Fatal != fatal {
			t.Errorf("AsError = %+v", e)
		}
		if e.Error() != "not_found: no such sid" {
			t.Errorf("Error() = %q", e.Error())
		}
		var err error = e
		var pe *protocol.Error
		if !errors.As(err, &pe) {
			t.Error("*Error is not an error target")
		}
	}
}

// The decoder accepts non-minimal uvarints (senders must not produce them);
// the frame re-encodes minimally and decodes equal.
func TestNonMinimalUvarint(t *testing.T) {
	in := header(9, 0x0a, 0, 0x81, 0x00, 0x80, 0x00, 0, 0, 0) // id 1, seq 0
	var f protocol.Frame
	if _, err := protocol.Decode(in, 0, &f); err != nil {
		t.Fatal(err)
	}
	if f.ID != 1 || f.Seq != 0 {
		t.Fatalf("got %v", &f)
	}
	want := (&protocol.Frame{Op: protocol.OpPing, ID: 1}).Encode()
	if enc := f.Encode(); !bytes.Equal(enc, want) {
		t.Errorf("re-encoded %x, want %x", enc, want)
	}
}
