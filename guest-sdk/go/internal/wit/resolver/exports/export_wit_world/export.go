// Package export_wit_world is where the generated bindings of the resolver world call the
// plugin's `resolve` (the generator names the package; this file is written by hand). The
// SDK's resolver package sets Impl.
package export_wit_world

import (
	types "github.com/edgerep/edgerep/guest-sdk/go/internal/wit/resolver/imports/edgerep_plugin_types"
	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// Impl is the plugin's resolver, set by package resolver.
var Impl func(collection string, key []uint8, versions []types.Event) witTypes.Result[types.Resolution, string]

// Resolve is the export the generated bindings call.
func Resolve(collection string, key []uint8, versions []types.Event) witTypes.Result[types.Resolution, string] {
	return Impl(collection, key, versions)
}
