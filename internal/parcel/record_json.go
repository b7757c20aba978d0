package parcel

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// appendRecord appends r as JSON, the bytes encoding/json writes for it
// (without HTML escaping, as marshalJSON): every stored event is one, and
// reflection was a twentieth of an order's CPU (TestRecordJSON pins the
// equality).
func appendRecord(dst []byte, r *Record) []byte {
	dst = append(dst, `{"eventID":`...)
	dst = appendString(dst, r.EventID)
	dst = append(dst, `,"event":`...)
	dst = appendString(dst, r.Event)
	dst = append(dst, `,"status":`...)
	dst = appendString(dst, string(r.Status))
	dst = append(dst, `,"store":`...)
	dst = appendString(dst, r.Store)
	dst = append(dst, `,"orderID":`...)
	dst = appendString(dst, r.OrderID)
	dst = append(dst, `,"customer":`...)
	dst = appendString(dst, r.Customer)
	dst = append(dst, `,"address":`...)
	dst = appendString(dst, r.Address)
	if r.Phone != "" {
		dst = append(dst, `,"phone":`...)
		dst = appendString(dst, r.Phone)
	}
	if r.Note != "" {
		dst = append(dst, `,"note":`...)
		dst = appendString(dst, r.Note)
	}
	if r.RequirePIN {
		dst = append(dst, `,"requirePIN":true`...)
	}
	if r.Driver != "" {
		dst = append(dst, `,"driver":`...)
		dst = appendString(dst, r.Driver)
	}
	dst = append(dst, `,"attempt":`...)
	dst = strconv.AppendInt(dst, int64(r.Attempt), 10)
	dst = append(dst, `,"maxAttempts":`...)
	dst = strconv.AppendInt(dst, int64(r.MaxAttempts), 10)
	if r.Reason != "" {
		dst = append(dst, `,"reason":`...)
		dst = appendString(dst, r.Reason)
	}
	if r.Detail != "" {
		dst = append(dst, `,"detail":`...)
		dst = appendString(dst, r.Detail)
	}
	dst = append(dst, `,"by":`...)
	dst = appendString(dst, r.By)
	dst = append(dst, `,"hub":`...)
	dst = appendString(dst, r.Hub)
	dst = append(dst, `,"time":`...)
	dst = appendTime(dst, r.Time)
	dst = append(dst, `,"created":`...)
	dst = appendTime(dst, r.Created)
	return append(dst, '}')
}

func appendTime(dst []byte, t time.Time) []byte {
	dst = append(dst, '"')
	dst = t.AppendFormat(dst, time.RFC3339Nano)
	return append(dst, '"')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string as encoding/json writes one
// without HTML escaping: quotes, backslashes and control characters
// escaped, U+2028 and U+2029 too, invalid UTF-8 replaced.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
