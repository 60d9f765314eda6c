// Package export_wit_world is where the generated bindings of the transform world call the
// plugin's `transform` (the generator names the package; this file is written by hand). The
// SDK's transform package sets Impl.
package export_wit_world

import (
	types "github.com/edgerep/edgerep/guest-sdk/go/internal/wit/transform/imports/edgerep_plugin_types"
	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// Impl is the plugin's transform, set by package transform.
var Impl func(event types.Event) witTypes.Result[[]types.Change, string]

// Transform is the export the generated bindings call.
func Transform(event types.Event) witTypes.Result[[]types.Change, string] {
	return Impl(event)
}
