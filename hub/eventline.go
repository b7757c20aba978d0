package hub

import (
	"bytes"
	"encoding/json"
	"time"

	"github.com/caps-hub/caps/internal/jsonenc"
)

// eventTimeLayout is RFC 3339 with milliseconds, as the classroom hub prints.
const eventTimeLayout = "2006-01-02T15:04:05.000Z07:00"

// appendEventLine appends `EVENT {"event":…,"topic":…,"time":…,"payload":…}`
// and a newline to dst, byte for byte what json.Marshal of eventLine gives,
// without its reflection and allocations (it runs for every publish when
// the hub is not quiet). A payload that is JSON is compacted in place; any
// other is a JSON string. scratch is reused for the compaction.
func appendEventLine(dst []byte, scratch *bytes.Buffer, event, topic []byte, now time.Time, payload []byte) []byte {
	dst = append(dst, `EVENT {"event":`...)
	dst = jsonenc.AppendString(dst, event, true)
	dst = append(dst, `,"topic":`...)
	dst = jsonenc.AppendString(dst, topic, true)
	dst = append(dst, `,"time":"`...)
	dst = now.UTC().AppendFormat(dst, eventTimeLayout)
	dst = append(dst, `","payload":`...)
	scratch.Reset()
	if len(payload) > 0 && json.Compact(scratch, payload) == nil {
		// As json.Marshal does with a RawMessage: compact, then HTML-escape.
		dst = appendHTMLEscaped(dst, scratch.Bytes())
	} else {
		dst = jsonenc.AppendString(dst, payload, true)
	}
	return append(dst, "}\n"...)
}

// writeEvent formats and buffers one EVENT line, reusing the line buffer.
func (e *eventLog) writeEvent(event, topic []byte, now time.Time, payload []byte) {
	e.mu.Lock()
	e.line = appendEventLine(e.line[:0], &e.scratch, event, topic, now, payload)
	e.w.Write(e.line)
	if cap(e.line) > 64<<10 {
		e.line = nil // one huge payload should not pin its buffer
	}
	e.mu.Unlock()
}

const hexDigits = "0123456789abcdef"

// appendHTMLEscaped appends compact JSON with <, >, &, U+2028 and U+2029
// escaped, as json.HTMLEscape does.
func appendHTMLEscaped(dst, src []byte) []byte {
	start := 0
	for i, c := range src {
		if c == '<' || c == '>' || c == '&' {
			dst = append(dst, src[start:i]...)
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			start = i + 1
		}
		// U+2028 and U+2029 are E2 80 A8 and E2 80 A9.
		if c == 0xE2 && i+2 < len(src) && src[i+1] == 0x80 && src[i+2]&^1 == 0xA8 {
			dst = append(dst, src[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[src[i+2]&0xF])
			start = i + 3
		}
	}
	return append(dst, src[start:]...)
}
