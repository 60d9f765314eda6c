// Command enrich adds a computed field. The Go build of plugins/enrich.
//
// Params: from (default celsius) and to (default fahrenheit). When the map value has a numeric
// (integer or float) field from, sets to to the float from * 9 / 5 + 32 (computed in float64 in
// exactly that order, each step rounded) and the metadata enriched-by to enrich. Anything else
// passes unchanged.
package main

import (
	edgerep "github.com/edgerep/edgerep/guest-sdk/go"
	"github.com/edgerep/edgerep/guest-sdk/go/cbor"
	"github.com/edgerep/edgerep/guest-sdk/go/transform"
)

func init() { transform.Register(enrich) }

func enrich(event edgerep.Event) ([]edgerep.Change, error) {
	from := edgerep.ParamOr("from", "celsius")
	to := edgerep.ParamOr("to", "fahrenheit")
	change := edgerep.ChangeFrom(event)
	value, err := event.ValueCBOR()
	if err != nil {
		return nil, err
	}
	if value == nil {
		return []edgerep.Change{change}, nil
	}
	field, ok := value.Get(from)
	if !ok {
		return []edgerep.Change{change}, nil
	}
	x, ok := field.AsFloat64()
	if !ok {
		return []edgerep.Change{change}, nil
	}
	// The conversions force a rounding after each operation (Go may otherwise fuse them).
	if err := value.Set(to, cbor.Float(float64(float64(x*9)/5)+32)); err != nil {
		return nil, err
	}
	change.SetValue(*value)
	change.SetMeta("enriched-by", "enrich")
	return []edgerep.Change{change}, nil
}

func main() {}
