// Command redact deletes or masks fields of map values. The Go build of plugins/redact.
//
// Params: remove (comma-separated field names to delete from the map value) and mask
// (comma-separated field names whose value becomes the text "***"; only fields that are
// present). A field in both lists is deleted. Deletes, non-map values and events without the
// fields pass unchanged.
package main

import (
	edgerep "github.com/edgerep/edgerep/guest-sdk/go"
	"github.com/edgerep/edgerep/guest-sdk/go/cbor"
	"github.com/edgerep/edgerep/guest-sdk/go/transform"
)

func init() { transform.Register(redact) }

func redact(event edgerep.Event) ([]edgerep.Change, error) {
	change := edgerep.ChangeFrom(event)
	value, err := event.ValueCBOR()
	if err != nil {
		return nil, err
	}
	if value != nil && value.IsMap() {
		changed := false
		for _, field := range edgerep.ParamList("remove") {
			if _, ok := value.Remove(field); ok {
				changed = true
			}
		}
		for _, field := range edgerep.ParamList("mask") {
			if v := value.Ref(field); v != nil {
				*v = cbor.Text("***")
				changed = true
			}
		}
		if changed {
			change.SetValue(*value)
		}
	}
	return []edgerep.Change{change}, nil
}

func main() {}
