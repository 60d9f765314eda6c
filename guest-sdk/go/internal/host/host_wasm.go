//go:build wasip1

// Package host is the SDK's way to the node's `host` interface: the generated imports in a
// WebAssembly build, an in-memory stand-in in a native one (for `go test`).
package host

import (
	hostwit "github.com/edgerep/edgerep/guest-sdk/go/internal/wit/transform/imports/edgerep_plugin_host"
)

// Param is the parameter name, if set.
func Param(name string) (string, bool) {
	o := hostwit.Param(name)
	if o.IsSome() {
		return o.Some(), true
	}
	return "", false
}

// Params calls yield with every parameter, sorted by name.
func Params(yield func(name, value string)) {
	for _, p := range hostwit.Params() {
		yield(p.F0, p.F1)
	}
}

// Log writes one line to the node's log (level: 0 debug, 1 info, 2 warn, 3 error).
func Log(level uint8, message string) {
	hostwit.Log(level, message)
}
