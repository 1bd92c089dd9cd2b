package transport

import (
	"embed"
	"io/fs"
)

// webFiles is the built-in web client: index.html, app.js and style.css in
// plain HTML, CSS and JavaScript, with no build step and nothing fetched from
// elsewhere at run time.
//
//go:embed web
var webFiles embed.FS

// WebClient returns the built-in web client's files (index.html at the root).
//
// The node serves them at / and answers /s/{id} with index.html: the client
// reads the session id from location.pathname. The page refers to its assets
// by absolute paths (/app.js, /style.css), so they resolve from /s/{id} too.
func WebClient() fs.FS {
	sub, err := fs.Sub(webFiles, "web")
	if err != nil {
		// Cannot happen: fs.Sub fails only for an invalid path, and "web" is
		// a valid one that go:embed has checked exists at compile time.
		panic(err)
	}
	return sub
}
