package hub

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"

	"github.com/caps-hub/caps/protocol"
)

// tlsHandshakeFailed handles a connection to the TLS port whose TLS
// handshake failed. A client that spoke plain text (a CAPS frame, a
// classroom JSON object) gets a plain-text answer saying why, in its own
// dialect, instead of a silent close; the failure is logged and counted.
func (h *Hub) tlsHandshakeFailed(c net.Conn, err error) {
	defer c.Close()
	remote := c.RemoteAddr().String()
	var rhe tls.RecordHeaderError
	if !errors.As(err, &rhe) || rhe.Conn == nil {
		h.metrics.tlsErrors.WithLabelValues("handshake").Inc()
		h.log.Info("TLS handshake failed", "remote", remote, "err", err)
		return
	}
	// The first bytes were not a TLS record: nothing was written yet, so
	// the raw connection can still carry a readable refusal.
	h.metrics.tlsErrors.WithLabelValues("plaintext").Inc()
	h.metrics.errors.WithLabelValues(protocol.CodeHandshake).Inc()
	h.log.Info("plain-text connection to the TLS port refused", "remote", remote)
	const text = "this hub requires TLS: connect with TLS (--tls-ca FILE or a tls:// address)"
	var answer []byte
	switch first := rhe.RecordHeader[0]; {
	case first == '{':
		answer = []byte(`{"event":"error","payload":{"code":"` + protocol.CodeHandshake + `","message":"` + text + `"}}`)
	case h.textAllowed() && int(first)<<24 > h.cfg.MaxFrame:
		// A person with nc or telnet.
		answer = encodeLines([]string{errorLine(protocol.CodeHandshake, "this hub requires TLS: connect with TLS (openssl s_client -connect HOST:PORT, or ncat --ssl)")})
	default:
		answer = protocol.ErrorFrame(0, protocol.CodeHandshake, text, true).Encode()
	}
	rhe.Conn.SetWriteDeadline(time.Now().Add(refuseTimeout))
	rhe.Conn.Write(answer)
	if tc, ok := rhe.Conn.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	// Read what the client already sent (the rest of its first frame) until
	// it hangs up: closing with unread bytes would reset the connection and
	// could destroy the answer before the client reads it.
	rhe.Conn.SetReadDeadline(time.Now().Add(refuseTimeout))
	io.Copy(io.Discard, io.LimitReader(rhe.Conn, 64<<10))
}
