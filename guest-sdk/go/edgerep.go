// Package edgerep is the Go SDK for edgerep plugins, for TinyGo and standard Go alike.
//
// An edgerep plugin is a WebAssembly component implementing one of the worlds of
// wit/plugin.wit (package edgerep:plugin@0.1.0): a transform (one event in, zero or more
// changes out) or a resolver (the concurrent versions of a key in, the winner or a merge out).
// With this SDK a plugin is a main package with one plain Go function, registered in an init
// function:
//
//	package main
//
//	import (
//		"strings"
//
//		edgerep "github.com/edgerep/edgerep/guest-sdk/go"
//		"github.com/edgerep/edgerep/guest-sdk/go/cbor"
//		"github.com/edgerep/edgerep/guest-sdk/go/transform"
//	)
//
//	func init() { transform.Register(upper) }
//
//	func upper(event edgerep.Event) ([]edgerep.Change, error) {
//		change := edgerep.ChangeFrom(event)
//		value, err := event.ValueCBOR() // nil for a delete
//		if err != nil || value == nil {
//			return []edgerep.Change{change}, err
//		}
//		if name, ok := value.Get("name"); ok {
//			if s, ok := name.AsText(); ok {
//				value.Set("name", cbor.Text(strings.ToUpper(s)))
//				change.SetValue(*value)
//			}
//		}
//		return []edgerep.Change{change}, nil
//	}
//
//	func main() {}
//
// Import transform (transform.Register) or resolver (resolver.Register), never both: the
// package you import decides the world the component implements. Build with
// `cargo xtask build-plugins` in the edgerep repository, which runs TinyGo
// (-target=wasip1 -buildmode=c-shared) and standard Go (GOOS=wasip1 GOARCH=wasm
// -buildmode=c-shared) and makes components with the wasi_snapshot_preview1 reactor adapter.
//
// What is here:
//   - the contract's types: Event, Change, Op, Hlc, Dot, Pair, Resolution, with helpers
//     (ChangeFrom, Event.ValueCBOR, Change.SetValue, Change.SetMeta, ...);
//   - the host's services: Param, ParamOr, ParamList, Params, and Log with its levels;
//   - package cbor: a small codec to read and change values, encoding deterministically;
//   - package edgereptest (native builds only): set parameters and read logs in `go test`.
//
// A panic in a plugin (standard Go) is logged through the host's log at error level, then the
// call fails: the host sees a trap, never a half-finished result. Under TinyGo, which cannot
// recover a panic, the runtime prints the panic's message before aborting; the host keeps a
// call's last output lines. Either way the failure (the client's error, the log, the dead
// letter) says "(the plugin said: ...)" with the message. The standard Go runtime's
// garbage collector is driven by the SDK (see internal/gc): plugin authors need do nothing.
package edgerep

import (
	"strings"

	"github.com/edgerep/edgerep/guest-sdk/go/cbor"
	"github.com/edgerep/edgerep/guest-sdk/go/internal/host"
)

// Op says whether an event writes a value or deletes its key.
type Op uint8

// The ops, numbered as in the WIT enum.
const (
	OpPut    Op = 0
	OpDelete Op = 1
)

// Hlc is a hybrid logical clock timestamp: milliseconds since the Unix epoch and a counter that
// orders events within one millisecond. Compare as the pair (PhysicalMs, Logical).
type Hlc struct {
	PhysicalMs uint64
	Logical    uint32
}

// Dot is the unique name of one event: the node that wrote it and that node's sequence number.
type Dot struct {
	Origin string
	Seq    uint64
}

// Pair is a name and a value: one metadata entry or one parameter.
type Pair struct {
	Name  string
	Value string
}

// Event is a change event, as the node stores it.
type Event struct {
	// Collection the key belongs to.
	Collection string
	// The key (any bytes).
	Key []byte
	// Put or delete.
	Op Op
	// The value, one deterministic CBOR data item: non-nil exactly when Op is OpPut.
	Value []byte
	// Timestamp at the origin node.
	Hlc Hlc
	// Node that accepted the write.
	Origin string
	// The origin's sequence number (0 while a transform runs at ingest).
	Seq uint64
	// Version of the application's value schema (0 when not given).
	Schema uint32
	// Small text metadata, sorted by name.
	Meta []Pair
	// Causal context: the highest sequence number seen per origin.
	Context []Dot
}

// PutEvent is a put event with the given value and every other field at its zero (handy in
// tests): HLC 0.0, origin "", seq 0, schema 0, no meta, no context.
func PutEvent(collection string, key []byte, value cbor.Value) Event {
	return Event{Collection: collection, Key: key, Op: OpPut, Value: value.Encode()}
}

// DeleteEvent is a delete event with every other field at its zero (see PutEvent).
func DeleteEvent(collection string, key []byte) Event {
	return Event{Collection: collection, Key: key, Op: OpDelete}
}

// IsPut says whether the event writes a value.
func (e *Event) IsPut() bool { return e.Op == OpPut }

// IsDelete says whether the event deletes its key.
func (e *Event) IsDelete() bool { return e.Op == OpDelete }

// ValueCBOR is the value, decoded: nil for a delete.
func (e *Event) ValueCBOR() (*cbor.Value, error) { return decodeValue(e.Value) }

// KeyString is the key as text (it may not be UTF-8).
func (e *Event) KeyString() string { return string(e.Key) }

// GetMeta is the metadata entry name.
func (e *Event) GetMeta(name string) (string, bool) { return metaGet(e.Meta, name) }

