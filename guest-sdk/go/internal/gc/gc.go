//go:build !tinygo && !edgerep_gc_unmanaged

// Package gc works around a bug of standard Go guests: a garbage collection that starts inside
// cabi_realloc (while the host hands the guest its input) calls WASI imports, which the
// component model forbids there, so the call traps with "cannot leave component instance"
// (componentize-go issue 77, wasmtime PR 14319). The SDK turns the collector's own trigger off
// at start and collects at the export boundary instead, where imports are allowed: after a
// call, when CallsMax calls or BytesMax allocated bytes have passed since the last collection.
// Resolvers run once per instance, so they never pay for a collection.
//
// TinyGo's collector reads no clock and needs none of this (gc_tinygo.go). Building with the
// tag edgerep_gc_unmanaged leaves the collector alone: only to show the bug in a soak test.
package gc

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

const (
	// CallsMax is the most calls between two collections.
	CallsMax = 1000
	// BytesMax is the most bytes allocated between two collections.
	BytesMax = 4 << 20
	// checkEvery is how many calls pass between two reads of the allocation counter.
	checkEvery = 16
)

var (
	calls     int
	sample    = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	allocated uint64 // the counter at the last collection
)

func init() {
	debug.SetGCPercent(-1)
	allocated = allocs()
}

func allocs() uint64 {
	metrics.Read(sample)
	if sample[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return sample[0].Value.Uint64()
}

// AfterCall runs at the end of every exported call (the result is built, nothing is being
// lifted or lowered) and collects if it is time to.
func AfterCall() {
	calls++
	if calls < CallsMax && calls%checkEvery != 0 {
		return
	}
	now := allocs()
	if calls < CallsMax && now-allocated < BytesMax {
		return
	}
	runtime.GC()
	calls = 0
	allocated = allocs()
}
