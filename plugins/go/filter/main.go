// Command filter drops events whose field equals a value. The Go build of plugins/filter.
//
// Params (both required): field and equals. The event is dropped (no changes) when its value is
// a map whose field equals equals:
//   - a text field equals when it is exactly the param text;
//   - a number field (integer or float) equals when the param parses as a number (as Rust's
//     str::parse::<i128> or str::parse::<f64> would) of the same numeric value (so 3 equals "3"
//     and "3.0", and 2.5 equals "2.5");
//   - a boolean field equals "true" or "false";
//   - any other field (null, bytes, array, map, tag) never equals.
//
// Everything else (deletes, non-map values, missing field) passes unchanged. A missing param is
// the error "filter needs params field and equals".
package main

import (
	"errors"
	"math"
	"math/bits"
	"strconv"

	edgerep "github.com/edgerep/edgerep/guest-sdk/go"
	"github.com/edgerep/edgerep/guest-sdk/go/cbor"
	"github.com/edgerep/edgerep/guest-sdk/go/transform"
)

func init() { transform.Register(filter) }

var errParams = errors.New("filter needs params field and equals")

func filter(event edgerep.Event) ([]edgerep.Change, error) {
	field, ok1 := edgerep.Param("field")
	equals, ok2 := edgerep.Param("equals")
	if !ok1 || !ok2 {
		return nil, errParams
	}
	value, err := event.ValueCBOR()
	if err != nil {
		return nil, err
	}
	if value != nil {
		if v, ok := value.Get(field); ok && equal(v, equals) {
			return []edgerep.Change{}, nil
		}
	}
	return []edgerep.Change{edgerep.ChangeFrom(event)}, nil
}

// equal says whether the field value v equals the param text p (see the package documentation).
func equal(v cbor.Value, p string) bool {
	switch v.Kind() {
	case cbor.KindText:
		s, _ := v.AsText()
		return s == p
	case cbor.KindBool:
		b, _ := v.AsBool()
		if b {
			return p == "true"
		}
		return p == "false"
	case cbor.KindInt:
		neg, n, _ := v.IntParts()
		switch pneg, pn, status := parseI128(p); status {
		case parsed:
			return neg == pneg && n == pn
		case outOfRange:
			// A valid i128 that no CBOR integer reaches: not equal, and Rust does not try f64.
			return false
		}
		f, ok := parseF64(p)
		return ok && intEqualsFloat(neg, n, f)
	case cbor.KindFloat:
		x, _ := v.AsFloat64()
		f, ok := parseF64(p)
		return ok && x == f
	}
	return false
}

// intEqualsFloat is an exact comparison of the integer (-1-n if neg, else n) and a float (no
// rounding of the integer), as Rust's `f.fract() == 0.0 && (-2^127..2^127).contains(&f) &&
// f as i128 == i`.
func intEqualsFloat(neg bool, n uint64, f float64) bool {
	if f != f || f < -0x1p127 || f >= 0x1p127 || f != math.Trunc(f) {
		return false
	}
	if f >= 0 {
		return !neg && f < 0x1p64 && uint64(f) == n
	}
	// -1-n == f, so n == -f - 1, with -f integral in (0, 2^127].
	m := -f
	if !neg || m > 0x1p64 {
		return false
	}
	if m == 0x1p64 {
		return n == 1<<64-1
	}
	return uint64(m)-1 == n
}

// How parseI128 ended.
const (
	invalid    = iota // not an i128: Rust's parse::<i128> fails (bad syntax or overflow)
	parsed            // an i128 that a CBOR integer can be: (neg, n) as in cbor.Value.IntParts
	outOfRange        // an i128 beyond -2^64..2^64-1: no CBOR integer equals it
)

// parseI128 parses p as Rust's str::parse::<i128> does: an optional + or -, then one or more
// ASCII digits, nothing else, within -2^127..2^127-1.
func parseI128(p string) (neg bool, n uint64, status int) {
	s := p
	minus := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		minus = s[0] == '-'
		s = s[1:]
	}
	if s == "" {
		return false, 0, invalid
	}
	// The magnitude, as 128 bits (hi, lo), at most 2^127.
	var hi, lo uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return false, 0, invalid
		}
		if hi > math.MaxUint64/10 {
			return false, 0, invalid
		}
		carry, low := bits.Mul64(lo, 10)
		low, c2 := bits.Add64(low, uint64(c-'0'), 0)
		hi, lo = hi*10+carry+c2, low
		if hi > 1<<63 || (hi == 1<<63 && lo != 0) {
			return false, 0, invalid // over 2^127: overflow for both signs
		}
	}
	if !minus {
		if hi >= 1<<63 {
			return false, 0, invalid // 2^127 is over i128::MAX
		}
		if hi != 0 {
			return false, 0, outOfRange
		}
		return false, lo, parsed
	}
	if hi == 0 && lo == 0 {
		return false, 0, parsed // -0 is 0
	}
	// The value is -M = -1-n with n = M-1.
	if hi == 0 {
		return true, lo - 1, parsed
	}
	if hi == 1 && lo == 0 {
		return true, math.MaxUint64, parsed
	}
	return false, 0, outOfRange
}

// parseF64 parses p as Rust's str::parse::<f64> does: an optional sign, then inf, infinity or
// nan (ASCII case ignored), or digits with an optional point and fraction (at least one digit in
// all) and an optional exponent (e or E, optional sign, digits), correctly rounded.
func parseF64(p string) (float64, bool) {
	s := p
	negative := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		negative = s[0] == '-'
		s = s[1:]
	}
	if asciiFold(s, "inf") || asciiFold(s, "infinity") {
		if negative {
			return math.Inf(-1), true
		}
		return math.Inf(1), true
	}
	if asciiFold(s, "nan") {
		return math.NaN(), true
	}
	i, digits := 0, 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
		digits++
	}
	if i < len(s) && s[i] == '.' {
		i++
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
			digits++
		}
	}
	if digits == 0 {
		return 0, false
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		expDigits := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
			expDigits++
		}
		if expDigits == 0 {
			return 0, false
		}
	}
	if i != len(s) {
		return 0, false
	}
	// p is now a decimal number strconv reads the same way (correctly rounded); out of range it
	// answers ±Inf with ErrRange, which is Rust's answer too.
	f, err := strconv.ParseFloat(p, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return 0, false
	}
	return f, true
}

// asciiFold says whether s equals word (lowercase ASCII) ignoring ASCII case.
func asciiFold(s, word string) bool {
	if len(s) != len(word) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i]|0x20 != word[i] {
			return false
		}
	}
	return true
}

func main() {}
