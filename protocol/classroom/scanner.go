package classroom

import "fmt"

// scanner is an incremental JSON syntax checker fed one byte at a time, in
// the spirit of encoding/json's own scanner. It knows where a top-level
// object ends without seeing what follows it, and finds a syntax error at the
// byte that causes it, so the decoder can resynchronise right there instead
// of swallowing the next, valid object into a broken one.
type scanner struct {
	stack []byte // open containers: '{' or '['
	state scanState
	isKey bool   // the string being scanned is an object key
	lit   string // the rest of a literal (true, false, null) still expected
	hex   int    // hex digits still expected after \u
	err   string
}

type scanState uint8

const (
	stValue      scanState = iota // a value is expected
	stValueOrEnd                  // after '[': a value or ']'
	stKeyOrEnd                    // after '{': a key or '}'
	stKey                         // after ',' in an object: a key
	stColon                       // after a key: ':'
	stAfterValue                  // after a value: ',' or the container's end
	stString
	stEscape
	stEscapeU
	stNeg    // after '-'
	stZero   // a number's leading 0
	stDigits // integer digits
	stDot    // after '.'
	stFrac   // fraction digits
	stExpE   // after 'e'
	stExpSgn // after 'e+' or 'e-'
	stExp    // exponent digits
	stLit
)

type scanResult uint8

const (
	scanContinue scanResult = iota
	scanEnd                 // the byte just stepped closed the top-level object
	scanError               // the byte is not valid here; see scanner.err
)

// maxDepth bounds nesting, so a stream of '[' cannot grow the stack past
// what encoding/json would accept anyway.
const maxDepth = 1000

// reset prepares for an object whose first byte, '{', is stepped next.
func (s *scanner) reset() {
	s.stack = s.stack[:0]
	s.state = stValue
	s.err = ""
}

func isWS(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func (s *scanner) fail(c byte, context string) scanResult {
	s.err = fmt.Sprintf("invalid character %q %s", c, context)
	return scanError
}

// step consumes one byte.
func (s *scanner) step(c byte) scanResult {
	switch s.state {
	case stValue:
		if isWS(c) {
			return scanContinue
		}
		return s.beginValue(c)
	case stValueOrEnd:
		if isWS(c) {
			return scanContinue
		}
		if c == ']' {
			return s.pop()
		}
		return s.beginValue(c)
	case stKeyOrEnd:
		if isWS(c) {
			return scanContinue
		}
		if c == '}' {
			return s.pop()
		}
		if c == '"' {
			s.state, s.isKey = stString, true
			return scanContinue
		}
		return s.fail(c, "looking for the beginning of an object key string")
	case stKey:
		if isWS(c) {
			return scanContinue
		}
		if c == '"' {
			s.state, s.isKey = stString, true
			return scanContinue
		}
		return s.fail(c, "looking for the beginning of an object key string")
	case stColon:
		if isWS(c) {
			return scanContinue
		}
		if c == ':' {
			s.state = stValue
			return scanContinue
		}
		return s.fail(c, "after an object key")
	case stAfterValue:
		if isWS(c) {
			return scanContinue
		}
		top := s.stack[len(s.stack)-1]
		switch {
		case c == ',' && top == '{':
			s.state = stKey
			return scanContinue
		case c == ',':
			s.state = stValue
			return scanContinue
		case c == '}' && top == '{', c == ']' && top == '[':
			return s.pop()
		}
		if top == '{' {
			return s.fail(c, "after an object member")
		}
		return s.fail(c, "after an array element")
	case stString:
		switch {
		case c == '"':
			if s.isKey {
				s.state = stColon
			} else {
				s.state = stAfterValue
			}
		case c == '\\':
			s.state = stEscape
		case c < 0x20:
			return s.fail(c, "in a string")
		}
		return scanContinue
	case stEscape:
		switch c {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			s.state = stString
			return scanContinue
		case 'u':
			s.state, s.hex = stEscapeU, 4
			return scanContinue
		}
		return s.fail(c, "in a string escape")
	case stEscapeU:
		if isHex(c) {
			if s.hex--; s.hex == 0 {
				s.state = stString
			}
			return scanContinue
		}
		return s.fail(c, `in a \u escape`)
	case stNeg:
		switch {
		case c == '0':
			s.state = stZero
		case '1' <= c && c <= '9':
			s.state = stDigits
		default:
			return s.fail(c, "in a number")
		}
		return scanContinue
	case stZero:
		return s.afterInt(c)
	case stDigits:
		if isDigit(c) {
			return scanContinue
		}
		return s.afterInt(c)
	case stDot:
		if isDigit(c) {
			s.state = stFrac
			return scanContinue
		}
		return s.fail(c, "after a decimal point")
	case stFrac:
		if isDigit(c) {
			return scanContinue
		}
		if c == 'e' || c == 'E' {
			s.state = stExpE
			return scanContinue
		}
		return s.endNumber(c)
	case stExpE:
		if c == '+' || c == '-' {
			s.state = stExpSgn
			return scanContinue
		}
		fallthrough
	case stExpSgn:
		if isDigit(c) {
			s.state = stExp
			return scanContinue
		}
		return s.fail(c, "in an exponent")
	case stExp:
		if isDigit(c) {
			return scanContinue
		}
		return s.endNumber(c)
	case stLit:
		if c == s.lit[0] {
			if s.lit = s.lit[1:]; s.lit == "" {
				s.state = stAfterValue
			}
			return scanContinue
		}
		return s.fail(c, "in a literal (true, false or null)")
	}
	return s.fail(c, "in an unknown state")
}

func (s *scanner) beginValue(c byte) scanResult {
	switch {
	case c == '{' || c == '[':
		if len(s.stack) >= maxDepth {
			return s.fail(c, fmt.Sprintf("nested more than %d deep", maxDepth))
		}
		s.stack = append(s.stack, c)
		if c == '{' {
			s.state = stKeyOrEnd
		} else {
			s.state = stValueOrEnd
		}
	case len(s.stack) == 0:
		return s.fail(c, "looking for the beginning of an object")
	case c == '"':
		s.state, s.isKey = stString, false
	case c == '-':
		s.state = stNeg
	case c == '0':
		s.state = stZero
	case '1' <= c && c <= '9':
		s.state = stDigits
	case c == 't':
		s.state, s.lit = stLit, "rue"
	case c == 'f':
		s.state, s.lit = stLit, "alse"
	case c == 'n':
		s.state, s.lit = stLit, "ull"
	default:
		return s.fail(c, "looking for the beginning of a value")
	}
	return scanContinue
}

func (s *scanner) afterInt(c byte) scanResult {
	switch c {
	case '.':
		s.state = stDot
		return scanContinue
	case 'e', 'E':
		s.state = stExpE
		return scanContinue
	}
	return s.endNumber(c)
}

// endNumber: a number ends at the first byte that cannot extend it; that
// byte belongs to what follows the number. Numbers only occur inside
// containers here, so the stack is never empty.
func (s *scanner) endNumber(c byte) scanResult {
	s.state = stAfterValue
	return s.step(c)
}

func (s *scanner) pop() scanResult {
	s.stack = s.stack[:len(s.stack)-1]
	if len(s.stack) == 0 {
		return scanEnd
	}
	s.state = stAfterValue
	return scanContinue
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isHex(c byte) bool {
	return isDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
