package classroom

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"
)

// result is what one call to Next produced, for comparing runs.
type result struct {
	obj  string
	code string // *Error code, or "" for an object
}

// decodeAll runs a decoder to the end of the stream.
func decodeAll(t *testing.T, r io.Reader, max int) ([]result, error) {
	t.Helper()
	d := NewDecoder(r, max)
	var out []result
	for i := 0; i < 10000; i++ {
		obj, err := d.Next()
		var ce *Error
		switch {
		case err == nil:
			out = append(out, result{obj: string(obj)})
		case errors.As(err, &ce):
			out = append(out, result{code: ce.Code})
		default:
			return out, err
		}
	}
	t.Fatal("decoder does not end")
	return nil, nil
}

func objects(n int) []string {
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, string(Encode("pickup", []byte(fmt.Sprintf(
			`{"store":"acme","orderID":"%d","customer":"Jo \"}{\" O'Neil","address":"1 Main St\\n{x}","n":[1,-2.5e3,true,null,{"a":[]}]}`, i)))))
	}
	return out
}

func TestCoalescedAndSplit(t *testing.T) {
	objs := objects(50)
	stream := strings.Join(objs, "")
	readers := map[string]func() io.Reader{
		"one read":     func() io.Reader { return strings.NewReader(stream) },
		"byte by byte": func() io.Reader { return iotest.OneByteReader(strings.NewReader(stream)) },
		"random cuts":  func() io.Reader { return &chunkReader{data: []byte(stream), rng: rand.New(rand.NewPCG(1, 2))} },
		"half reads":   func() io.Reader { return iotest.HalfReader(strings.NewReader(stream)) },
	}
	for name, mk := range readers {
		t.Run(name, func(t *testing.T) {
			got, err := decodeAll(t, mk(), 0)
			if err != io.EOF {
				t.Fatalf("end: %v, want io.EOF", err)
			}
			if len(got) != len(objs) {
				t.Fatalf("got %d results, want %d: %v", len(got), len(objs), got)
			}
			for i, r := range got {
				if r.code != "" || r.obj != objs[i] {
					t.Fatalf("object %d: got %+v, want %s", i, r, objs[i])
				}
				o, err := Parse([]byte(r.obj))
				if err != nil || o.Event != "pickup" || !json.Valid(o.Payload) {
					t.Fatalf("parse %d: %+v %v", i, o, err)
				}
			}
		})
	}
}

// chunkReader returns data in random-sized pieces.
type chunkReader struct {
	data []byte
	rng  *rand.Rand
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(1+c.rng.IntN(40), len(c.data), len(p))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func TestResync(t *testing.T) {
	good := `{"event":"ok","payload":{"x":"}{"}}`
	cases := []struct {
		name  string
		in    string
		want  []string // "" = an object (good), else an error code
		final error
	}{
		{"whitespace between", " \n" + good + "\r\n\t" + good + " ", []string{"", ""}, io.EOF},
		{"garbage before", "hello world" + good, []string{CodeBadJSON, ""}, io.EOF},
		{"garbage between", good + "xx yy" + good, []string{"", CodeBadJSON, ""}, io.EOF},
		{"unclosed object then object", `{"event":"a"` + good, []string{CodeBadJSON, ""}, io.EOF},
		{"bad member then object", `{"event":"a",oops}` + good, []string{CodeBadJSON, ""}, io.EOF},
		{"bad literal", `{"event":"a","payload":tru}` + good, []string{CodeBadJSON, ""}, io.EOF},
		{"bad number", `{"event":"a","payload":01}` + good, []string{CodeBadJSON, ""}, io.EOF},
		{"control char in string", "{\"event\":\"a\nb\"}" + good, []string{CodeBadJSON, ""}, io.EOF},
		{"bad escape", `{"event":"a\q"}` + good, []string{CodeBadJSON, ""}, io.EOF},
		{"top-level array", `[1,2]` + good, []string{CodeBadJSON, ""}, io.EOF},
		{"mismatched close", `{"event":"a","payload":[1}` + good, []string{CodeBadJSON, ""}, io.EOF},
		{"eof inside object", good + `{"event":"a","pay`, []string{""}, io.ErrUnexpectedEOF},
		{"eof in garbage", good + `zzz`, []string{"", CodeBadJSON}, io.EOF},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, split := range []bool{false, true} {
				var r io.Reader = strings.NewReader(tc.in)
				if split {
					r = iotest.OneByteReader(r)
				}
				got, err := decodeAll(t, r, 0)
				if !errors.Is(err, tc.final) {
					t.Fatalf("split=%v: end %v, want %v (results %+v)", split, err, tc.final, got)
				}
				if len(got) != len(tc.want) {
					t.Fatalf("split=%v: got %+v, want %v", split, got, tc.want)
				}
				for i, w := range tc.want {
					if got[i].code != w || w == "" && got[i].obj != good {
						t.Fatalf("split=%v: result %d = %+v, want %q (all: %+v)", split, i, got[i], w, got)
					}
				}
			}
		})
	}
}

func TestTooLarge(t *testing.T) {
	good := `{"event":"ok"}`
	big := string(Encode("big", []byte(`"`+strings.Repeat("x", 500)+`"`)))
	for _, split := range []bool{false, true} {
		var r io.Reader = strings.NewReader(good + big + good + big + big + good)
		if split {
			r = iotest.OneByteReader(r)
		}
		got, err := decodeAll(t, r, 100)
		if err != io.EOF {
			t.Fatal(err)
		}
		want := []string{"", CodeTooLarge, "", CodeTooLarge, CodeTooLarge, ""}
		if len(got) != len(want) {
			t.Fatalf("split=%v: got %+v", split, got)
		}
		for i, w := range want {
			if got[i].code != w {
				t.Fatalf("split=%v: result %d = %+v, want %q", split, i, got[i], w)
			}
		}
	}
}

