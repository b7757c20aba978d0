package hub_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

// wsDialer carries the client library over WebSocket (Options.Dialer).
func wsDialer(origin string) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		opts := &websocket.DialOptions{}
		if origin != "" {
			opts.HTTPHeader = http.Header{"Origin": []string{origin}}
		}
		c, _, err := websocket.Dial(ctx, addr, opts)
		if err != nil {
			return nil, err
		}
		// The connection outlives the dial's context.
		return websocket.NetConn(context.Background(), c, websocket.MessageBinary), nil
	}
}

func wsURL(h *hub.Hub) string { return "ws://" + h.HTTPAddr().String() + "/ws" }

func withHTTP(c *hub.Config) { c.HTTPAddr = "127.0.0.1:0" }

func TestWebSocketClientLibrary(t *testing.T) {
	h := startHub(t, withHTTP)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws, err := client.Dial(ctx, []string{wsURL(h)}, client.Options{Name: "over-ws", Dialer: wsDialer(""), NoReconnect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if w := ws.Welcome(); w.Name != "over-ws" || w.Session == "" || w.MaxFrame == 0 {
		t.Fatalf("welcome %+v", w)
	}
	got := make(chan *client.Msg, 4)
	if _, err := ws.Subscribe(ctx, "news.*", func(m *client.Msg) { got <- m }); err != nil {
		t.Fatal(err)
	}
	// A TCP client and the WebSocket client see each other's messages.
	tcp := dialRaw(t, h)
	tcp.hello("client", "over-tcp")
	tcp.send(&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("replies")})
	tcp.nextOp()
	tcp.send(&protocol.Frame{Op: protocol.OpPub, ID: 2, Topic: []byte("news.today"), Payload: []byte("from tcp")})
	if f := tcp.nextOp(); f.Op != protocol.OpOK {
		t.Fatalf("pub: %s", f)
	}
	select {
	case m := <-got:
		if m.Topic != "news.today" || string(m.Payload) != "from tcp" {
			t.Fatalf("ws got %s %q", m.Topic, m.Payload)
		}
	case <-ctx.Done():
		t.Fatal("no delivery over WebSocket")
	}
	if _, err := ws.Publish(ctx, "replies", []byte("from ws")); err != nil {
		t.Fatal(err)
	}
	if f := tcp.nextOp(); f.Op != protocol.OpMsg || string(f.Payload) != "from ws" {
		t.Fatalf("tcp got %s", f)
	}
	// Permissions are the same: generic clients may not publish hub events.
	_, err = ws.Publish(ctx, "client.connected", []byte("{}"))
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.CodeForbidden {
		t.Fatalf("publish to client.connected: %v, want forbidden", err)
	}
	// Request/reply works through it too.
	if _, err := ws.Request(ctx, "no.such.service", nil); !errors.As(err, &pe) || pe.Code != protocol.CodeNotFound {
		t.Fatalf("request: %v, want not_found", err)
	}
}

// wsRaw speaks frames by hand over a WebSocket.
type wsRaw struct {
	t  *testing.T
	c  net.Conn
	rd *protocol.Reader
}

func dialWSRaw(t *testing.T, h *hub.Hub, origin string) *wsRaw {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wsDialer(origin)(ctx, wsURL(h))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &wsRaw{t: t, c: c, rd: protocol.NewReader(c, 0)}
}

func (w *wsRaw) send(f *protocol.Frame) {
	w.t.Helper()
	if _, err := w.c.Write(f.Encode()); err != nil {
		w.t.Fatal(err)
	}
}

func (w *wsRaw) next() *protocol.Frame {
	w.t.Helper()
	w.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := w.rd.Next()
	if err != nil {
		w.t.Fatalf("read: %v", err)
	}
	return f
}

func TestWebSocketHandshakeAndLimits(t *testing.T) {
	h := startHub(t, func(c *hub.Config) { withHTTP(c); c.MaxFrame = 1024; c.HandshakeTimeout = 300 * time.Millisecond })
	// Anything before HELLO is refused, as on TCP.
	w := dialWSRaw(t, h, "")
	w.send(&protocol.Frame{Op: protocol.OpPub, Topic: []byte("x"), Payload: []byte("y")})
	if f := w.next(); f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeHandshake || f.Flags&protocol.FlagFatal == 0 {
		t.Fatalf("want fatal handshake error, got %s", f)
	}
	// A silent WebSocket is never taken for a classroom client: it times out.
	w = dialWSRaw(t, h, "")
	if f := w.next(); string(f.Topic) != protocol.CodeHandshakeTime {
		t.Fatalf("want handshake_timeout, got %s", f)
	}
	// A classroom object over WebSocket is not the classroom dialect.
	w = dialWSRaw(t, h, "")
	w.c.Write([]byte(`{"event":"pickup","payload":{}}`))
	if f := w.next(); f.Op != protocol.OpErr || f.Flags&protocol.FlagFatal == 0 {
		t.Fatalf("want a fatal error, got %s", f)
	}
	// The frame size limit: a frame over it is refused before it is read.
	w = dialWSRaw(t, h, "")
	b, _ := json.Marshal(protocol.Hello{Version: protocol.Version, Name: "big"})
	w.send(&protocol.Frame{Op: protocol.OpHello, Payload: b})
	if f := w.next(); f.Op != protocol.OpWelcome {
		t.Fatalf("want WELCOME, got %s", f)
	}
	w.send(&protocol.Frame{Op: protocol.OpPub, ID: 1, Topic: []byte("big"), Payload: make([]byte, 2000)})
	if f := w.next(); f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeFrameTooLarge {
		t.Fatalf("want frame_too_large, got %s", f)
	}
	// Many frames in one WebSocket message are all handled.
	w = dialWSRaw(t, h, "")
	var msg []byte
	msg = (&protocol.Frame{Op: protocol.OpHello, Payload: mustJSON(protocol.Hello{Version: protocol.Version, Name: "batch"})}).Append(msg)
	msg = (&protocol.Frame{Op: protocol.OpSub, ID: 1, Topic: []byte("b.*")}).Append(msg)
	for i := 0; i < 3; i++ {
		msg = (&protocol.Frame{Op: protocol.OpPub, Topic: []byte("b.x"), Payload: []byte{'0' + byte(i)}}).Append(msg)
	}
	w.c.Write(msg)
	want := []protocol.Op{protocol.OpWelcome, protocol.OpOK, protocol.OpMsg, protocol.OpMsg, protocol.OpMsg}
	for i, op := range want {
		f := w.next()
		if f.Op != op {
			t.Fatalf("frame %d: %s, want %s", i, f, op)
		}
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func TestWebSocketOrigins(t *testing.T) {
	try := func(h *hub.Hub, origin string) int {
		req, _ := http.NewRequest("GET", "http://"+h.HTTPAddr().String()+"/ws", nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// Default: the hub's own pages and non-browser clients only.
	h := startHub(t, withHTTP)
	self := "http://" + h.HTTPAddr().String()
	for origin, want := range map[string]int{
		"":                        http.StatusSwitchingProtocols,
		self:                      http.StatusSwitchingProtocols,
		"http://evil.example":     http.StatusForbidden,
		"https://app.example.com": http.StatusForbidden,
	} {
		if got := try(h, origin); got != want {
			t.Errorf("default origins, Origin %q: status %d, want %d", origin, got, want)
		}
	}
	// Configured patterns.
	h = startHub(t, func(c *hub.Config) { withHTTP(c); c.AllowedOrigins = []string{"*.example.com"} })
	for origin, want := range map[string]int{
		"https://app.example.com": http.StatusSwitchingProtocols,
		"http://evil.example":     http.StatusForbidden,
	} {
		if got := try(h, origin); got != want {
			t.Errorf("*.example.com, Origin %q: status %d, want %d", origin, got, want)
		}
	}
	h = startHub(t, func(c *hub.Config) { withHTTP(c); c.AllowedOrigins = []string{"*"} })
	if got := try(h, "http://anything.test"); got != http.StatusSwitchingProtocols {
		t.Errorf(`"*": status %d`, got)
	}
	// The client library gets a clear refusal.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h = startHub(t, withHTTP)
	_, err := client.Dial(ctx, []string{wsURL(h)}, client.Options{Dialer: wsDialer("http://evil.example"), NoReconnect: true})
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("dial from a foreign origin: %v, want a 403", err)
	}
}

func TestCapsJSServed(t *testing.T) {
	h := startHub(t, withHTTP)
	resp, err := http.Get("http://" + h.HTTPAddr().String() + "/caps.js")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/javascript") ||
		!strings.Contains(string(body), "export class Client") {
		t.Fatalf("GET /caps.js: %d %s %.80q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
}
