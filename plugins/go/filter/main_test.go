package main

import (
	"math"
	"testing"

	"github.com/edgerep/edgerep/guest-sdk/go/cbor"
)

// The Rust plugin's equality_rules test, and the edges of its parsing.
func TestEqualityRules(t *testing.T) {
	for _, c := range []struct {
		v    cbor.Value
		p    string
		want bool
	}{
		{cbor.Text("on"), "on", true},
		{cbor.Text("on"), "On", false},
		{cbor.Text("3"), "3.0", false},
		{cbor.Int(3), "3", true},
		{cbor.Int(3), "+3", true},
		{cbor.Int(3), "0003", true},
		{cbor.Int(3), "3.0", true},
		{cbor.Int(-3), "-3e0", true},
		{cbor.Int(3), "3.5", false},
		{cbor.Int(3), " 3", false},
		{cbor.Int(3), "three", false},
		{cbor.Int(3), "3.", true},
		{cbor.Int(0), "-0", true},
		{cbor.Int(0), "-0.0", true},
		{cbor.Int(0), ".0", true},
		{cbor.Int(0), ".", false},
		{cbor.Int(0), "", false},
		{cbor.Int(1), "0x1", false},
		{cbor.Int(1000), "1_000", false},
		{cbor.Int(100000), "1e5", true},
		{cbor.Int(100000), "1E+5", true},
		{cbor.Int(1), "1e", false},
		{cbor.Uint(math.MaxUint64), "18446744073709551615", true},
		{cbor.NegInt(math.MaxUint64), "-18446744073709551616", true},
		{cbor.NegInt(math.MaxUint64), "-18446744073709551616.0", true},
		{cbor.Uint(0), "18446744073709551616", false},
		// 2^53 + 1 is not the float 2^53, whatever rounding would say.
		{cbor.Uint(1<<53 + 1), "9007199254740992.0", false},
		{cbor.Uint(1 << 53), "9007199254740992.0", true},
		// i128 overflow falls back to f64, which is out of every CBOR integer's reach.
		{cbor.Uint(math.MaxUint64), "170141183460469231731687303715884105728", false},
		{cbor.NegInt(math.MaxUint64), "-170141183460469231731687303715884105729", false},
		{cbor.Float(2.5), "2.5", true},
		{cbor.Float(3.0), "3", true},
		{cbor.Float(0.1), "0.1", true},
		{cbor.Float(math.Inf(1)), "inf", true},
		{cbor.Float(math.Inf(-1)), "-Infinity", true},
		{cbor.Float(math.Inf(1)), "1e400", true},
		{cbor.Float(math.NaN()), "NaN", false},
		{cbor.Float(1), "0x1p0", false},
		{cbor.Bool(true), "true", true},
		{cbor.Bool(true), "1", false},
		{cbor.Bool(false), "false", true},
		{cbor.Null(), "null", false},
		{cbor.Bytes([]byte("x")), "x", false},
	} {
		if got := equal(c.v, c.p); got != c.want {
			t.Errorf("equal(%x, %q) = %v, want %v", c.v.Encode(), c.p, got, c.want)
		}
	}
}
