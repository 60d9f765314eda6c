// Command {{name}} is an edgerep resolver plugin: among concurrent versions it picks the one
// whose map value has the largest unsigned "rank" (a version without one, or a delete, ranks
// 0); on a tie, the later version in the list (versions come sorted by origin and sequence
// number, the same on every node). It builds with TinyGo and with standard Go.
package main

import (
	edgerep "github.com/edgerep/edgerep/guest-sdk/go"
	"github.com/edgerep/edgerep/guest-sdk/go/resolver"
)

func init() { resolver.Register(plugin) }

func rank(version *edgerep.Event) (uint64, error) {
	value, err := version.ValueCBOR()
	if err != nil || value == nil {
		return 0, err
	}
	r, ok := value.Get("rank")
	if !ok {
		return 0, nil
	}
	n, _ := r.AsUint64()
	return n, nil
}

func plugin(_ string, _ []byte, versions []edgerep.Event) (edgerep.Resolution, error) {
	best, bestRank := 0, uint64(0)
	for i := range versions {
		r, err := rank(&versions[i])
		if err != nil {
			return edgerep.Resolution{}, err
		}
		if i == 0 || r >= bestRank {
			best, bestRank = i, r
		}
	}
	return edgerep.Pick(best), nil
}

func main() {}