// Change is what a transform returns: a change to store. The node owns origin, sequence
// number, timestamp and causal context, so a change carries only what a plugin may decide.
type Change struct {
	// Collection to write to (a transform may route to another collection).
	Collection string
	// Key to write.
	Key []byte
	// Put or delete.
	Op Op
	// The value of a put (deterministic CBOR; the host canonicalizes it); nil for a delete.
	Value []byte
	// Schema version of the value.
	Schema uint32
	// Metadata, sorted by name (SetMeta keeps it so).
	Meta []Pair
}

// ChangeFrom is the change that stores the event as it is (same collection, key, op, value,
// schema, meta). The meta list is copied, so changing the change leaves the event alone.
func ChangeFrom(e Event) Change {
	var meta []Pair
	if len(e.Meta) > 0 {
		meta = append(make([]Pair, 0, len(e.Meta)+1), e.Meta...)
	}
	return Change{
		Collection: e.Collection,
		Key:        e.Key,
		Op:         e.Op,
		Value:      e.Value,
		Schema:     e.Schema,
		Meta:       meta,
	}
}

// PutChange is a put of the value (schema 0, no meta).
func PutChange(collection string, key []byte, value cbor.Value) Change {
	return Change{Collection: collection, Key: key, Op: OpPut, Value: value.Encode()}
}

// DeleteChange is a delete of the key (schema 0, no meta).
func DeleteChange(collection string, key []byte) Change {
	return Change{Collection: collection, Key: key, Op: OpDelete}
}

// ValueCBOR is the value, decoded: nil for a delete.
func (c *Change) ValueCBOR() (*cbor.Value, error) { return decodeValue(c.Value) }

// SetValue makes the change a put of the value (encoded deterministically).
func (c *Change) SetValue(value cbor.Value) {
	c.Op = OpPut
	c.Value = value.Encode()
}

// SetDelete makes the change a delete (no value).
func (c *Change) SetDelete() {
	c.Op = OpDelete
	c.Value = nil
}

// GetMeta is the metadata entry name.
func (c *Change) GetMeta(name string) (string, bool) { return metaGet(c.Meta, name) }

// SetMeta sets the metadata entry name, keeping the entries sorted by name.
func (c *Change) SetMeta(name, value string) {
	i := 0
	for i < len(c.Meta) && c.Meta[i].Name < name {
		i++
	}
	if i < len(c.Meta) && c.Meta[i].Name == name {
		c.Meta[i].Value = value
		return
	}
	c.Meta = append(c.Meta, Pair{})
	copy(c.Meta[i+1:], c.Meta[i:])
	c.Meta[i] = Pair{name, value}
}

// RemoveMeta removes the metadata entry name and returns its value.
func (c *Change) RemoveMeta(name string) (string, bool) {
	for i, p := range c.Meta {
		if p.Name == name {
			c.Meta = append(c.Meta[:i], c.Meta[i+1:]...)
			return p.Value, true
		}
	}
	return "", false
}

func metaGet(meta []Pair, name string) (string, bool) {
	for _, p := range meta {
		if p.Name == name {
			return p.Value, true
		}
	}
	return "", false
}

func decodeValue(b []byte) (*cbor.Value, error) {
	if b == nil {
		return nil, nil
	}
	v, err := cbor.Decode(b)
	if err != nil {
		return nil, err
	}
	return &v, nil
}

// Resolution is a resolver's decision for one key: one of the versions wins (Pick), or a new
// value computed from them (Merged, Deleted).
type Resolution struct {
	merge bool
	pick  uint32
	value []byte // the merged value; nil for a merged delete
}

// Pick says the version at index (in the list the resolver was given) wins.
func Pick(index int) Resolution {
	if index < 0 || uint64(index) > 0xffff_ffff {
		panic("edgerep.Pick: version index out of range")
	}
	return Resolution{pick: uint32(index)}
}

// Merged is a merged value, to be stored as a put.
func Merged(value cbor.Value) Resolution { return Resolution{merge: true, value: value.Encode()} }

// Deleted says the merge is a delete.
func Deleted() Resolution { return Resolution{merge: true} }

// Parts is the resolution as the WIT variant: a pick's index, or a merge's value (nil for a
// delete).
func (r Resolution) Parts() (merge bool, pick uint32, value []byte) {
	return r.merge, r.pick, r.value
}

// ---- the host's services ----

// Param is the plugin's parameter name from the node's config ([plugins.NAME.params]), if set.
func Param(name string) (string, bool) { return host.Param(name) }

// ParamOr is the parameter name, or def when it is not set.
func ParamOr(name, def string) string {
	if v, ok := host.Param(name); ok {
		return v
	}
	return def
}

// ParamList is the parameter name read as a comma-separated list: items trimmed, empty items
// dropped; empty when the parameter is not set.
func ParamList(name string) []string {
	v, ok := host.Param(name)
	if !ok {
		return nil
	}
	var out []string
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// Params is all of the plugin's parameters, sorted by name.
func Params() []Pair {
	var out []Pair
	host.Params(func(name, value string) { out = append(out, Pair{name, value}) })
	return out
}

// Level is a log level.
type Level uint8

// The log levels, numbered as in the WIT enum.
const (
	LevelDebug Level = 0
	LevelInfo  Level = 1
	LevelWarn  Level = 2
	LevelError Level = 3
)

// Log writes one line to the node's log, tagged with the plugin's name (the host rate-limits
// them).
func Log(level Level, message string) { host.Log(uint8(level), message) }

// LogDebug logs at debug level.
func LogDebug(message string) { Log(LevelDebug, message) }

// LogInfo logs at info level.
func LogInfo(message string) { Log(LevelInfo, message) }

// LogWarn logs at warn level.
func LogWarn(message string) { Log(LevelWarn, message) }

// LogError logs at error level.
func LogError(message string) { Log(LevelError, message) }
