package protocol

// Topics are dot-separated tokens, as in NATS: "parcel.pickup.acme".
// A pattern may use "*" for exactly one token and ">" as its last token for
// one or more tokens. Tokens are 1–64 bytes of printable ASCII other than
// space, '.', '*', '>' and '$' (reserved for the hub's own subjects).
const (
	MaxTopicLen   = 256
	maxTokenLen   = 64
	wildcardOne   = '*'
	wildcardTail  = '>'
	tokenSep      = '.'
	reservedStart = '$'
)

// MaxKeyLen bounds a message id (the key of a PUB): it is stored with the
// message and kept in the engine's de-duplication window.
const MaxKeyLen = 256

// ValidKey reports whether k can be a message id: 1–MaxKeyLen bytes of
// printable ASCII (0x21–0x7e), so that it travels unchanged in an engine
// header (NATS headers are ASCII text lines; a CR, LF or edge space would
// be rewritten, and two different keys could become one).
func ValidKey(k []byte) bool {
	if len(k) == 0 || len(k) > MaxKeyLen {
		return false
	}
	for _, c := range k {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// ValidTopic reports whether t is a concrete topic (no wildcards).
func ValidTopic(t []byte) bool { return validate(t, false) }

// ValidPattern reports whether p is a topic or a pattern.
func ValidPattern(p []byte) bool { return validate(p, true) }

func validate(t []byte, wild bool) bool {
	if len(t) == 0 || len(t) > MaxTopicLen {
		return false
	}
	tokStart := 0
	for i, c := range t {
		if c-'!' < 0x7f-'!' && (c >= 64 || notOrdinary>>c&1 == 0) {
			continue // printable ASCII other than the four below: most bytes, one test
		}
		switch c {
		case tokenSep:
			if l := i - tokStart; l == 0 || l > maxTokenLen {
				return false
			}
			tokStart = i + 1
		case wildcardOne, wildcardTail:
			// A wildcard must be a whole token.
			if !wild || i != tokStart || (i+1 < len(t) && t[i+1] != tokenSep) {
				return false
			}
			if c == wildcardTail && i+1 != len(t) {
				return false
			}
		default:
			return false // a control byte, space, DEL, non-ASCII or reservedStart
		}
	}
	l := len(t) - tokStart
	return l > 0 && l <= maxTokenLen
}

// notOrdinary has a bit set for each printable byte below 64 that a topic
// token may not simply contain (validate).
const notOrdinary uint64 = 1<<tokenSep | 1<<wildcardOne | 1<<wildcardTail | 1<<reservedStart

// HasWildcard reports whether the (valid) pattern p contains a wildcard token.
func HasWildcard(p []byte) bool {
	for i, c := range p {
		if (c == wildcardOne || c == wildcardTail) && (i == 0 || p[i-1] == tokenSep) {
			return true
		}
	}
	return false
}

// Match reports whether topic t matches pattern p. Both must be valid. It
// does not allocate.
func Match(p, t []byte) bool {
	pi, ti := 0, 0
	for pi < len(p) {
		if ti > len(t) {
			return false
		}
		pe := next(p, pi)
		if pe-pi == 1 && p[pi] == wildcardTail {
			return ti < len(t)
		}
		if ti == len(t) {
			return false
		}
		te := next(t, ti)
		if !(pe-pi == 1 && p[pi] == wildcardOne) && string(p[pi:pe]) != string(t[ti:te]) {
			return false
		}
		pi, ti = pe+1, te+1
	}
	return ti >= len(t)
}

func next(b []byte, i int) int {
	for i < len(b) && b[i] != tokenSep {
		i++
	}
	return i
}

// Covers reports whether every topic matched by pattern p is also matched
// by pattern outer (a topic counts as a pattern matching itself). Both must
// be valid. The hub asks it for every subscribe (permissions, hooks) and
// every publish (which stream stores a topic); it does not allocate.
func Covers(outer, p []byte) bool {
	oi, pi := 0, 0
	for {
		oe := next(outer, oi)
		if oe-oi == 1 && outer[oi] == wildcardTail {
			return pi <= len(p) // p has a token left here
		}
		if pi > len(p) {
			return false // outer has more tokens than p
		}
		pe := next(p, pi)
		switch {
		case pe-pi == 1 && p[pi] == wildcardTail:
			return false
		case oe-oi == 1 && outer[oi] == wildcardOne:
		case string(outer[oi:oe]) != string(p[pi:pe]):
			return false
		}
		oi, pi = oe+1, pe+1
		if oi > len(outer) {
			return pi > len(p) // both ended together
		}
	}
}
