//go:build !tinygo

// This file is not part of go.bytecodealliance.org/pkg: `cargo xtask go-bindings` adds it to
// edgerep's copy of that module. The generated bindings name the pinner witRuntime.Pinner (they
// would name runtime.Pinner, which TinyGo lacks; see runtime_tinygo.go): with standard Go it is
// runtime.Pinner.

package runtime

import (
	"runtime"
)

// Pinner is runtime.Pinner.
type Pinner = runtime.Pinner
