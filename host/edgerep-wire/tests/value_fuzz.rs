//! Seeded fuzzing of the deterministic CBOR codec in `edgerep_wire::value`.
//!
//! Random byte strings (biased toward valid heads), random well-formed but non-deterministic
//! encodings, and mutations of both go through `Value::from_canonical`, `Value::canonicalize` and
//! `canonical_item_len`. None may panic, their answers must agree with each other, and
//! `canonicalize` must agree with an independent reference built on minicbor's tokenizer.
//!
//! The seed is printed; set `EDGEREP_FUZZ_SEED` to replay another one.

use edgerep_wire::value::{DecodeLimits, Value, ValueError, canonical_item_len};
use minicbor::data::{Tag, Token};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DEFAULT_SEED: u64 = 0x5eed_cb0e_d6e7_2024;
const RANDOM_CASES: usize = 200_000;
const GENERATED_CASES: usize = 20_000;
const MUTATIONS_PER_GENERATED: usize = 4;

// ---------------------------------------------------------------------------------------------
// Reference: minicbor tokens, read lazily (so errors come in input order), re-encoded in
// deterministic form with minicbor's encoder and a separate float routine.

/// Why the reference rejected the input.
#[derive(Debug, PartialEq)]
enum RefError {
    /// Not well-formed (or invalid UTF-8), as far as minicbor and this reader can tell.
    Invalid,
    /// Well-formed so far, but a map has two keys with the same deterministic encoding.
    Duplicate,
}

const INFALLIBLE: &str = "writing to a Vec cannot fail";

struct Tokens<'b> {
    decoder: minicbor::Decoder<'b>,
    peeked: Option<Token<'b>>,
}

impl<'b> Tokens<'b> {
    fn next(&mut self) -> Result<Token<'b>, RefError> {
        if let Some(t) = self.peeked.take() {
            return Ok(t);
        }
        // minicbor takes `f8 00`..`f8 1f` as simple values; RFC 8949 section 3.3 calls them
        // not well-formed.
        let rest = &self.decoder.input()[self.decoder.position()..];
        if let [0xf8, n, ..] = rest
            && *n < 0x20
        {
            return Err(RefError::Invalid);
        }
        // Tokenizer's Iterator stops silently at a truncated token, so call `token` directly.
        minicbor::decode::Tokenizer::from(&mut self.decoder)
            .token()
            .map_err(|_| RefError::Invalid)
    }

    fn take_break(&mut self) -> Result<bool, RefError> {
        let t = self.next()?;
        if t == Token::Break {
            Ok(true)
        } else {
            self.peeked = Some(t);
            Ok(false)
        }
    }

    fn at_end(&self) -> bool {
        self.peeked.is_none() && self.decoder.position() == self.decoder.input().len()
    }

    /// Reads one item and returns its deterministic encoding.
    fn item(&mut self) -> Result<Vec<u8>, RefError> {
        let mut e = minicbor::Encoder::new(Vec::new());
        match self.next()? {
            Token::Bool(b) => {
                e.bool(b).expect(INFALLIBLE);
            }
            Token::Null => {
                e.null().expect(INFALLIBLE);
            }
            Token::Undefined => {
                e.undefined().expect(INFALLIBLE);
            }
            Token::Simple(n) => {
                e.simple(n).expect(INFALLIBLE);
            }
            Token::U8(n) => int(&mut e, n.into()),
            Token::U16(n) => int(&mut e, n.into()),
            Token::U32(n) => int(&mut e, n.into()),
            Token::U64(n) => int(&mut e, n.into()),
            Token::I8(n) => int(&mut e, n.into()),
            Token::I16(n) => int(&mut e, n.into()),
            Token::I32(n) => int(&mut e, n.into()),
            Token::I64(n) => int(&mut e, n.into()),
            Token::Int(n) => int(&mut e, i128::from(n)),
            Token::F16(x) | Token::F32(x) => ref_float(f64::from(x), e.writer_mut()),
            Token::F64(x) => ref_float(x, e.writer_mut()),
            Token::Bytes(b) => {
                e.bytes(b).expect(INFALLIBLE);
            }
            Token::String(s) => {
                e.str(s).expect(INFALLIBLE);
            }
            Token::BeginBytes => {
                let mut all = Vec::new();
                while !self.take_break()? {
                    match self.next()? {
                        Token::Bytes(b) => all.extend_from_slice(b),
                        _ => return Err(RefError::Invalid),
                    }
                }
                e.bytes(&all).expect(INFALLIBLE);
            }
            Token::BeginString => {
                let mut all = String::new();
                while !self.take_break()? {
                    match self.next()? {
                        Token::String(s) => all.push_str(s),
                        _ => return Err(RefError::Invalid),
                    }
                }
                e.str(&all).expect(INFALLIBLE);
            }
            Token::Array(n) => {
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(self.item()?);
                }
                e.array(n).expect(INFALLIBLE);
                items
                    .iter()
                    .for_each(|i| e.writer_mut().extend_from_slice(i));
            }
            Token::BeginArray => {
                let mut items = Vec::new();
                while !self.take_break()? {
                    items.push(self.item()?);
                }
                e.array(items.len() as u64).expect(INFALLIBLE);
                items
                    .iter()
                    .for_each(|i| e.writer_mut().extend_from_slice(i));
            }
            Token::Map(n) => {
                let mut entries = Vec::new();
                for _ in 0..n {
                    let k = self.item()?;
                    entries.push((k, self.item()?));
                }
                map(&mut e, entries)?;
            }
            Token::BeginMap => {
                let mut entries = Vec::new();
                while !self.take_break()? {
                    let k = self.item()?;
                    entries.push((k, self.item()?));
                }
                map(&mut e, entries)?;
            }
            Token::Tag(t) => {
                let content = self.item()?;
                e.tag(Tag::new(u64::from(t))).expect(INFALLIBLE);
                e.writer_mut().extend_from_slice(&content);
            }
            Token::Break => return Err(RefError::Invalid),
        }
        Ok(e.into_writer())
    }
}

