// Command {{name}} is an edgerep transform plugin: it sets the field hello to "world" in map
// values and passes everything else unchanged. It builds with TinyGo and with standard Go.
package main

import (
	edgerep "github.com/edgerep/edgerep/guest-sdk/go"
	"github.com/edgerep/edgerep/guest-sdk/go/cbor"
	"github.com/edgerep/edgerep/guest-sdk/go/transform"
)

func init() { transform.Register(plugin) }

func plugin(event edgerep.Event) ([]edgerep.Change, error) {
	change := edgerep.ChangeFrom(event)
	value, err := event.ValueCBOR()
	if err != nil {
		return nil, err
	}
	if value != nil && value.Set("hello", cbor.Text("world")) == nil {
		change.SetValue(*value)
	}
	return []edgerep.Change{change}, nil
}

func main() {}
