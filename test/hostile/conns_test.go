package hostile_test

import (
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/protocol"
	"github.com/caps-hub/caps/protocol/classroom"
)

// dialFrom opens a connection to addr from the loopback address local
// (127.0.0.0/8 is all loopback on Linux: another "client address").
func dialFrom(t *testing.T, local, addr string) *wire {
	t.Helper()
	d := net.Dialer{Timeout: wait, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, local, err)
	}
	t.Cleanup(func() { c.Close() })
	return &wire{t: t, c: c, rd: protocol.NewReader(c, 0)}
}

// Before: nothing bounded the connections one address held on the CAPS
// port; one client could take all --max-conns places. Now an address
// holds at most --max-conns-per-addr; one more is refused with a fatal
// too_many_conns, while other addresses connect as before.
func TestConnectionsPerAddress(t *testing.T) {
	tg := startTarget(t, setup{hub: func(c *hub.Config) { c.MaxConnsPerAddr = 3 }})
	var held []*wire
	for range 3 {
		w := dial(t, tg.tcp)
		w.hello(protocol.RoleClient, "greedy", "")
		held = append(held, w)
	}
	over := dial(t, tg.tcp)
	e := over.closedWith("a fourth connection from one address", protocol.CodeTooManyConns)
	if !strings.Contains(e.Text, "the most one address may") {
		t.Errorf("refusal: %q", e.Text)
	}
	other := dialFrom(t, "127.0.0.2", tg.tcp)
	other.hello(protocol.RoleClient, "neighbour", "")
	if v, _ := tg.metric(t, `caps_connections_refused_total{limit="per_address"}`); v != 1 {
		t.Errorf(`caps_connections_refused_total{limit="per_address"} = %v, want 1`, v)
	}
	// A place given back is free again.
	held[0].c.Close()
	hubtest.Until(t, wait, "the closed connection's place to be free", func() bool {
		return dial(t, tg.tcp).helloFrame(protocol.RoleClient, "again", "").Op == protocol.OpWelcome
	})
}

// Before: on an open hub a socket that said nothing was presumed a
// classroom driver and kept for ever: 50 silent sockets filled --max-conns
// 50 and real clients were refused for 40 s and more. Now at most
// --classroom-max-silent silent connections are kept (half of --max-conns
// by default); one more is told why and closed at the handshake deadline,
// and clients that speak still get in.
func TestSilentSocketsCannotFillTheHub(t *testing.T) {
	const maxConns = 10
	tg := startTarget(t, setup{hub: func(c *hub.Config) {
		c.MaxConns = maxConns
		c.HandshakeTimeout = 300 * time.Millisecond
		c.ClassroomGrace = 300 * time.Millisecond
	}})
	// Each silent socket reads what the hub tells it, if anything.
	told := make(chan string, maxConns)
	for range maxConns {
		c, err := net.DialTimeout("tcp", tg.tcp, wait)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		go func() {
			raw, err := classroom.NewDecoder(c, 0).Next()
			if err != nil {
				return // kept, until the test closes it
			}
			o, _ := classroom.Parse(raw)
			var p struct{ Code string }
			json.Unmarshal(o.Payload, &p)
			told <- o.Event + " " + p.Code
		}()
	}
	// Half are closed, told why in an object they can parse; half kept.
	hubtest.Until(t, wait, "the silent sockets over the limit to be closed", func() bool {
		v, _ := tg.metric(t, "caps_sockets_open")
		return v == maxConns/2 && len(told) == maxConns/2
	})
	for range maxConns / 2 {
		if got := <-told; got != "error "+protocol.CodeTooManyConns {
			t.Errorf("a silent socket over the limit was told %q", got)
		}
	}
	if v, _ := tg.metric(t, "caps_classroom_silent_connections"); v != maxConns/2 {
		t.Errorf("caps_classroom_silent_connections = %v, want %d", v, maxConns/2)
	}
	// Real clients get in.
	for range maxConns / 2 {
		w := dial(t, tg.tcp)
		w.hello(protocol.RoleClient, "real", "")
	}
}

// A classroom connection that never sends a byte is closed after
// --classroom-silent-timeout, with an error object saying so; one that has
// spoken is not.
func TestSilentClassroomConnectionsTimeOut(t *testing.T) {
	tg := startTarget(t, setup{hub: func(c *hub.Config) {
		c.HandshakeTimeout = 200 * time.Millisecond
		c.ClassroomGrace = 200 * time.Millisecond
		c.ClassroomSilentTimeout = time.Second
	}})
	mute, err := net.DialTimeout("tcp", tg.tcp, wait)
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	talker, err := net.DialTimeout("tcp", tg.tcp, wait)
	if err != nil {
		t.Fatal(err)
	}
	defer talker.Close()
	talkerDec := classroom.NewDecoder(talker, 0)
	talker.Write(classroom.Encode("hello", []byte(`"hi"`)))

	mute.SetReadDeadline(time.Now().Add(wait))
	raw, err := classroom.NewDecoder(mute, 0).Next()
	if err != nil {
		t.Fatalf("the mute connection: %v", err)
	}
	o, _ := classroom.Parse(raw)
	var p struct {
		Code, Message string
		Fatal         bool
	}
	json.Unmarshal(o.Payload, &p)
	if o.Event != "error" || p.Code != protocol.CodeHeartbeat || !p.Fatal || !strings.Contains(p.Message, "never sends anything") {
		t.Fatalf("the mute connection got %s %s", o.Event, o.Payload)
	}
	// The talker is still served: its next event is answered.
	talker.Write(classroom.Encode("bad topic", []byte(`1`)))
	talker.SetReadDeadline(time.Now().Add(wait))
	raw, err = talkerDec.Next()
	if err != nil {
		t.Fatalf("the talker was closed too: %v", err)
	}
	if o, _ := classroom.Parse(raw); o.Event != "error" || !strings.Contains(string(o.Payload), protocol.CodeBadTopic) {
		t.Errorf("the talker got %s %s", o.Event, o.Payload)
	}
}