fn int(e: &mut minicbor::Encoder<Vec<u8>>, n: i128) {
    let int = minicbor::data::Int::try_from(n).expect("cbor integer range");
    e.int(int).expect(INFALLIBLE);
}

fn map(
    e: &mut minicbor::Encoder<Vec<u8>>,
    mut entries: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<(), RefError> {
    entries.sort();
    if entries.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(RefError::Duplicate);
    }
    e.map(entries.len() as u64).expect(INFALLIBLE);
    for (k, v) in entries {
        e.writer_mut().extend_from_slice(&k);
        e.writer_mut().extend_from_slice(&v);
    }
    Ok(())
}

fn ref_float(x: f64, out: &mut Vec<u8>) {
    if x.is_nan() {
        out.extend_from_slice(&[0xf9, 0x7e, 0x00]);
        return;
    }
    let h = half::f16::from_f64(x);
    if h.to_f64() == x && h.is_sign_negative() == x.is_sign_negative() {
        out.push(0xf9);
        out.extend_from_slice(&h.to_be_bytes());
        return;
    }
    let s = x as f32;
    if f64::from(s) == x {
        out.push(0xfa);
        out.extend_from_slice(&s.to_be_bytes());
        return;
    }
    out.push(0xfb);
    out.extend_from_slice(&x.to_be_bytes());
}

fn reference_canonicalize(bytes: &[u8]) -> Result<Vec<u8>, RefError> {
    let mut tokens = Tokens {
        decoder: minicbor::Decoder::new(bytes),
        peeked: None,
    };
    let item = tokens.item()?;
    if !tokens.at_end() {
        return Err(RefError::Invalid);
    }
    Ok(item)
}

// ---------------------------------------------------------------------------------------------
// Inputs

/// Initial bytes worth trying often: small heads of every major type, the 1-to-8-byte argument
/// forms, indefinite starts, breaks, simple values and floats.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1f, 0x20, 0x37, 0x38, 0x39, 0x3b, 0x40, 0x41,
    0x42, 0x58, 0x59, 0x5b, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x78, 0x7b, 0x7f, 0x80, 0x81, 0x82, 0x83,
    0x98, 0x99, 0x9b, 0x9f, 0xa0, 0xa1, 0xa2, 0xa3, 0xb8, 0xbb, 0xbf, 0xc0, 0xc1, 0xc2, 0xd8, 0xd9,
    0xdb, 0xdf, 0xe0, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfe, 0xff, 0x7e, 0x3c, 0xc3,
    0xbc, 0xe6,
];

