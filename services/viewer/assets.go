package viewer

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"time"
)

// web holds the page and its assets: hand-written HTML, CSS, JavaScript
// and SVG, no build step, nothing loaded from elsewhere, so the viewer works
// offline.
//
//go:embed web
var web embed.FS

// asset is one embedded file, ready to serve.
type asset struct {
	data  []byte
	etag  string
	ctype string
}

// assets are the embedded files by name, read once.
var assets = func() map[string]asset {
	out := map[string]asset{}
	entries, err := fs.ReadDir(web, "web")
	if err != nil {
		panic("viewer: embedded assets: " + err.Error())
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		data, err := web.ReadFile("web/" + e.Name())
		if err != nil {
			panic("viewer: embedded asset " + e.Name() + ": " + err.Error())
		}
		sum := sha256.Sum256(data)
		ctype := mime.TypeByExtension(path.Ext(e.Name()))
		if ctype == "" {
			ctype = "application/octet-stream"
		}
		out[e.Name()] = asset{data: data, etag: `"` + hex.EncodeToString(sum[:8]) + `"`, ctype: ctype}
	}
	return out
}()

// serveAsset serves one embedded file. Its ETag is its content hash, so a
// browser revalidates cheaply and never keeps a stale copy after an upgrade.
func serveAsset(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a, ok := assets[name]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", a.ctype)
		w.Header().Set("ETag", a.etag)
		w.Header().Set("Cache-Control", "no-cache")
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(a.data))
	}
}
