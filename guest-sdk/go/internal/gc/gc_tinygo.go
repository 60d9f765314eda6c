//go:build tinygo || edgerep_gc_unmanaged

package gc

// AfterCall does nothing: TinyGo's collector runs inside allocations without calling imports,
// and with the tag edgerep_gc_unmanaged the standard Go collector is left to itself.
func AfterCall() {}
