package dashboard

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"
)

// pages serves the dashboard's files from memory: index.html at "/", the
// rest under /dashboard/. They are few and small, so each is read once at
// start, with an ETag from its content (embedded files have no
// modification time to go by).
type pages struct {
	files map[string]page
	// config is config.json: what the page must know before it connects.
	config []byte
}

// pageConfig is what the page learns from config.json before it connects:
// whether to ask for a token first (rather than try without one, which the
// hub would count as a failed handshake).
type pageConfig struct {
	Auth bool `json:"auth"`
}

type page struct {
	body  []byte
	ctype string
	etag  string
}

func newPages(fsys fs.FS, cfg pageConfig) (*pages, error) {
	conf, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	p := &pages{files: map[string]page{}, config: conf}
	err = fs.WalkDir(fsys, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		ext := path.Ext(name)
		if ext == ".go" {
			return nil
		}
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return err
		}
		ctype := mime.TypeByExtension(ext)
		switch ext { // not every system's MIME table knows these
		case ".js", ".mjs":
			ctype = "text/javascript; charset=utf-8"
		case ".css":
			ctype = "text/css; charset=utf-8"
		case ".html":
			ctype = "text/html; charset=utf-8"
		case ".svg":
			ctype = "image/svg+xml"
		}
		if ctype == "" {
			ctype = http.DetectContentType(b)
		}
		sum := sha256.Sum256(b)
		p.files[name] = page{body: b, ctype: ctype, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the page's files: %w", err)
	}
	if _, ok := p.files["index.html"]; !ok {
		return nil, fmt.Errorf("the page's files have no index.html")
	}
	return p, nil
}

// contentSecurity keeps the page to its own origin: no inline script, no
// third-party anything; it connects only back to the hub (its /ws).
const contentSecurity = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self' ws: wss:; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func (p *pages) register(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { p.serve(w, r, "index.html") })
	mux.HandleFunc("GET /dashboard/config.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(p.config)
	})
	mux.HandleFunc("GET /dashboard/{file...}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("file")
		if name == "index.html" || name == "" {
			http.Redirect(w, r, "/", http.StatusMovedPermanently)
			return
		}
		p.serve(w, r, name)
	})
}

func (p *pages) serve(w http.ResponseWriter, r *http.Request, name string) {
	f, ok := p.files[name]
	if !ok || strings.Contains(name, "..") {
		http.NotFound(w, r)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", f.ctype)
	hd.Set("ETag", f.etag)
	// Revalidate every time: a new hub binary brings new files, and the
	// ETag makes the check cheap.
	hd.Set("Cache-Control", "no-cache")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	if f.ctype == "text/html; charset=utf-8" {
		hd.Set("Content-Security-Policy", contentSecurity)
		hd.Set("X-Frame-Options", "DENY")
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.body))
}
