package hostile_test

import (
	"bufio"
	"net/http"
	"strings"
	"testing"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/protocol"
)

// keptByRule are the streams with a byte limit but no age limit, because
// their own rule removes what is old: the order events, whose finished
// orders the dispatcher removes after --parcel-retention, while an
// accepted, unfinished order is never discarded, however old.
var keptByRule = map[string]bool{"CAPS_PARCELS": true}

// keptForGood are written by the hub alone, never for a client, and must
// not expire: the key that signs resume tokens (one value). They still
// have a byte limit.
var keptForGood = map[string]bool{"KV_CAPS_HUB": true}

// Before: no stream or bucket had a byte limit, and the chat rooms kept
// their messages for ever. Now, with the defaults, every one has a byte
// limit and an age limit, so a hostile client can fill nothing for good.
func TestEveryStreamIsBoundedByDefault(t *testing.T) {
	tg := startTarget(t, setup{})
	status, body := get(t, "http://"+tg.http+"/metrics", "")
	if status != http.StatusOK {
		t.Fatalf("/metrics: %d", status)
	}
	var streams []string
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), `caps_stream_bytes{stream="`); ok {
			streams = append(streams, rest[:strings.IndexByte(rest, '"')])
		}
	}
	for _, want := range []string{"CAPS_CLIENTS", "CHAT_ROOMS", "KV_CHAT_PRESENCE"} {
		if !strings.Contains(strings.Join(streams, " "), want) {
			t.Errorf("/metrics does not report stream %s (reported: %v)", want, streams)
		}
	}
	for _, s := range streams {
		if v, ok := sample(body, `caps_stream_max_bytes{stream="`+s+`"}`); !ok || v <= 0 {
			t.Errorf("stream %s has no byte limit", s)
		}
		if keptByRule[s] {
			continue
		}
		if v, ok := sample(body, `caps_stream_max_age_seconds{stream="`+s+`"}`); !keptForGood[s] && (!ok || v <= 0) {
			t.Errorf("stream %s keeps messages for ever", s)
		}
	}
}

// Before: every connect added a record kept 7 days, whatever their number:
// a client reconnecting in a loop filled the disk. Now the connection
// events keep at most --clients-max-bytes, the oldest going first.
func TestConnectionEventsAreBounded(t *testing.T) {
	const limit = 8 << 10
	tg := startTarget(t, setup{hub: func(c *hub.Config) { c.ClientsMaxBytes = limit }})
	for range 60 { // 120 events of a few hundred bytes: several times the limit
		w := dial(t, tg.tcp)
		w.hello(protocol.RoleClient, "looper", "")
		w.c.Close()
	}
	// Every session's disconnect event is stored before its socket is
	// counted out.
	hubtest.Until(t, wait, "every session to end", func() bool {
		v, ok := tg.metric(t, "caps_sockets_open")
		return ok && v == 0
	})
	bytes, _ := tg.metric(t, `caps_stream_bytes{stream="CAPS_CLIENTS"}`)
	msgs, _ := tg.metric(t, `caps_stream_messages{stream="CAPS_CLIENTS"}`)
	max, _ := tg.metric(t, `caps_stream_max_bytes{stream="CAPS_CLIENTS"}`)
	if bytes > limit || max != limit || msgs == 0 || msgs >= 120 {
		t.Errorf("CAPS_CLIENTS holds %v bytes in %v events with a limit of %v; want at most %d bytes, the newest events kept",
			bytes, msgs, max, limit)
	}
}
