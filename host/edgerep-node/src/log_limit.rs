//! Log lines that others can cause once per event (a peer's events refused, a plugin failing
//! on each of them) are written at most once per interval per call site, with how many were
//! left out since: a peer sending a stream of such events must not fill the disk with lines.
//! The counters still count every event (and dead letters keep them, up to
//! `limits.max_dead_letters`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One call site's limit (a `static`).
pub(crate) struct Throttle {
    every: Duration,
    last: Mutex<Option<Instant>>,
    left_out: AtomicU64,
}

impl Throttle {
    pub(crate) const fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: Mutex::new(None),
            left_out: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written now; if so, how many lines were left out since the last.
    pub(crate) fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    /// [`Throttle::allow`] at `now`.
    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| now.saturating_duration_since(at) >= self.every) {
            *last = Some(now);
            Some(self.left_out.swap(0, Ordering::Relaxed))
        } else {
            self.left_out.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The interval of the limits of per-event lines.
pub(crate) const EVERY: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let t = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(t.allow_at(at(0)), Some(0));
        assert_eq!(t.allow_at(at(1)), None);
        assert_eq!(t.allow_at(at(9)), None);
        assert_eq!(t.allow_at(at(10)), Some(2));
        assert_eq!(t.allow_at(at(11)), None);
    }
}
