// Package jsclient embeds vmexec's JavaScript client — the ES module vmexec.js and its
// hand-written typings index.d.ts — so that the daemon serves them (GET /js/vmexec.js,
// GET /js/index.d.ts) to the web UI and to any page that imports the client. The files
// are the same ones npm users get from clients/js; there is no build step.
package jsclient

import "embed"

// FS holds vmexec.js and index.d.ts at its root.
//
//go:embed vmexec.js index.d.ts
var FS embed.FS
