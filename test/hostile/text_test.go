package hostile_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caps-hub/caps/internal/hubtest"
)

// nc is a person with nc (or a program posing as one) on the client port:
// it writes raw bytes, and reads what the hub sends into lines.
type nc struct {
	t    *testing.T
	c    net.Conn
	mu   sync.Mutex
	raw  bytes.Buffer // everything received
	done chan struct{}
}

func dialNC(t *testing.T, addr string) *nc {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	n := &nc{t: t, c: c, done: make(chan struct{})}
	go func() {
		defer close(n.done)
		buf := make([]byte, 32<<10)
		for {
			k, err := c.Read(buf)
			n.mu.Lock()
			n.raw.Write(buf[:k])
			n.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-n.done })
	return n
}

func (n *nc) write(b []byte) {
	n.t.Helper()
	n.c.SetWriteDeadline(time.Now().Add(wait))
	if _, err := n.c.Write(b); err != nil {
		n.t.Fatalf("write: %v", err)
	}
}

func (n *nc) received() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.raw.String()
}

// waitLine waits for a line (CR LF ended) that starts with prefix and
// returns it.
func (n *nc) waitLine(prefix string) string {
	n.t.Helper()
	var found string
	hubtest.Until(n.t, wait, fmt.Sprintf("a line %q…", prefix), func() bool {
		for l := range strings.SplitSeq(n.received(), "\r\n") {
			l = l[strings.LastIndexByte(l, 0xff)+1:] // after telnet answers, if any
			if strings.HasPrefix(l, prefix) {
				found = l
				return true
			}
		}
		return false
	})
	return found
}

func (n *nc) waitClosed() {
	n.t.Helper()
	select {
	case <-n.done:
	case <-time.After(wait):
		n.t.Fatalf("the hub did not close the connection; got %q", n.received())
	}
}

// guest returns the guest name the hub greeted n with.
func (n *nc) guest() string {
	return strings.TrimPrefix(n.waitLine("* welcome to CAPS chat, you are "), "* welcome to CAPS chat, you are ")
}

// A line that never ends costs the hub one line's worth of memory: it
// reads on, drops the line with an error once it ends, and the connection
// goes on. (Tried: 4 MiB without a line end.)
func TestTextEndlessLine(t *testing.T) {
	tg := startTarget(t, setup{})
	n := dialNC(t, tg.tcp)
	n.write([]byte("hello\n"))
	name := n.guest()
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	for range 64 {
		n.write(chunk)
	}
	n.write([]byte("\nstill here\n"))
	n.waitLine("! too_large: that line was longer than 8192 bytes; it was not sent")
	n.waitLine("[lobby] " + name + ": still here")
}

// A flood of lines waits in the flooder's socket (the hub handles 20 a
// second and chat lets 5 a second through): other people talk on as if it
// were not there, and the flood's lines that reach the room are chat's
// burst at most. (Tried: 5000 lines at once.)
func TestTextLineFlood(t *testing.T) {
	tg := startTarget(t, setup{})
	flood := dialNC(t, tg.tcp)
	flood.write([]byte("first\n"))
	flooder := flood.guest()
	a, b := dialNC(t, tg.tcp), dialNC(t, tg.tcp)
	a.write([]byte("@nickname ann\n"))
	b.write([]byte("@nickname ben\n"))
	a.waitLine("[lobby] * ann joined")
	b.waitLine("[lobby] * ben joined")
	var lines bytes.Buffer
	for i := range 5000 {
		fmt.Fprintf(&lines, "flood %d\n", i)
	}
	go flood.c.Write(lines.Bytes()) // may block: the hub reads at its pace
	flood.waitLine("! rate_limited: ")
	a.write([]byte("ben, are you there?\n"))
	b.waitLine("[lobby] ann: ben, are you there?")
	b.write([]byte("yes\n"))
	a.waitLine("[lobby] ben: yes")
	flood.c.Close()
	a.waitLine("[lobby] * " + flooder + " left")
	if got := strings.Count(a.received(), "[lobby] "+flooder+": flood "); got > 20 {
		t.Fatalf("%d flood lines reached the room", got)
	}
}

// Bytes that are not text: each line is refused politely, and a run of
// them ends the connection; the hub serves others meanwhile. (Tried:
// random bytes after a letter, which makes the connection a text one.)
func TestTextBinaryGarbage(t *testing.T) {
	tg := startTarget(t, setup{})
	g := dialNC(t, tg.tcp)
	g.write([]byte("hi\n\xc3\x28\n"))
	g.waitLine("! bad_request: that line was not UTF-8 text; it was not sent")
	junk := make([]byte, 64<<10)
	rand.Read(junk)
	junk = bytes.ReplaceAll(junk, []byte{0xff}, []byte{0xfe}) // no telnet commands: plain garbage
	for i := 0; i < len(junk); i += 97 {
		junk[i] = '\n'
	}
	g.write(junk)
	g.waitLine("! bad_request: 16 lines in a row were not text; closing")
	g.waitClosed()
	ok := dialNC(t, tg.tcp)
	ok.write([]byte("after\n"))
	ok.waitLine("[lobby] " + ok.guest() + ": after")
}

// Telnet negotiation is answered once per option, however often it is
// asked; an endless subnegotiation is skipped without being kept. (Tried:
// 200,000 requests for every option, and 1 MiB inside IAC SB.)
func TestTextTelnetFlood(t *testing.T) {
	tg := startTarget(t, setup{})
	n := dialNC(t, tg.tcp)
	var flood bytes.Buffer
	for i := range 200000 {
		verb := byte(253) // DO
		if i%2 == 1 {
			verb = 251 // WILL
		}
		flood.Write([]byte{255, verb, byte(i / 2 % 256)})
	}
	flood.Write([]byte{255, 250, 24})                // IAC SB TERMINAL-TYPE …
	flood.Write(bytes.Repeat([]byte("sub"), 350000)) // … a megabyte of it …
	flood.Write([]byte{255, 240})                    // … IAC SE
	flood.WriteString("hello\r\n")
	n.write(flood.Bytes())
	name := n.guest()
	n.waitLine("[lobby] " + name + ": hello")
	// The answers came first (the hub answers as it reads, before the
	// greeting): IAC WONT or IAC DONT and the option, once each.
	got := []byte(n.received())
	answers := 0
	for len(got) >= 3 && got[0] == 255 && (got[1] == 252 || got[1] == 254) {
		answers++
		got = got[3:]
	}
	if answers != 512 || !bytes.HasPrefix(got, []byte("* welcome")) {
		t.Fatalf("%d telnet answers, want one per option and verb (512), then the greeting; then %q", answers, got[:min(len(got), 40)])
	}
}

// A token typed into an open hub, or typed again, never reaches a room.
func TestTextTokenNeverSaid(t *testing.T) {
	tg := startTarget(t, setup{})
	watcher := dialNC(t, tg.tcp)
	watcher.write([]byte("@nickname watcher\n"))
	watcher.waitLine("[lobby] * watcher joined")
	n := dialNC(t, tg.tcp)
	n.write([]byte("hi\n@token caps_secret\n@TOKEN caps_secret2\nbye\n"))
	name := n.guest()
	n.waitLine("* no token needed: you are a guest here")
	watcher.waitLine("[lobby] " + name + ": bye")
	if strings.Contains(watcher.received(), "caps_secret") {
		t.Fatalf("a token reached the room:\n%s", watcher.received())
	}
}
