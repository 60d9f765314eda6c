// Package panics logs a plugin's panic through the host's log before the call fails.
package panics

import (
	"github.com/edgerep/edgerep/guest-sdk/go/internal/host"
)

// Log, deferred at the export boundary, logs a panic at error level ("plugin panicked: ...")
// and panics again, so the call still fails (the runtime exits: a trap for the host). Under
// TinyGo, whose WebAssembly targets do not recover panics, the panic ends the call directly.
func Log() {
	r := recover()
	if r == nil {
		return
	}
	host.Log(3, "plugin panicked: "+describe(r))
	panic(r)
}

func describe(r any) string {
	switch r := r.(type) {
	case string:
		return r
	case error:
		return r.Error()
	case interface{ String() string }:
		return r.String()
	}
	return "a panic value that is neither text nor an error"
}
