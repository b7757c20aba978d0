package parcel

import (
	"errors"
	"slices"
	"testing"
	"time"
)

// TestLifecycleTable checks judge against the Lifecycle table for every
// status an order can be in and every event a client can send: the events
// the table allows from a status move the order to the table's status,
// every other one is refused with the table's rule (or the holder rule), and
// nothing is ever changed in place.
func TestLifecycleTable(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	p := Event{Parcel: Parcel{Store: "acme", OrderID: "0b6a3b4e-4d4f-4f43-9a0a-5d6a1c1c9a11", Customer: "Ada", Address: "1 Main St"}}
	at := func(s Status, attempt int) *Record {
		r := &Record{Store: "acme", OrderID: p.OrderID, Customer: "Ada", Address: "1 Main St", Status: s,
			Attempt: attempt, MaxAttempts: 3, Event: "x", By: "someone"}
		if s != StatusCreated && s != StatusCancelled {
			r.Driver = "alice"
		}
		return r
	}
	clientEvents := []string{EventPickup, EventInTransit, EventDelivered, EventFailed, EventReturned, EventCancelled}
	for _, st := range Statuses {
		for _, attempt := range []int{1, 3} {
			for _, ev := range clientEvents {
				cur := at(st, attempt)
				before := *cur
				by := "alice"
				if actorOf(ev) == ActorStore {
					by = "acme"
				}
				m := move{event: ev, by: by, p: p, hub: "h", now: now, maxAttempts: 3}
				if ev == EventFailed {
					m.p.Reason = "refused"
				}
				dec, err := judge(cur, m)
				if *cur != before {
					t.Errorf("%s on %s: the current record was changed", ev, st)
				}
				tr, _ := transitionFor(ev, actorOf(ev))
				allowed := slices.Contains(tr.From, st)
				if ev == EventReturned && attempt < 3 {
					allowed = false // the hub offers it again instead
				}
				if st == StatusCreated && actorOf(ev) == ActorHolder {
					allowed = false // nobody holds it yet
				}
				switch {
				case allowed && err != nil:
					t.Errorf("%s on %s (attempt %d): refused %v, want %s", ev, st, attempt, err, tr.To)
				case allowed && (dec.next == nil || dec.next.Status != tr.To || dec.next.Event != ev || dec.next.By != by || !dec.next.Time.Equal(now)):
					t.Errorf("%s on %s: record %+v, want status %s by %s", ev, st, dec.next, tr.To, by)
				case !allowed && err == nil:
					t.Errorf("%s on %s (attempt %d): accepted (%+v), want a refusal", ev, st, attempt, dec.next)
				case !allowed:
					var r *Refusal
					if !errors.As(err, &r) {
						t.Errorf("%s on %s: %v is not a refusal", ev, st, err)
						break
					}
					want := []string{tr.Rule, RuleOutOfOrder}
					if st == StatusCreated && actorOf(ev) == ActorHolder {
						want = []string{RuleNotHolder}
					}
					if !slices.Contains(want, r.Rule) {
						t.Errorf("%s on %s: refused by %s (%s), want one of %v", ev, st, r.Rule, r.Reason, want)
					}
				}
			}
		}
	}
}

