package web

import (
	"bytes"
	_ "embed"
	"net/http"
	"time"
)

// capsJS is the browser client: the CAPS protocol over WebSocket, an ES
// module with no dependencies (see the comment at its top).
//
//go:embed caps.js
var capsJS []byte

// loaded stands in for the embedded files' modification time (they change
// only with the binary), for conditional requests.
var loaded = time.Now()

// CapsJS returns the source of caps.js.
func CapsJS() []byte { return bytes.Clone(capsJS) }

// CapsJSHandler serves caps.js as a JavaScript module; the hub mounts it at
// /caps.js, next to /ws.
func CapsJSHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		http.ServeContent(w, r, "caps.js", loaded, bytes.NewReader(capsJS))
	})
}
