//go:build !wasip1

// Package edgereptest stands in for the node in native builds, so plugin logic can be tested
// with `go test`: set the parameters the plugin reads, read the lines it logs.
//
//	edgereptest.SetParams(map[string]string{"remove": "card"})
//	changes, err := transform.Call(edgerep.PutEvent("orders", []byte("o-1"), value))
//	logs := edgereptest.TakeLogs()
package edgereptest

import (
	edgerep "github.com/edgerep/edgerep/guest-sdk/go"
	"github.com/edgerep/edgerep/guest-sdk/go/internal/host"
)

// SetParams replaces the parameters Param, ParamList and Params answer.
func SetParams(params map[string]string) {
	ps := make([][2]string, 0, len(params))
	for k, v := range params {
		ps = append(ps, [2]string{k, v})
	}
	host.SetParams(ps)
}

// Line is one logged line.
type Line struct {
	Level   edgerep.Level
	Message string
}

// TakeLogs returns the lines logged so far and forgets them.
func TakeLogs() []Line {
	var out []Line
	for _, l := range host.TakeLogs() {
		out = append(out, Line{edgerep.Level(l.Level), l.Message})
	}
	return out
}
