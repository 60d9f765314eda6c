// Package cbor is a small CBOR codec (RFC 8949) for plugin values.
//
// Values reach a plugin as the bytes of one CBOR data item in deterministic encoding. Decode
// turns them into a Value tree, a plugin reads and changes it (mostly maps with text keys), and
// Encode writes it back deterministically (RFC 8949 section 4.2.1):
//
//   - integers and lengths in their shortest form, definite lengths only;
//   - floats in the shortest of half, single and double precision that holds the value exactly,
//     every NaN as f9 7e00, infinities as half precision;
//   - map entries sorted by the bytes of their encoded keys (so shorter keys first, then bytewise).
//
// That is the profile the host checks, so Decode(b) followed by Encode gives back b for every
// value the host hands a plugin, and the bytes are the same as the Rust SDK's for the same value.
//
// The codec uses neither reflection nor fmt, so it works the same under TinyGo and standard Go.
package cbor

import (
	"bytes"
	"errors"
	"math"
	"slices"
	"strconv"
	"unicode/utf8"
)

// MaxDepth is the deepest nesting of arrays, maps and tags that Decode accepts.
const MaxDepth = 128

// Kind is the type of a Value.
type Kind uint8

// The kinds of values.
const (
	KindNull   Kind = iota // null (f6)
	KindBool               // false / true (f4 / f5)
	KindInt                // an integer from -2^64 to 2^64-1 (major types 0 and 1)
	KindFloat              // a float (half, single or double precision on the wire)
	KindText               // a text string
	KindBytes              // a byte string
	KindArray              // an array
	KindMap                // a map
	KindTag                // a tagged item
	KindSimple             // any other simple value: 0..19, 23 (undefined) and 32..255
)

// Value is one CBOR data item. The zero Value is null.
type Value struct {
	kind Kind
	// KindInt: the value is n, or -1-n when neg. KindFloat: the float64 bits. KindTag: the
	// tag number. KindSimple: the simple value. KindBool: 0 or 1.
	n       uint64
	neg     bool
	text    string
	bytes   []byte
	items   []Value // KindArray: the items; KindTag: the content (one item)
	entries []Entry // KindMap
}

// Entry is one key and value of a map.
type Entry struct {
	Key   Value
	Value Value
}

// Null is the null value.
func Null() Value { return Value{} }

// Bool is a boolean.
func Bool(b bool) Value {
	if b {
		return Value{kind: KindBool, n: 1}
	}
	return Value{kind: KindBool}
}

// Int is a signed integer.
func Int(i int64) Value {
	if i < 0 {
		return Value{kind: KindInt, neg: true, n: uint64(-(i + 1))}
	}
	return Value{kind: KindInt, n: uint64(i)}
}

// Uint is an unsigned integer.
func Uint(u uint64) Value { return Value{kind: KindInt, n: u} }

// NegInt is the negative integer -1-n (so NegInt(math.MaxUint64) is -2^64, the smallest CBOR
// integer).
func NegInt(n uint64) Value { return Value{kind: KindInt, neg: true, n: n} }

// Float is a float.
func Float(f float64) Value { return Value{kind: KindFloat, n: math.Float64bits(f)} }

// Text is a text string (it should be valid UTF-8).
func Text(s string) Value { return Value{kind: KindText, text: s} }

// Bytes is a byte string.
func Bytes(b []byte) Value {
	if b == nil {
		b = []byte{}
	}
	return Value{kind: KindBytes, bytes: b}
}

// Array is an array of the given items.
func Array(items ...Value) Value {
	if items == nil {
		items = []Value{}
	}
	return Value{kind: KindArray, items: items}
}

// Map is a map of the given entries (Encode sorts them).
func Map(entries ...Entry) Value {
	if entries == nil {
		entries = []Entry{}
	}
	return Value{kind: KindMap, entries: entries}
}

// Tag is the content tagged with the tag number.
func Tag(number uint64, content Value) Value {
	return Value{kind: KindTag, n: number, items: []Value{content}}
}

// Simple is a simple value (20, 21 and 22 are false, true and null).
func Simple(n uint8) Value {
	switch n {
	case 20:
		return Bool(false)
	case 21:
		return Bool(true)
	case 22:
		return Null()
	}
	return Value{kind: KindSimple, n: uint64(n)}
}

// Kind is the value's type.
func (v Value) Kind() Kind { return v.kind }

// IsNull says whether v is null.
func (v Value) IsNull() bool { return v.kind == KindNull }

