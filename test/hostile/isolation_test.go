package hostile_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

// panicky is an app with bugs a client can reach: its publish hook panics
// on the payload "boom", its subscribe hook and its service always.
type panicky struct{}

func (panicky) Setup(_ context.Context, h *hub.Host) error {
	h.OnPublish("boom.>", func(_ context.Context, _ hub.SessionInfo, _ string, payload []byte) error {
		if string(payload) == "boom" {
			panic("a bug in a publish hook")
		}
		return nil
	})
	h.OnSubscribe("boom.sub.>", func(context.Context, hub.SessionInfo, string) error { panic("a bug in a subscribe hook") })
	h.Handle("boom", func(context.Context, hub.SessionInfo, []byte) ([]byte, error) { panic("a bug in a service") })
	return nil
}

// panicLog keeps the hub's "panic contained" records.
type panicLog struct {
	mu     sync.Mutex
	stacks []string
}

func (l *panicLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *panicLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *panicLog) WithGroup(string) slog.Handler            { return l }
func (l *panicLog) Handle(_ context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "panic contained") {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "stack" {
				l.mu.Lock()
				l.stacks = append(l.stacks, a.Value.String())
				l.mu.Unlock()
			}
			return true
		})
	}
	return nil
}

// Before: a panic in any app's hook or service, which a client's payload
// can reach, ended the whole process — every client's service with it. Now
// it costs only the operation that hit it: that client gets an "internal"
// error and goes on, others notice nothing, and the panic is logged with
// its stack and counted (caps_panics_total{where}).
func TestAppPanicIsContainedToItsSession(t *testing.T) {
	logs := &panicLog{}
	tg := startTarget(t, setup{hub: func(c *hub.Config) {
		c.Apps = append(c.Apps, panicky{})
		c.Logger = slog.New(logs)
	}})
	other := dial(t, tg.tcp)
	other.hello(protocol.RoleClient, "bystander", "")
	sid := other.ok("a bystander's subscription", other.sub("boom.>", nil)).Seq

	w := dial(t, tg.tcp)
	w.hello(protocol.RoleClient, "trigger", "")
	e := w.refused("a publish that panics its hook", w.pub("boom.x", "", []byte("boom")), protocol.CodeInternal)
	if !strings.Contains(e.Text, "publish_hook") {
		t.Errorf("refusal: %q", e.Text)
	}
	w.refused("a subscription that panics its hook", w.sub("boom.sub.a", nil), protocol.CodeInternal)
	id := w.id()
	w.send(&protocol.Frame{Op: protocol.OpReq, ID: id, Topic: []byte("boom")})
	w.refused("a request that panics its service", id, protocol.CodeInternal)
	// The same session goes on.
	w.ok("a publish after the panics", w.pub("boom.x", "", []byte("fine")))
	if m := other.msgOn("the bystander's next message", sid); string(m.Payload) != "fine" {
		t.Errorf("the bystander got %s, want only the good message", m)
	}
	for where, want := range map[string]float64{"publish_hook": 1, "subscribe_hook": 1, "service": 1} {
		if v, _ := tg.metric(t, `caps_panics_total{where="`+where+`"}`); v != want {
			t.Errorf(`caps_panics_total{where=%q} = %v, want %v`, where, v, want)
		}
	}
	logs.mu.Lock()
	defer logs.mu.Unlock()
	if len(logs.stacks) != 3 || !strings.Contains(logs.stacks[0], "goroutine") || !strings.Contains(logs.stacks[0], "isolation_test.go") {
		t.Errorf("logged stacks: %q", logs.stacks)
	}
}
