// Command trap (hostile, for tests) panics. The SDK logs the panic through the host's log
// (error level, standard Go), then the call fails: a trap for the host. The Go build of
// plugins/trap.
package main

import (
	"strconv"

	edgerep "github.com/edgerep/edgerep/guest-sdk/go"
	"github.com/edgerep/edgerep/guest-sdk/go/transform"
)

func init() { transform.Register(trap) }

func trap(event edgerep.Event) ([]edgerep.Change, error) {
	panic("trap plugin: deliberate panic on key " + strconv.Quote(string(event.Key)))
}

func main() {}