// IsMap says whether v is a map.
func (v Value) IsMap() bool { return v.kind == KindMap }

// AsBool is a boolean's value.
func (v Value) AsBool() (bool, bool) { return v.n == 1, v.kind == KindBool }

// IntParts is an integer as its sign and CBOR argument: the value is n, or -1-n when neg.
func (v Value) IntParts() (neg bool, n uint64, ok bool) {
	return v.neg, v.n, v.kind == KindInt
}

// AsInt64 is an integer that fits in int64.
func (v Value) AsInt64() (int64, bool) {
	if v.kind != KindInt || v.n > math.MaxInt64 {
		return 0, false
	}
	if v.neg {
		return -1 - int64(v.n), true
	}
	return int64(v.n), true
}

// AsUint64 is an integer that fits in uint64 (a non-negative one).
func (v Value) AsUint64() (uint64, bool) {
	if v.kind != KindInt || v.neg {
		return 0, false
	}
	return v.n, true
}

// AsFloat64 is a number (integer or float) as float64; integers beyond 2^53 are rounded to the
// nearest float64 (once, as Rust's `as f64` does).
func (v Value) AsFloat64() (float64, bool) {
	switch v.kind {
	case KindFloat:
		return math.Float64frombits(v.n), true
	case KindInt:
		if !v.neg {
			return float64(v.n), true
		}
		if v.n <= math.MaxInt64 {
			return float64(-1 - int64(v.n)), true
		}
		if v.n == math.MaxUint64 {
			return -0x1p64, true
		}
		// -(n+1) with n+1 < 2^64: one rounding, then an exact negation.
		return -float64(v.n + 1), true
	}
	return 0, false
}

// AsText is a text string.
func (v Value) AsText() (string, bool) { return v.text, v.kind == KindText }

// AsBytes is a byte string.
func (v Value) AsBytes() ([]byte, bool) { return v.bytes, v.kind == KindBytes }

// AsArray is the items of an array (change them in place through the slice).
func (v Value) AsArray() ([]Value, bool) { return v.items, v.kind == KindArray }

// AsTag is a tag's number and content.
func (v Value) AsTag() (uint64, Value, bool) {
	if v.kind != KindTag {
		return 0, Value{}, false
	}
	return v.n, v.items[0], true
}

// AsSimple is a simple value's number.
func (v Value) AsSimple() (uint8, bool) { return uint8(v.n), v.kind == KindSimple }

// Entries is the entries of a map in stored order (nil if v is not a map). Change values in
// place through the slice; use Set and Remove to add and delete entries.
func (v Value) Entries() []Entry {
	if v.kind != KindMap {
		return nil
	}
	return v.entries
}

// ErrNotAMap is the error of a map operation (Set) on a value that is not a map.
var ErrNotAMap = errors.New("cbor value is not a map")

func (v *Value) find(key string) int {
	if v.kind != KindMap {
		return -1
	}
	for i := range v.entries {
		if k := &v.entries[i].Key; k.kind == KindText && k.text == key {
			return i
		}
	}
	return -1
}

// Get is the value under the text key, if v is a map that has it.
func (v Value) Get(key string) (Value, bool) {
	if i := v.find(key); i >= 0 {
		return v.entries[i].Value, true
	}
	return Value{}, false
}

// Clone is a deep copy of v: changing the copy (Set, Remove, Append, through Ref) leaves v as
// it is. A Value copied with = (or returned by Get) shares its entries and items with the
// value it came from, so Set on an existing key of the copy writes through to it.
func (v Value) Clone() Value {
	c := v
	if v.bytes != nil {
		c.bytes = append([]byte(nil), v.bytes...)
	}
	if v.items != nil {
		c.items = make([]Value, len(v.items))
		for i, item := range v.items {
			c.items[i] = item.Clone()
		}
	}
	if v.entries != nil {
		c.entries = make([]Entry, len(v.entries))
		for i, e := range v.entries {
			c.entries[i] = Entry{Key: e.Key.Clone(), Value: e.Value.Clone()}
		}
	}
	return c
}

// Ref is a pointer to the value under the text key (to change it in place), or nil.
func (v *Value) Ref(key string) *Value {
	if i := v.find(key); i >= 0 {
		return &v.entries[i].Value
	}
	return nil
}

// Has says whether v is a map with the text key.
func (v Value) Has(key string) bool { return v.find(key) >= 0 }

