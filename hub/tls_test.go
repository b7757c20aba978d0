package hub_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/tlsutil"
	"github.com/caps-hub/caps/protocol"
)

// startTLSHub runs a hub serving TCP and HTTP over TLS with a fresh
// development CA; it returns the client configuration trusting that CA.
func startTLSHub(t *testing.T) (*hub.Hub, *tls.Config) {
	t.Helper()
	files, err := tlsutil.GenerateDev(t.TempDir(), tlsutil.DevOptions{Hosts: []string{"localhost", "127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := tlsutil.ServerConfig(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := tlsutil.ClientConfig(files.CACert)
	if err != nil {
		t.Fatal(err)
	}
	h := startHub(t, func(c *hub.Config) { c.TLS = srv; c.HTTPAddr = "127.0.0.1:0" })
	return h, cli
}

func TestTLSClientLibrary(t *testing.T) {
	h, cli := startTLSHub(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dial := func(name string) *client.Conn {
		c, err := client.Dial(ctx, []string{h.Addr().String()}, client.Options{Name: name, TLS: cli, NoReconnect: true})
		if err != nil {
			t.Fatalf("dial over TLS: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	sub, pub := dial("tls-sub"), dial("tls-pub")
	got := make(chan *client.Msg, 1)
	if _, err := sub.Subscribe(ctx, "secure.>", func(m *client.Msg) { got <- m }); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(ctx, "secure.news", []byte("over TLS")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if string(m.Payload) != "over TLS" {
			t.Fatalf("got %q", m.Payload)
		}
	case <-ctx.Done():
		t.Fatal("no delivery over TLS")
	}
}

func TestTLSHTTPEndpoints(t *testing.T) {
	h, cli := startTLSHub(t)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cli}, Timeout: 10 * time.Second}
	resp, err := hc.Get("https://" + h.HTTPAddr().String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz over TLS: %s", resp.Status)
	}
	// Plain HTTP to the TLS port is refused, and says why.
	resp, err = http.Get("http://" + h.HTTPAddr().String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "HTTPS") {
		t.Fatalf("plain HTTP to the TLS port: %s %q", resp.Status, body)
	}
}

func TestTLSPlainClientsFailCleanly(t *testing.T) {
	h, cli := startTLSHub(t)

	// A raw plain-text HELLO gets a readable refusal, then the close.
	r := dialRaw(t, h)
	r.hello2()
	f := r.next()
	if f.Op != protocol.OpErr || string(f.Topic) != protocol.CodeHandshake || !strings.Contains(string(f.Payload), "TLS") {
		t.Fatalf("plain HELLO to the TLS port: want handshake error about TLS, got %s", f)
	}
	r.expectClosed()

	// A classroom JSON client gets the refusal as a JSON object.
	j := dialRaw(t, h)
	j.c.Write([]byte(`{"event":"pickup","payload":{"orderID":"x"}}`))
	j.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(j.c)
	if !strings.HasPrefix(string(b), `{"event":"error"`) || !strings.Contains(string(b), "TLS") {
		t.Fatalf("classroom client on the TLS port got %q", b)
	}

	// The client library without TLS reports the refusal and gives up.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := client.Dial(ctx, []string{h.Addr().String()}, client.Options{Name: "plain", NoReconnect: true})
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.CodeHandshake || !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("plain client library dial: want a handshake error about TLS, got %v", err)
	}

	// A TLS client that does not trust the hub's certificate fails its side.
	c, err := tls.Dial("tcp", h.Addr().String(), &tls.Config{ServerName: "localhost"})
	if err == nil {
		c.Close()
		t.Fatal("TLS without the CA accepted the hub's certificate")
	}

	waitMetric(t, h, 3, "caps_tls_handshake_errors_total", "reason", "plaintext")
	waitMetric(t, h, 1, "caps_tls_handshake_errors_total", "reason", "handshake")

	// The hub is still up for proper clients.
	tc, err := tls.Dial("tcp", h.Addr().String(), cli)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	ok := &rawConn{t: t, c: tc, rd: protocol.NewReader(tc, 0)}
	if w := ok.hello("client", "after"); w.Session == "" {
		t.Fatal("no session after the failures")
	}
}

// hello2 sends a HELLO without waiting for the answer.
func (r *rawConn) hello2() {
	r.t.Helper()
	r.send(&protocol.Frame{Op: protocol.OpHello, Payload: []byte(`{"version":1,"role":"client","name":"plain"}`)})
}