fn random_bytes(rng: &mut StdRng) -> Vec<u8> {
    // Short inputs are far likelier to be exactly one item, so favour them.
    let len = if rng.random_bool(0.5) {
        rng.random_range(0..8)
    } else {
        rng.random_range(0..64)
    };
    (0..len)
        .map(|_| match rng.random_range(0..10) {
            0..=5 => INTERESTING[rng.random_range(0..INTERESTING.len())],
            6..=7 => rng.random_range(0..0x18u8),
            _ => rng.random(),
        })
        .collect()
}

/// Appends a head, sometimes in a longer form than needed.
fn gen_head(rng: &mut StdRng, out: &mut Vec<u8>, major: u8, arg: u64) {
    let min_ai = match arg {
        0..=23 => 0,
        24..=0xff => 24,
        0x100..=0xffff => 25,
        0x1_0000..=0xffff_ffff => 26,
        _ => 27,
    };
    let ai = if rng.random_bool(0.2) {
        rng.random_range(min_ai.max(24)..=27)
    } else {
        min_ai
    };
    let mt = major << 5;
    match ai {
        0 => out.push(mt | arg as u8),
        24 => out.extend_from_slice(&[mt | 24, arg as u8]),
        25 => {
            out.push(mt | 25);
            out.extend_from_slice(&(arg as u16).to_be_bytes());
        }
        26 => {
            out.push(mt | 26);
            out.extend_from_slice(&(arg as u32).to_be_bytes());
        }
        _ => {
            out.push(mt | 27);
            out.extend_from_slice(&arg.to_be_bytes());
        }
    }
}

fn gen_arg(rng: &mut StdRng) -> u64 {
    match rng.random_range(0..6) {
        0..=2 => rng.random_range(0..24),
        3 => rng.random_range(24..=0xff),
        4 => rng.random_range(0x100..=0xffff_ffff),
        _ => rng.random(),
    }
}

fn gen_float(rng: &mut StdRng, out: &mut Vec<u8>) {
    let x: f64 = match rng.random_range(0..8) {
        0 => f64::NAN,
        1 => f64::from_bits(rng.random::<u64>() | 0x7ff0_0000_0000_0000),
        2 => [
            0.0,
            -0.0,
            1.0,
            1.5,
            -4.0,
            65504.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ][rng.random_range(0..8)],
        3 => f64::from(half::f16::from_bits(rng.random()).to_f32()),
        4 => f64::from(f32::from_bits(rng.random())),
        5 => rng.random_range(-1.0e6..1.0e6),
        _ => f64::from_bits(rng.random()),
    };
    // Pick a width that holds the value exactly (or any, for NaN).
    let widths: Vec<u8> = [25u8, 26, 27]
        .into_iter()
        .filter(|w| {
            x.is_nan()
                || match w {
                    25 => half::f16::from_f64(x).to_f64().to_bits() == x.to_bits(),
                    26 => f64::from(x as f32).to_bits() == x.to_bits(),
                    _ => true,
                }
        })
        .collect();
    match widths[rng.random_range(0..widths.len())] {
        25 => {
            out.push(0xf9);
            out.extend_from_slice(&half::f16::from_f64(x).to_bits().to_be_bytes());
        }
        26 => {
            out.push(0xfa);
            out.extend_from_slice(&(x as f32).to_bits().to_be_bytes());
        }
        _ => {
            out.push(0xfb);
            out.extend_from_slice(&x.to_bits().to_be_bytes());
        }
    }
}

fn gen_text(rng: &mut StdRng) -> String {
    let pool = ['a', 'b', 'z', '0', 'é', 'ü', '水', '😀', '\0'];
    (0..rng.random_range(0..4))
        .map(|_| pool[rng.random_range(0..pool.len())])
        .collect()
}

