//! Hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014).
//!
//! A timestamp is the pair (physical milliseconds, logical counter), ordered lexicographically.
//! Invariants kept by [`HlcClock`]:
//! - every timestamp it issues is greater than every timestamp it issued or observed before;
//! - it never runs ahead of the wall clock by more than the largest skew it accepted from a peer,
//!   and it refuses remote timestamps more than `max_skew_ms` ahead of its wall clock.
//!
//! The clock reads no time itself: the caller passes the wall clock in, so this stays pure.
//! Monotonicity across restarts is the caller's job: persist the last issued timestamp with the
//! writes that carry it and hand it to [`HlcClock::new`] on start.

use std::fmt;

/// A hybrid logical clock timestamp.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch (the physical part).
    pub physical_ms: u64,
    /// Counter that orders events within one physical millisecond.
    pub logical: u32,
}

impl Hlc {
    /// Builds a timestamp from its parts.
    pub const fn new(physical_ms: u64, logical: u32) -> Hlc {
        Hlc {
            physical_ms,
            logical,
        }
    }

    /// The smallest timestamp strictly greater than `self` (`self` itself at the very top,
    /// which no clock reaches: wall time plus the skew bound is far below it).
    fn successor(self) -> Hlc {
        match self.logical.checked_add(1) {
            Some(logical) => Hlc::new(self.physical_ms, logical),
            // A full counter moves into the next millisecond: still monotonic, 1 ms of drift.
            None => match self.physical_ms.checked_add(1) {
                Some(physical_ms) => Hlc::new(physical_ms, 0),
                None => self,
            },
        }
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.physical_ms, self.logical)
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A remote timestamp the clock refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "remote clock is {ahead_ms} ms ahead of the local wall clock, over the limit of {max_skew_ms} ms"
)]
pub struct SkewError {
    /// How far the remote timestamp is ahead of the local wall clock.
    pub ahead_ms: u64,
    /// The configured limit.
    pub max_skew_ms: u64,
}

/// One node's hybrid logical clock.
#[derive(Debug, Clone)]
pub struct HlcClock {
    last: Hlc,
    max_skew_ms: u64,
}

impl HlcClock {
    /// A clock that resumes after `last`, the highest timestamp issued or observed before a restart.
    pub fn new(last: Hlc, max_skew_ms: u64) -> HlcClock {
        HlcClock { last, max_skew_ms }
    }

    /// The highest timestamp issued or observed so far (what to persist).
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// How far ahead of the wall clock a peer's timestamp may be and still move this clock.
    pub fn max_skew_ms(&self) -> u64 {
        self.max_skew_ms
    }

    /// Issues a timestamp for a local event, given the wall clock in milliseconds.
    pub fn now(&mut self, wall_ms: u64) -> Hlc {
        let wall = Hlc::new(wall_ms, 0);
        self.last = if wall > self.last {
            wall
        } else {
            self.last.successor()
        };
        self.last
    }

    /// Merges a timestamp received from a peer, so later local timestamps order after it.
    /// A timestamp more than `max_skew_ms` ahead of `wall_ms` is not merged (Err); the event
    /// that carried it is still applied by the caller.
    pub fn observe(&mut self, remote: Hlc, wall_ms: u64) -> Result<(), SkewError> {
        let ahead_ms = remote.physical_ms.saturating_sub(wall_ms);
        if ahead_ms > self.max_skew_ms {
            return Err(SkewError {
                ahead_ms,
                max_skew_ms: self.max_skew_ms,
            });
        }
        self.last = self.last.max(remote);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_wall_clock_when_it_advances() {
        let mut c = HlcClock::new(Hlc::default(), 1000);
        assert_eq!(c.now(100), Hlc::new(100, 0));
        assert_eq!(c.now(105), Hlc::new(105, 0));
    }

    #[test]
    fn stays_monotonic_when_wall_clock_stalls_or_goes_back() {
        let mut c = HlcClock::new(Hlc::default(), 1000);
        let a = c.now(100);
        let b = c.now(100);
        let d = c.now(40);
        assert!(a < b && b < d, "{a:?} {b:?} {d:?}");
        assert_eq!(d, Hlc::new(100, 2));
    }

    #[test]
    fn resumes_after_persisted_timestamp_across_restart() {
        let mut c = HlcClock::new(Hlc::default(), 1000);
        for _ in 0..5 {
            c.now(500);
        }
        let persisted = c.last();
        // The restarted node's wall clock is behind the old one (clock stepped back).
        let mut restarted = HlcClock::new(persisted, 1000);
        assert!(restarted.now(10) > persisted);
    }

    /// At the very top the clock stays put rather than wrapping to a smaller timestamp.
    #[test]
    fn the_top_timestamp_has_no_smaller_successor() {
        let top = Hlc::new(u64::MAX, u32::MAX);
        assert_eq!(top.successor(), top);
        assert_eq!(Hlc::new(7, u32::MAX).successor(), Hlc::new(8, 0));
    }

    #[test]
    fn observes_remote_and_orders_after_it() {
        let mut c = HlcClock::new(Hlc::default(), 1000);
        c.now(100);
        c.observe(Hlc::new(600, 7), 100).unwrap();
        assert_eq!(c.now(100), Hlc::new(600, 8));
    }

    #[test]
    fn refuses_remote_too_far_ahead_and_stays_bounded() {
        let mut c = HlcClock::new(Hlc::default(), 1000);
        let err = c.observe(Hlc::new(5000, 0), 100).unwrap_err();
        assert_eq!(
            err,
            SkewError {
                ahead_ms: 4900,
                max_skew_ms: 1000
            }
        );
        // The refused timestamp had no effect: drift from wall time stays within the limit.
        assert_eq!(c.now(100), Hlc::new(100, 0));
        c.observe(Hlc::new(1100, 0), 100).unwrap();
        let t = c.now(100);
        assert!(t.physical_ms - 100 <= 1000);
    }

    #[test]
    fn logical_overflow_moves_to_next_millisecond() {
        let mut c = HlcClock::new(Hlc::new(7, u32::MAX), 1000);
        assert_eq!(c.now(7), Hlc::new(8, 0));
    }

    #[test]
    fn drift_bounded_over_long_random_run() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut c = HlcClock::new(Hlc::default(), 50);
        let mut wall = 1_000u64;
        let mut prev = Hlc::default();
        for _ in 0..100_000 {
            wall += rng.random_range(0..3);
            if rng.random_bool(0.1) {
                let remote = Hlc::new(wall + rng.random_range(0..80), rng.random());
                let _ = c.observe(remote, wall);
            }
            let t = c.now(wall);
            assert!(t > prev);
            // Issued timestamps never exceed the wall clock by more than the skew limit
            // (plus the millisecond a full logical counter can add).
            assert!(t.physical_ms <= wall + 50 + 1, "{t:?} at wall {wall}");
            prev = t;
        }
    }
}
