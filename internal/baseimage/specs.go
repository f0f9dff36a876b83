package baseimage

import (
	"maps"
	"slices"
)

// spec says which host packages make a base. Every base holds minimal's
// packages too.
type spec struct {
	// Canonical is the base whose build this one shares: "go" and
	// "static" are minimal under other names, and are built once.
	Canonical string
	// Required packages must be installed; Optional ones are taken when
	// they are.
	Required, Optional []string
}

// minimal is what every base holds: a shell and the everyday commands
// start commands use (env, sleep, cat: coreutils), libc, TLS roots.
// tzdata and media-types are optional: apps run without them, only less
// well.
var minimalRequired = []string{"dash", "coreutils", "libc6", "ca-certificates", "netbase"}
var minimalOptional = []string{"tzdata", "media-types"}

// defaultSpecs returns the bases pier's builders run on, by name. The
// names are part of the API (the builders' names).
func defaultSpecs() map[string]spec {
	return map[string]spec{
		"minimal": {},
		// Go binaries: static, or linked to libc alone (cgo's default).
		"go": {Canonical: "minimal"},
		// pier's file server comes in a layer of its own.
		"static": {Canonical: "minimal"},
		// nodesource's nodejs carries npm (apps start with "npm start"),
		// whose launcher starts "#!/usr/bin/env node": env is coreutils'.
		"node": {Required: []string{"nodejs"}},
		// Apps' venvs, made at build time in /app/.venv, link to /usr/bin/python3.
		"python": {Required: []string{"python3"}, Optional: []string{"python3-venv"}},
		// A Procfile may start anything: the broad base.
		"procfile": {
			Required: []string{"bash"},
			Optional: []string{"nodejs", "python3", "python3-venv"},
		},
	}
}

// Names returns the names of the bases Get knows, sorted.
func Names() []string { return slices.Sorted(maps.Keys(defaultSpecs())) }
