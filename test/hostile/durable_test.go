package hostile_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/auth"
	"github.com/caps-hub/caps/internal/chat"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// subDurable subscribes to pattern with a durable name (acknowledging by
// hand) and returns the correlation id to wait for.
func (w *wire) subDurable(pattern, durable string, opts *protocol.SubOptions) uint64 {
	w.t.Helper()
	id := w.id()
	f := &protocol.Frame{Op: protocol.OpSub, ID: id, Topic: []byte(pattern), Key: []byte(durable),
		Flags: protocol.FlagManualAck | protocol.FlagDeliverAll}
	if opts != nil {
		f.Payload, _ = json.Marshal(opts)
	}
	w.send(f)
	return id
}

// msgOn waits for the next delivery of subscription sid.
func (w *wire) msgOn(what string, sid uint64) *protocol.Frame {
	w.t.Helper()
	return w.until(what, func(f *protocol.Frame) bool { return f.Op == protocol.OpMsg && f.ID == sid })
}

// order is a parcel order of store, as its vendor posts it.
func order(store string) parcel.Parcel {
	return parcel.Parcel{Store: store, OrderID: uuid.NewString(), Customer: "Ada Lovelace", Address: "1 Main St"}
}

// Before: a logger (subscribe-only, ">") joined the durable "drivers" on
// the pickups with a large max_inflight, received and acknowledged every
// new pickup — the drivers got none — and joined "vendor-<store>" and
// acknowledged the store's notifications, which its vendor then never saw.
// Reading a topic is not the right to take its work: now only drivers may
// join the drivers' queue and only store acme's vendor its mailbox;
// anyone else is refused with forbidden, and a logger that wants a durable
// gets one of its own, a copy that takes nothing from anyone. Tried with
// tokens, and on an open hub with the roles claimed.
func TestLoggerCannotDrainTheDriversQueueOrAMailbox(t *testing.T) {
	withAuth, tok := withTokens(t,
		auth.Entry{Name: "acme", Role: protocol.RoleVendor, Store: "acme"},
		auth.Entry{Name: "dana", Role: protocol.RoleDriver},
		auth.Entry{Name: "snoop", Role: protocol.RoleLogger},
	)
	for _, tc := range []struct {
		name string
		hub  func(*hub.Config)
	}{{"auth", func(c *hub.Config) { withAuth(c); c.MetricsAccess = hub.MetricsOpen }}, {"open", nil}} {
		t.Run(tc.name, func(t *testing.T) {
			tg := startTarget(t, setup{hub: tc.hub})
			token := func(name string) string {
				if tc.hub == nil {
					return ""
				}
				return tok[name]
			}
			snoop := dial(t, tg.tcp)
			snoop.hello(protocol.RoleLogger, "snoop", token("snoop"))
			pickups := parcel.PickupPattern
			mailbox := parcel.MailboxPattern("acme")
			e := snoop.refused("a logger joining the drivers' queue", snoop.subDurable(pickups, parcel.DriversDurable,
				&protocol.SubOptions{MaxInFlight: 1000}), protocol.CodeForbidden)
			if !strings.Contains(e.Text, "shared by the sessions granted it") {
				t.Errorf("refusal: %q", e.Text)
			}
			snoop.refused("a logger joining a vendor's mailbox", snoop.subDurable(mailbox, parcel.VendorDurable("acme"), nil), protocol.CodeForbidden)
			// A durable of its own, on the same topics: a copy.
			tap := snoop.ok("a logger's own durable", snoop.subDurable("parcel.>", "audit", nil)).Seq

			dana := dial(t, tg.tcp)
			dana.hello(protocol.RoleDriver, "dana", token("dana"))
			queue := dana.ok("the driver joins the queue", dana.subDurable(pickups, parcel.DriversDurable, nil)).Seq
			acme := dial(t, tg.tcp)
			acme.hello(protocol.RoleVendor, "acme", token("acme"))
			box := acme.ok("the vendor opens its mailbox", acme.subDurable(mailbox, parcel.VendorDurable("acme"), nil)).Seq

			o := order("acme")
			acme.ok("a pickup", acme.pubJSON(parcel.Topic("acme", o.OrderID, parcel.EventPickup, ""), o.OrderID+".pickup", o))
			m := dana.msgOn("the pickup, to the driver", queue)
			if !strings.Contains(string(m.Payload), o.OrderID) {
				t.Fatalf("the driver got %s", m)
			}
			dana.ok("in transit", dana.pubJSON(parcel.Topic("acme", o.OrderID, parcel.EventInTransit, "dana"), o.OrderID+".in-transit", o))
			dana.send(&protocol.Frame{Op: protocol.OpAck, ID: queue, Seq: m.Seq})
			dana.ok("delivered", dana.pubJSON(parcel.Topic("acme", o.OrderID, parcel.EventDelivered, "dana"), o.OrderID+".delivered", o))
			if m := acme.msgOn("the delivery, in the vendor's mailbox", box); !strings.Contains(string(m.Payload), o.OrderID) {
				t.Fatalf("the vendor got %s", m)
			}
			// The logger's copy saw all four events (the hub's record of the
			// hand-over to dana among them), and took none from anyone.
			for _, ev := range []string{parcel.EventPickup, parcel.EventAssigned, parcel.EventInTransit, parcel.EventDelivered} {
				driver := "dana"
				if ev == parcel.EventPickup {
					driver = ""
				}
				if m := snoop.msgOn("the logger's copy of "+ev, tap); string(m.Topic) != parcel.Topic("acme", o.OrderID, ev, driver) {
					t.Errorf("the logger's copy: %s, want %s", m, ev)
				}
			}
			if v, _ := tg.metric(t, `caps_errors_total{code="forbidden"}`); v < 2 {
				t.Errorf(`caps_errors_total{code="forbidden"} = %v, want at least 2`, v)
			}
		})
	}
}

