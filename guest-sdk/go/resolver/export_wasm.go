//go:build wasip1

package resolver

import (
	edgerep "github.com/edgerep/edgerep/guest-sdk/go"
	"github.com/edgerep/edgerep/guest-sdk/go/internal/gc"
	"github.com/edgerep/edgerep/guest-sdk/go/internal/panics"
	"github.com/edgerep/edgerep/guest-sdk/go/internal/wit/resolver/exports/export_wit_world"
	// The generated `//go:wasmexport resolve` and `cabi_post_resolve`.
	_ "github.com/edgerep/edgerep/guest-sdk/go/internal/wit/resolver/exports/wit_exports"
	types "github.com/edgerep/edgerep/guest-sdk/go/internal/wit/resolver/imports/edgerep_plugin_types"
	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

func init() { export_wit_world.Impl = export }

// export is the component's `resolve`: the generated code has lifted the input; this turns it
// into the SDK's types, calls the plugin, and turns the result back.
func export(collection string, key []uint8, versions []types.Event) witTypes.Result[types.Resolution, string] {
	defer panics.Log()
	events := make([]edgerep.Event, len(versions))
	for i := range versions {
		events[i] = fromWit(&versions[i])
	}
	resolution, err := Call(collection, key, events)
	var result witTypes.Result[types.Resolution, string]
	if err != nil {
		result = witTypes.Err[types.Resolution, string](err.Error())
	} else if merge, pick, value := resolution.Parts(); merge {
		option := witTypes.None[[]uint8]()
		if value != nil {
			option = witTypes.Some(value)
		}
		result = witTypes.Ok[types.Resolution, string](types.MakeResolutionMerge(option))
	} else {
		result = witTypes.Ok[types.Resolution, string](types.MakeResolutionPick(pick))
	}
	gc.AfterCall()
	return result
}

func fromWit(e *types.Event) edgerep.Event {
	var value []byte
	if e.Value.IsSome() {
		value = e.Value.Some()
		if value == nil {
			value = []byte{}
		}
	}
	var meta []edgerep.Pair
	if len(e.Meta) > 0 {
		meta = make([]edgerep.Pair, len(e.Meta))
		for i, p := range e.Meta {
			meta[i] = edgerep.Pair{Name: p.F0, Value: p.F1}
		}
	}
	var context []edgerep.Dot
	if len(e.Context) > 0 {
		context = make([]edgerep.Dot, len(e.Context))
		for i, d := range e.Context {
			context[i] = edgerep.Dot{Origin: d.Origin, Seq: d.Seq}
		}
	}
	return edgerep.Event{
		Collection: e.Collection,
		Key:        e.Key,
		Op:         edgerep.Op(e.Op),
		Value:      value,
		Hlc:        edgerep.Hlc{PhysicalMs: e.Hlc.PhysicalMs, Logical: e.Hlc.Logical},
		Origin:     e.Origin,
		Seq:        e.Seq,
		Schema:     e.Schema,
		Meta:       meta,
		Context:    context,
	}
}
