//! The event decoder reads strictly in one pass instead of re-encoding what it parsed: this
//! checks that what it accepts is exactly the encoder's output. Random events (every field,
//! absent and present, integers at every head size) must decode to themselves (completeness);
//! every mutation of their bytes the decoder accepts must re-encode to those very bytes
//! (soundness); and the encodings a lenient reader would take (a longer head, schema 0 or empty
//! maps written out, map keys out of order) are refused.

use std::collections::BTreeMap;

use edgerep_wire::event::{DecodeError, Dot, EventLimits, FORMAT_VERSION};
use edgerep_wire::{Event, Hlc, NodeId, Op, Value, VersionVector};
use minicbor::Encoder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Integers whose encodings take every head size.
fn int(rng: &mut StdRng) -> u64 {
    match rng.random_range(0..5) {
        0 => rng.random_range(0..24),
        1 => rng.random_range(24..256),
        2 => rng.random_range(256..65_536),
        3 => rng.random_range(65_536..1 << 32),
        _ => rng.random_range(1 << 32..u64::MAX),
    }
}

fn name(rng: &mut StdRng) -> String {
    let len = rng.random_range(1..12);
    let chars = b"abcdefghijklmnopqrstuvwxyz0123456789-._";
    let mut s = String::from("n");
    for _ in 1..len {
        s.push(chars[rng.random_range(0..chars.len())] as char);
    }
    s
}

fn value(rng: &mut StdRng) -> Value {
    let mut cbor = Vec::new();
    let mut e = Encoder::new(&mut cbor);
    match rng.random_range(0..3) {
        0 => e.u64(int(rng)).map(|_| ()),
        1 => e.str(&name(rng)).map(|_| ()),
        _ => e
            .array(2)
            .and_then(|e| e.u64(int(rng)))
            .and_then(|e| e.bool(true))
            .map(|_| ()),
    }
    .unwrap();
    Value::from_canonical(cbor, &Default::default()).unwrap()
}

fn event(rng: &mut StdRng) -> Event {
    let origin = NodeId::parse(&name(rng)).unwrap();
    let seq = int(rng).max(2);
    let mut context = VersionVector::new();
    for _ in 0..rng.random_range(0..4) {
        let o = NodeId::parse(&name(rng)).unwrap();
        if o != origin {
            context.add(&Dot {
                origin: o,
                seq: int(rng).max(1),
            });
        }
    }
    let op = if rng.random_bool(0.2) {
        Op::Delete
    } else {
        Op::Put
    };
    let mut extra = BTreeMap::new();
    if rng.random_bool(0.2) {
        extra.insert(rng.random_range(11..40), value(rng));
    }
    Event {
        format: FORMAT_VERSION,
        collection: name(rng),
        key: (0..rng.random_range(1..30)).map(|_| rng.random()).collect(),
        op,
        value: (op == Op::Put).then(|| value(rng)),
        hlc: Hlc::new(int(rng), int(rng) as u32),
        origin,
        seq,
        schema: if rng.random_bool(0.5) {
            0
        } else {
            int(rng) as u32
        },
        meta: (0..rng.random_range(0..4))
            .map(|_| (name(rng), name(rng)))
            .collect(),
        context,
        extra,
    }
}

fn mutate(rng: &mut StdRng, bytes: &[u8]) -> Vec<u8> {
    let mut m = bytes.to_vec();
    let at = rng.random_range(0..m.len());
    match rng.random_range(0..4) {
        0 => m[at] = rng.random(),
        1 => m[at] ^= 1 << rng.random_range(0..8),
        2 => m.insert(at, rng.random()),
        _ => {
            m.remove(at);
        }
    }
    m
}

