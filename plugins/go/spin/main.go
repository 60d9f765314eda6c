// Command spin (hostile, for tests) loops forever. The host must stop it with its fuel budget
// (out-of-fuel). The Go build of plugins/spin.
package main

import (
	"sync/atomic"

	edgerep "github.com/edgerep/edgerep/guest-sdk/go"
	"github.com/edgerep/edgerep/guest-sdk/go/transform"
)

func init() { transform.Register(spin) }

// counter is written on every turn, atomically, so no compiler may drop the loop.
var counter atomic.Uint64

func spin(edgerep.Event) ([]edgerep.Change, error) {
	for {
		counter.Add(1)
	}
}

func main() {}
