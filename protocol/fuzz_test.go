package protocol_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/caps-hub/caps/protocol"
)

// fuzzMax is the frame limit used by FuzzDecode: small, so that the limit
// check is reached often, but larger than any seed.
const fuzzMax = 4096

// FuzzDecode feeds arbitrary bytes to Decode and to Reader.Next. Neither may
// panic; both must decode the same frames and fail the same way; every frame
// must re-encode to bytes that decode to an equal frame.
func FuzzDecode(f *testing.F) {
	for _, raw := range specFrames(f) {
		f.Add(raw)
	}
	all := encodeAll(sampleFrames()[:10])
	f.Add(all)
	f.Add([]byte{})
	f.Add([]byte{0, 0})
	f.Add(header(0))
	f.Add(header(6, 0x0a, 0, 0, 0, 0, 0))
	f.Add(header(7, 0x00, 0, 0, 0, 0, 0, 0))
	f.Add(header(7, 0x10, 0, 0, 0, 0, 0, 0))
	f.Add(header(7, 0x03, 0, 0, 0, 5, 0, 0))
	f.Add(header(7, 0x03, 0, 0x80, 0x80, 0x80, 0x80, 0x80))
	f.Add(header(17, 0x03, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0))
	f.Add(header(9, 0x0a, 0, 0x81, 0x00, 0x80, 0x00, 0, 0, 0))
	f.Add(header(fuzzMax + 1))
	f.Add(header(0xffffffff, 1, 2, 3))
	f.Add(header(20, 0x03, 0, 0, 0, 0, 0, 0)) // truncated
	ping := (&protocol.Frame{Op: protocol.OpPing}).Encode()
	f.Add(append(bytes.Clone(ping), ping[:5]...))

	f.Fuzz(func(t *testing.T, data []byte) {
		input := bytes.Clone(data)

		// Decode, one frame after another.
		var viaDecode []protocol.Frame
		var decodeErr error
		rest := data
		for len(rest) > 0 {
			var fr protocol.Frame
			r, err := protocol.Decode(rest, fuzzMax, &fr)
			if err != nil {
				if !bytes.Equal(r, rest) {
					t.Fatalf("Decode error %v but rest changed", err)
				}
				decodeErr = err
				break
			}
			if len(r) >= len(rest) {
				t.Fatalf("Decode consumed nothing")
			}
			checkReencode(t, &fr)
			viaDecode = append(viaDecode, cloneFrame(&fr))
			rest = r
		}

		// Reader, over the whole input and one byte at a time.
		for _, r := range []io.Reader{bytes.NewReader(data), iotest.OneByteReader(bytes.NewReader(data))} {
			rd := protocol.NewReader(r, fuzzMax)
			var viaReader []protocol.Frame
			var readErr error
			for {
				fr, err := rd.Next()
				if err != nil {
					readErr = err
					break
				}
				checkReencode(t, fr)
				viaReader = append(viaReader, cloneFrame(fr))
				if len(viaReader) > len(data) {
					t.Fatalf("more frames than bytes")
				}
			}
			if !frameListsEqual(viaReader, viaDecode) {
				t.Fatalf("Reader decoded %d frames, Decode %d, or they differ", len(viaReader), len(viaDecode))
			}
			checkSameFailure(t, decodeErr, readErr, rest)
		}

		if !bytes.Equal(data, input) {
			t.Fatalf("decoding modified its input")
		}
	})
}

// checkReencode: a decoded frame re-encodes to bytes that decode to an equal frame.
func checkReencode(t *testing.T, fr *protocol.Frame) {
	t.Helper()
	enc := fr.Encode()
	if len(enc) != fr.Size() {
		t.Fatalf("Size() = %d, Encode gave %d bytes", fr.Size(), len(enc))
	}
	var again protocol.Frame
	r, err := protocol.Decode(enc, fuzzMax, &again)
	if err != nil {
		t.Fatalf("re-encoded %v does not decode: %v", fr, err)
	}
	if len(r) != 0 || !framesEqual(fr, &again) {
		t.Fatalf("re-encoded frame decodes to %v, want %v", &again, fr)
	}
	if !bytes.Equal(again.Encode(), enc) {
		t.Fatalf("encoding is not stable")
	}
}

// checkSameFailure compares how Decode and Reader end on the same input:
// rest is what Decode could not decode.
func checkSameFailure(t *testing.T, decodeErr, readErr error, rest []byte) {
	t.Helper()
	switch {
	case len(rest) == 0:
		if readErr != io.EOF {
			t.Fatalf("input ends between frames; Reader says %v, want io.EOF", readErr)
		}
	case len(rest) < protocol.HeaderLen:
		if !errors.Is(decodeErr, protocol.ErrFrameTooSmall) || readErr != io.ErrUnexpectedEOF {
			t.Fatalf("partial length prefix: Decode %v, Reader %v", decodeErr, readErr)
		}
	default:
		n := binary.BigEndian.Uint32(rest)
		if n <= fuzzMax && n >= 7 && int(n) > len(rest)-protocol.HeaderLen {
			// Truncated body: a stream reports a broken connection.
			if !errors.Is(decodeErr, protocol.ErrMalformed) || readErr != io.ErrUnexpectedEOF {
				t.Fatalf("truncated frame: Decode %v, Reader %v", decodeErr, readErr)
			}
			return
		}
		for _, sentinel := range []error{protocol.ErrFrameTooLarge, protocol.ErrFrameTooSmall, protocol.ErrUnknownOp, protocol.ErrMalformed} {
			if errors.Is(decodeErr, sentinel) {
				if !errors.Is(readErr, sentinel) {
					t.Fatalf("Decode: %v; Reader: %v", decodeErr, readErr)
				}
				return
			}
		}
		t.Fatalf("Decode error %v wraps no sentinel", decodeErr)
	}
}
