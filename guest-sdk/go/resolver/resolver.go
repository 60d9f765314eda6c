// Package resolver makes a plugin a conflict resolver: import it and call Register in an init
// function. Importing it is what makes the component export the `resolve` function of the
// `resolver` world, so a plugin imports this package or package transform, never both.
package resolver

import (
	edgerep "github.com/edgerep/edgerep/guest-sdk/go"
)

// Func is a resolver: the concurrent versions of key in collection in, the decision out. The
// versions come in a canonical order (by origin, then sequence number), the same on every
// node; the result must depend only on them and the plugin's parameters. On an error the node
// falls back to last-writer-wins and records that it did.
type Func func(collection string, key []byte, versions []edgerep.Event) (edgerep.Resolution, error)

var registered Func

// Register makes f the plugin's resolver. Call it once, from an init function (a plugin's main
// function never runs: the component is a library the node calls into).
func Register(f Func) {
	if registered != nil {
		panic("resolver.Register called twice")
	}
	registered = f
}

// Call runs the registered resolver, as the node would (for native tests of a plugin).
func Call(collection string, key []byte, versions []edgerep.Event) (edgerep.Resolution, error) {
	if registered == nil {
		return edgerep.Resolution{}, errNotRegistered
	}
	return registered(collection, key, versions)
}

type notRegistered struct{}

func (notRegistered) Error() string {
	return "the plugin registered no resolver (call resolver.Register in an init function)"
}

var errNotRegistered error = notRegistered{}
