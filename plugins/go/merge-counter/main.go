// Command merge-counter merges per-origin counters. The Go build of plugins/merge-counter.
//
// Each version's value is a CBOR map from text (an origin, say) to an unsigned integer (that
// origin's count). The merge takes, for every key, its largest count over all put versions, and
// returns a merge of that map. Delete versions add nothing; when every version is a delete the
// result is a merged delete. A put whose value is not such a map is an error.
package main

import (
	"strconv"

	edgerep "github.com/edgerep/edgerep/guest-sdk/go"
	"github.com/edgerep/edgerep/guest-sdk/go/cbor"
	"github.com/edgerep/edgerep/guest-sdk/go/resolver"
)

func init() { resolver.Register(mergeCounter) }

type badVersion struct {
	index   int
	version *edgerep.Event
}

func (e badVersion) Error() string {
	return "merge-counter: version " + strconv.Itoa(e.index) + " (" + e.version.Origin + "/" +
		strconv.FormatUint(e.version.Seq, 10) + ") is not a map of text to unsigned integers"
}

func mergeCounter(_ string, _ []byte, versions []edgerep.Event) (edgerep.Resolution, error) {
	merged := map[string]uint64{}
	anyPut := false
	for i := range versions {
		version := &versions[i]
		value, err := version.ValueCBOR()
		if err != nil {
			return edgerep.Resolution{}, badVersion{i, version}
		}
		if value == nil {
			continue
		}
		anyPut = true
		if !value.IsMap() {
			return edgerep.Resolution{}, badVersion{i, version}
		}
		for _, e := range value.Entries() {
			k, ok1 := e.Key.AsText()
			n, ok2 := e.Value.AsUint64()
			if !ok1 || !ok2 {
				return edgerep.Resolution{}, badVersion{i, version}
			}
			if n >= merged[k] {
				merged[k] = n
			}
		}
	}
	if !anyPut {
		return edgerep.Deleted(), nil
	}
	// Encode sorts the entries, so the map's iteration order does not matter.
	out := cbor.Map()
	for k, n := range merged {
		out.Set(k, cbor.Uint(n))
	}
	return edgerep.Merged(out), nil
}

func main() {}
