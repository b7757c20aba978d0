package hub_test

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

// FuzzHubSession throws bytes at a live hub, either as the very first bytes
// of a connection or after a proper handshake. Whatever arrives, the hub
// must not crash, must end the session once the client has hung up (no
// stall), must answer only with well-formed frames on a CAPS connection, and
// must go on serving new clients.
//
//	go test ./hub -run XXX -fuzz FuzzHubSession -fuzztime 2m
func FuzzHubSession(f *testing.F) {
	h := benchHub(f, hub.Config{MaxFrame: 4096, MaxSubs: 8, HandshakeTimeout: 2 * time.Second})
	hello := func(role, name string) []byte {
		b, _ := json.Marshal(protocol.Hello{Version: protocol.Version, Role: role, Name: name})
		return (&protocol.Frame{Op: protocol.OpHello, Payload: b}).Encode()
	}
	frames := func(fs ...*protocol.Frame) []byte {
		var out []byte
		for _, fr := range fs {
			out = fr.Append(out)
		}
		return out
	}
	// Pre-handshake seeds (handshake=false).
	for _, in := range [][]byte{
		hello("client", "fuzz"),
		hello("admin", "root"),
		append(hello("client", "twice"), hello("client", "twice")...),
		frames(&protocol.Frame{Op: protocol.OpPub, Topic: []byte("a"), Payload: []byte("x")}),
		[]byte{0, 0, 0, 0},
		[]byte{0xff, 0xff, 0xff, 0xff},
		[]byte{0, 0, 0, 7, 1, 0, 0, 0, 0, 0, 0},
		[]byte(`{"event":"pickup","payload":{"store":"s","orderID":"x"}}`),
		[]byte(`{"event":"chat","payload":"hi"}{"event":`),
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		[]byte("\x16\x03\x01\x00\x05hello"),
		(&protocol.Frame{Op: protocol.OpHello, Payload: []byte(`{"version":1,"role":"vendor","name":"a b"}`)}).Encode(),
	} {
		f.Add(false, in)
	}
	// Post-handshake seeds (handshake=true).
	for _, in := range [][]byte{
		frames(
			&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("f.>")},
			&protocol.Frame{Op: protocol.OpPub, ID: 2, Topic: []byte("f.x"), Payload: []byte("self")},
			&protocol.Frame{Op: protocol.OpUnsub, ID: 1},
		),
		frames(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("f.*"), Group: []byte("g"), Payload: []byte(`{"history":3}`)}),
		frames(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("f.*"), Key: []byte("durable")}),
		frames(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("..")}, &protocol.Frame{Op: protocol.OpSub, ID: 2, Payload: []byte("{")}),
		frames(&protocol.Frame{Op: protocol.OpAck, ID: 1 << 62, Seq: 9}, &protocol.Frame{Op: protocol.OpNak, ID: 3}),
		frames(&protocol.Frame{Op: protocol.OpReq, ID: 1, Topic: []byte("no.such.service")}),
		frames(&protocol.Frame{Op: protocol.OpMsg, ID: 1}, &protocol.Frame{Op: protocol.OpWelcome}, &protocol.Frame{Op: protocol.OpErr}),
		frames(&protocol.Frame{Op: protocol.OpPing}, &protocol.Frame{Op: protocol.OpPong}, &protocol.Frame{Op: protocol.OpBye}),
		frames(&protocol.Frame{Op: protocol.OpPub, ID: 1, Flags: protocol.FlagDurable, Topic: []byte("live"), Payload: []byte("x")}),
		frames(&protocol.Frame{Op: protocol.OpPub, ID: 1, Topic: []byte("client.connected"), Payload: []byte("spoof")}),
		{0, 0, 0x10, 0x01},
		{0, 0, 0, 9, 0xEE, 0, 0, 0, 0, 0, 0, 0, 0},
	} {
		f.Add(true, in)
	}

	f.Fuzz(func(t *testing.T, handshake bool, in []byte) {
		c, err := net.Dial("tcp", h.Addr().String())
		if err != nil {
			t.Fatalf("hub not accepting: %v", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		rd := protocol.NewReader(c, 0)
		classroom := !handshake && len(in) > 0 && in[0] == '{'
		if handshake {
			c.Write(hello("client", "fuzzer"))
			if fr, err := rd.Next(); err != nil || fr.Op != protocol.OpWelcome {
				t.Fatalf("handshake: %v %v", fr, err)
			}
		}
		c.Write(in)
		c.(*net.TCPConn).CloseWrite()
		// Read until the hub closes: every answer must be a frame.
		if classroom {
			if _, err := io.Copy(io.Discard, c); err != nil {
				t.Fatalf("classroom session did not end after the client hung up: %v", err)
			}
		} else {
			for {
				_, err := rd.Next()
				if err == nil {
					continue
				}
				var ne net.Error
				switch {
				case errors.Is(err, io.EOF):
				case errors.As(err, &ne) && ne.Timeout():
					t.Fatal("session did not end after the client hung up")
				case errors.Is(err, io.ErrUnexpectedEOF), isReset(err):
					// The hub closed mid-answer (a fatal error while our unread
					// input was still arriving); nothing malformed was sent.
				default:
					t.Fatalf("hub sent something that is not a frame: %v", err)
				}
				break
			}
		}
		// The hub still serves.
		p, err := net.Dial("tcp", h.Addr().String())
		if err != nil {
			t.Fatalf("hub not accepting after the input: %v", err)
		}
		defer p.Close()
		p.SetDeadline(time.Now().Add(15 * time.Second))
		prd := protocol.NewReader(p, 0)
		p.Write(append(hello("client", "probe"), (&protocol.Frame{Op: protocol.OpPing}).Encode()...))
		for _, want := range []protocol.Op{protocol.OpWelcome, protocol.OpPong} {
			fr, err := prd.Next()
			for err == nil && fr.Op == protocol.OpPing {
				fr, err = prd.Next()
			}
			if err != nil || fr.Op != want {
				t.Fatalf("probe after the input: want %s, got %v %v", want, fr, err)
			}
		}
	})
}

func isReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "read"
}
