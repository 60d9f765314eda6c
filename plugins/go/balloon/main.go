// Command balloon (hostile, for tests) allocates 1 MiB blocks without end and keeps them. The
// host must stop it with its memory cap (memory-limit). The Go build of plugins/balloon.
package main

import (
	edgerep "github.com/edgerep/edgerep/guest-sdk/go"
	"github.com/edgerep/edgerep/guest-sdk/go/transform"
)

func init() { transform.Register(balloon) }

// hoard keeps every block reachable, so no collector may free them.
var hoard [][]byte

func balloon(edgerep.Event) ([]edgerep.Change, error) {
	for {
		block := make([]byte, 1<<20)
		// Touch every 64 KiB page so the memory is really used.
		for i := 0; i < len(block); i += 1 << 16 {
			block[i] = 1
		}
		hoard = append(hoard, block)
	}
}

func main() {}
