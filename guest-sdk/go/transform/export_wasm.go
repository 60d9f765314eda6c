//go:build wasip1

package transform

import (
	edgerep "github.com/edgerep/edgerep/guest-sdk/go"
	"github.com/edgerep/edgerep/guest-sdk/go/internal/gc"
	"github.com/edgerep/edgerep/guest-sdk/go/internal/panics"
	"github.com/edgerep/edgerep/guest-sdk/go/internal/wit/transform/exports/export_wit_world"
	// The generated `//go:wasmexport transform` and `cabi_post_transform`.
	_ "github.com/edgerep/edgerep/guest-sdk/go/internal/wit/transform/exports/wit_exports"
	types "github.com/edgerep/edgerep/guest-sdk/go/internal/wit/transform/imports/edgerep_plugin_types"
	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

func init() { export_wit_world.Impl = export }

// export is the component's `transform`: the generated code has lifted the event; this turns it
// into the SDK's types, calls the plugin, and turns the result back.
func export(event types.Event) witTypes.Result[[]types.Change, string] {
	defer panics.Log()
	changes, err := Call(fromWit(event))
	var result witTypes.Result[[]types.Change, string]
	if err != nil {
		result = witTypes.Err[[]types.Change, string](err.Error())
	} else {
		out := make([]types.Change, len(changes))
		for i := range changes {
			out[i] = toWit(&changes[i])
		}
		result = witTypes.Ok[[]types.Change, string](out)
	}
	gc.AfterCall()
	return result
}

func fromWit(e types.Event) edgerep.Event {
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

func toWit(c *edgerep.Change) types.Change {
	value := witTypes.None[[]uint8]()
	if c.Value != nil {
		value = witTypes.Some(c.Value)
	}
	meta := make([]witTypes.Tuple2[string, string], len(c.Meta))
	for i, p := range c.Meta {
		meta[i] = witTypes.Tuple2[string, string]{F0: p.Name, F1: p.Value}
	}
	return types.Change{
		Collection: c.Collection,
		Key:        c.Key,
		Op:         uint8(c.Op),
		Value:      value,
		Schema:     c.Schema,
		Meta:       meta,
	}
}
