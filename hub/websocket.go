package hub

import (
	"net/http"

	"github.com/coder/websocket"
)

// serveWebSocket accepts the CAPS protocol as binary WebSocket messages.
func (h *Hub) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	opts := &websocket.AcceptOptions{OriginPatterns: h.cfg.AllowedOrigins}
	for _, o := range h.cfg.AllowedOrigins {
		if o == "*" {
			opts.InsecureSkipVerify = true
		}
	}
	c, err := websocket.Accept(w, r, opts)
	if err != nil {
		return
	}
	c.SetReadLimit(int64(h.cfg.MaxFrame) + 64)
	nc := websocket.NetConn(r.Context(), c, websocket.MessageBinary)
	h.conns.Add(1)
	defer h.conns.Done()
	h.serveConn(nc, "websocket")
}