#[test]
fn strict_decoding_accepts_exactly_the_encoder_s_bytes() {
    let seed = std::env::var("EDGEREP_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_e7e7_0001);
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let limits = EventLimits::default();
    let (mut accepted_mutations, mut tried) = (0, 0);
    for _ in 0..3_000 {
        let e = event(&mut rng);
        let bytes = e.encode();
        assert_eq!(Event::decode(&bytes, &limits).as_ref(), Ok(&e), "{e:?}");
        for _ in 0..60 {
            let m = mutate(&mut rng, &bytes);
            tried += 1;
            if let Ok(decoded) = Event::decode(&m, &limits) {
                accepted_mutations += 1;
                assert_eq!(
                    decoded.encode(),
                    m,
                    "accepted bytes that are not the encoding of what they decode to"
                );
            }
        }
    }
    eprintln!("{accepted_mutations} of {tried} mutations decoded (each to itself)");
    // Mutations inside keys, values and names stay valid: the soundness check ran on many.
    assert!(accepted_mutations > 1_000, "{accepted_mutations}");
}

/// Writes one field's value.
type Write<'a> = &'a dyn Fn(&mut Encoder<&mut Vec<u8>>);

/// An event encoded by hand, field number by field number, each value written by its `Write`.
fn hand_encoded(fields: &[(u64, Write<'_>)]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut e = Encoder::new(&mut buf);
    e.map(fields.len() as u64).unwrap();
    for (n, write) in fields {
        e.u64(*n).unwrap();
        write(&mut e);
    }
    buf
}

#[test]
fn encodings_a_lenient_reader_would_take_are_refused() {
    let limits = EventLimits::default();
    let base = |extra: &[(u64, Write<'_>)]| {
        let mut fields: Vec<(u64, Write<'_>)> = vec![
            (0, &|e| {
                e.u64(1).unwrap();
            }),
            (1, &|e| {
                e.str("c").unwrap();
            }),
            (2, &|e| {
                e.bytes(b"k").unwrap();
            }),
            (3, &|e| {
                e.u64(1).unwrap();
            }),
            (5, &|e| {
                e.array(2).unwrap().u64(9).unwrap().u32(0).unwrap();
            }),
            (6, &|e| {
                e.str("a").unwrap();
            }),
            (7, &|e| {
                e.u64(1).unwrap();
            }),
        ];
        fields.extend_from_slice(extra);
        hand_encoded(&fields)
    };
    // The plain delete decodes.
    assert!(Event::decode(&base(&[]), &limits).is_ok());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "schema 0 written out",
            base(&[(8, &|e| {
                e.u32(0).unwrap();
            })]),
        ),
        (
            "empty metadata written out",
            base(&[(9, &|e| {
                e.map(0).unwrap();
            })]),
        ),
        (
            "empty context written out",
            base(&[(10, &|e| {
                e.map(0).unwrap();
            })]),
        ),
        (
            "metadata keys out of order",
            base(&[(9, &|e| {
                e.map(2)
                    .unwrap()
                    .str("bb")
                    .unwrap()
                    .str("x")
                    .unwrap()
                    .str("a")
                    .unwrap()
                    .str("y")
                    .unwrap();
            })]),
        ),
        (
            "context origins out of order",
            base(&[(10, &|e| {
                e.map(2)
                    .unwrap()
                    .str("zz")
                    .unwrap()
                    .u64(1)
                    .unwrap()
                    .str("b")
                    .unwrap()
                    .u64(1)
                    .unwrap();
            })]),
        ),
    ];
    for (what, bytes) in cases {
        assert_eq!(
            Event::decode(&bytes, &limits),
            Err(DecodeError::NonCanonical),
            "{what}"
        );
    }
    // A sequence number 1 with a one-byte argument (0x18 0x01) instead of the head alone.
    let mut long = base(&[]);
    let at = long.len() - 1;
    long.splice(at.., [0x18, 0x01]);
    assert_eq!(
        Event::decode(&long, &limits),
        Err(DecodeError::NonCanonical)
    );
}

/// The writer's check without reading back (`Event::check_encoded`) accepts exactly the events
/// whose encoding `decode` accepts: random events, some with a field out of bounds (empty key,
/// bad collection name, sequence 0, a context naming the origin's own sequence, a delete with a
/// value), under random tight limits.
#[test]
fn the_writer_s_check_agrees_with_reading_back() {
    let mut rng = StdRng::seed_from_u64(0x5eed_c4ec_0002);
    let (mut refused, mut tried) = (0, 0);
    for _ in 0..20_000 {
        let mut e = event(&mut rng);
        match rng.random_range(0..24) {
            0 => e.key.clear(),
            1 => e.collection = "Bad Name".into(),
            2 => e.seq = 0,
            3 => e.context.add(&Dot {
                origin: e.origin.clone(),
                seq: e.seq,
            }),
            4 => {
                e.op = Op::Delete;
                e.value = Some(value(&mut rng));
            }
            5 => e.format = 0,
            _ => {}
        }
        let limits = EventLimits {
            max_event_bytes: rng.random_range(60..400),
            max_key_bytes: rng.random_range(10..40),
            max_meta_entries: rng.random_range(2..6),
            max_meta_bytes: rng.random_range(20..100),
            max_context_entries: rng.random_range(2..6),
            value: edgerep_wire::value::DecodeLimits {
                max_bytes: rng.random_range(4..40),
                max_depth: rng.random_range(0..3),
                max_items: rng.random_range(2..5),
            },
        };
        let bytes = e.encode();
        let read_back = Event::decode(&bytes, &limits);
        let checked = e.check_encoded(bytes.len(), &limits);
        assert_eq!(
            checked.is_ok(),
            read_back.is_ok(),
            "{e:?} under {limits:?}: check says {checked:?}, reading back {read_back:?}"
        );
        tried += 1;
        if checked.is_err() {
            refused += 1;
        }
    }
    // Both outcomes ran many times.
    assert!(
        refused > 2_000 && tried - refused > 2_000,
        "{refused} of {tried}"
    );
    // An unknown field under a known field's number is refused: read back, it is refused too
    // or becomes another event (a schema, a second value).
    let limits = EventLimits::default();
    for number in 0..11 {
        let mut e = event(&mut rng);
        e.extra.insert(number, value(&mut rng));
        assert!(e.check_encoded(e.encode().len(), &limits).is_err(), "{e:?}");
        let read_back = Event::decode(&e.encode(), &limits);
        assert!(
            read_back.as_ref() != Ok(&e),
            "{e:?} read back as {read_back:?}"
        );
    }
}