// Set sets the text key of a map to value (replacing the value of the first entry with that
// key, or adding an entry). It fails with ErrNotAMap, changing nothing, if v is not a map.
func (v *Value) Set(key string, value Value) error {
	if v.kind != KindMap {
		return ErrNotAMap
	}
	if i := v.find(key); i >= 0 {
		v.entries[i].Value = value
		return nil
	}
	v.entries = append(v.entries, Entry{Key: Text(key), Value: value})
	return nil
}

// Remove deletes the first entry with the text key from a map and returns its value. It
// returns false if v is not a map or has no such key.
func (v *Value) Remove(key string) (Value, bool) {
	i := v.find(key)
	if i < 0 {
		return Value{}, false
	}
	old := v.entries[i].Value
	v.entries = slices.Delete(v.entries, i, i+1)
	return old, true
}

// ---- encoding ----

// Encode is the deterministic encoding of v (see the package documentation).
func (v Value) Encode() []byte { return v.AppendEncode(nil) }

// AppendEncode appends the deterministic encoding of v to dst.
func (v Value) AppendEncode(dst []byte) []byte {
	switch v.kind {
	case KindNull:
		return append(dst, 0xf6)
	case KindBool:
		return append(dst, 0xf4+byte(v.n))
	case KindInt:
		if v.neg {
			return head(dst, 1, v.n)
		}
		return head(dst, 0, v.n)
	case KindFloat:
		return encodeFloat(dst, math.Float64frombits(v.n))
	case KindText:
		dst = head(dst, 3, uint64(len(v.text)))
		return append(dst, v.text...)
	case KindBytes:
		dst = head(dst, 2, uint64(len(v.bytes)))
		return append(dst, v.bytes...)
	case KindArray:
		dst = head(dst, 4, uint64(len(v.items)))
		for _, item := range v.items {
			dst = item.AppendEncode(dst)
		}
		return dst
	case KindMap:
		dst = head(dst, 5, uint64(len(v.entries)))
		type encoded struct {
			key   []byte
			value *Value
		}
		sorted := make([]encoded, len(v.entries))
		for i := range v.entries {
			sorted[i] = encoded{v.entries[i].Key.Encode(), &v.entries[i].Value}
		}
		slices.SortStableFunc(sorted, func(a, b encoded) int { return bytes.Compare(a.key, b.key) })
		for _, e := range sorted {
			dst = append(dst, e.key...)
			dst = e.value.AppendEncode(dst)
		}
		return dst
	case KindTag:
		dst = head(dst, 6, v.n)
		return v.items[0].AppendEncode(dst)
	default: // KindSimple
		if v.n < 24 {
			return append(dst, 0xe0|byte(v.n))
		}
		return append(dst, 0xf8, byte(v.n))
	}
}

