package protocol_test

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/caps-hub/caps/protocol"
)

const specPath = "../docs/PROTOCOL.md"

// specExample is one hex example from docs/PROTOCOL.md: a heading
// "#### Example: OP — title", a ```hex block, and a "| field | value |" table.
type specExample struct {
	line   int    // line of the ```hex fence, for messages
	op     string // op named in the heading
	title  string
	raw    []byte            // the frame bytes
	fields map[string]string // decoded-field table, by field name
}

func (e specExample) String() string {
	return fmt.Sprintf("%s:%d %s — %s", specPath, e.line, e.op, e.title)
}

var exampleHeading = regexp.MustCompile(`^#### Example: ([A-Z]+) — (.+)$`)

func readSpec(tb testing.TB) string {
	tb.Helper()
	b, err := os.ReadFile(specPath)
	if err != nil {
		tb.Fatalf("reading the spec: %v", err)
	}
	return string(b)
}

// parseSpecExamples extracts every example. It fails on a hex block without
// a heading, a heading without a hex block, and bad hex.
func parseSpecExamples(tb testing.TB, doc string) []specExample {
	tb.Helper()
	lines := strings.Split(doc, "\n")
	var out []specExample
	var pending *specExample
	for i := 0; i < len(lines); i++ {
		line := strings.TrimRight(lines[i], "\r")
		if m := exampleHeading.FindStringSubmatch(line); m != nil {
			if pending != nil {
				tb.Fatalf("%s:%d: example heading %q has no ```hex block", specPath, pending.line, pending.op)
			}
			pending = &specExample{line: i + 1, op: m[1], title: m[2]}
			continue
		}
		if strings.HasPrefix(line, "####") && strings.Contains(line, "Example") {
			tb.Fatalf("%s:%d: malformed example heading %q", specPath, i+1, line)
		}
		if strings.TrimSpace(line) != "```hex" {
			continue
		}
		if pending == nil {
			tb.Fatalf("%s:%d: ```hex block is not preceded by an \"#### Example: OP — …\" heading", specPath, i+1)
		}
		ex := *pending
		pending = nil
		ex.line = i + 1
		var hexText strings.Builder
		for i++; ; i++ {
			if i >= len(lines) {
				tb.Fatalf("%s:%d: unterminated ```hex block", specPath, ex.line)
			}
			l := strings.TrimSpace(lines[i])
			if l == "```" {
				break
			}
			for _, pair := range strings.Fields(l) {
				if len(pair) != 2 {
					tb.Fatalf("%s:%d: %q is not a two-digit hex byte", specPath, i+1, pair)
				}
				hexText.WriteString(pair)
			}
		}
		raw, err := hex.DecodeString(hexText.String())
		if err != nil {
			tb.Fatalf("%s:%d: bad hex: %v", specPath, ex.line, err)
		}
		ex.raw = raw
		// The field table follows, after blank lines.
		ex.fields = map[string]string{}
		for i++; i < len(lines) && strings.TrimSpace(lines[i]) == ""; i++ {
		}
		for ; i < len(lines) && strings.HasPrefix(lines[i], "|"); i++ {
			row := strings.TrimSuffix(strings.TrimPrefix(strings.TrimRight(lines[i], "\r"), "| "), " |")
			name, value, ok := strings.Cut(row, " | ")
			if !ok || name == "field" || strings.HasPrefix(name, "---") {
				continue
			}
			ex.fields[strings.TrimSpace(name)] = strings.TrimSpace(value)
		}
		i--
		out = append(out, ex)
	}
	if pending != nil {
		tb.Fatalf("%s:%d: example heading %q has no ```hex block", specPath, pending.line, pending.op)
	}
	return out
}

// specFrames returns the raw bytes of every example; used as fuzz seeds.
func specFrames(tb testing.TB) [][]byte {
	var out [][]byte
	for _, ex := range parseSpecExamples(tb, readSpec(tb)) {
		out = append(out, ex.raw)
	}
	return out
}

func allOps() []protocol.Op {
	var ops []protocol.Op
	for o := 0; o < 256; o++ {
		if protocol.Op(o).Valid() {
			ops = append(ops, protocol.Op(o))
		}
	}
	return ops
}

