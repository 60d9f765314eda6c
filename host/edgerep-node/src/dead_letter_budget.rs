//! What `limits.max_dead_letters` and `limits.max_dead_letter_bytes` bound: the dead letters
//! the store holds plus those promised to batches and requests on their way to the committer,
//! by count and by bytes.
//!
//! Invariant: `held` is what the store holds, as the committer (the one writer of dead letters)
//! read it after its last commit that added or removed some; `promised` is the sum of the live
//! [`DeadLetterPromise`]s. A promise is taken under the lock against the limits, so two batches
//! or requests prepared at once never both take the last place. After a commit the committer
//! sets `held` and takes the committed promise out of `promised` in one step (see
//! [`DeadLetterBudget::settle`]): nothing is counted twice or missed at any moment. (A count
//! read from the store beside a count of what is queued could be: a commit lands between the
//! two reads.) A promise dropped unkept (its batch or request failed or never reached the
//! committer) gives its places back.

use std::sync::{Arc, Mutex};

use edgerep_config::LimitsConfig;
use edgerep_store::DeadLetterUsage;

/// The limits, from `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterLimits {
    /// `max_dead_letters`.
    pub count: u64,
    /// `max_dead_letter_bytes`.
    pub bytes: u64,
}

impl DeadLetterLimits {
    /// The limits `limits` sets.
    pub fn of(limits: &LimitsConfig) -> DeadLetterLimits {
        DeadLetterLimits {
            count: limits.max_dead_letters,
            bytes: limits.max_dead_letter_bytes,
        }
    }
}

/// Dead letters that would pass a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLettersFull {
    /// Held and promised.
    pub used: DeadLetterUsage,
    /// The dead letters asked for.
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The limits in force.
    pub limits: DeadLetterLimits,
}

impl std::fmt::Display for DeadLettersFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let DeadLettersFull {
            used,
            count,
            bytes,
            limits,
        } = self;
        let passed = if used.count.saturating_add(*count) > limits.count {
            format!("limits.max_dead_letters ({})", limits.count)
        } else {
            format!("limits.max_dead_letter_bytes ({})", limits.bytes)
        };
        write!(
            f,
            "the node holds (or is about to hold) {} dead letter(s) of {} bytes together, and {count} more of {bytes} bytes would pass {passed}",
            used.count, used.bytes
        )
    }
}

impl std::error::Error for DeadLettersFull {}

#[derive(Debug, Default)]
struct Counts {
    held: DeadLetterUsage,
    promised: DeadLetterUsage,
}

impl Counts {
    fn used(&self) -> DeadLetterUsage {
        DeadLetterUsage {
            count: self.held.count.saturating_add(self.promised.count),
            bytes: self.held.bytes.saturating_add(self.promised.bytes),
        }
    }
}

/// The node's count of dead letters held and promised (clones share it).
#[derive(Debug, Clone, Default)]
pub struct DeadLetterBudget {
    counts: Arc<Mutex<Counts>>,
}