func TestUnsynced(t *testing.T) {
	d := NewDecoder(strings.NewReader("junk"+strings.Repeat("z", 300)+`{"event":"late"}`), 100)
	_, err := d.Next()
	var ce *Error
	if !errors.As(err, &ce) || ce.Code != CodeBadJSON || ce.Offset != 0 {
		t.Fatalf("first: %v", err)
	}
	if _, err := d.Next(); !errors.Is(err, ErrUnsynced) {
		t.Fatalf("second: %v, want ErrUnsynced", err)
	}
}

// timeoutReader fails with a timeout once, in the middle of the stream.
type timeoutReader struct {
	r     io.Reader
	n     int
	fired bool
}

type timeoutErr struct{}

func (timeoutErr) Error() string { return "i/o timeout" }

func (t *timeoutReader) Read(p []byte) (int, error) {
	if !t.fired && t.n <= 0 {
		t.fired = true
		return 0, timeoutErr{}
	}
	if len(p) > 1 {
		p = p[:1]
	}
	n, err := t.r.Read(p)
	t.n -= n
	return n, err
}

func TestResumeAfterReadError(t *testing.T) {
	in := `{"event":"a"}{"event":"b","payload":{"k":"v"}}`
	d := NewDecoder(&timeoutReader{r: strings.NewReader(in), n: 20}, 0)
	var got []string
	timeouts := 0
	for {
		obj, err := d.Next()
		if err == io.EOF {
			break
		}
		if _, ok := err.(timeoutErr); ok {
			timeouts++
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(obj))
	}
	if timeouts != 1 || strings.Join(got, "") != in {
		t.Fatalf("timeouts %d, got %q", timeouts, got)
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in, event, payload, code string
	}{
		{`{"event":"pickup","payload":{"a":1}}`, "pickup", `{"a":1}`, ""},
		{`{"payload":3,"event":"x","other":true}`, "x", `3`, ""},
		{`{"event":"x"}`, "x", ``, ""},
		{`{"event":"x","payload":null}`, "x", ``, ""},
		{`{"event":"\u0070ickup"}`, "pickup", ``, ""},
		{`{"event":""}`, "", "", CodeBadEvent},
		{`{"event":3}`, "", "", CodeBadEvent},
		{`{"payload":{}}`, "", "", CodeBadEvent},
		{`{"event":null}`, "", "", CodeBadEvent},
	} {
		o, err := Parse([]byte(tc.in))
		if tc.code != "" {
			var ce *Error
			if !errors.As(err, &ce) || ce.Code != tc.code {
				t.Errorf("%s: err %v, want %s", tc.in, err, tc.code)
			}
			continue
		}
		if err != nil || o.Event != tc.event || string(o.Payload) != tc.payload {
			t.Errorf("%s: got %q %q %v", tc.in, o.Event, o.Payload, err)
		}
	}
}

func TestEncode(t *testing.T) {
	for _, tc := range []struct{ event, payload, want string }{
		{"pickup", `{"a":1}`, `{"event":"pickup","payload":{"a":1}}`},
		{"note", `plain "text"`, `{"event":"note","payload":"plain \"text\""}`},
		{"empty", ``, `{"event":"empty","payload":null}`},
		{`we"ird`, `1`, `{"event":"we\"ird","payload":1}`},
	} {
		got := string(Encode(tc.event, []byte(tc.payload)))
		if got != tc.want {
			t.Errorf("Encode(%q, %q) = %s, want %s", tc.event, tc.payload, got, tc.want)
		}
		if !json.Valid([]byte(got)) {
			t.Errorf("not JSON: %s", got)
		}
	}
}

// FuzzDecoder: whatever the input and however it is split, the decoder never
// panics, never loops, returns only valid JSON objects, and agrees with
// itself between one read and byte-by-byte reads.
func FuzzDecoder(f *testing.F) {
	for _, s := range []string{
		`{"event":"pickup","payload":{"store":"a","orderID":"1"}}{"event":"delivered"}`,
		`garbage{"event":"x"}`,
		`{"event":"a",oops}{"event":"b"}`,
		`{"event":"a","payload":"\u00e9\"}{"}`,
		`{"a":[1,2,{"b":-0.5e+10}],"c":true,"d":false,"e":null}`,
		`[[[[[[`,
		`{"event":"x"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		whole, endWhole := decodeAll(t, bytes.NewReader(in), 256)
		split, endSplit := decodeAll(t, iotest.OneByteReader(bytes.NewReader(in)), 256)
		if endWhole != endSplit || len(whole) != len(split) {
			t.Fatalf("whole %+v %v, split %+v %v", whole, endWhole, split, endSplit)
		}
		for i := range whole {
			if whole[i] != split[i] {
				t.Fatalf("result %d: whole %+v, split %+v", i, whole[i], split[i])
			}
			if whole[i].code == "" {
				o := whole[i].obj
				if !json.Valid([]byte(o)) || o[0] != '{' {
					t.Fatalf("decoder returned invalid JSON %q", o)
				}
			}
		}
	})
}
