package cbor

import (
	"encoding/hex"
	"errors"
	"math"
	"strings"
	"testing"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

func enc(v Value) string { return hex.EncodeToString(v.Encode()) }

func ints(is ...int64) []Value {
	out := make([]Value, len(is))
	for i, n := range is {
		out[i] = Int(n)
	}
	return out
}

// RFC 8949 appendix A, restricted to items whose encoding there is already deterministic (the
// same table as the Rust SDK's test).
func TestRFC8949AppendixA(t *testing.T) {
	cases := []struct {
		v Value
		h string
	}{
		{Int(0), "00"},
		{Int(1), "01"},
		{Int(10), "0a"},
		{Int(23), "17"},
		{Int(24), "1818"},
		{Int(25), "1819"},
		{Int(100), "1864"},
		{Int(1000), "1903e8"},
		{Int(1000000), "1a000f4240"},
		{Int(1000000000000), "1b000000e8d4a51000"},
		{Uint(18446744073709551615), "1bffffffffffffffff"},
		{NegInt(18446744073709551615), "3bffffffffffffffff"},
		{Int(-1), "20"},
		{Int(-10), "29"},
		{Int(-100), "3863"},
		{Int(-1000), "3903e7"},
		{Float(0.0), "f90000"},
		{Float(math.Copysign(0, -1)), "f98000"},
		{Float(1.0), "f93c00"},
		{Float(1.1), "fb3ff199999999999a"},
		{Float(1.5), "f93e00"},
		{Float(65504.0), "f97bff"},
		{Float(100000.0), "fa47c35000"},
		{Float(3.4028234663852886e+38), "fa7f7fffff"},
		{Float(1.0e+300), "fb7e37e43c8800759c"},
		{Float(5.960464477539063e-8), "f90001"},
		{Float(0.00006103515625), "f90400"},
		{Float(-4.0), "f9c400"},
		{Float(-4.1), "fbc010666666666666"},
		{Float(math.Inf(1)), "f97c00"},
		{Float(math.NaN()), "f97e00"},
		{Float(math.Inf(-1)), "f9fc00"},
		{Bool(false), "f4"},
		{Bool(true), "f5"},
		{Null(), "f6"},
		{Simple(23), "f7"},
		{Simple(16), "f0"},
		{Simple(255), "f8ff"},
		{Tag(1, Int(1363896240)), "c11a514b67b0"},
		{Tag(2, Bytes(unhex(t, "010000000000000000"))), "c249010000000000000000"},
		{Bytes(nil), "40"},
		{Bytes([]byte{1, 2, 3, 4}), "4401020304"},
		{Text(""), "60"},
		{Text("a"), "6161"},
		{Text("IETF"), "6449455446"},
		{Text("\"\\"), "62225c"},
		{Text("\u00fc"), "62c3bc"},
		{Text("\u6c34"), "63e6b0b4"},
		{Text("\U00010151"), "64f0908591"},
		{Array(), "80"},
		{Array(ints(1, 2, 3)...), "83010203"},
		{Array(Int(1), Array(ints(2, 3)...), Array(ints(4, 5)...)), "8301820203820405"},
		{Map(), "a0"},
		{Map(Entry{Int(1), Int(2)}, Entry{Int(3), Int(4)}), "a201020304"},
		{Map(Entry{Text("a"), Int(1)}, Entry{Text("b"), Array(ints(2, 3)...)}), "a26161016162820203"},
	}
	for _, c := range cases {
		if got := enc(c.v); got != c.h {
			t.Errorf("encode: got %s, want %s", got, c.h)
		}
		back, err := Decode(unhex(t, c.h))
		if err != nil {
			t.Errorf("decode %s: %v", c.h, err)
			continue
		}
		if got := enc(back); got != c.h {
			t.Errorf("decode then encode %s: got %s", c.h, got)
		}
		if f, ok := c.v.AsFloat64(); ok && c.v.Kind() == KindFloat {
			bf, _ := back.AsFloat64()
			if f != f {
				if bf == bf {
					t.Errorf("%s: NaN decoded as %v", c.h, bf)
				}
			} else if math.Float64bits(bf) != math.Float64bits(f) {
				t.Errorf("%s: decoded %v, want %v", c.h, bf, f)
			}
		}
	}
}

func TestMapKeysSortedByEncoding(t *testing.T) {
	// Shorter encodings first, then bytewise: 10, 100, -1, "z", "aa", [100], [-1], false.
	v := Map(
		Entry{Bool(false), Int(8)},
		Entry{Array(Int(-1)), Int(7)},
		Entry{Array(Int(100)), Int(6)},
		Entry{Text("aa"), Int(5)},
		Entry{Text("z"), Int(4)},
		Entry{Int(-1), Int(3)},
		Entry{Int(100), Int(2)},
		Entry{Int(10), Int(1)},
	)
	want := strings.ReplaceAll("a8 0a01 186402 2003 617a04 62616105 81186406 812007 f408", " ", "")
	if got := enc(v); got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	// Text keys: the length is in the first byte, so "qty" (63) < "item" (64) < "price" (65).
	v = Map(
		Entry{Text("price"), Float(0.25)},
		Entry{Text("qty"), Int(40)},
		Entry{Text("item"), Text("bolts")},
	)
	want = strings.ReplaceAll("a3 63717479 1828 646974656d 65626f6c7473 657072696365 f93400", " ", "")
	if got := enc(v); got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestShortestFloats(t *testing.T) {
	cases := []struct {
		f float64
		h string
	}{
		{68.0, "f95440"},
		{-40.0, "f9d100"},
		{0.5, "f93800"},
		{0.1, "fb3fb999999999999a"},
		{70.7, "fb4051accccccccccd"},
		{65505.0, "fa477fe100"}, // not a half (10-bit mantissa), exact in single
		{65536.0, "fa47800000"}, // above the half range
		{65552.0, "fa47800800"}, // the enrich vector's single-precision result
		{21.5, "f94d60"},        // the enrich vector's float input
		{math.Ldexp(1, -24), "f90001"},
		{math.Ldexp(1, -25), "fa33000000"}, // below the smallest half subnormal
		{3 * math.Ldexp(1, -24), "f90003"},
		{math.Ldexp(1, -14) * 1.5, "f90600"},
		{1 + math.Ldexp(1, -10), "f93c01"},
		{1 + math.Ldexp(1, -11), "fa3f801000"},
		{16777217.0, "fb4170000010000000"}, // 2^24 + 1: not exact in single
	}
	for _, c := range cases {
		if got := enc(Float(c.f)); got != c.h {
			t.Errorf("%v: got %s, want %s", c.f, got, c.h)
		}
		back, err := Decode(unhex(t, c.h))
		if err != nil {
			t.Fatalf("%s: %v", c.h, err)
		}
		if f, _ := back.AsFloat64(); math.Float64bits(f) != math.Float64bits(c.f) {
			t.Errorf("%s: decoded %v, want %v", c.h, f, c.f)
		}
	}
	// Every half value survives f16 -> f64 -> f16.
	for h := 0; h <= 0xffff; h++ {
		f := f16ToF64(uint16(h))
		if f != f {
			continue
		}
		if got, ok := f32ToF16Exact(float32(f)); !ok || got != uint16(h) {
			t.Errorf("%04x: got %04x %v", h, got, ok)
		}
	}
}

// The computation of the enrich plugin (x * 9 / 5 + 32 in float64) on the vectors' inputs,
// encoded: the bytes the vectors' value_hex holds for the result field.
func TestEnrichFloats(t *testing.T) {
	for _, c := range []struct {
		x float64
		h string
	}{
		{20, "f95440"},               // 68.0: half
		{21.5, "fb4051accccccccccd"}, // 70.7: double
		{36400, "fa47800800"},        // 65552.0: single
		{-40, "f9d100"},              // -40.0: half
	} {
		f := float64(float64(c.x*9)/5) + 32
		if got := enc(Float(f)); got != c.h {
			t.Errorf("%v -> %v: got %s, want %s", c.x, f, got, c.h)
		}
	}
}

func TestDecodeNonDeterministicThenEncodeDeterministically(t *testing.T) {
	for _, c := range []struct{ in, canonical string }{
		{"1800", "00"},
		{"1b0000000000000001", "01"},
		{"fa3fc00000", "f93e00"},
		{"fb3ff8000000000000", "f93e00"},
		{"9f0102ff", "820102"},
		{"5f41014102ff", "420102"},
		{"7f6161626262ff", "63616262"},
		{"bf616202616101ff", "a2616101616202"},
		{"f97e01", "f97e00"},
		{"b900020000 0101", "a20000 0101"},
	} {
		v, err := Decode(unhex(t, c.in))
		if err != nil {
			t.Fatalf("%s: %v", c.in, err)
		}
		if got, want := enc(v), strings.ReplaceAll(c.canonical, " ", ""); got != want {
			t.Errorf("%s: got %s, want %s", c.in, got, want)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, c := range []struct {
		h       string
		kind    ErrorKind
		offset  int
		message string
	}{
		{"", Truncated, 0, "cbor value ends early at byte 0"},
		{"19 01", Truncated, 2, "cbor value ends early at byte 2"},
		{"62 61", Truncated, 2, ""},
		{"9b ffffffffffffffff", Truncated, 9, ""},
		{"82 01", Truncated, 2, ""},
		{"9f 01", Truncated, 2, ""},
		{"0000", TrailingBytes, 1, "trailing bytes after the cbor value at byte 1"},
		{"1c", Malformed, 0, "malformed cbor at byte 0: reserved additional information value (28 to 30)"},
		{"ff", Malformed, 0, "malformed cbor at byte 0: break outside an indefinite-length item"},
		{"1f", Malformed, 0, "malformed cbor at byte 0: indefinite length on an integer or tag"},
		{"62 c328", Malformed, 0, "malformed cbor at byte 0: text string is not valid utf-8"},
		{"f8 10", Malformed, 0, "malformed cbor at byte 0: simple value below 32 in the two-byte form"},
		{"5f 6161 ff", Malformed, 1, "malformed cbor at byte 1: bad chunk in an indefinite-length string"},
	} {
		_, err := Decode(unhex(t, c.h))
		var de *DecodeError
		if !errors.As(err, &de) || de.Kind != c.kind || de.Offset != c.offset {
			t.Errorf("%q: got %v (%#v)", c.h, err, de)
			continue
		}
		if c.message != "" && err.Error() != c.message {
			t.Errorf("%q: message %q, want %q", c.h, err.Error(), c.message)
		}
	}
	deep := append(make([]byte, 0, MaxDepth+1), make([]byte, MaxDepth)...)
	for i := range deep {
		deep[i] = 0x81
	}
	if _, err := Decode(append(deep, 0x00)); err != nil {
		t.Errorf("depth %d: %v", MaxDepth, err)
	}
	_, err := Decode(append(append(deep, 0x81), 0x00))
	var de *DecodeError
	if !errors.As(err, &de) || de.Kind != TooDeep || de.Offset != MaxDepth {
		t.Errorf("too deep: %v", err)
	} else if want := "cbor value nested deeper than 128 levels at byte 128"; err.Error() != want {
		t.Errorf("too deep: %q", err.Error())
	}
	// A huge nesting depth fails without overflowing the stack.
	huge := make([]byte, 1_000_000)
	for i := range huge {
		huge[i] = 0x81
	}
	if _, err := Decode(huge); err == nil {
		t.Error("a million nested arrays decoded")
	}
}

func TestMapHelpers(t *testing.T) {
	v, err := Decode(unhex(t, "a2 6161 01 6162 f5"))
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := v.Get("a"); !ok || enc(a) != "01" {
		t.Errorf("a: %v %v", a, ok)
	}
	if b, ok := v.Get("b"); !ok {
		t.Error("no b")
	} else if bb, ok := b.AsBool(); !ok || !bb {
		t.Error("b is not true")
	}
	if _, ok := v.Get("c"); ok || v.Has("c") || !v.Has("a") {
		t.Error("Has/Get")
	}
	if err := v.Set("a", Text("x")); err != nil {
		t.Fatal(err)
	}
	if err := v.Set("c", Float(2.5)); err != nil {
		t.Fatal(err)
	}
	if old, ok := v.Remove("b"); !ok || enc(old) != "f5" {
		t.Errorf("remove b: %v %v", old, ok)
	}
	if _, ok := v.Remove("b"); ok {
		t.Error("removed b twice")
	}
	if v.Ref("zz") != nil {
		t.Error("Ref of a missing key")
	}
	*v.Ref("c") = Null()
	if got := enc(v); got != "a2616161786163f6" {
		t.Errorf("got %s", got)
	}
	var keys []string
	for _, e := range v.Entries() {
		k, _ := e.Key.AsText()
		keys = append(keys, k)
	}
	if strings.Join(keys, ",") != "a,c" {
		t.Errorf("keys %v", keys)
	}

	notMap := Int(3)
	if err := notMap.Set("a", Int(1)); err != ErrNotAMap || err.Error() != "cbor value is not a map" {
		t.Errorf("Set on an int: %v", err)
	}
	if _, ok := notMap.Remove("a"); ok {
		t.Error("Remove on an int")
	}
	if _, ok := notMap.Get("a"); ok || notMap.Entries() != nil {
		t.Error("Get/Entries on an int")
	}
	if enc(Map()) != "a0" || !Map().IsMap() || !Null().IsNull() {
		t.Error("empty map / null")
	}
	m := Map()
	if err := m.Set("k", Int(1)); err != nil || enc(m) != "a1616b01" {
		t.Errorf("set on an empty map: %s %v", enc(m), err)
	}
}

func TestAccessors(t *testing.T) {
	if f, ok := Int(3).AsFloat64(); !ok || f != 3 {
		t.Error("int as float")
	}
	if f, ok := Float(2.5).AsFloat64(); !ok || f != 2.5 {
		t.Error("float as float")
	}
	if _, ok := Text("3").AsFloat64(); ok {
		t.Error("text as float")
	}
	if _, ok := Int(-1).AsUint64(); ok {
		t.Error("-1 as uint")
	}
	if i, ok := Int(-1).AsInt64(); !ok || i != -1 {
		t.Error("-1 as int")
	}
	if i, ok := Int(math.MinInt64).AsInt64(); !ok || i != math.MinInt64 {
		t.Error("min int64")
	}
	if _, ok := NegInt(math.MaxInt64 + 1).AsInt64(); ok {
		t.Error("-2^63-1 as int64")
	}
	if u, ok := Uint(math.MaxUint64).AsUint64(); !ok || u != math.MaxUint64 {
		t.Error("max uint64")
	}
	for _, c := range []struct {
		v Value
		f float64
	}{
		{NegInt(math.MaxUint64), -0x1p64},
		{NegInt(math.MaxInt64), -0x1p63},
		{NegInt(1<<53 + 1), -(1<<53 + 2)},
		// -(2^64 - 2^11 + 1) rounds once to -(2^64 - 2^11), not to -2^64.
		{NegInt(1<<64 - 1<<11), -(1<<64 - 1<<11)},
		{Uint(1<<53 + 1), 1 << 53},
	} {
		if f, ok := c.v.AsFloat64(); !ok || f != c.f {
			t.Errorf("%s as float: %v, want %v", enc(c.v), f, c.f)
		}
	}
	if b, ok := Bytes([]byte{1}).AsBytes(); !ok || len(b) != 1 {
		t.Error("bytes")
	}
	if n, c, ok := Tag(24, Int(1)).AsTag(); !ok || n != 24 || enc(c) != "01" {
		t.Error("tag")
	}
	if items, ok := Array(Null()).AsArray(); !ok || len(items) != 1 {
		t.Error("array")
	}
	if s, ok := Simple(23).AsSimple(); !ok || s != 23 {
		t.Error("simple")
	}
	if Simple(21).Kind() != KindBool || Simple(22).Kind() != KindNull {
		t.Error("simple 21 and 22 are true and null")
	}
}

func TestRoundTripOfDeterministicValues(t *testing.T) {
	for _, h := range []string{
		"a3 63717479 1828 646974656d 65626f6c7473 657072696365 f93400",
		"d818 44 a1616101",
		"83 f7 f0 f8ff",
		"a2 01 80 6161 a0",
		"c1 fb 41d4 52d9 ec00 0000",
		"3bffffffffffffffff",
		// The enrich vectors' outputs.
		"a26763656c73697573146a66616872656e68656974f95440",
		"a3647369746561616763656c73697573f94d606a66616872656e68656974fb4051accccccccccd",
		"a26674656d705f6338276674656d705f66f9d100",
	} {
		b := unhex(t, h)
		v, err := Decode(b)
		if err != nil {
			t.Fatalf("%s: %v", h, err)
		}
		if got := hex.EncodeToString(v.Encode()); got != hex.EncodeToString(b) {
			t.Errorf("%s: got %s", h, got)
		}
	}
}

func FuzzDecodeEncode(f *testing.F) {
	for _, s := range []string{"a26161016162f5", "9f0102ff", "c249010000000000000000", "f97e01"} {
		b, _ := hex.DecodeString(s)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := Decode(b)
		if err != nil {
			return
		}
		// The deterministic encoding decodes to the same deterministic encoding.
		once := v.Encode()
		w, err := Decode(once)
		if err != nil {
			t.Fatalf("re-decoding %x: %v", once, err)
		}
		if twice := w.Encode(); string(twice) != string(once) {
			t.Fatalf("%x -> %x -> %x", b, once, twice)
		}
	})
}

// A Value copied with = shares its entries: Set on an existing key of the copy writes through.
// Clone's copy does not.
func TestCloneDoesNotShare(t *testing.T) {
	orig := Map(Entry{Key: Text("k"), Value: Int(1)}, Entry{Key: Text("a"), Value: Array(Int(1))})
	shared := orig
	if err := shared.Set("k", Int(2)); err != nil {
		t.Fatal(err)
	}
	if got, _ := orig.Get("k"); enc(got) != "02" {
		t.Fatalf("a copy made with = does not share: %v", got)
	}
	clone := orig.Clone()
	if err := clone.Set("k", Int(3)); err != nil {
		t.Fatal(err)
	}
	clone.Ref("a").items[0] = Int(9)
	if got, _ := orig.Get("k"); enc(got) != "02" {
		t.Fatalf("Set on the clone changed the original: %v", got)
	}
	if got, _ := orig.Get("a"); enc(got) != "8101" {
		t.Fatalf("the clone's array is the original's: %v", got)
	}
}
