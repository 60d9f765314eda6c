//go:build !tinygo && !edgerep_gc_unmanaged

// Package gc works around a bug of standard Go guests: a garbage collection that starts inside
// cabi_realloc (while the host hands the guest its input) calls WASI imports, which the
// component model forbids there, so the call traps with "cannot leave component instance"
// (componentize-go issue 77, wasmtime PR 14319). The SDK turns the collector's own trigger off
// at start and collects at the export boundary instead, where imports are allowed: after a
// call, when CallsMax calls or BytesMax allocated bytes have passed since the last collection.
// Resolvers run once per instance, so they never pay for a collection. The price: garbage made
// during a call is collected only after the call, so all of one call's allocations count
// against the plugin's memory cap.
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
	// BytesMax is the most bytes allocated between two collections (give or take what the calls
	// between two checks allocate: checks come more often for calls that allocate a lot).
	BytesMax = 4 << 20
	// checkEveryMax is the most calls between two reads of the allocation counter.
	checkEveryMax = 16
)

var (
	calls      int // since the last collection
	sinceCheck int // calls since the last read of the counter
	checkEvery = checkEveryMax
	sample     = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	// The allocation counter at the last collection and at the last read (0 until the first
	// read: the first read of runtime/metrics costs hundreds of thousands of fuel, so it waits
	// for the first check, which resolvers, one call per instance, never reach).
	allocated, lastRead uint64
)

func init() {
	debug.SetGCPercent(-1)
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
	sinceCheck++
	if calls < CallsMax && sinceCheck < checkEvery {
		return
	}
	now := allocs()
	// Check again before another BytesMax/2 can pile up at the rate seen since the last check.
	perCall := (now - lastRead) / uint64(sinceCheck)
	lastRead, sinceCheck, checkEvery = now, 0, checkEveryMax
	if perCall > 0 && BytesMax/2/perCall < checkEveryMax {
		checkEvery = max(1, int(BytesMax/2/perCall))
	}
	if calls < CallsMax && now-allocated < BytesMax {
		return
	}
	runtime.GC()
	calls = 0
	allocated = now
}