// Before: a token with subscribe ["parcel.>"] and deny_subscribe on store
// B's topics got no live storeB messages, but the same SUB with
// history 1000 replayed storeB's orders — customers' names and addresses.
// Now history passes the same delivery check as live messages.
func TestHistoryReplayHonoursDenySubscribe(t *testing.T) {
	withAuth, tok := withTokens(t,
		auth.Entry{Name: "store-a", Role: protocol.RoleVendor, Store: "store-a"},
		auth.Entry{Name: "store-b", Role: protocol.RoleVendor, Store: "store-b"},
		auth.Entry{Name: "watcher", Role: protocol.RoleLogger, Permissions: &hub.Permissions{
			Subscribe: []string{"parcel.>"}, DenySubscribe: []string{parcel.StorePattern("store-b")},
		}},
	)
	tg := startTarget(t, setup{hub: withAuth})
	for _, store := range []string{"store-a", "store-b"} {
		v := dial(t, tg.tcp)
		v.hello(protocol.RoleVendor, store, tok[store])
		for range 3 {
			o := order(store)
			v.ok("a pickup of "+store, v.pubJSON(parcel.Topic(store, o.OrderID, parcel.EventPickup, ""), o.OrderID+".pickup", o))
		}
	}
	w := dial(t, tg.tcp)
	w.hello(protocol.RoleLogger, "watcher", tok["watcher"])
	sid := w.ok("the watcher's history", w.sub("parcel.>", &protocol.SubOptions{History: 1000})).Seq
	// A live pickup after the history marks its end.
	a := dial(t, tg.tcp)
	a.hello(protocol.RoleVendor, "store-a", tok["store-a"])
	last := order("store-a")
	a.ok("the last pickup", a.pubJSON(parcel.Topic("store-a", last.OrderID, parcel.EventPickup, ""), last.OrderID+".pickup", last))
	history := 0
	w.until("the live pickup", func(f *protocol.Frame) bool {
		if f.Op != protocol.OpMsg || f.ID != sid {
			return false
		}
		if strings.Contains(string(f.Topic), "store-b") || strings.Contains(string(f.Payload), "store-b") {
			t.Errorf("the watcher was sent store-b's %s", f)
		}
		isLast := strings.Contains(string(f.Payload), last.OrderID)
		// The history is read after the SUB's OK: the last pickup, posted
		// on that OK, may be stored in time to come as history.
		if f.Flags&protocol.FlagHistory != 0 && !isLast {
			history++
		}
		return isLast
	})
	if history != 3 {
		t.Errorf("%d messages of history, want store-a's 3", history)
	}
}

