package hub

import (
	"encoding/json"
	"net/http"

	"github.com/caps-hub/caps/web"
)

// httpHandler serves health, readiness, metrics, the WebSocket endpoint and
// whatever apps added (the dashboard).
func (h *Hub) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		// Connected to NATS is not enough: on the minority side of a network
		// partition the connection is up but JetStream cannot store anything.
		jsOK := h.eng != nil && h.eng.JetStreamAvailable()
		ready := h.EngineReady() && jsOK && !h.stopping.Load()
		w.Header().Set("Content-Type", "application/json")
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		json.NewEncoder(w).Encode(map[string]any{
			"ready":     ready,
			"engine":    h.EngineReady(),
			"jetstream": jsOK,
			"stopping":  h.stopping.Load(),
			"sessions":  h.nconns.Load(),
		})
	})
	if h.cfg.MetricsAccess != MetricsOff {
		mux.Handle("GET /metrics", h.metricsHandler())
	}
	mux.HandleFunc("/ws", h.serveWebSocket)
	mux.Handle("GET /caps.js", web.CapsJSHandler()) // the browser client for /ws
	for _, fn := range h.httpExtra {
		fn(mux)
	}
	return mux
}
