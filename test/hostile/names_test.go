package hostile_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// helloResume sends HELLO with a resume token and returns the answer.
func (w *wire) helloResume(role, name, resume string) *protocol.Frame {
	w.t.Helper()
	b, _ := json.Marshal(protocol.Hello{Version: 1, Role: role, Name: name, Resume: resume})
	w.send(&protocol.Frame{Op: protocol.OpHello, Payload: b})
	return w.until("an answer to HELLO", func(f *protocol.Frame) bool {
		return f.Op == protocol.OpWelcome || f.Op == protocol.OpErr
	})
}

// Before: on an open hub, a HELLO resuming another user's session id took
// over their name — and session ids are in every connection event, which
// loggers and admins read. Now resuming takes the resume token only the
// original client received in its WELCOME, bound to its role and name.
func TestResumeNeedsTheResumeToken(t *testing.T) {
	tg := startTarget(t, setup{})
	snoop := dial(t, tg.tcp)
	snoop.hello(protocol.RoleLogger, "snoop", "")
	events := snoop.ok("connection events", snoop.sub("client.connected", nil)).Seq

	alice := dial(t, tg.tcp)
	wel := alice.hello(protocol.RoleChat, "alice", "")
	alice.join("lobby", 0)
	if wel.Resume == "" || strings.Contains(wel.Resume, "alice") {
		t.Fatalf("WELCOME resume token %q", wel.Resume)
	}
	var seen struct{ ID, Name string }
	snoop.until("alice's connection event", func(f *protocol.Frame) bool {
		if f.Op != protocol.OpMsg || f.ID != events {
			return false
		}
		json.Unmarshal(f.Payload, &seen)
		return seen.Name == "alice"
	})
	if seen.ID != wel.Session || strings.Contains(string(seen.ID), wel.Resume) {
		t.Fatalf("the event shows session %q (alice's is %q)", seen.ID, wel.Session)
	}
	// mallory resumes with what she could see or make up: refused.
	mine := dial(t, tg.tcp).hello(protocol.RoleChat, "mallory", "").Resume
	for _, resume := range []string{seen.ID, seen.ID + ".AAAAAAAAAAAAAAAAAAAAAAAA", mine} {
		f := dial(t, tg.tcp).helloResume(protocol.RoleChat, "alice", resume)
		if f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeNameTaken {
			t.Errorf("a HELLO as alice resuming %q: got %s, want ERR name_taken", resume, f)
		}
	}
	// alice herself, back with her token, resumes.
	f := dial(t, tg.tcp).helloResume(protocol.RoleChat, "alice", wel.Resume)
	var back protocol.Welcome
	if f.Op != protocol.OpWelcome || json.Unmarshal(f.Payload, &back) != nil || !back.Resumed {
		t.Fatalf("alice resuming with her token: %s", f)
	}
}

// Before: a second connection named like an online driver was welcomed,
// received that driver's parcels in transit (parcel.held) and could deliver
// them. Now a driver's name is held by one connection at a time, cluster
// wide: another is refused with name_taken — resuming with a session id
// changes nothing — while the driver, reconnecting with its resume token,
// takes its session over, and the stale connection is closed.
func TestSecondDriverCannotTakeTheName(t *testing.T) {
	tg := startTarget(t, setup{})
	dana := dial(t, tg.tcp)
	wel := dana.hello(protocol.RoleDriver, "dana", "")
	for _, resume := range []string{"", wel.Session} {
		f := dial(t, tg.tcp).helloResume(protocol.RoleDriver, "dana", resume)
		if f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeNameTaken {
			t.Fatalf("a second dana (resume %q): got %s, want ERR name_taken", resume, f)
		}
	}
	if v, _ := tg.metric(t, `caps_errors_total{code="name_taken"}`); v != 2 {
		t.Errorf(`caps_errors_total{code="name_taken"} = %v, want 2`, v)
	}
	// dana's own session still works.
	id := dana.id()
	dana.send(&protocol.Frame{Op: protocol.OpReq, ID: id, Topic: []byte(parcel.HeldService)})
	if f := dana.until("parcel.held", func(f *protocol.Frame) bool { return f.ID == id }); f.Op != protocol.OpReply {
		t.Errorf("dana's parcel.held: %s", f)
	}
	// dana reconnecting with her token takes over; the old connection ends.
	back := dial(t, tg.tcp)
	if f := back.helloResume(protocol.RoleDriver, "dana", wel.Resume); f.Op != protocol.OpWelcome {
		t.Fatalf("dana resuming: %s", f)
	}
	dana.closedWith("the resumed session's old connection", protocol.CodeNameTaken)
}