func TestLifecycleRules(t *testing.T) {
	now := time.Now()
	p := Event{Parcel: Parcel{Store: "acme", OrderID: "0b6a3b4e-4d4f-4f43-9a0a-5d6a1c1c9a11", Customer: "Ada", Address: "1 Main St"}}
	created, err := judge(nil, move{event: EventPickup, by: "acme", p: p, key: "k1", hub: "h", now: now, maxAttempts: 2})
	if err != nil || created.next.Status != StatusCreated || created.next.Attempt != 1 || created.next.MaxAttempts != 2 || created.next.key != "k1" {
		t.Fatalf("a new order: %+v, %v", created.next, err)
	}
	rule := func(what string, err error, want string) {
		t.Helper()
		var r *Refusal
		if !errors.As(err, &r) || r.Rule != want {
			t.Errorf("%s: %v, want %s", what, err, want)
		}
	}
	_, err = judge(nil, move{event: EventInTransit, by: "alice", p: p})
	rule("in-transit of no order", err, RuleNoSuchOrder)
	_, err = judge(created.next, move{event: EventPickup, by: "acme", p: p, key: "k1"})
	rule("a second pickup, even with the same key (the dispatcher recognises that retry)", err, RuleDuplicate)

	assigned, what := assignment(created.next, 1, "alice", "h", now)
	if what != handOut || assigned == nil || assigned.Driver != "alice" || assigned.Status != StatusAssigned {
		t.Fatalf("assignment: %+v, %v", assigned, what)
	}
	if again, what := assignment(assigned, 1, "alice", "h", now); again != nil || what != handOut {
		t.Errorf("assigning to the holder again: %+v, %v; want nothing to store", again, what)
	}
	if over, _ := assignment(assigned, 1, "bob", "h", now); over == nil || over.Driver != "bob" {
		t.Errorf("a hand-over: %+v", over)
	}
	if _, what := assignment(assigned, 2, "bob", "h", now); what != notYet {
		t.Error("the pickup of a later attempt than the state read was not left for later")
	}
	if _, what := assignment(nil, 1, "bob", "h", now); what != notYet {
		t.Error("the pickup of an order not yet visible was not left for later")
	}

	bad := p
	bad.Address = "elsewhere"
	_, err = judge(assigned, move{event: EventInTransit, by: "alice", p: bad})
	rule("another address", err, RuleMismatch)
	other := p
	other.Store = "rosebud"
	_, err = judge(assigned, move{event: EventInTransit, by: "alice", p: other})
	rule("another store", err, RuleWrongStore)
	_, err = judge(assigned, move{event: EventInTransit, by: "bob", p: p})
	rule("not the holder", err, RuleNotHolder)

	transit, err := judge(assigned, move{event: EventInTransit, by: "alice", p: p, key: "k2", now: now})
	if err != nil {
		t.Fatal(err)
	}
	if d, err := judge(transit.next, move{event: EventInTransit, by: "alice", p: p, key: "k2"}); err != nil || !d.retry {
		t.Errorf("the same in-transit with the same key: %+v, %v; want a retry", d, err)
	}
	_, err = judge(transit.next, move{event: EventInTransit, by: "alice", p: p, key: "k3"})
	rule("the same in-transit with another key", err, RuleOutOfOrder)
	_, err = judge(transit.next, move{event: EventInTransit, by: "alice", p: p})
	rule("the same in-transit without a key", err, RuleOutOfOrder)
	_, err = judge(transit.next, move{event: EventCancelled, by: "acme", p: p})
	rule("cancelling an order in transit", err, RuleNotCancellable)

	fp := p
	fp.Reason, fp.Detail = "recipient-absent", "nobody home"
	failed, err := judge(transit.next, move{event: EventFailed, by: "alice", p: fp, now: now})
	if err != nil || failed.next.Reason != "recipient-absent" || failed.next.Driver != "alice" {
		t.Fatalf("failed: %+v, %v", failed.next, err)
	}
	_, err = judge(failed.next, move{event: EventReturned, by: "alice", p: p})
	rule("returning before the last attempt", err, RuleOutOfOrder)
	again := reoffer(failed.next, "h", now)
	if again == nil || again.Status != StatusCreated || again.Attempt != 2 || again.Driver != "" || again.Event != EventPickup {
		t.Fatalf("offered again: %+v", again)
	}
	a2, _ := assignment(again, 2, "bob", "h", now)
	if a2 == nil {
		t.Fatal("the second attempt was not handed out")
	}
	t2, _ := judge(a2, move{event: EventInTransit, by: "bob", p: p})
	f2, _ := judge(t2.next, move{event: EventFailed, by: "bob", p: fp})
	if reoffer(f2.next, "h", now) != nil {
		t.Error("offered again after the last attempt")
	}
	returned, err := judge(f2.next, move{event: EventReturned, by: "bob", p: p})
	if err != nil || returned.next.Status != StatusReturned {
		t.Errorf("returned after the last attempt: %+v, %v", returned.next, err)
	}

	cancelled, err := judge(assigned, move{event: EventCancelled, by: "acme", p: p})
	if err != nil || cancelled.next.Status != StatusCancelled || cancelled.next.Driver != "" {
		t.Fatalf("cancelled: %+v, %v", cancelled.next, err)
	}
	_, err = judge(cancelled.next, move{event: EventInTransit, by: "alice", p: p})
	rule("in-transit of a cancelled order", err, RuleOutOfOrder)
	if _, what := assignment(cancelled.next, 1, "bob", "h", now); what != dropIt {
		t.Error("the pickup of a cancelled order was not dropped")
	}
	if _, what := assignment(again, 1, "bob", "h", now); what != dropIt {
		t.Error("the pickup of an earlier attempt was not dropped")
	}
}

// TestEventIDs: the hub's message ids differ for every transition of an
// order, and do not depend on anything a client chose.
func TestEventIDs(t *testing.T) {
	r := &Record{OrderID: "0b6a3b4e-4d4f-4f43-9a0a-5d6a1c1c9a11", Event: EventAssigned, Driver: "alice", key: "client-key"}
	seen := map[string]bool{}
	for _, c := range []struct {
		event, driver string
		prev          uint64
	}{{EventAssigned, "alice", 1}, {EventAssigned, "bob", 1}, {EventAssigned, "alice", 3}, {EventInTransit, "alice", 3}, {EventDelivered, "alice", 4}} {
		r.Event, r.Driver = c.event, c.driver
		id := eventIDFor(r, c.prev)
		if seen[id] {
			t.Errorf("id %s twice", id)
		}
		seen[id] = true
	}
}
