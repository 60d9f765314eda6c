//! Flat byte keys for the state and changelog tables.
//!
//! A state key is `collection 0x00 key`, a changelog key `origin 0x00 sequence (8 bytes, big
//! endian)`. Collection names and node ids never contain 0x00 (their syntax allows only
//! `[A-Za-z0-9._-]`), so byte order of these keys is (collection, key) order and (origin,
//! sequence) order, and `name 0x00` is the exact prefix of one collection or origin. Flat keys
//! compare with one memcmp, cheaper in redb than tuple keys.

/// The state-table key of `key` in `collection`.
pub(crate) fn state_key(collection: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(collection.len() + 1 + key.len());
    k.extend_from_slice(collection.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// Splits a state-table key into (collection, key); `None` if it has no separator or the
/// collection is not UTF-8 (a corrupt row).
pub(crate) fn split_state_key(k: &[u8]) -> Option<(&str, &[u8])> {
    let at = k.iter().position(|&b| b == 0)?;
    Some((std::str::from_utf8(&k[..at]).ok()?, &k[at + 1..]))
}

/// The changelog key of event `seq` from `origin`.
pub(crate) fn log_key(origin: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(origin.len() + 9);
    k.extend_from_slice(origin.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence number in a changelog key of `origin`; `None` if the key belongs to another origin.
pub(crate) fn log_seq(origin: &str, k: &[u8]) -> Option<u64> {
    let rest = k.strip_prefix(origin.as_bytes())?.strip_prefix(&[0])?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_follows_collection_then_key() {
        let mut keys = [
            state_key("a.b", b"\x00"),
            state_key("a", b"\xff"),
            state_key("a", b""),
            state_key("ab", b"a"),
            state_key("a", b"a"),
        ];
        keys.sort();
        let split: Vec<_> = keys.iter().map(|k| split_state_key(k).unwrap()).collect();
        assert_eq!(
            split,
            [
                ("a", &b""[..]),
                ("a", b"a"),
                ("a", b"\xff"),
                ("a.b", b"\x00"),
                ("ab", b"a")
            ]
        );
    }

    #[test]
    fn log_keys_order_by_sequence_within_origin() {
        assert!(log_key("n", 255) < log_key("n", 256));
        assert!(log_key("n", u64::MAX) < log_key("n-2", 0));
        assert_eq!(log_seq("n", &log_key("n", 77)), Some(77));
        assert_eq!(log_seq("n", &log_key("n-2", 77)), None);
    }
}
