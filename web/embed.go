// Package web embeds vmexec's web page: index.html, served at GET /, and its assets
// (ui/*.js modules and ui/style.css), served at GET /ui/{file}. The page is plain
// HTML, CSS and JavaScript modules with no build step and no dependency but the
// project's own JavaScript client, which it imports from /js/vmexec.js. The browser
// tests live in web/test (node --test, playwright-core driving Debian's chromium).
package web

import "embed"

// FS holds index.html and the ui directory.
//
//go:embed index.html ui
var FS embed.FS
