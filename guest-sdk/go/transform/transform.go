// Package transform makes a plugin a transform: import it and call Register in an init
// function. Importing it is what makes the component export the `transform` function of the
// `transform` world, so a plugin imports this package or package resolver, never both.
package transform

import (
	edgerep "github.com/edgerep/edgerep/guest-sdk/go"
)

// Func is a transform: one event in, the changes to store out. Return no changes to drop the
// event, one to keep or change it, several to split it, or an error to refuse it (the node
// applies the plugin's failure policy and reports err.Error()).
type Func func(event edgerep.Event) ([]edgerep.Change, error)

var registered Func

// Register makes f the plugin's transform. Call it once, from an init function (a plugin's
// main function never runs: the component is a library the node calls into).
func Register(f Func) {
	if registered != nil {
		panic("transform.Register called twice")
	}
	registered = f
}

// Call runs the registered transform, as the node would (for native tests of a plugin).
func Call(event edgerep.Event) ([]edgerep.Change, error) {
	if registered == nil {
		return nil, errNotRegistered
	}
	return registered(event)
}

type notRegistered struct{}

func (notRegistered) Error() string {
	return "the plugin registered no transform (call transform.Register in an init function)"
}

var errNotRegistered error = notRegistered{}