// Before: the de-duplication id of a stored publish was the client's key,
// verbatim, shared by all clients: a chat user who knew (or guessed) the id
// another would use published first under it, and the other's real message
// was answered OK with the first one's sequence and dropped as a
// duplicate. Now ids are scoped to the publisher: the same key from two
// identities is two messages, a retry by the same identity is still one,
// and subscribers see the key as it was published.
func TestMessageIDsCannotBePreempted(t *testing.T) {
	tg := startTarget(t, setup{})
	alice := dial(t, tg.tcp)
	alice.hello(protocol.RoleChat, "alice", "")
	alice.join("lobby", 0)
	mallory := dial(t, tg.tcp)
	mallory.hello(protocol.RoleChat, "mallory", "")
	mallory.join("lobby", 0)
	bob := dial(t, tg.tcp)
	bob.hello(protocol.RoleChat, "bob", "")
	sid := bob.join("lobby", 0)

	room := chat.RoomTopic("lobby")
	first := mallory.ok("mallory under alice's next id", mallory.pubJSON(room, "alice-42", chatMsg("alice-42", "mallory", "lobby", "first!", nil)))
	real := alice.ok("alice's real message", alice.pubJSON(room, "alice-42", chatMsg("alice-42", "alice", "lobby", "the real one", nil)))
	if real.Seq == first.Seq {
		t.Fatalf("alice's message was taken for mallory's (both seq %d): dropped as a duplicate", real.Seq)
	}
	again := alice.ok("alice's retry", alice.pubJSON(room, "alice-42", chatMsg("alice-42", "alice", "lobby", "the real one", nil)))
	if again.Seq != real.Seq {
		t.Errorf("alice's retry stored again (seq %d, first %d)", again.Seq, real.Seq)
	}
	for _, want := range []string{"first!", "the real one"} {
		m := bob.msgOn("bob hears "+want, sid)
		if !strings.Contains(string(m.Payload), want) || string(m.Key) != "alice-42" {
			t.Errorf("bob got %s (key %q), want %q with key alice-42", m, m.Key, want)
		}
	}
	// A newcomer's history has both, with their keys as published.
	carol := dial(t, tg.tcp)
	carol.hello(protocol.RoleChat, "carol", "")
	csid := carol.join("lobby", 10)
	for range 2 {
		if m := carol.msgOn("history", csid); string(m.Key) != "alice-42" {
			t.Errorf("history key %q, want alice-42", m.Key)
		}
	}
}

// A message id travels in an engine header, a line of ASCII text: control
// characters and spaces were rewritten on the way (two different keys
// became one), and nothing bounded its length. Now a key is 1-256 bytes of
// printable ASCII, or the publish is refused.
func TestMessageIDsAreBounded(t *testing.T) {
	tg := startTarget(t, setup{})
	w := dial(t, tg.tcp)
	w.hello(protocol.RoleClient, "keys", "")
	for _, key := range []string{"a\r\nNats-Rollup: all", "tab\there", " edge", strings.Repeat("k", 257), "caf\xc3\xa9"} {
		w.refused(fmt.Sprintf("key %q", key), w.pub("news.keys", key, []byte("x")), protocol.CodeBadRequest)
	}
	w.ok("a good key", w.pub("news.keys", strings.Repeat("k", 256), []byte("x")))
}

