//! Lines a peer can make this node repeat every few seconds for ever (a dial refused by a peer
//! that removed this node, a handshake failing against a decommissioned site): each distinct
//! line is written as a warning once per [`REPEAT_EVERY`], with how many times it came since;
//! the repeats in between are written at debug level.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one distinct line is written as a warning.
pub(crate) const REPEAT_EVERY: Duration = Duration::from_secs(600);

/// Distinct lines remembered at most (past it they are forgotten, and each is a warning again).
const REMEMBERED: usize = 256;

/// One call site's lines (a `static`).
#[derive(Default)]
pub(crate) struct Repeats {
    seen: Mutex<Option<HashMap<String, (Instant, u64)>>>,
}

impl Repeats {
    pub(crate) const fn new() -> Repeats {
        Repeats {
            seen: Mutex::new(None),
        }
    }

    /// Whether `line` is to be written as a warning now; if so, how many times it came since
    /// it last was (0 the first time).
    pub(crate) fn warn(&self, line: &str) -> Option<u64> {
        self.warn_at(line, Instant::now())
    }

    fn warn_at(&self, line: &str, now: Instant) -> Option<u64> {
        // One failure is one line whatever the time it names (a certificate's verification
        // time, this clock's reading): those numbers made each repeat a new line.
        let line = &without_long_numbers(line);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let seen = seen.get_or_insert_with(HashMap::new);
        if let Some((at, since)) = seen.get_mut(line) {
            if now.saturating_duration_since(*at) < REPEAT_EVERY {
                *since += 1;
                return None;
            }
            let repeated = *since;
            (*at, *since) = (now, 0);
            return Some(repeated);
        }
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
        seen.insert(line.to_owned(), (now, 0));
        Some(0)
    }

    /// Forgets the lines that start with `prefix` (a peer's, once it answered): the next such
    /// failure is a warning again, not a debug line within the interval of an earlier one.
    pub(crate) fn forget(&self, prefix: &str) {
        let prefix = without_long_numbers(prefix);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(seen) = seen.as_mut() {
            seen.retain(|line, _| !line.starts_with(&prefix));
        }
    }
}

/// `text` with every run of six digits or more left out (times, counters; not ports), for
/// telling repeats of one failure apart from others.
fn without_long_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut digits = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if digits.len() < 6 {
            out.push_str(&digits);
        }
        digits.clear();
        out.push(c);
    }
    out.pop();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Repeats of one failure are told apart from others by their words and short numbers
    /// (ports, node ids), not by a time in them.
    #[test]
    fn long_numbers_are_left_out_of_a_repeat() {
        assert_eq!(
            without_long_numbers("site-2 at 127.0.0.1:54321: time 1796593031 (UNIX), 123456"),
            "site-2 at 127.0.0.1:54321: time  (UNIX), "
        );
        assert_eq!(without_long_numbers("node-10 1234"), "node-10 1234");
        let r = Repeats::new();
        let now = Instant::now();
        assert_eq!(r.warn_at("expired: time 1796593031", now), Some(0));
        assert_eq!(r.warn_at("expired: time 1796593032", now), None);
        assert_eq!(r.warn_at("expired at 127.0.0.1:54322", now), Some(0));
    }

    #[test]
    fn a_line_is_a_warning_once_per_interval_with_its_repeats() {
        let r = Repeats::new();
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(r.warn_at("refused", at(0)), Some(0));
        assert_eq!(r.warn_at("refused", at(3)), None);
        assert_eq!(r.warn_at("other", at(3)), Some(0));
        assert_eq!(r.warn_at("refused", at(6)), None);
        assert_eq!(r.warn_at("refused", at(600)), Some(2));
        assert_eq!(r.warn_at("refused", at(601)), None);
    }

    #[test]
    fn a_peer_that_answered_warns_again_at_its_next_failure() {
        let r = Repeats::new();
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(r.warn_at("n2 refused", at(0)), Some(0));
        assert_eq!(r.warn_at("n3 refused", at(0)), Some(0));
        assert_eq!(r.warn_at("n2 refused", at(3)), None);
        r.forget("n2 ");
        assert_eq!(
            r.warn_at("n2 refused", at(6)),
            Some(0),
            "n2 answered in between"
        );
        assert_eq!(r.warn_at("n3 refused", at(6)), None, "n3 did not");
    }
}
