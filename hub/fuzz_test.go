package hub_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/chat"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

// Fuzz modes: what the input is.
const (
	fuzzRaw     byte = iota // the very first bytes of a connection
	fuzzFrames              // bytes after a proper handshake
	fuzzProgram             // after a handshake, a program of operations (fuzzOps)
	fuzzModes
)

// FuzzHubSession throws input at a live hub running the parcel and chat
// apps, with stored messages present (orders, chat history), as one of:
// the first bytes of a connection; bytes after a proper handshake; or a
// program of operations (fuzzOps) that makes the fuzzer reach past the
// decoder — SUBs with options of every size (history, max_inflight,
// ack_wait, durable names and queue groups), PUBs of app payloads and
// message ids on stored topics, ACK and NAK of what was delivered, REQs
// of the apps' services — under any role. Whatever arrives, the hub must
// not crash or contain a panic (caps_panics_total stays 0: a contained
// panic is still a bug), must end the session once the client has hung up
// (no stall), must answer only with well-formed frames, and must go on
// serving new clients.
//
//	go test ./hub -run XXX -fuzz FuzzHubSession -fuzztime 3m
func FuzzHubSession(f *testing.F) {
	off := false
	h := benchHub(f, hub.Config{MaxFrame: 4096, MaxSubs: 8, HandshakeTimeout: 2 * time.Second, SyncAlways: &off,
		AckWait: time.Second, Apps: []hub.App{parcel.NewDispatcher(parcel.Options{}), chat.NewApp(chat.AppConfig{})}})
	seedStored(f, h)
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
	for _, in := range [][]byte{
		hello("client", "fuzz"),
		hello("admin", "root"),
		append(hello("client", "twice"), hello("client", "twice")...),
		frames(&protocol.Frame{Op: protocol.OpPub, Topic: []byte("a"), Payload: []byte("x")}),
		{0, 0, 0, 0},
		{0xff, 0xff, 0xff, 0xff},
		{0, 0, 0, 7, 1, 0, 0, 0, 0, 0, 0},
		[]byte(`{"event":"pickup","payload":{"store":"s","orderID":"x"}}`),
		[]byte(`{"event":"chat","payload":"hi"}{"event":`),
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		[]byte("\x16\x03\x01\x00\x05hello"),
		[]byte("hello there\r\n@bob hi\r\n"),
		(&protocol.Frame{Op: protocol.OpHello, Payload: []byte(`{"version":1,"role":"vendor","name":"a b"}`)}).Encode(),
	} {
		f.Add(fuzzRaw, in)
	}
	for _, in := range [][]byte{
		frames(
			&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("f.>")},
			&protocol.Frame{Op: protocol.OpPub, ID: 2, Topic: []byte("f.x"), Payload: []byte("self")},
			&protocol.Frame{Op: protocol.OpUnsub, ID: 1},
		),
		frames(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("chat.room.*"), Group: []byte("g"), Payload: []byte(`{"history":3}`)}),
		frames(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("parcel.>"), Key: []byte("durable")}),
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
		f.Add(fuzzFrames, in)
	}
	// Programs: a role, then operations (see runProgram).
	for _, in := range [][]byte{
		// A driver joins the queue with room for 2 (history 0, max_inflight 1000,
		// ack_wait 100), acks one delivery, naks the next.
		prog(1, sub(0, 0, true, -1, 0, 3, 5), syncOp(), []byte{opAckLast, 1}, syncOp(), []byte{opNakLast}, syncOp()),
		// A vendor posts a pickup and tracks it; opens its mailbox.
		prog(2, pub(0, 0, 2), syncOp(), req(0, 0), req(1, 0), sub(1, 1, true, -1, 0, 0, 0), syncOp()),
		// A chat user joins with history 1000, posts, asks for history with a huge limit.
		prog(3, sub(3, -1, false, -1, 3, 0, 0), pub(3, 2, 1), req(4, 3), req(2, 2), syncOp()),
		// A logger on a durable of its own (deliver all), acks, unsubscribes, tries the drivers'.
		prog(4, sub(2, 2, true, -1, 0, 1, 7), syncOp(), []byte{opAckLast, 0}, []byte{opUnsub}, sub(0, 0, false, 0, 0, 0, 0), syncOp()),
		// Numbers past every bound, in a queue group; raw bytes mid-stream.
		prog(0, sub(7, -1, false, 0, 9, 10, 11), sub(4, -1, false, -1, 12, 13, 14), []byte{opRaw, 4, 0, 0, 0, 2}, pub(5, 4, 5), syncOp()),
		// An admin: made-up acks, bad keys, every service.
		prog(5, []byte{opAck, 7, 63, 9}, pub(6, 7, 6), req(3, 2), req(5, 6), syncOp(), []byte{opAckLast, 1}),
	} {
		f.Add(fuzzProgram, in)
	}

	var runs atomic.Int64
	f.Fuzz(func(t *testing.T, mode byte, in []byte) {
		mode %= fuzzModes
		c, err := net.Dial("tcp", h.Addr().String())
		if err != nil {
			t.Fatalf("hub not accepting: %v", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		rd := protocol.NewReader(c, 0)
		classroomOrText := mode == fuzzRaw && len(in) > 0 && !isFrameStart(in[0])
		switch mode {
		case fuzzFrames:
			c.Write(hello("client", "fuzzer"))
			if fr, err := rd.Next(); err != nil || fr.Op != protocol.OpWelcome {
				t.Fatalf("handshake: %v %v", fr, err)
			}
		case fuzzProgram:
			var role byte
			if len(in) > 0 {
				role, in = in[0], in[1:]
			}
			r := fuzzRoles[int(role)%len(fuzzRoles)]
			name := r.name
			if name == "" {
				name = fmt.Sprintf("fz%d", runs.Add(1)) // exclusive names: one per run
			}
			c.Write(hello(r.role, name))
			if fr, err := rd.Next(); err != nil || fr.Op != protocol.OpWelcome {
				t.Fatalf("handshake as %s %s: %v %v", r.role, name, fr, err)
			}
			oks, msgs, err := runProgram(c, rd, in)
			t.Logf("%s: %d OKs, %d deliveries", r.role, oks, msgs)
			if err != nil {
				t.Fatal(err)
			}
			checkPanics(t, h)
			probe(t, h, hello)
			return
		}
		c.Write(in)
		c.(*net.TCPConn).CloseWrite()
		if classroomOrText {
			if _, err := io.Copy(io.Discard, c); err != nil {
				t.Fatalf("classroom or text session did not end after the client hung up: %v", err)
			}
		} else if err := readToEnd(rd); err != nil {
			t.Fatal(err)
		}
		checkPanics(t, h)
		probe(t, h, hello)
	})
}

// isFrameStart: a CAPS frame under 16 MiB starts with 0x00; anything else
// is a classroom object or text.
func isFrameStart(b byte) bool { return b == 0 }

// fuzzRoles are the identities a program runs as ("" name: a new one each
// run, for roles whose names are exclusive).
var fuzzRoles = []struct{ role, name string }{
	{protocol.RoleClient, "fz"}, {protocol.RoleDriver, ""}, {protocol.RoleVendor, "acme"},
	{protocol.RoleChat, ""}, {protocol.RoleLogger, "fz"}, {protocol.RoleAdmin, "fz"},
}

// Operations of a program: each byte of the input picks one (modulo
// opCount), and the bytes after it its arguments, each an index into the
// lists below (modulo their length).
const (
	opSub     = iota // pattern, durable?, durable name, group?, history, max_inflight, ack_wait
	opPub            // topic, payload, key
	opAckLast        // ACK the last delivery (with confirm when the next byte is odd)
	opNakLast        // NAK the last delivery
	opAck            // ACK a sid and sequence picked from what arrived, or made up
	opUnsub          // UNSUB the last sid
	opReq            // service, payload
	opSync           // PING and wait for the PONG: let answers and deliveries arrive
	opRaw            // n raw bytes
	opCount
)

var (
	fuzzPatterns = []string{parcel.PickupPattern, parcel.MailboxPattern("acme"), "parcel.>", "chat.room.lobby", "chat.room.*",
		"chat.dm.fz", "client.>", "f.>", "f.x", ">", "a..b", parcel.StorePattern("acme")}
	fuzzDurables = []string{"drivers", "vendor-acme", "mine", "x", "bad name", strings.Repeat("d", 65)}
	fuzzGroups   = []string{"g", "drivers", "bad group"}
	// JSON numbers at and past every bound, and things that are not numbers.
	fuzzNumbers = []string{"0", "1", "-1", "1000", "1001", "100", "99", "86400000", "86400001",
		"4611686018427387904", "9223372036854775807", "1e309", "1.5", `"3"`, "null", "[]"}
	fuzzTopics = []string{"parcel.acme.6f1c3a0e-8a8b-4a71-9c52-6d4c0b0f2a11.pickup", "parcel.acme.6f1c3a0e-8a8b-4a71-9c52-6d4c0b0f2a00.in-transit.fz",
		"parcel.acme.6f1c3a0e-8a8b-4a71-9c52-6d4c0b0f2a00.delivered.fz", "chat.room.lobby",
		"chat.dm.bob", "f.x", "client.connected", "classroom.hello", "chat.presence.lobby"}
	fuzzPayloads = []string{
		`{"store":"acme","orderID":"6f1c3a0e-8a8b-4a71-9c52-6d4c0b0f2a11","customer":"Ada","address":"1 Main St"}`,
		`{"store":"acme","orderID":"6f1c3a0e-8a8b-4a71-9c52-6d4c0b0f2a11"}`,
		`{"id":"m1","from":"fz","room":"lobby","text":"hi","kind":"msg"}`,
		`{"id":"m2","from":"fz","to":"bob","text":"psst","kind":"msg"}`,
		`{}`, ``, `x`, `{"store":"acme","orderID":"` + strings.Repeat("9", 3000) + `"}`,
	}
	fuzzKeys     = []string{"", "k1", "6f1c3a0e-8a8b-4a71-9c52-6d4c0b0f2a11.delivered", "~client~fz~x", " bad", "a\r\nb", strings.Repeat("k", 300)}
	fuzzServices = []string{parcel.TrackService, parcel.HeldService, chat.ServiceWho, chat.ServiceRooms, chat.ServiceHistory, "nope", parcel.SecretService}
	fuzzBodies   = []string{"6f1c3a0e-8a8b-4a71-9c52-6d4c0b0f2a11", `{"orderID":"6f1c3a0e-8a8b-4a71-9c52-6d4c0b0f2a11"}`,
		`{"room":"lobby","limit":5}`, `{"room":"lobby","limit":99999999999}`, `{"room":"../x"}`, ``, `{`}
)

// Program builders for the seeds: each returns the bytes of one operation.
func prog(role byte, ops ...[]byte) []byte {
	out := []byte{role}
	for _, op := range ops {
		out = append(out, op...)
	}
	return out
}

// sub: indexes into fuzzPatterns, fuzzDurables (-1: live), fuzzGroups
// (-1: none) and fuzzNumbers (history, max_inflight, ack_wait_ms).
func sub(pattern, durable int, deliverAll bool, group, history, inflight, ackWait int) []byte {
	out := []byte{opSub, byte(pattern)}
	if durable >= 0 {
		all := byte(0)
		if deliverAll {
			all = 1
		}
		out = append(out, 1, byte(durable), all)
	} else {
		out = append(out, 0, 0)
	}
	if group >= 0 {
		out = append(out, 2, byte(group))
	} else {
		out = append(out, 0)
	}
	return append(out, byte(history), byte(inflight), byte(ackWait))
}

func pub(topic, payload, key int) []byte { return []byte{opPub, byte(topic), byte(payload), byte(key)} }
func req(service, body int) []byte       { return []byte{opReq, byte(service), byte(body)} }
func syncOp() []byte                     { return []byte{opSync} }

// runProgram runs the operations in prog on c, while a reader records the
// sids and deliveries that come back.
func runProgram(c net.Conn, rd *protocol.Reader, prog []byte) (oks, msgs int, end error) {
	var mu sync.Mutex
	var sids []uint64
	var dels [][2]uint64 // sid, seq
	pong := make(chan struct{}, 1)
	ended := make(chan struct{}) // the hub closed the connection
	go func() {
		defer close(ended)
		for {
			f, err := rd.Next()
			if err != nil {
				end = readEnd(err)
				return
			}
			mu.Lock()
			switch f.Op {
			case protocol.OpOK:
				oks++
				sids = append(sids[max(len(sids)-16, 0):], f.Seq)
			case protocol.OpMsg:
				msgs++
				dels = append(dels[max(len(dels)-64, 0):], [2]uint64{f.ID, f.Seq})
			case protocol.OpPong:
				select {
				case pong <- struct{}{}:
				default:
				}
			case protocol.OpPing:
				c.Write(pongFrame)
			}
			mu.Unlock()
		}
	}()
	arg := func() int {
		if len(prog) == 0 {
			return 0
		}
		b := prog[0]
		prog = prog[1:]
		return int(b)
	}
	pick := func(list []string) string { return list[arg()%len(list)] }
	last := func() (sid, seq uint64) {
		mu.Lock()
		defer mu.Unlock()
		if len(dels) > 0 {
			return dels[len(dels)-1][0], dels[len(dels)-1][1]
		}
		return 1<<62 + 1, 1
	}
	var id uint64
	send := func(f *protocol.Frame) bool {
		id++
		if f.ID == 0 && (f.Op == protocol.OpPub || f.Op == protocol.OpSub || f.Op == protocol.OpReq) {
			f.ID = id
		}
		_, err := c.Write(f.Encode())
		return err == nil
	}
	for ops := 0; len(prog) > 0 && ops < 64; ops++ {
		select {
		case <-ended:
			return oks, msgs, end // a fatal error closed it: the rest would go nowhere
		default:
		}
		ok := true
		switch arg() % opCount {
		case opSub:
			f := &protocol.Frame{Op: protocol.OpSub, Topic: []byte(pick(fuzzPatterns))}
			if arg()%2 == 1 {
				f.Key = []byte(pick(fuzzDurables))
				f.Flags = protocol.FlagManualAck | protocol.Flags(arg()%2)*protocol.FlagDeliverAll
			} else {
				arg() // keeps the layout of the arguments the same
			}
			if arg()%3 == 2 {
				f.Group = []byte(pick(fuzzGroups))
			}
			f.Payload = fmt.Appendf(nil, `{"history":%s,"max_inflight":%s,"ack_wait_ms":%s}`, pick(fuzzNumbers), pick(fuzzNumbers), pick(fuzzNumbers))
			ok = send(f)
		case opPub:
			ok = send(&protocol.Frame{Op: protocol.OpPub, Topic: []byte(pick(fuzzTopics)), Payload: []byte(pick(fuzzPayloads)), Key: []byte(pick(fuzzKeys))})
		case opAckLast:
			sid, seq := last()
			ok = send(&protocol.Frame{Op: protocol.OpAck, ID: sid, Seq: seq, Flags: protocol.Flags(arg()%2) * protocol.FlagConfirm})
		case opNakLast:
			sid, seq := last()
			ok = send(&protocol.Frame{Op: protocol.OpNak, ID: sid, Seq: seq})
		case opAck:
			mu.Lock()
			sid, seq := uint64(arg())<<(arg()%64), uint64(arg())
			if len(sids) > 0 {
				sid = sids[arg()%len(sids)]
			}
			mu.Unlock()
			ok = send(&protocol.Frame{Op: protocol.OpAck, ID: sid, Seq: seq})
		case opUnsub:
			mu.Lock()
			var sid uint64
			if len(sids) > 0 {
				sid = sids[len(sids)-1]
			}
			mu.Unlock()
			ok = send(&protocol.Frame{Op: protocol.OpUnsub, ID: sid})
		case opReq:
			ok = send(&protocol.Frame{Op: protocol.OpReq, Topic: []byte(pick(fuzzServices)), Payload: []byte(pick(fuzzBodies))})
		case opSync:
			if ok = send(&protocol.Frame{Op: protocol.OpPing}); ok {
				select {
				case <-pong:
				case <-ended:
				case <-time.After(2 * time.Second):
				}
			}
		case opRaw:
			n := min(arg(), len(prog))
			_, err := c.Write(prog[:n])
			prog = prog[n:]
			ok = err == nil
		}
		if !ok {
			break
		}
	}
	c.(*net.TCPConn).CloseWrite()
	<-ended // the hub ends the session once we hung up (the deadline bounds it)
	return oks, msgs, end
}

var pongFrame = (&protocol.Frame{Op: protocol.OpPong}).Encode()

// readToEnd reads until the hub closes; every answer must be a frame.
func readToEnd(rd *protocol.Reader) error {
	for {
		if _, err := rd.Next(); err != nil {
			return readEnd(err)
		}
	}
}

// readEnd judges how the hub's side of a connection ended: nil for a
// close, an error for a stall or bytes that are not a frame.
func readEnd(err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF):
	case errors.As(err, &ne) && ne.Timeout():
		return errors.New("session did not end after the client hung up")
	case errors.Is(err, io.ErrUnexpectedEOF), isReset(err):
		// The hub closed mid-answer (a fatal error while our unread
		// input was still arriving); nothing malformed was sent.
	default:
		return fmt.Errorf("hub sent something that is not a frame: %v", err)
	}
	return nil
}

