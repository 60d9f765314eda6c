//go:build !wasip1

// Package host is the SDK's way to the node's `host` interface: the generated imports in a
// WebAssembly build, an in-memory stand-in in a native one (for `go test`).
package host

import (
	"slices"
	"strings"
	"sync"
)

var (
	mu     sync.Mutex
	params [][2]string
	logs   []Line
)

// Line is one logged line.
type Line struct {
	Level   uint8
	Message string
}

// SetParams replaces the parameters (sorted by name; the first of duplicate names wins).
func SetParams(ps [][2]string) {
	mu.Lock()
	defer mu.Unlock()
	params = slices.Clone(ps)
	slices.SortStableFunc(params, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	params = slices.CompactFunc(params, func(a, b [2]string) bool { return a[0] == b[0] })
}

// TakeLogs returns the lines logged so far and forgets them.
func TakeLogs() []Line {
	mu.Lock()
	defer mu.Unlock()
	out := logs
	logs = nil
	return out
}

// Param is the parameter name, if set.
func Param(name string) (string, bool) {
	mu.Lock()
	defer mu.Unlock()
	for _, p := range params {
		if p[0] == name {
			return p[1], true
		}
	}
	return "", false
}

// Params calls yield with every parameter, sorted by name.
func Params(yield func(name, value string)) {
	mu.Lock()
	ps := slices.Clone(params)
	mu.Unlock()
	for _, p := range ps {
		yield(p[0], p[1])
	}
}

// Log records one line.
func Log(level uint8, message string) {
	mu.Lock()
	defer mu.Unlock()
	logs = append(logs, Line{level, message})
}
