package classroom_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
	"unicode/utf8"

	"github.com/caps-hub/caps/protocol/classroom"
)

// chunked returns a reader delivering b in chunks whose sizes cycle through
// sizes (each 1..256), the way TCP may split and coalesce writes.
func chunked(b []byte, sizes []byte) io.Reader {
	if len(sizes) == 0 {
		sizes = []byte{0}
	}
	return &chunkedReader{b: b, sizes: sizes}
}

type chunkedReader struct {
	b     []byte
	sizes []byte
	i     int
}

func (r *chunkedReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := int(r.sizes[r.i%len(r.sizes)]) + 1
	r.i++
	n = min(n, len(p), len(r.b))
	copy(p, r.b[:n])
	r.b = r.b[n:]
	return n, nil
}

// FuzzDecoderMatchesEncodingJSON checks the stream decoder against
// encoding/json: whenever the input is a clean stream of JSON objects (as
// encoding/json's Decoder reads it), the classroom Decoder must return
// exactly those objects, byte for byte, without a single error, however the
// stream is cut into reads. FuzzDecoder (classroom_test.go) covers the
// opposite side: garbage, resynchronisation and limits.
//
//	go test ./protocol/classroom -run XXX -fuzz FuzzDecoderMatchesEncodingJSON -fuzztime 2m
func FuzzDecoderMatchesEncodingJSON(f *testing.F) {
	for _, s := range []string{
		`{"event":"pickup","payload":{"store":"1-206-flowers","orderID":"6f1c1d4e-2a7b-4c53-9a43-1f6b0b3c9d10","customer":"Ada","address":"1 Main St"}}`,
		`{"event":"a"}{"event":"b"} {"event":"c"}` + "\n\t\r" + `{"event":"d"}`,
		`{"event":"x","payload":"brace } in a string { and \" quote"}`,
		`{"event":"x","payload":[{"nested":{"deep":[1,-2.5e-3,true,false,null]}}]}`,
		`{"event":"\u00e9\ud83d\ude00","payload":"caf\u00e9 ☕"}`,
		`{}`, `{ }`, `{"":""}`, `{"a":{},"b":[]}`,
		"{\"event\":\"bad utf8 \xff\"}",
	} {
		f.Add([]byte(s), []byte{0})
		f.Add([]byte(s), []byte{3, 0, 7, 255})
	}
	f.Fuzz(func(t *testing.T, in []byte, cuts []byte) {
		// The oracle: encoding/json reading a stream of values.
		var want [][]byte
		jd := json.NewDecoder(bytes.NewReader(in))
		for {
			var raw json.RawMessage
			err := jd.Decode(&raw)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil || raw[0] != '{' {
				return // not a clean stream of objects: FuzzDecoder's ground
			}
			want = append(want, raw)
		}
		d := classroom.NewDecoder(chunked(in, cuts), len(in)+1)
		for i := 0; ; i++ {
			obj, err := d.Next()
			if errors.Is(err, io.EOF) {
				if i != len(want) {
					t.Fatalf("decoder found %d objects, encoding/json %d, in %q", i, len(want), in)
				}
				return
			}
			if err != nil {
				t.Fatalf("object %d: %v, but encoding/json reads %q as a clean stream", i, err, in)
			}
			if i >= len(want) || !bytes.Equal(obj, want[i]) {
				t.Fatalf("object %d: decoder %q, encoding/json %q", i, obj, want)
			}
		}
	})
}

// FuzzClassroomRoundTrip: what the hub encodes for a classroom client,
// the classroom decoder reads back as the same event and payload.
func FuzzClassroomRoundTrip(f *testing.F) {
	f.Add("pickup", []byte(`{"store":"s","orderID":"1"}`))
	f.Add("message", []byte("plain text, not JSON"))
	f.Add("in-transit", []byte(nil))
	f.Add("x", []byte("null"))
	f.Add("\u00e9v\"ent}", []byte(` {"spaced" : [ 1 , 2 ] } `))
	f.Fuzz(func(t *testing.T, event string, payload []byte) {
		if event == "" || !utf8.ValidString(event) {
			return // the hub only names events with valid, non-empty names
		}
		enc := classroom.Encode(event, payload)
		d := classroom.NewDecoder(bytes.NewReader(append(enc, enc...)), 0)
		for range 2 {
			obj, err := d.Next()
			if err != nil {
				t.Fatalf("decode %q: %v", enc, err)
			}
			o, err := classroom.Parse(obj)
			if err != nil {
				t.Fatalf("parse %q: %v", obj, err)
			}
			if o.Event != event {
				t.Fatalf("event %q came back as %q", event, o.Event)
			}
			switch {
			case len(payload) == 0 || string(bytes.TrimSpace(payload)) == "null":
				if o.Payload != nil {
					t.Fatalf("empty payload came back as %q", o.Payload)
				}
			case json.Valid(payload):
				var a, b bytes.Buffer
				json.Compact(&a, payload)
				json.Compact(&b, o.Payload)
				if a.String() != b.String() {
					t.Fatalf("payload %q came back as %q", payload, o.Payload)
				}
			default:
				var s string
				if err := json.Unmarshal(o.Payload, &s); err != nil {
					t.Fatalf("non-JSON payload %q came back as %q, not a string", payload, o.Payload)
				}
				if utf8.Valid(payload) && s != string(payload) {
					t.Fatalf("payload %q came back as %q", payload, s)
				}
			}
		}
		if _, err := d.Next(); !errors.Is(err, io.EOF) {
			t.Fatalf("after two objects: %v", err)
		}
	})
}
