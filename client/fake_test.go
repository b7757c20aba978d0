package client

import (
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/caps-hub/caps/protocol"
)

// fakeHub is a minimal hub built from the protocol package, for unit tests
// of the client's own machinery (handshake, sid mapping, reconnect,
// heartbeats). It is not a model of the real hub's routing.
type fakeHub struct {
	t  testing.TB
	ln net.Listener
	wg sync.WaitGroup

	mu       sync.Mutex
	hb       int               // heartbeat_ms announced
	refuse   *protocol.Error   // refuse every HELLO with this
	noPong   bool              // ignore PINGs
	ackErr   bool              // answer confirmed ACKs with ERR not_found
	subErr   map[string]string // refuse SUBs to these patterns with this code
	hold     map[string]bool   // topics whose PUBs get no answer
	sessions map[*fakeSess]bool
	hellos   []protocol.Hello
	got      []protocol.Frame // every frame received after HELLO (deep copies)
	conns    int
	sidBase  uint64 // sids of connection n start at n*100+1
	seq      uint64 // stream sequence for "stored.>"
}

type fakeSub struct {
	pattern, group, durable string
}

type fakeSess struct {
	h       *fakeHub
	conn    net.Conn
	wmu     sync.Mutex
	subs    map[uint64]fakeSub
	live    map[string]uint64
	nextSid uint64
}

func newFakeHub(t testing.TB) *fakeHub {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &fakeHub{t: t, ln: ln, hb: 10000, hold: map[string]bool{}, subErr: map[string]string{}, sessions: map[*fakeSess]bool{}}
	h.wg.Add(1)
	go h.accept()
	t.Cleanup(h.close)
	return h
}

func (h *fakeHub) addr() string { return h.ln.Addr().String() }

func (h *fakeHub) close() {
	h.ln.Close()
	h.kill()
	h.wg.Wait()
}

func (h *fakeHub) accept() {
	defer h.wg.Done()
	for {
		nc, err := h.ln.Accept()
		if err != nil {
			return
		}
		h.wg.Add(1)
		go h.serve(nc)
	}
}

// kill drops every connection without a word.
func (h *fakeHub) kill() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.sessions {
		s.conn.Close()
	}
}

// sendAll sends f to every session.
func (h *fakeHub) sendAll(f *protocol.Frame) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.sessions {
		s.send(f)
	}
}

func (h *fakeHub) set(fn func(h *fakeHub)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	fn(h)
}

// frames returns the received frames with op.
func (h *fakeHub) frames(op protocol.Op) []protocol.Frame {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []protocol.Frame
	for _, f := range h.got {
		if f.Op == op {
			out = append(out, f)
		}
	}
	return out
}

func (h *fakeHub) helloList() []protocol.Hello {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]protocol.Hello(nil), h.hellos...)
}

func (h *fakeHub) connCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.conns
}

func (s *fakeSess) send(f *protocol.Frame) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_ = s.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = s.conn.Write(f.Encode())
}

func deepCopy(f *protocol.Frame) protocol.Frame {
	g := *f
	g.Topic = append([]byte(nil), f.Topic...)
	g.Key = append([]byte(nil), f.Key...)
	g.Group = append([]byte(nil), f.Group...)
	g.Payload = append([]byte(nil), f.Payload...)
	return g
}

func (h *fakeHub) serve(nc net.Conn) {
	defer h.wg.Done()
	defer nc.Close()
	r := protocol.NewReader(nc, 0)
	s := &fakeSess{h: h, conn: nc, subs: map[uint64]fakeSub{}, live: map[string]uint64{}}
	f, err := r.Next()
	if err != nil || f.Op != protocol.OpHello {
		return
	}
	hello, err := protocol.ParseHello(f.Payload)
	h.mu.Lock()
	h.conns++
	n := h.conns
	h.hellos = append(h.hellos, hello)
	refuse, hb := h.refuse, h.hb
	s.nextSid = uint64(n) * 100
	h.mu.Unlock()
	if err != nil {
		s.send(protocol.ErrorFrame(0, protocol.CodeHandshake, err.Error(), true))
		return
	}
	if refuse != nil {
		s.send(protocol.ErrorFrame(0, refuse.Code, refuse.Text, true))
		return
	}
	w, _ := json.Marshal(protocol.Welcome{
		Session: fmt.Sprintf("sess-%d", n), Hub: "fake", HeartbeatMS: hb,
		MaxFrame: protocol.DefaultMaxFrame, MaxSubs: 100, Role: hello.Role, Name: hello.Name,
		Resume: fmt.Sprintf("resume-sess-%d", n), Resumed: hello.Resume != "",
	})
	h.mu.Lock()
	h.sessions[s] = true
	h.mu.Unlock()
	s.send(&protocol.Frame{Op: protocol.OpWelcome, Payload: w})
	defer func() {
		h.mu.Lock()
		delete(h.sessions, s)
		h.mu.Unlock()
	}()
	for {
		f, err := r.Next()
		if err != nil {
			return
		}
		h.mu.Lock()
		h.got = append(h.got, deepCopy(f))
		h.mu.Unlock()
		if !s.handle(f) {
			return
		}
	}
}

