package hub

import (
	"errors"
	"io"
	"unicode/utf8"
)

// What a text client sends, decoded into lines. Terminals and telnet send
// more than lines: telnet interleaves commands (IAC sequences, RFC 854)
// with the text, a terminal without line editing sends the editing keys
// themselves (BS, DEL), and line ends come as CR LF, LF, or CR NUL. The
// decoder is a byte-at-a-time state machine: it keeps its state across
// reads (a read deadline may interrupt it anywhere), and its memory is one
// line of at most max bytes, whatever the client sends.

// Telnet bytes (RFC 854, 855; EOR from RFC 885).
const (
	telnetSE   = 240 // end of subnegotiation
	telnetEC   = 247 // erase character
	telnetEL   = 248 // erase line
	telnetAYT  = 246 // are you there
	telnetSB   = 250 // start of subnegotiation
	telnetWILL = 251
	telnetWONT = 252
	telnetDO   = 253
	telnetDONT = 254
	telnetIAC  = 255
)

// Editing keys a terminal without line editing sends.
const (
	keyBS   = 0x08 // backspace
	keyDEL  = 0x7f // delete, what most terminals send for backspace
	keyKill = 0x15 // ^U: erase the line
)

// Errors of one line; the reader goes on with the next.
var (
	errLineTooLong = errors.New("line too long")
	errNotUTF8     = errors.New("line is not UTF-8 text")
)

type telnetState uint8

const (
	tsData    telnetState = iota
	tsIAC                 // after IAC
	tsOption              // after IAC WILL/WONT/DO/DONT: the option byte
	tsSub                 // inside IAC SB … IAC SE: skipped
	tsSubIAC              // an IAC inside a subnegotiation
	tsAfterCR             // a line ended with CR: a following LF or NUL is part of that end
)

// textReader reads lines from a text client.
type textReader struct {
	r   io.ByteReader
	max int
	// reply receives the hub's answers to telnet negotiation.
	reply func([]byte)

	state telnetState
	verb  byte // WILL, WONT, DO or DONT, in tsOption
	line  []byte
	over  bool // the line passed max: the rest of it is dropped
	// refused holds the options the hub has refused once (DO: it will not;
	// WILL: the client should not). The hub enables no telnet option — the
	// client keeps its own echo and line editing, which is what nc and
	// telnet do on a port other than 23 — and it answers each option once,
	// so that a client repeating a request cannot make it write in a loop.
	refusedDo, refusedWill [4]uint64
	ayt                    bool // AYT was answered during this line
}

func newTextReader(r io.ByteReader, max int, reply func([]byte)) *textReader {
	return &textReader{r: r, max: max, reply: reply}
}

// next returns the next line, without its line end. errLineTooLong and
// errNotUTF8 report a line that was dropped; any other error is the
// connection's (a timeout leaves the reader ready to go on where it was).
func (t *textReader) next() (string, error) {
	for {
		b, err := t.r.ReadByte()
		if err != nil {
			return "", err
		}
		if done, err := t.feed(b); done {
			if err != nil {
				return "", err
			}
			line := string(t.line)
			t.reset()
			return line, nil
		}
	}
}

// feed takes one byte and reports whether it ended a line (with the
// line's error, if it is dropped).
func (t *textReader) feed(b byte) (bool, error) {
	switch t.state {
	case tsIAC:
		return t.command(b)
	case tsOption:
		t.state = tsData
		t.negotiate(t.verb, b)
		return false, nil
	case tsSub:
		if b == telnetIAC {
			t.state = tsSubIAC
		}
		return false, nil
	case tsSubIAC:
		t.state = tsSub
		if b == telnetSE {
			t.state = tsData
		}
		return false, nil
	case tsAfterCR:
		t.state = tsData
		if b == '\n' || b == 0 {
			return false, nil // CR LF and CR NUL are one line end
		}
	}
	if b == telnetIAC {
		t.state = tsIAC
		return false, nil
	}
	return t.data(b)
}

// command handles the byte after an IAC.
func (t *textReader) command(b byte) (bool, error) {
	t.state = tsData
	switch b {
	case telnetIAC: // IAC IAC: the byte 255 itself (never valid UTF-8)
		return t.data(b)
	case telnetWILL, telnetWONT, telnetDO, telnetDONT:
		t.verb, t.state = b, tsOption
	case telnetSB:
		t.state = tsSub
	case telnetEC:
		t.erase()
	case telnetEL:
		t.line = t.line[:0]
	case telnetAYT:
		if !t.ayt {
			t.ayt = true
			t.reply([]byte("[yes]\r\n"))
		}
	}
	// NOP, data mark, break, interrupt, abort output, go ahead, a stray SE:
	// nothing to do for a line-at-a-time service.
	return false, nil
}

// negotiate answers a request to enable option opt: the hub enables none.
// WONT and DONT need no answer (the option is off already).
func (t *textReader) negotiate(verb, opt byte) {
	seen := &t.refusedDo
	answer := byte(telnetWONT)
	switch verb {
	case telnetDO:
	case telnetWILL:
		seen, answer = &t.refusedWill, telnetDONT
	default:
		return
	}
	word, bit := opt/64, uint64(1)<<(opt%64)
	if seen[word]&bit != 0 {
		return
	}
	seen[word] |= bit
	t.reply([]byte{telnetIAC, answer, opt})
}

// data takes one byte of text.
func (t *textReader) data(b byte) (bool, error) {
	switch b {
	case '\r':
		t.state = tsAfterCR
		return true, t.check()
	case '\n':
		return true, t.check()
	case keyBS, keyDEL:
		t.erase()
		return false, nil
	case keyKill:
		t.line = t.line[:0]
		return false, nil
	case 0:
		return false, nil
	}
	if len(t.line) >= t.max {
		t.over = true
		return false, nil
	}
	t.line = append(t.line, b)
	return false, nil
}

// erase removes the last character typed (a whole UTF-8 sequence).
func (t *textReader) erase() {
	if len(t.line) == 0 {
		return
	}
	_, n := utf8.DecodeLastRune(t.line)
	t.line = t.line[:len(t.line)-n]
}

// check says whether the line just ended is one to hand on; a dropped line
// is cleared.
func (t *textReader) check() error {
	var err error
	switch {
	case t.over:
		err = errLineTooLong
	case !utf8.Valid(t.line):
		err = errNotUTF8
	}
	if err != nil {
		t.reset()
	}
	return err
}

func (t *textReader) reset() {
	t.line, t.over, t.ayt = t.line[:0], false, false
	if cap(t.line) > 4<<10 {
		t.line = nil // a long line's buffer is not kept for the short ones after it
	}
}
