package protocol

import (
	"math/rand/v2"
	"testing"
)

// referenceValidate is validate as it was written first: byte by byte, each
// rule a test of its own. The fast one must agree with it on every input.
func referenceValidate(t []byte, wild bool) bool {
	if len(t) == 0 || len(t) > MaxTopicLen {
		return false
	}
	tokStart := 0
	for i := 0; i <= len(t); i++ {
		if i < len(t) && t[i] != tokenSep {
			c := t[i]
			if c <= ' ' || c >= 0x7f || c == reservedStart {
				return false
			}
			if c == wildcardOne || c == wildcardTail {
				if !wild || i != tokStart || (i+1 < len(t) && t[i+1] != tokenSep) {
					return false
				}
				if c == wildcardTail && i+1 != len(t) {
					return false
				}
			}
			continue
		}
		l := i - tokStart
		if l == 0 || l > maxTokenLen {
			return false
		}
		tokStart = i + 1
	}
	return true
}

func TestValidateMatchesReference(t *testing.T) {
	check := func(in []byte) {
		t.Helper()
		for _, wild := range []bool{false, true} {
			if got, want := validate(in, wild), referenceValidate(in, wild); got != want {
				t.Fatalf("validate(%q, wild=%v) = %v, the reference says %v", in, wild, got, want)
			}
		}
	}
	// Every byte alone, and between two ordinary ones and next to separators.
	for c := range 256 {
		b := byte(c)
		for _, in := range [][]byte{{b}, {'a', b, 'z'}, {b, '.', 'a'}, {'a', '.', b}, {'a', '.', b, '.', 'z'}, {b, b}} {
			check(in)
		}
	}
	// Random topics over an alphabet heavy in the bytes with rules, with
	// tokens around the length limit.
	alphabet := []byte("ab.*>$ ~\x00\x7f\xff!/")
	r := rand.New(rand.NewPCG(1, 2))
	for range 200_000 {
		in := make([]byte, r.IntN(20))
		for i := range in {
			in[i] = alphabet[r.IntN(len(alphabet))]
		}
		check(in)
	}
	for _, n := range []int{63, 64, 65, 255, 256, 257} {
		long := make([]byte, n)
		for i := range long {
			long[i] = 'x'
		}
		check(long)
		if n > 2 {
			long[n/2] = '.'
			check(long)
		}
	}
}