// probe checks that the hub still serves a new client.
func probe(t *testing.T, h *hub.Hub, hello func(role, name string) []byte) {
	t.Helper()
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
		for err == nil && (fr.Op == protocol.OpPing) {
			fr, err = prd.Next()
		}
		if err != nil || fr.Op != want {
			t.Fatalf("probe after the input: want %s, got %v %v", want, fr, err)
		}
	}
}

// checkPanics fails the run if the hub contained a panic: that is a bug
// the fuzzer found, however well it was contained.
func checkPanics(t *testing.T, h *hub.Hub) {
	t.Helper()
	mfs, err := h.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "caps_panics_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if v := m.GetCounter().GetValue(); v > 0 {
				t.Fatalf("the hub contained %v panics in %s (see its log)", v, labels(m))
			}
		}
	}
}

func labels(m *dto.Metric) string {
	var b strings.Builder
	for _, l := range m.GetLabel() {
		fmt.Fprintf(&b, "%s=%s ", l.GetName(), l.GetValue())
	}
	return b.String()
}

// seedStored puts stored messages where a fuzzed client may reach them: a
// store's orders (the drivers' queue has work) and a chat room's history.
func seedStored(tb testing.TB, h *hub.Hub) {
	tb.Helper()
	vendor := dialBenchAs(tb, h, protocol.RoleVendor, "acme")
	chatter := dialBenchAs(tb, h, protocol.RoleChat, "seeder")
	chatter.c.Write((&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("chat.room.lobby")}).Encode())
	if f, err := chatter.next(); err != nil || f.Op != protocol.OpOK {
		tb.Fatalf("seed: join: %v %v", f, err)
	}
	for i := range 5 {
		id := fmt.Sprintf("6f1c3a0e-8a8b-4a71-9c52-6d4c0b0f2a%02d", i)
		vendor.c.Write((&protocol.Frame{Op: protocol.OpPub, ID: uint64(i + 1), Topic: []byte(parcel.Topic("acme", id, parcel.EventPickup, "")), Key: []byte(id + ".pickup"),
			Payload: fmt.Appendf(nil, `{"store":"acme","orderID":%q,"customer":"Ada","address":"1 Main St"}`, id)}).Encode())
		if f, err := vendor.next(); err != nil || f.Op != protocol.OpOK {
			tb.Fatalf("seed: pickup: %v %v", f, err)
		}
		chatter.c.Write((&protocol.Frame{Op: protocol.OpPub, ID: uint64(i + 2), Topic: []byte("chat.room.lobby"), Key: []byte(fmt.Sprint("s", i)),
			Payload: fmt.Appendf(nil, `{"id":"s%d","from":"seeder","room":"lobby","text":"hello %d","kind":"msg"}`, i, i)}).Encode())
		for {
			f, err := chatter.next()
			if err != nil {
				tb.Fatalf("seed: chat: %v", err)
			}
			if f.Op == protocol.OpOK && f.ID == uint64(i+2) {
				break
			}
		}
	}
	vendor.c.Close()
	chatter.c.Close()
}

func isReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "read"
}

// dialBenchAs connects as role and name.
func dialBenchAs(tb testing.TB, h *hub.Hub, role, name string) *benchConn {
	tb.Helper()
	c, err := net.Dial("tcp", h.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	bc := &benchConn{c: c, rd: protocol.NewReader(c, 0)}
	hello, _ := json.Marshal(protocol.Hello{Version: protocol.Version, Role: role, Name: name})
	c.Write((&protocol.Frame{Op: protocol.OpHello, Payload: hello}).Encode())
	if f, err := bc.next(); err != nil || f.Op != protocol.OpWelcome {
		tb.Fatalf("handshake as %s %s: %v %v", role, name, f, err)
	}
	return bc
}
