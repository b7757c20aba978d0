package hub

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/caps-hub/caps/protocol"
)

// The CAPS frames dialect (docs/PROTOCOL.md): HELLO first, then frames,
// each translated into a call of the session API and answered by id.

// capsFrames is the outbound half of CAPS frames. Deliveries need no
// rendering (Session.native): the router's encoding is queued as it is.
type capsFrames struct{}

// useCAPSFrames makes CAPS frames the session's dialect (every session's
// until another is picked).
func (s *Session) useCAPSFrames() {
	s.dialect, s.native, s.writer, s.heartbeats, s.pipelines = capsFrames{}, true, nil, true, true
	s.info.Dialect = "caps"
}

func (capsFrames) deliver(s *Session, m protocol.Frame) bool { return s.send(m.Encode()) }

func (capsFrames) notice(code, text string, fatal bool) []byte {
	return protocol.ErrorFrame(0, code, text, fatal).Encode()
}

func (capsFrames) bye(reason string) []byte {
	return (&protocol.Frame{Op: protocol.OpBye, Payload: []byte(reason)}).Encode()
}

func (capsFrames) published(s *Session, id, seq uint64, err error) {
	if err != nil {
		sendErr(s, id, err)
		return
	}
	if id != 0 {
		s.send((&protocol.Frame{Op: protocol.OpOK, ID: id, Seq: seq}).Encode())
	}
}

func (capsFrames) replied(s *Session, id uint64, service string, reply []byte, err error) {
	if err != nil {
		sendErr(s, id, err)
		return
	}
	s.send((&protocol.Frame{Op: protocol.OpReply, ID: id, Topic: []byte(service), Payload: reply}).Encode())
}

// sendErr answers operation id with a recoverable ERR carrying err's code.
func sendErr(s *Session, id uint64, err error) {
	code, text := errCode(err, protocol.CodeInternal)
	s.countError(code)
	s.send(protocol.ErrorFrame(id, code, text, false).Encode())
}

// serveCAPS readies a connection speaking CAPS frames: the handshake,
// then its read loop (nil if the handshake failed; the connection is closed).
func (h *Hub) serveCAPS(s *Session, br *bufio.Reader) func() error {
	// A small first buffer: most connections are idle most of the time, and
	// the reader grows it for big frames and busy streams. It reads the
	// connection itself, after what br read ahead to tell the dialect: br
	// and its 512 bytes go now, not with the connection.
	// The handshake is read under a small frame limit: a HELLO is a few
	// hundred bytes, and nobody unauthenticated may make the hub hold more.
	rd := protocol.NewReaderSize(s.conn, min(h.cfg.MaxFrame, protocol.MaxHelloFrame), 512)
	ahead, _ := br.Peek(br.Buffered())
	rd.Prefill(ahead)
	if !s.handshake(rd) {
		s.conn.Close()
		return nil
	}
	rd.SetMaxFrame(h.cfg.MaxFrame)
	s.conn.SetReadDeadline(time.Time{})
	return func() error { return s.readFrames(rd) }
}

// handshake reads and checks the HELLO, then answers WELCOME or a fatal ERR.
func (s *Session) handshake(rd *protocol.Reader) bool {
	h := s.hub
	f, err := rd.Next()
	if err != nil {
		switch {
		case isTimeout(err):
			s.refuse(protocol.CodeHandshakeTime, "no HELLO within "+h.cfg.HandshakeTimeout.String())
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		default:
			s.refuse(frameErrCode(err), err.Error())
		}
		return false
	}
	if f.Op != protocol.OpHello {
		s.refuse(protocol.CodeHandshake, fmt.Sprintf("expected HELLO first, got %s", f.Op))
		return false
	}
	hello, err := protocol.ParseHello(f.Payload)
	if err != nil {
		s.refuse(protocol.CodeHandshake, err.Error())
		return false
	}
	id, err := h.authenticate(hello)
	if err != nil {
		s.refuse(protocol.CodeAuth, err.Error())
		return false
	}
	s.hello = &hello
	if err := s.establish(id, hello.Resume); err != nil {
		code, text := errCode(err, protocol.CodeForbidden)
		s.refuse(code, text)
		return false
	}
	w := protocol.Welcome{
		Session:     s.info.ID,
		Hub:         h.cfg.Name,
		HeartbeatMS: int(h.cfg.Heartbeat / time.Millisecond),
		MaxFrame:    h.cfg.MaxFrame,
		MaxSubs:     h.cfg.MaxSubs,
		MaxPubRate:  max(h.cfg.PubRate, 0),
		Role:        s.info.Role,
		Name:        s.info.Name,
		Resume:      h.names.resumeToken(s.info.ID, s.info.Role, s.info.Name),
		Resumed:     s.info.Resume != "",
	}
	b, _ := json.Marshal(w)
	// Registered before the WELCOME leaves, so that once a client is in,
	// the hub already counts it (auth reloads, /people, shutdown's BYE).
	h.register(s)
	s.writeNow((&protocol.Frame{Op: protocol.OpWelcome, Payload: b}).Encode())
	return true
}

// authenticate turns a HELLO into an identity: through the authenticator
// when the hub has one, else taking the client at its word.
func (h *Hub) authenticate(hello protocol.Hello) (Identity, error) {
	if h.cfg.Auth == nil {
		return Identity{Role: hello.Role, Name: hello.Name}, nil
	}
	id, err := h.cfg.Auth.Authenticate(hello)
	if err != nil {
		h.log.Warn("authentication failed", "role", hello.Role, "name", hello.Name, "err", err)
	}
	return id, err
}