/// Appends a random well-formed (rarely deterministic) data item.
fn gen_item(rng: &mut StdRng, out: &mut Vec<u8>, depth: u32) {
    let leaf = depth >= 4 || rng.random_bool(0.5);
    let kind = if leaf {
        rng.random_range(0..6)
    } else {
        rng.random_range(0..10)
    };
    match kind {
        0 | 1 => {
            let arg = gen_arg(rng);
            gen_head(rng, out, kind, arg);
        }
        2 | 3 => {
            let major = if kind == 2 { 2 } else { 3 };
            let content: Vec<u8> = if major == 2 {
                (0..rng.random_range(0..5)).map(|_| rng.random()).collect()
            } else {
                gen_text(rng).into_bytes()
            };
            if rng.random_bool(0.2) {
                out.push((major << 5) | 31);
                // Split on char boundaries (text) into chunks.
                let text = String::from_utf8(content.clone()).ok();
                let mut start = 0;
                while start < content.len() {
                    let mut end = rng.random_range(start + 1..=content.len());
                    if let Some(t) = &text {
                        while !t.is_char_boundary(end) {
                            end += 1;
                        }
                    }
                    gen_head(rng, out, major, (end - start) as u64);
                    out.extend_from_slice(&content[start..end]);
                    start = end;
                }
                out.push(0xff);
            } else {
                gen_head(rng, out, major, content.len() as u64);
                out.extend_from_slice(&content);
            }
        }
        4 => gen_float(rng, out),
        5 => match rng.random_range(0..3) {
            0 => out.push(0xf4 + rng.random_range(0..4)),
            1 => out.push(0xe0 + rng.random_range(0..20)),
            _ => out.extend_from_slice(&[0xf8, rng.random_range(32..=255)]),
        },
        6 | 7 => {
            let major = if kind == 6 { 4 } else { 5 };
            let n = rng.random_range(0..4);
            let indefinite = rng.random_bool(0.3);
            if indefinite {
                out.push((major << 5) | 31);
            } else {
                gen_head(rng, out, major, n);
            }
            for _ in 0..n * if major == 5 { 2 } else { 1 } {
                gen_item(rng, out, depth + 1);
            }
            if indefinite {
                out.push(0xff);
            }
        }
        _ => {
            let tag = if rng.random_bool(0.5) {
                rng.random_range(0..40)
            } else {
                gen_arg(rng)
            };
            gen_head(rng, out, 6, tag);
            gen_item(rng, out, depth + 1);
        }
    }
}

fn mutate(rng: &mut StdRng, bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for _ in 0..rng.random_range(1..=3) {
        match rng.random_range(0..5) {
            0 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
            }
            2 => {
                let i = rng.random_range(0..=b.len());
                b.insert(i, INTERESTING[rng.random_range(0..INTERESTING.len())]);
            }
            3 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b.remove(i);
            }
            _ => {
                let i = rng.random_range(0..=b.len());
                b.truncate(i);
            }
        }
    }
    b
}

// ---------------------------------------------------------------------------------------------
// Properties

#[derive(Default, Debug)]
struct Stats {
    cases: usize,
    canonical: usize,
    canonicalized: usize,
    reference_agreed: usize,
}

fn check(bytes: &[u8], limits: &DecodeLimits, stats: &mut Stats) {
    stats.cases += 1;
    let hex = || bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let strict = Value::from_canonical(bytes.to_vec(), limits);
    let canon = Value::canonicalize(bytes, limits);
    let item_len = canonical_item_len(bytes, limits);

    if let Ok(v) = &strict {
        stats.canonical += 1;
        assert_eq!(v.as_bytes(), bytes);
        assert_eq!(
            canon.as_ref(),
            Ok(v),
            "canonicalize changed canonical input {}",
            hex()
        );
        assert_eq!(item_len, Ok(bytes.len()), "{}", hex());
        let _ = v.to_json();
        let _ = format!("{v:?}");
    }
    match &item_len {
        Ok(n) => {
            assert!(*n <= bytes.len());
            assert!(
                Value::from_canonical(bytes[..*n].to_vec(), limits).is_ok(),
                "{}",
                hex()
            );
            if *n < bytes.len() {
                assert_eq!(
                    strict,
                    Err(ValueError::TrailingBytes { offset: *n }),
                    "{}",
                    hex()
                );
            }
        }
        Err(e) => assert_eq!(strict.as_ref().err(), Some(e), "{}", hex()),
    }
    if let Ok(c) = &canon {
        stats.canonicalized += 1;
        let again = Value::from_canonical(c.as_bytes().to_vec(), limits);
        assert_eq!(
            again.as_ref(),
            Ok(c),
            "canonicalize output not canonical for {}",
            hex()
        );
        assert_eq!(
            Value::canonicalize(c.as_bytes(), limits).as_ref(),
            Ok(c),
            "{}",
            hex()
        );
        // CBOR -> JSON is lossy, but JSON -> CBOR -> JSON must give the same JSON back. (Byte
        // strings become objects, one level deeper, so TooDeep is possible.)
        let j = c.to_json();
        match Value::from_json(&j, limits) {
            Ok(w) => assert_eq!(w.to_json(), j, "json round trip of {}", hex()),
            Err(ValueError::TooDeep { .. }) => {}
            Err(e) => panic!("from_json of to_json of {} failed: {e}", hex()),
        }
    }

    // Independent reference (no limits there; these inputs are short, only depth can bite).
    let reference = reference_canonicalize(bytes);
    match (&canon, &reference) {
        (Ok(c), Ok(r)) => {
            assert_eq!(c.as_bytes(), &r[..], "reference disagrees on {}", hex());
            stats.reference_agreed += 1;
        }
        (Ok(_), Err(e)) => panic!(
            "reference rejects {} ({e:?}) but canonicalize accepts",
            hex()
        ),
        (Err(ValueError::DuplicateKey { .. }), Err(RefError::Duplicate)) => {}
        // A container claiming more items than bytes remain fails fast, before the reference
        // (which reads on) reaches a duplicate key; too deep stops before it too.
        (
            Err(ValueError::Truncated { .. } | ValueError::TooDeep { .. }),
            Err(RefError::Duplicate),
        ) => {}
        (Err(ValueError::DuplicateKey { .. }), _) | (_, Err(RefError::Duplicate)) => {
            panic!(
                "duplicate-key disagreement on {}: {canon:?} vs {reference:?}",
                hex()
            )
        }
        (Err(ValueError::TooDeep { .. }), Ok(_)) => {}
        (Err(e), Ok(_)) => panic!(
            "canonicalize rejects {} ({e}) but the reference accepts",
            hex()
        ),
        (Err(_), Err(_)) => {}
    }
}