impl DeadLetterBudget {
    /// A count starting at what the store holds.
    pub fn new(held: DeadLetterUsage) -> DeadLetterBudget {
        DeadLetterBudget {
            counts: Arc::new(Mutex::new(Counts {
                held,
                promised: DeadLetterUsage::default(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts stay consistent through a panic elsewhere: every change is one step.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Dead letters held and promised.
    pub fn used(&self) -> DeadLetterUsage {
        self.lock().used()
    }

    /// An empty promise, to take places in.
    pub fn promise(&self) -> DeadLetterPromise {
        DeadLetterPromise {
            taken: DeadLetterUsage::default(),
            counts: Some(self.counts.clone()),
        }
    }

    /// After a commit that added or removed dead letters: `held` is what the store holds now
    /// (read before anything else commits), and the promises `kept`, of the dead letters that
    /// commit added, count no longer as promised (they are in `held`). Without `held` (the
    /// read failed), `kept` counts as held: a removal is then missed, which only counts high.
    pub(crate) fn settle(&self, held: Option<DeadLetterUsage>, kept: Vec<DeadLetterPromise>) {
        let mut counts = self.lock();
        for mut kept in kept {
            let taken = std::mem::take(&mut kept.taken);
            counts.promised.count = counts.promised.count.saturating_sub(taken.count);
            counts.promised.bytes = counts.promised.bytes.saturating_sub(taken.bytes);
            if held.is_none() {
                counts.held.count = counts.held.count.saturating_add(taken.count);
                counts.held.bytes = counts.held.bytes.saturating_add(taken.bytes);
            }
        }
        if let Some(held) = held {
            counts.held = held;
        }
    }
}

/// Places under the limits taken for dead letters not yet committed: given back when dropped,
/// unless settled by the committer once they are committed.
#[derive(Debug, Default)]
pub struct DeadLetterPromise {
    taken: DeadLetterUsage,
    /// None for the empty promise of a request that sets nothing aside.
    counts: Option<Arc<Mutex<Counts>>>,
}

impl DeadLetterPromise {
    /// Takes places for `count` more dead letters of `bytes` together, all or none.
    pub fn take(
        &mut self,
        limits: DeadLetterLimits,
        count: u64,
        bytes: u64,
    ) -> Result<(), DeadLettersFull> {
        if count == 0 {
            return Ok(());
        }
        let full = |used| DeadLettersFull {
            used,
            count,
            bytes,
            limits,
        };
        let Some(counts) = &self.counts else {
            return Err(full(DeadLetterUsage::default()));
        };
        let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
        let used = counts.used();
        let fits = used
            .count
            .checked_add(count)
            .is_some_and(|c| c <= limits.count)
            && used
                .bytes
                .checked_add(bytes)
                .is_some_and(|b| b <= limits.bytes);
        if !fits {
            return Err(full(used));
        }
        counts.promised.count += count;
        counts.promised.bytes += bytes;
        self.taken.count += count;
        self.taken.bytes += bytes;
        Ok(())
    }

    /// Places taken.
    pub fn taken(&self) -> DeadLetterUsage {
        self.taken
    }
}

impl Drop for DeadLetterPromise {
    fn drop(&mut self) {
        if let Some(counts) = &self.counts
            && self.taken.count > 0
        {
            let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
            counts.promised.count = counts.promised.count.saturating_sub(self.taken.count);
            counts.promised.bytes = counts.promised.bytes.saturating_sub(self.taken.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(count: u64, bytes: u64) -> DeadLetterUsage {
        DeadLetterUsage { count, bytes }
    }

    const LIMITS: DeadLetterLimits = DeadLetterLimits {
        count: 3,
        bytes: 100,
    };

    #[test]
    fn places_are_taken_up_to_either_limit_settled_when_committed_and_given_back_when_dropped() {
        let budget = DeadLetterBudget::new(usage(1, 10));
        let mut a = budget.promise();
        let mut b = budget.promise();
        assert_eq!(a.take(LIMITS, 1, 10), Ok(()));
        // One place left under 3: two at once are refused, and take nothing.
        let full = b.take(LIMITS, 2, 2).unwrap_err();
        assert_eq!(full.used, usage(2, 20));
        assert!(
            full.to_string()
                .contains("holds (or is about to hold) 2 dead letter(s) of 20 bytes")
                && full.to_string().contains("limits.max_dead_letters (3)"),
            "{full}"
        );
        // Room by count, not by bytes.
        let full = b.take(LIMITS, 1, 81).unwrap_err();
        assert!(
            full.to_string()
                .ends_with("1 more of 81 bytes would pass limits.max_dead_letter_bytes (100)"),
            "{full}"
        );
        assert_eq!(b.take(LIMITS, 1, 80), Ok(()));
        assert_eq!(budget.used(), usage(3, 100));
        assert!(b.take(LIMITS, 1, 0).is_err());
        // a's dead letter committed: the committer reads the store's 2 and settles a.
        budget.settle(Some(usage(2, 20)), vec![a]);
        assert_eq!(budget.used(), usage(3, 100), "b still promised");
        drop(b);
        assert_eq!(budget.used(), usage(2, 20), "b's places given back");
        // A removal: the committer reads the store after it.
        budget.settle(Some(usage(1, 5)), Vec::new());
        assert_eq!(budget.used(), usage(1, 5));
        assert!(DeadLetterPromise::default().take(LIMITS, 1, 1).is_err());
        assert_eq!(DeadLetterPromise::default().take(LIMITS, 0, 0), Ok(()));
    }

    #[test]
    fn concurrent_takers_never_pass_the_limits() {
        let budget = DeadLetterBudget::default();
        let limits = DeadLetterLimits {
            count: 100,
            bytes: 1000,
        };
        // Every taker keeps its promises until all are done.
        let kept: Vec<DeadLetterPromise> = std::thread::scope(|s| {
            let takers: Vec<_> = (0..4)
                .map(|i| {
                    let budget = budget.clone();
                    s.spawn(move || {
                        let mut promises = Vec::new();
                        for _ in 0..1000 {
                            let mut p = budget.promise();
                            if p.take(limits, 1, 5 + i).is_ok() {
                                promises.push(p);
                            }
                        }
                        promises
                    })
                })
                .collect();
            takers.into_iter().flat_map(|t| t.join().unwrap()).collect()
        });
        let bytes: u64 = kept.iter().map(|p| p.taken().bytes).sum();
        assert_eq!(kept.len(), 100, "the count binds: at most 8 bytes each");
        assert_eq!(budget.used(), usage(100, bytes));
        drop(kept);
        assert_eq!(budget.used(), usage(0, 0));
    }
}