// refuse ends a handshake with a fatal ERR.
func (s *Session) refuse(code, text string) {
	s.countError(code)
	s.writeNow(protocol.ErrorFrame(0, code, text, true).Encode())
}

// readFrames decodes frames until the connection ends. Returning ends the session.
func (s *Session) readFrames(rd *protocol.Reader) error {
	h := s.hub
	// Counters and the liveness clock are updated once per read from the
	// socket (when the reader has nothing more buffered), not once per frame.
	var frames, nbytes int
	for {
		f, err := rd.Next()
		if err != nil {
			h.metrics.framesIn.Add(float64(frames))
			h.metrics.bytesIn.Add(float64(nbytes))
			return s.readError(err)
		}
		frames++
		nbytes += protocol.HeaderLen + 7 + len(f.Topic) + len(f.Key) + len(f.Group) + len(f.Payload)
		if rd.Buffered() == 0 || frames >= 256 {
			s.lastRecv.Store(time.Now().UnixNano())
			h.metrics.framesIn.Add(float64(frames))
			h.metrics.bytesIn.Add(float64(nbytes))
			frames, nbytes = 0, 0
		}
		if err := s.handleFrame(f); err != nil {
			return err
		}
	}
}

// readError ends the read loop on err: a connection that ended is just
// that; bad frames are told to the client (a fatal ERR). Apart from
// readFrames, whose frame an idle connection keeps on its stack.
//
//go:noinline
func (s *Session) readError(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) {
		return err
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return err
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return err
	}
	s.fail(frameErrCode(err), err.Error())
	return err
}

func frameErrCode(err error) string {
	if errors.Is(err, protocol.ErrFrameTooLarge) {
		return protocol.CodeFrameTooLarge
	}
	return protocol.CodeBadFrame
}

var (
	errClientBye = errors.New("client said bye")
	pongFrame    = (&protocol.Frame{Op: protocol.OpPong}).Encode()
)

// handleFrame executes one frame. A returned error ends the session.
func (s *Session) handleFrame(f *protocol.Frame) error {
	switch f.Op {
	case protocol.OpPub:
		s.publish(s.ctx, pubRequest{ID: f.ID, Topic: f.Topic, Key: f.Key, Payload: f.Payload, Stored: f.Flags&protocol.FlagDurable != 0})
	case protocol.OpSub:
		s.handleSub(f)
	case protocol.OpUnsub:
		if err := s.unsubscribe(f.ID); err != nil {
			sendErr(s, f.ID, err)
		}
	case protocol.OpAck, protocol.OpNak:
		s.handleAck(f)
	case protocol.OpReq:
		s.request(f.ID, string(f.Topic), f.Payload)
	case protocol.OpPing:
		s.send(pongFrame)
	case protocol.OpPong:
	case protocol.OpBye:
		return errClientBye
	case protocol.OpHello:
		sendErr(s, f.ID, Reject(protocol.CodeBadRequest, "already handshaken"))
	default:
		sendErr(s, f.ID, Reject(protocol.CodeBadRequest, fmt.Sprintf("%s is not sent by clients", f.Op)))
	}
	return nil
}

// handleSub translates a SUB: topic = pattern, group = queue group, key =
// durable name, flags and the SubOptions payload the rest.
func (s *Session) handleSub(f *protocol.Frame) {
	sb := subRequest{Pattern: string(f.Topic), Group: string(f.Group), Durable: string(f.Key), DeliverAll: f.Flags&protocol.FlagDeliverAll != 0}
	if len(f.Payload) > 0 {
		var opts protocol.SubOptions
		if err := json.Unmarshal(f.Payload, &opts); err != nil {
			sendErr(s, f.ID, Reject(protocol.CodeBadRequest, "SUB options are not JSON: "+err.Error()))
			return
		}
		if err := opts.Validate(); err != nil {
			sendErr(s, f.ID, Reject(protocol.CodeBadRequest, "SUB options: "+err.Error()))
			return
		}
		sb.MaxInFlight, sb.History = opts.MaxInFlight, opts.History
		sb.AckWait = time.Duration(opts.AckWaitMS) * time.Millisecond
	}
	if sb.Durable != "" {
		sb.History = 0 // durable subscriptions have no history: they resume where they were
	} else {
		sb.MaxInFlight, sb.AckWait = 0, 0
	}
	id := f.ID
	_, err := s.subscribe(s.ctx, sb, func(sid uint64) {
		s.send((&protocol.Frame{Op: protocol.OpOK, ID: id, Seq: sid}).Encode())
	})
	if err != nil {
		sendErr(s, id, err)
	}
}

// handleAck translates ACK and NAK (id = sid, seq = the delivery). A
// failed one is answered with an ERR carrying its sid in id and its
// sequence in seq, so that a client can tell it from a request's answer.
func (s *Session) handleAck(f *protocol.Frame) {
	confirm := f.Flags&protocol.FlagConfirm != 0
	var err error
	if f.Op == protocol.OpNak {
		err = s.nak(f.ID, f.Seq)
	} else {
		err = s.ack(s.ctx, f.ID, f.Seq, confirm)
	}
	if err != nil {
		code, text := errCode(err, protocol.CodeInternal)
		s.countError(code)
		e := protocol.ErrorFrame(f.ID, code, text, false)
		e.Seq = f.Seq
		s.send(e.Encode())
		return
	}
	if confirm {
		s.send((&protocol.Frame{Op: protocol.OpOK, Flags: protocol.FlagConfirm, ID: f.ID, Seq: f.Seq}).Encode())
	}
}