#[test]
fn fuzz_never_panics_and_stays_consistent() {
    let seed = std::env::var("EDGEREP_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    println!("value_fuzz seed: {seed} (set EDGEREP_FUZZ_SEED to replay another)");
    let mut rng = StdRng::seed_from_u64(seed);
    let limits = DecodeLimits::default();
    let mut stats = Stats::default();

    for _ in 0..RANDOM_CASES {
        let bytes = random_bytes(&mut rng);
        check(&bytes, &limits, &mut stats);
    }
    let random_canonicalized = stats.canonicalized;

    for _ in 0..GENERATED_CASES {
        let mut bytes = Vec::new();
        gen_item(&mut rng, &mut bytes, 0);
        let before = stats.canonicalized;
        check(&bytes, &limits, &mut stats);
        if stats.canonicalized == before {
            // Only duplicate keys can make a generated item fail.
            assert!(
                matches!(
                    Value::canonicalize(&bytes, &limits),
                    Err(ValueError::DuplicateKey { .. })
                ),
                "generated item rejected: {bytes:02x?}"
            );
        }
        for _ in 0..MUTATIONS_PER_GENERATED {
            check(&mutate(&mut rng, &bytes), &limits, &mut stats);
        }
        if let Ok(c) = Value::canonicalize(&bytes, &limits) {
            for _ in 0..MUTATIONS_PER_GENERATED {
                check(&mutate(&mut rng, c.as_bytes()), &limits, &mut stats);
            }
        }
    }
    println!("{stats:?}, random inputs canonicalized: {random_canonicalized}");
    // The generators must actually reach the interesting paths.
    assert!(random_canonicalized > RANDOM_CASES / 50, "{stats:?}");
    assert!(stats.canonical > 20_000, "{stats:?}");
    assert!(stats.reference_agreed > 40_000, "{stats:?}");
}

#[test]
fn tight_limits_never_panic() {
    let mut rng = StdRng::seed_from_u64(DEFAULT_SEED ^ 1);
    let limits = DecodeLimits {
        max_bytes: 16,
        max_depth: 2,
        max_items: 5,
    };
    for _ in 0..20_000 {
        let mut bytes = Vec::new();
        gen_item(&mut rng, &mut bytes, 0);
        for candidate in [bytes.clone(), mutate(&mut rng, &bytes)] {
            let canon = Value::canonicalize(&candidate, &limits);
            if let Ok(c) = &canon {
                assert!(c.len() <= 16);
                assert_eq!(
                    Value::from_canonical(c.as_bytes().to_vec(), &limits).as_ref(),
                    Ok(c)
                );
            }
            if let Ok(v) = Value::from_canonical(candidate.clone(), &limits) {
                assert_eq!(canon, Ok(v));
            }
            let _ = canonical_item_len(&candidate, &limits);
        }
    }
}
