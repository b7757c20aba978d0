package hub

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"unicode/utf8"
)

// readAll decodes input and returns what the reader made of it: each line,
// or <too long> / <not utf8> for a dropped one, and the telnet answers.
func readAll(t testing.TB, input string, max int) (lines []string, replies []byte) {
	t.Helper()
	r := newTextReader(bufio.NewReader(strings.NewReader(input)), max, func(b []byte) { replies = append(replies, b...) })
	for {
		line, err := r.next()
		switch {
		case err == nil:
			lines = append(lines, line)
		case errors.Is(err, errLineTooLong):
			lines = append(lines, "<too long>")
		case errors.Is(err, errNotUTF8):
			lines = append(lines, "<not utf8>")
		case errors.Is(err, io.EOF):
			return lines, replies
		default:
			t.Fatalf("read: %v", err)
		}
	}
}

func TestTextReaderLines(t *testing.T) {
	iac := string([]byte{telnetIAC})
	for _, tc := range []struct {
		name, in string
		want     []string
	}{
		{"line ends", "crlf\r\nlf\ncr\rcrnul\r\x00last\n", []string{"crlf", "lf", "cr", "crnul", "last"}},
		{"empty lines", "\r\n\n\r\n", []string{"", "", ""}},
		{"backspace", "helo\x08lo\n", []string{"hello"}},
		{"delete", "abc\x7f\x7fd\n", []string{"ad"}},
		{"erase a whole character", "né\x7f\x7f!\n", []string{"!"}},
		{"erase past the start", "a\x7f\x7f\x7fb\n", []string{"b"}},
		{"kill the line", "oops\x15fine\n", []string{"fine"}},
		{"telnet erase char and line", "ab" + iac + "\xf7c" + iac + "\xf8xyz\n", []string{"xyz"}},
		{"NUL dropped", "a\x00b\n", []string{"ab"}},
		{"subnegotiation skipped", iac + "\xfa\x18\x01" + iac + iac + "x" + iac + "\xf0hi\n", []string{"hi"}},
		{"negotiation skipped", iac + "\xfd\x01" + iac + "\xfb\x1f" + iac + "\xfc\x03" + iac + "\xfe\x05hi\n", []string{"hi"}},
		{"IAC IAC is the byte 255, not text", "a" + iac + iac + "b\nok\n", []string{"<not utf8>", "ok"}},
		{"invalid UTF-8 dropped", "\xc3\x28\nnext\n", []string{"<not utf8>", "next"}},
		{"UTF-8 kept", "héllo ✓\n", []string{"héllo ✓"}},
		{"too long dropped, next kept", strings.Repeat("x", 20) + "\nshort\n", []string{"<too long>", "short"}},
		{"exactly the limit", strings.Repeat("y", 16) + "\n", []string{strings.Repeat("y", 16)}},
		{"no line end: nothing", "partial", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _ := readAll(t, tc.in, 16)
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestTextReaderTelnetAnswers: the hub enables no option, refuses each
// request once, and never answers WONT or DONT (which would loop).
func TestTextReaderTelnetAnswers(t *testing.T) {
	in := []byte{
		telnetIAC, telnetDO, 1, // echo
		telnetIAC, telnetWILL, 31, // window size
		telnetIAC, telnetDO, 1, // again: no second answer
		telnetIAC, telnetWILL, 31,
		telnetIAC, telnetWONT, 3,
		telnetIAC, telnetDONT, 3,
		telnetIAC, telnetDO, 3, // suppress go-ahead
		telnetIAC, telnetAYT, telnetIAC, telnetAYT,
	}
	in = append(in, "hi\n"...)
	in = append(in, telnetIAC, telnetAYT)
	in = append(in, "yo\n"...)
	lines, replies := readAll(t, string(in), 64)
	want := []byte{telnetIAC, telnetWONT, 1, telnetIAC, telnetDONT, 31, telnetIAC, telnetWONT, 3}
	want = append(want, "[yes]\r\n[yes]\r\n"...) // once per line
	if !bytes.Equal(replies, want) {
		t.Fatalf("replies %q, want %q", replies, want)
	}
	if strings.Join(lines, "|") != "hi|yo" {
		t.Fatalf("lines %q", lines)
	}
}

// TestTextReaderFlood: a flood of negotiation, an endless line and binary
// garbage cost one line of memory and one answer per option.
func TestTextReaderFlood(t *testing.T) {
	var in bytes.Buffer
	for range 100000 {
		in.Write([]byte{telnetIAC, telnetDO, 1, telnetIAC, telnetWILL, 24})
	}
	in.WriteString(strings.Repeat("z", 1<<20)) // an endless line…
	in.WriteString("\nafter\n")                // …that ends at last
	r := newTextReader(bufio.NewReader(&in), textMaxLine, func(b []byte) {})
	replies := 0
	r.reply = func(b []byte) { replies++ }
	if _, err := r.next(); !errors.Is(err, errLineTooLong) {
		t.Fatalf("want the long line dropped, got %v", err)
	}
	if cap(r.line) > textMaxLine+textMaxLine/2 {
		t.Fatalf("the reader holds %d bytes for a dropped line", cap(r.line))
	}
	if line, err := r.next(); err != nil || line != "after" {
		t.Fatalf("next line %q %v", line, err)
	}
	if replies != 2 {
		t.Fatalf("%d answers to 200000 requests for 2 options, want 2", replies)
	}
}

// timeoutOnce fails the first read after n bytes with a timeout, as a read
// deadline does.
type timeoutOnce struct {
	r     io.Reader
	n     int
	fired bool
}

func (t *timeoutOnce) Read(p []byte) (int, error) {
	if !t.fired && t.n == 0 {
		t.fired = true
		return 0, os.ErrDeadlineExceeded
	}
	if !t.fired && len(p) > t.n {
		p = p[:t.n]
	}
	n, err := t.r.Read(p)
	t.n -= n
	return n, err
}

// TestTextReaderResumesAfterTimeout: a read deadline in the middle of a
// line, even of a telnet command, loses nothing.
func TestTextReaderResumesAfterTimeout(t *testing.T) {
	for cut := 1; cut < 9; cut++ {
		src := &timeoutOnce{r: strings.NewReader("ab\xff\xfd\x01cd\r\nef\n"), n: cut}
		var replies []byte
		r := newTextReader(bufio.NewReaderSize(src, 16), 64, func(b []byte) { replies = append(replies, b...) })
		var lines []string
		timeouts := 0
		for len(lines) < 2 {
			line, err := r.next()
			if isTimeout(err) {
				timeouts++
				continue
			}
			if err != nil {
				t.Fatalf("cut %d: %v", cut, err)
			}
			lines = append(lines, line)
		}
		if timeouts != 1 || strings.Join(lines, "|") != "abcd|ef" || !bytes.Equal(replies, []byte{telnetIAC, telnetWONT, 1}) {
			t.Fatalf("cut %d: lines %q replies %q timeouts %d", cut, lines, replies, timeouts)
		}
	}
}

// FuzzTextReader: whatever a client sends, the reader's lines are valid
// UTF-8, within the limit, without line ends, and its answers are bounded.
func FuzzTextReader(f *testing.F) {
	f.Add([]byte("hello\r\nworld\n"))
	f.Add([]byte{telnetIAC, telnetDO, 1, 'a', keyDEL, '\r', 0})
	f.Add([]byte{telnetIAC, telnetSB, 1, 2, telnetIAC, telnetSE, 'x', '\n'})
	f.Add([]byte("\xc3\x28\n\xff\xff\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		const max = 32
		replies := 0
		r := newTextReader(bufio.NewReader(bytes.NewReader(in)), max, func(b []byte) { replies += len(b) })
		lines := 0
		for {
			line, err := r.next()
			if errors.Is(err, io.EOF) {
				break
			}
			lines++
			if err != nil {
				if !errors.Is(err, errLineTooLong) && !errors.Is(err, errNotUTF8) {
					t.Fatalf("error %v", err)
				}
				continue
			}
			if len(line) > max || !utf8.ValidString(line) || strings.ContainsAny(line, "\r\n") {
				t.Fatalf("bad line %q", line)
			}
		}
		// One answer per option and verb, and one AYT answer per line.
		if limit := 2*256*3 + (lines+1)*len("[yes]\r\n"); replies > limit {
			t.Fatalf("%d bytes of answers", replies)
		}
	})
}
