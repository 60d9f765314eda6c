// Command passthrough returns the event unchanged, as one change (the benchmark's trivial
// transform). The Go build of plugins/passthrough.
package main

import (
	edgerep "github.com/edgerep/edgerep/guest-sdk/go"
	"github.com/edgerep/edgerep/guest-sdk/go/transform"
)

func init() { transform.Register(passthrough) }

func passthrough(event edgerep.Event) ([]edgerep.Change, error) {
	return []edgerep.Change{edgerep.ChangeFrom(event)}, nil
}

func main() {}