// Before: nothing bounded the durables a client made the engine keep: 500
// SUB-then-UNSUB with new durable names left 501 consumers on disk, kept
// 30 days. Now one identity holds a bounded number (the cluster counts
// them), a durable of its own expires once unused for --durable-idle, and
// the limit is a clear error and a metric. Others are not affected.
func TestJunkDurablesAreBounded(t *testing.T) {
	tg := startTarget(t, setup{hub: func(c *hub.Config) {
		c.MaxDurablesPerIdentity = 3
		c.DurableIdle = time.Second
	}})
	junk := dial(t, tg.tcp)
	junk.hello(protocol.RoleLogger, "junk", "")
	sub := func(i int) uint64 { return junk.subDurable(chat.RoomTopic("lobby"), fmt.Sprintf("junk-%d", i), nil) }
	for i := range 3 {
		sid := junk.ok("a durable", sub(i)).Seq
		junk.send(&protocol.Frame{Op: protocol.OpUnsub, ID: sid})
	}
	e := junk.refused("a fourth durable", sub(3), protocol.CodeTooManyDurables)
	if !strings.Contains(e.Text, "the most one identity may") {
		t.Errorf("refusal: %q", e.Text)
	}
	if v, _ := tg.metric(t, `caps_errors_total{code="too_many_durables"}`); v != 1 {
		t.Errorf(`caps_errors_total{code="too_many_durables"} = %v, want 1`, v)
	}
	if v, _ := tg.metric(t, `caps_stream_consumers{stream="CHAT_ROOMS"}`); v > 3 {
		t.Errorf("CHAT_ROOMS has %v consumers, want at most 3", v)
	}
	// Another identity is not affected.
	other := dial(t, tg.tcp)
	other.hello(protocol.RoleLogger, "other", "")
	other.ok("another identity's durable", other.subDurable(chat.RoomTopic("lobby"), "junk-0", nil))
	// Unused, the junk expires, and its slots are free again.
	hubtest.Until(t, wait, "the unused durables to expire", func() bool {
		v, _ := tg.metric(t, `caps_stream_consumers{stream="CHAT_ROOMS"}`)
		return v <= 1
	})
	junk.ok("a durable once the junk expired", sub(4))
}

// Subscriptions cost the hub memory per identity however many
// connections it opens: each connection has its own limit (--max-subs),
// and all of an identity's connections together another.
func TestSubscriptionsPerIdentity(t *testing.T) {
	tg := startTarget(t, setup{hub: func(c *hub.Config) { c.MaxSubsPerIdentity = 3 }})
	one := dial(t, tg.tcp)
	one.hello(protocol.RoleClient, "many", "")
	one.ok("sub 1", one.sub("a.1", nil))
	one.ok("sub 2", one.sub("a.2", nil))
	two := dial(t, tg.tcp)
	two.hello(protocol.RoleClient, "many", "")
	s3 := two.ok("sub 3", two.sub("a.3", nil)).Seq
	e := two.refused("a fourth over two connections", two.sub("a.4", nil), protocol.CodeTooManySubs)
	if !strings.Contains(e.Text, "over all its connections") {
		t.Errorf("refusal: %q", e.Text)
	}
	other := dial(t, tg.tcp)
	other.hello(protocol.RoleClient, "few", "")
	other.ok("another identity", other.sub("a.4", nil))
	// Unsubscribing, or leaving, gives them back.
	two.send(&protocol.Frame{Op: protocol.OpUnsub, ID: s3})
	two.ok("after an UNSUB", two.sub("a.4", nil))
	one.c.Close()
	hubtest.Until(t, wait, "the closed connection's subscriptions to be given back", func() bool {
		f := two.answer(two.sub(fmt.Sprintf("a.x%d", time.Now().UnixNano()), nil))
		return f.Op == protocol.OpOK
	})
}