// tableString interprets a string cell: `text` or (empty).
func tableString(tb testing.TB, ex specExample, name string) []byte {
	tb.Helper()
	v, ok := ex.fields[name]
	if !ok {
		tb.Fatalf("%v: field table has no %q row", ex, name)
	}
	if v == "(empty)" {
		return nil
	}
	if len(v) < 2 || v[0] != '`' || v[len(v)-1] != '`' {
		tb.Fatalf("%v: %s = %q: want `text` or (empty)", ex, name, v)
	}
	return []byte(v[1 : len(v)-1])
}

func tableUint(tb testing.TB, ex specExample, name string) uint64 {
	tb.Helper()
	v, ok := ex.fields[name]
	if !ok {
		tb.Fatalf("%v: field table has no %q row", ex, name)
	}
	tok, _, _ := strings.Cut(v, " ")
	n, err := strconv.ParseUint(tok, 0, 64)
	if err != nil {
		tb.Fatalf("%v: %s = %q: %v", ex, name, v, err)
	}
	return n
}

func TestSpecExamples(t *testing.T) {
	examples := parseSpecExamples(t, readSpec(t))
	if len(examples) == 0 {
		t.Fatal("no ```hex examples found in the spec")
	}
	seen := map[string]int{} // by the op the heading names
	var stream []byte
	var want []protocol.Frame
	for _, ex := range examples {
		t.Run(fmt.Sprintf("line%d_%s", ex.line, ex.op), func(t *testing.T) {
			// Decode.
			var f protocol.Frame
			rest, err := protocol.Decode(ex.raw, 0, &f)
			if err != nil {
				t.Fatalf("%v: Decode: %v", ex, err)
			}
			if len(rest) != 0 {
				t.Errorf("%v: %d bytes left after the frame", ex, len(rest))
			}
			if f.Op.String() != ex.op {
				t.Errorf("%v: decodes as %s, heading names %s", ex, f.Op, ex.op)
			}
			seen[ex.op]++

			// Reader gives the same frame, then a clean EOF.
			rd := protocol.NewReader(bytes.NewReader(ex.raw), 0)
			rf, err := rd.Next()
			if err != nil {
				t.Fatalf("%v: Reader.Next: %v", ex, err)
			}
			if !framesEqual(rf, &f) {
				t.Errorf("%v: Reader gives %v, Decode gives %v", ex, rf, &f)
			}
			if _, err := rd.Next(); err != io.EOF {
				t.Errorf("%v: after the frame: %v, want io.EOF", ex, err)
			}

			// Re-encoding is byte-identical.
			if enc := f.Encode(); !bytes.Equal(enc, ex.raw) {
				t.Errorf("%v: re-encoded\n%x\nwant\n%x", ex, enc, ex.raw)
			}
			if f.Size() != len(ex.raw) {
				t.Errorf("%v: Size() = %d, want %d", ex, f.Size(), len(ex.raw))
			}

			// The decoded-field table agrees with the bytes.
			if got := tableUint(t, ex, "length"); got != uint64(len(ex.raw)-protocol.HeaderLen) {
				t.Errorf("%v: table length %d, frame body is %d bytes", ex, got, len(ex.raw)-protocol.HeaderLen)
			}
			if got := ex.fields["op"]; got != fmt.Sprintf("0x%02x %s", uint8(f.Op), f.Op) {
				t.Errorf("%v: table op %q, frame has 0x%02x %s", ex, got, uint8(f.Op), f.Op)
			}
			if got := tableUint(t, ex, "flags"); got != uint64(f.Flags) {
				t.Errorf("%v: table flags %#x, frame has %#x", ex, got, uint8(f.Flags))
			}
			if got := tableUint(t, ex, "id"); got != f.ID {
				t.Errorf("%v: table id %d, frame has %d", ex, got, f.ID)
			}
			if got := tableUint(t, ex, "seq"); got != f.Seq {
				t.Errorf("%v: table seq %d, frame has %d", ex, got, f.Seq)
			}
			for _, c := range []struct {
				name string
				val  []byte
			}{{"topic", f.Topic}, {"key", f.Key}, {"group", f.Group}, {"payload", f.Payload}} {
				if got := tableString(t, ex, c.name); !bytes.Equal(got, c.val) {
					t.Errorf("%v: table %s %q, frame has %q", ex, c.name, got, c.val)
				}
			}
			stream = append(stream, ex.raw...)
			want = append(want, cloneFrame(&f))
		})
	}
	for _, op := range allOps() {
		if seen[op.String()] == 0 {
			t.Errorf("no example in %s for op %s (0x%02x)", specPath, op, uint8(op))
		}
	}

	// All examples back to back, read in every way, decode the same.
	for name, r := range map[string]io.Reader{
		"whole":   bytes.NewReader(stream),
		"onebyte": iotest.OneByteReader(bytes.NewReader(stream)),
		"half":    iotest.HalfReader(bytes.NewReader(stream)),
	} {
		got := readAll(t, protocol.NewReader(r, 0))
		if !frameListsEqual(got, want) {
			t.Errorf("%s: the example stream decodes to %d frames, want %d equal to the examples", name, len(got), len(want))
		}
	}
}