func (s *fakeSess) handle(f *protocol.Frame) bool {
	h := s.h
	switch f.Op {
	case protocol.OpSub:
		h.mu.Lock()
		code := h.subErr[string(f.Topic)]
		h.mu.Unlock()
		if string(f.Topic) == "forbidden.x" {
			code = protocol.CodeForbidden
		}
		if code != "" {
			s.send(protocol.ErrorFrame(f.ID, code, "no", false))
			return true
		}
		sub := fakeSub{string(f.Topic), string(f.Group), string(f.Key)}
		k := sub.pattern + "\x00" + sub.group
		h.mu.Lock()
		sid, ok := s.live[k]
		if !ok || sub.durable != "" {
			s.nextSid++
			sid = s.nextSid
			s.subs[sid] = sub
			if sub.durable == "" {
				s.live[k] = sid
			}
		}
		h.mu.Unlock()
		s.send(&protocol.Frame{Op: protocol.OpOK, ID: f.ID, Seq: sid})
	case protocol.OpUnsub:
		h.mu.Lock()
		sub, ok := s.subs[f.ID]
		delete(s.subs, f.ID)
		if ok && sub.durable == "" {
			delete(s.live, sub.pattern+"\x00"+sub.group)
		}
		h.mu.Unlock()
		if !ok {
			s.send(protocol.ErrorFrame(f.ID, protocol.CodeNotFound, "no such sid", false))
		}
	case protocol.OpPub:
		topic := string(f.Topic)
		if topic == "fail.x" {
			s.send(protocol.ErrorFrame(f.ID, protocol.CodeRejected, "refused", false))
			return true
		}
		h.mu.Lock()
		var seq uint64
		stored := protocol.Match([]byte("stored.>"), f.Topic)
		if stored {
			h.seq++
			seq = h.seq
		}
		type out struct {
			s *fakeSess
			f *protocol.Frame
		}
		var outs []out
		for o := range h.sessions {
			for sid, sub := range o.subs {
				if !protocol.Match([]byte(sub.pattern), f.Topic) {
					continue
				}
				m := &protocol.Frame{Op: protocol.OpMsg, ID: sid, Topic: f.Topic, Key: f.Key, Payload: f.Payload}
				if sub.durable != "" {
					if !stored {
						continue
					}
					m.Flags |= protocol.FlagAckRequired
					m.Seq = seq
				}
				outs = append(outs, out{o, m})
			}
		}
		hold := h.hold[topic]
		h.mu.Unlock()
		for _, o := range outs {
			o.s.send(o.f)
		}
		if f.ID != 0 && !hold {
			s.send(&protocol.Frame{Op: protocol.OpOK, ID: f.ID, Seq: seq})
		}
	case protocol.OpAck, protocol.OpNak:
		h.mu.Lock()
		ackErr := h.ackErr
		h.mu.Unlock()
		if ackErr {
			s.send(protocol.ErrorFrame(f.ID, protocol.CodeNotFound, "no such sid", false))
		} else if f.Flags&protocol.FlagConfirm != 0 {
			s.send(&protocol.Frame{Op: protocol.OpOK, Flags: protocol.FlagConfirm, ID: f.ID, Seq: f.Seq})
		}
	case protocol.OpReq:
		if string(f.Topic) == "echo" {
			s.send(&protocol.Frame{Op: protocol.OpReply, ID: f.ID, Payload: f.Payload})
		} else {
			s.send(protocol.ErrorFrame(f.ID, protocol.CodeNotFound, "no such service", false))
		}
	case protocol.OpPing:
		h.mu.Lock()
		noPong := h.noPong
		h.mu.Unlock()
		if !noPong {
			s.send(&protocol.Frame{Op: protocol.OpPong, ID: f.ID})
		}
	case protocol.OpBye:
		return false
	}
	return true
}