func head(dst []byte, major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return append(dst, m|byte(n))
	case n <= math.MaxUint8:
		return append(dst, m|24, byte(n))
	case n <= math.MaxUint16:
		return append(dst, m|25, byte(n>>8), byte(n))
	case n <= math.MaxUint32:
		return append(dst, m|26, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	default:
		return append(dst, m|27, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32),
			byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
}

func encodeFloat(dst []byte, f float64) []byte {
	if f != f {
		return append(dst, 0xf9, 0x7e, 0x00)
	}
	single := float32(f)
	if float64(single) == f || math.IsInf(f, 0) {
		if half, ok := f32ToF16Exact(single); ok {
			return append(dst, 0xf9, byte(half>>8), byte(half))
		}
		b := math.Float32bits(single)
		return append(dst, 0xfa, byte(b>>24), byte(b>>16), byte(b>>8), byte(b))
	}
	b := math.Float64bits(f)
	return append(dst, 0xfb, byte(b>>56), byte(b>>48), byte(b>>40), byte(b>>32),
		byte(b>>24), byte(b>>16), byte(b>>8), byte(b))
}

// f32ToF16Exact is the half-precision bits of f if half precision holds it exactly (not NaN).
func f32ToF16Exact(f float32) (uint16, bool) {
	bits := math.Float32bits(f)
	sign := uint16(bits>>16) & 0x8000
	exp := int32(bits>>23) & 0xff
	mant := bits & 0x7f_ffff
	if exp == 0xff {
		// Infinity (NaN is handled by the caller).
		return sign | 0x7c00, mant == 0
	}
	if exp == 0 {
		// Zero, or an f32 subnormal (far below the smallest half subnormal).
		return sign, mant == 0
	}
	e := exp - 127
	if e >= -14 && e <= 15 {
		// Normal half: the low 13 mantissa bits must be zero.
		if mant&0x1fff != 0 {
			return 0, false
		}
		return sign | uint16(e+15)<<10 | uint16(mant>>13), true
	}
	if e >= -24 && e < -14 {
		// Subnormal half: value = m * 2^-24 with m < 1024.
		sig := 0x80_0000 | mant   // value = sig * 2^(e - 23)
		shift := uint32(-(e + 1)) // m = sig >> shift, 14..23
		if sig&(1<<shift-1) != 0 {
			return 0, false
		}
		return sign | uint16(sig>>shift), true
	}
	return 0, false
}

func f16ToF64(h uint16) float64 {
	exp := int((h >> 10) & 0x1f)
	mant := float64(h & 0x3ff)
	var magnitude float64
	switch {
	case exp == 0:
		magnitude = math.Ldexp(mant, -24)
	case exp == 31 && mant == 0:
		magnitude = math.Inf(1)
	case exp == 31:
		magnitude = math.NaN()
	default:
		magnitude = math.Ldexp(1+mant/1024, exp-15)
	}
	if h&0x8000 != 0 {
		return -magnitude
	}
	return magnitude
}

// ---- decoding ----

// ErrorKind says why bytes could not be decoded.
type ErrorKind uint8

// The kinds of decoding errors.
const (
	// Truncated: the input ends inside the data item (Offset is the input's length).
	Truncated ErrorKind = iota + 1
	// Malformed: not well-formed CBOR, or a text string that is not UTF-8 (Offset is where the
	// offending byte or item starts, Reason says what is wrong).
	Malformed
	// TooDeep: arrays, maps and tags nest deeper than MaxDepth (Offset: where the item starts).
	TooDeep
	// TrailingBytes: bytes follow the data item (Offset: the first extra byte).
	TrailingBytes
)

// DecodeError is why Decode failed. Its messages are the Rust SDK's, word for word.
type DecodeError struct {
	Kind   ErrorKind
	Offset int
	Reason string // for Malformed
}

func (e *DecodeError) Error() string {
	at := strconv.Itoa(e.Offset)
	switch e.Kind {
	case Truncated:
		return "cbor value ends early at byte " + at
	case Malformed:
		return "malformed cbor at byte " + at + ": " + e.Reason
	case TooDeep:
		return "cbor value nested deeper than " + strconv.Itoa(MaxDepth) + " levels at byte " + at
	default:
		return "trailing bytes after the cbor value at byte " + at
	}
}

// Decode decodes exactly one data item. It accepts any well-formed CBOR (also non-deterministic
// encodings such as indefinite lengths) and refuses trailing bytes and nesting deeper than
// MaxDepth. Byte strings are copied, so the Value does not keep b.
func Decode(b []byte) (Value, error) {
	d := decoder{b: b}
	v, err := d.item(0)
	if err != nil {
		return Value{}, err
	}
	if d.pos != len(b) {
		return Value{}, &DecodeError{Kind: TrailingBytes, Offset: d.pos}
	}
	return v, nil
}

type decoder struct {
	b   []byte
	pos int
}

// indefinite is the argument of additional information 31 (an indefinite length, or break).
const indefinite = math.MaxUint64

func (d *decoder) truncated() error { return &DecodeError{Kind: Truncated, Offset: len(d.b)} }

func (d *decoder) malformed(at int, reason string) error {
	return &DecodeError{Kind: Malformed, Offset: at, Reason: reason}
}

func (d *decoder) take(n int) ([]byte, error) {
	if len(d.b)-d.pos < n {
		return nil, d.truncated()
	}
	s := d.b[d.pos : d.pos+n]
	d.pos += n
	return s, nil
}

// head reads a head: major type, additional information, argument.
func (d *decoder) head() (byte, byte, uint64, error) {
	start := d.pos
	b, err := d.take(1)
	if err != nil {
		return 0, 0, 0, err
	}
	major, ai := b[0]>>5, b[0]&0x1f
	size := 0
	switch {
	case ai < 24:
		return major, ai, uint64(ai), nil
	case ai == 24:
		size = 1
	case ai == 25:
		size = 2
	case ai == 26:
		size = 4
	case ai == 27:
		size = 8
	case ai < 31:
		return 0, 0, 0, d.malformed(start, "reserved additional information value (28 to 30)")
	default:
		return major, ai, indefinite, nil
	}
	s, err := d.take(size)
	if err != nil {
		return 0, 0, 0, err
	}
	var arg uint64
	for _, c := range s {
		arg = arg<<8 | uint64(c)
	}
	return major, ai, arg, nil
}

// length checks a length against the input left: every byte, element or entry takes at least
// one byte, so longer lengths are refused before anything is allocated for them.
func (d *decoder) length(n uint64) (int, error) {
	if n > uint64(len(d.b)-d.pos) {
		return 0, d.truncated()
	}
	return int(n), nil
}

func (d *decoder) str(major, ai byte, arg uint64) ([]byte, error) {
	if ai != 31 {
		n, err := d.length(arg)
		if err != nil {
			return nil, err
		}
		s, err := d.take(n)
		if err != nil {
			return nil, err
		}
		return append([]byte{}, s...), nil
	}
	out := []byte{}
	for {
		chunkStart := d.pos
		m, cai, carg, err := d.head()
		if err != nil {
			return nil, err
		}
		if m == 7 && cai == 31 {
			return out, nil
		}
		if m != major || cai == 31 {
			return nil, d.malformed(chunkStart, "bad chunk in an indefinite-length string")
		}
		n, err := d.length(carg)
		if err != nil {
			return nil, err
		}
		s, err := d.take(n)
		if err != nil {
			return nil, err
		}
		out = append(out, s...)
	}
}

func (d *decoder) isBreak() bool { return d.pos < len(d.b) && d.b[d.pos] == 0xff }

func (d *decoder) item(depth int) (Value, error) {
	start := d.pos
	major, ai, arg, err := d.head()
	if err != nil {
		return Value{}, err
	}
	if ai == 31 && (major == 0 || major == 1 || major == 6) {
		return Value{}, d.malformed(start, "indefinite length on an integer or tag")
	}
	if major >= 4 && major <= 6 && depth >= MaxDepth {
		return Value{}, &DecodeError{Kind: TooDeep, Offset: start}
	}
	switch major {
	case 0:
		return Uint(arg), nil
	case 1:
		return NegInt(arg), nil
	case 2:
		b, err := d.str(2, ai, arg)
		if err != nil {
			return Value{}, err
		}
		return Bytes(b), nil
	case 3:
		b, err := d.str(3, ai, arg)
		if err != nil {
			return Value{}, err
		}
		if !utf8.Valid(b) {
			return Value{}, d.malformed(start, "text string is not valid utf-8")
		}
		return Text(string(b)), nil
	case 4:
		items := []Value{}
		if ai == 31 {
			for !d.isBreak() {
				item, err := d.item(depth + 1)
				if err != nil {
					return Value{}, err
				}
				items = append(items, item)
			}
			d.pos++
		} else {
			n, err := d.length(arg)
			if err != nil {
				return Value{}, err
			}
			items = make([]Value, 0, n)
			for range n {
				item, err := d.item(depth + 1)
				if err != nil {
					return Value{}, err
				}
				items = append(items, item)
			}
		}
		return Value{kind: KindArray, items: items}, nil
	case 5:
		entries := []Entry{}
		pair := func() error {
			k, err := d.item(depth + 1)
			if err != nil {
				return err
			}
			v, err := d.item(depth + 1)
			if err != nil {
				return err
			}
			entries = append(entries, Entry{k, v})
			return nil
		}
		if ai == 31 {
			for !d.isBreak() {
				if err := pair(); err != nil {
					return Value{}, err
				}
			}
			d.pos++
		} else {
			n, err := d.length(arg)
			if err != nil {
				return Value{}, err
			}
			entries = make([]Entry, 0, n/2)
			for range n {
				if err := pair(); err != nil {
					return Value{}, err
				}
			}
		}
		return Value{kind: KindMap, entries: entries}, nil
	case 6:
		content, err := d.item(depth + 1)
		if err != nil {
			return Value{}, err
		}
		return Tag(arg, content), nil
	}
	switch {
	case ai < 24:
		return Simple(ai), nil
	case ai == 24 && arg < 32:
		return Value{}, d.malformed(start, "simple value below 32 in the two-byte form")
	case ai == 24:
		return Simple(uint8(arg)), nil
	case ai == 25:
		return Float(f16ToF64(uint16(arg))), nil
	case ai == 26:
		return Float(float64(math.Float32frombits(uint32(arg)))), nil
	case ai == 27:
		return Float(math.Float64frombits(arg)), nil
	}
	return Value{}, d.malformed(start, "break outside an indefinite-length item")
}