// TestSpecTables checks that the prose tables name every op, flag, error
// code and JSON field the package defines.
func TestSpecTables(t *testing.T) {
	doc := readSpec(t)
	for _, op := range allOps() {
		row := fmt.Sprintf("| `0x%02X` | %-7s |", uint8(op), op.String())
		if !strings.Contains(doc, row) {
			t.Errorf("op table has no row starting %q", row)
		}
	}
	flags := map[string]protocol.Flags{
		"FlagAckRequired": protocol.FlagAckRequired, "FlagRedelivered": protocol.FlagRedelivered,
		"FlagHistory": protocol.FlagHistory, "FlagManualAck": protocol.FlagManualAck,
		"FlagFatal": protocol.FlagFatal, "FlagDurable": protocol.FlagDurable,
		"FlagDeliverAll": protocol.FlagDeliverAll, "FlagConfirm": protocol.FlagConfirm,
	}
	for name, v := range flags {
		bit := 0
		for v>>bit != 1 {
			bit++
		}
		row := fmt.Sprintf("| %-3d | `0x%02x` | %-15s |", bit, uint8(v), name)
		if !strings.Contains(doc, row) {
			t.Errorf("flags table has no row starting %q", row)
		}
	}
	fatal := map[string]bool{
		protocol.CodeBadFrame: true, protocol.CodeFrameTooLarge: true, protocol.CodeHandshake: true,
		protocol.CodeHandshakeTime: true, protocol.CodeAuth: true, protocol.CodeForbidden: false,
		protocol.CodeBadTopic: false, protocol.CodeBadRequest: false, protocol.CodeRejected: false,
		protocol.CodeNotFound: false, protocol.CodeTooManySubs: false, protocol.CodeRateLimited: false,
		protocol.CodeSlowConsumer: true, protocol.CodeHeartbeat: true, protocol.CodeUnavailable: false,
		protocol.CodeNameTaken: false, protocol.CodeTooManyConns: true, protocol.CodeShuttingDown: false,
		protocol.CodeInternal: false, protocol.CodeClassroomDisabled: true,
	}
	for code, isFatal := range fatal {
		yn := map[bool]string{true: "yes", false: "no"}[isFatal]
		row := fmt.Sprintf("| %-19s | %-5s |", "`"+code+"`", yn)
		if !strings.Contains(doc, row) {
			t.Errorf("error table has no row starting %q", row)
		}
	}
	for _, v := range []any{protocol.Hello{}, protocol.Welcome{}, protocol.SubOptions{}} {
		typ := reflect.TypeOf(v)
		for i := 0; i < typ.NumField(); i++ {
			name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
			if !strings.Contains(doc, "| `"+name+"` ") {
				t.Errorf("%s field %s: no table row for JSON field %q", typ.Name(), typ.Field(i).Name, name)
			}
		}
	}
	if !strings.Contains(doc, "\n## Classroom dialect and WebSocket\n") {
		t.Error(`spec has no "## Classroom dialect and WebSocket" section`)
	}
}
