//! What `limits.max_dead_letters` bounds: the dead letters the store holds plus those promised
//! to batches and requests on their way to the committer.
//!
//! Invariant: `used` = dead letters in the store + dead letters of live promises. A promise is
//! taken with one compare-and-swap against the limit, so two batches or requests prepared at
//! once never both take the last place. The committer, the one writer of dead letters, keeps a
//! promise when its dead letters are committed (they go on counting, now as held) and counts
//! what it removes; a promise dropped unkept (its batch or request failed or never reached the
//! committer) gives its places back. Nothing is counted twice or missed, at any moment: a count
//! read from the store beside a count of what is queued could be, as a commit lands between
//! the two reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The node's count of dead letters held and promised (clones share it).
#[derive(Debug, Clone)]
pub struct DeadLetterBudget {
    used: Arc<AtomicU64>,
}

impl DeadLetterBudget {
    /// A count starting at the `held` dead letters the store holds.
    pub fn new(held: u64) -> DeadLetterBudget {
        DeadLetterBudget {
            used: Arc::new(AtomicU64::new(held)),
        }
    }

    /// Dead letters held and promised.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// An empty promise, to take places in.
    pub fn promise(&self) -> DeadLetterPromise {
        DeadLetterPromise {
            taken: 0,
            used: Some(self.used.clone()),
        }
    }

    /// `n` dead letters were removed from the store (committed).
    pub(crate) fn removed(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

/// Places under the limit taken for dead letters not yet committed: given back when dropped,
/// unless [`DeadLetterPromise::kept`].
#[derive(Debug, Default)]
pub struct DeadLetterPromise {
    taken: u64,
    /// None for the empty promise of a request that sets nothing aside.
    used: Option<Arc<AtomicU64>>,
}

impl DeadLetterPromise {
    /// Takes `n` more places, all or none: `Err(used)` (held and promised) when they would
    /// pass `max`.
    pub fn take(&mut self, max: u64, n: u64) -> Result<(), u64> {
        if n == 0 {
            return Ok(());
        }
        let Some(used) = &self.used else {
            return Err(max);
        };
        used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
            u.checked_add(n).filter(|&after| after <= max)
        })?;
        self.taken += n;
        Ok(())
    }

    /// Places taken.
    pub fn len(&self) -> u64 {
        self.taken
    }

    /// Whether no place is taken.
    pub fn is_empty(&self) -> bool {
        self.taken == 0
    }

    /// Its dead letters are committed: their places stay taken (as held) until they are
    /// removed ([`DeadLetterBudget::removed`]).
    pub fn kept(mut self) {
        self.taken = 0;
    }
}

impl Drop for DeadLetterPromise {
    fn drop(&mut self) {
        if let Some(used) = &self.used
            && self.taken > 0
        {
            used.fetch_sub(self.taken, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_taken_up_to_the_limit_kept_when_committed_and_given_back_when_dropped() {
        let budget = DeadLetterBudget::new(1);
        let mut a = budget.promise();
        let mut b = budget.promise();
        assert_eq!(a.take(3, 1), Ok(()));
        // One place left under 3: two at once are refused, and take nothing.
        assert_eq!(b.take(3, 2), Err(2));
        assert_eq!(b.take(3, 1), Ok(()));
        assert_eq!(b.take(3, 1), Err(3));
        assert_eq!((a.len(), b.len(), budget.used()), (1, 1, 3));
        a.kept();
        drop(b);
        assert_eq!(
            budget.used(),
            2,
            "a's dead letter held, b's place given back"
        );
        budget.removed(2);
        assert_eq!(budget.used(), 0);
        budget.removed(1);
        assert_eq!(budget.used(), 0, "never below zero");
        assert_eq!(DeadLetterPromise::default().take(5, 1), Err(5));
        assert_eq!(DeadLetterPromise::default().take(5, 0), Ok(()));
    }

    #[test]
    fn concurrent_takers_never_pass_the_limit() {
        let budget = DeadLetterBudget::new(0);
        let kept: Vec<u64> = std::thread::scope(|s| {
            let takers: Vec<_> = (0..4)
                .map(|_| {
                    let budget = budget.clone();
                    s.spawn(move || {
                        let mut taken = 0;
                        for _ in 0..1000 {
                            let mut p = budget.promise();
                            if p.take(100, 1).is_ok() {
                                taken += 1;
                                p.kept();
                            }
                        }
                        taken
                    })
                })
                .collect();
            takers.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(kept.iter().sum::<u64>(), 100);
        assert_eq!(budget.used(), 100);
    }
}
