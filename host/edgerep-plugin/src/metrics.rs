//! Per-plugin call metrics: counts, errors by kind, and fuel and time per call as fixed-size
//! log-bucket histograms (bounded memory however many calls are recorded).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::failure::FailureKind;

/// A copy of one plugin's metrics at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Calls made (successful and failed).
    pub calls: u64,
    /// Failed calls by [`FailureKind::as_str`]; kinds that never happened are left out.
    pub errors: BTreeMap<&'static str, u64>,
    /// Fuel used by all calls together.
    pub fuel_total: u64,
    /// Fuel used per call.
    pub fuel_per_call: Summary,
    /// Wall-clock nanoseconds per call, including instantiation for fresh instances.
    pub nanos_per_call: Summary,
    /// Wall-clock nanoseconds of all calls together.
    pub nanos_total: u64,
    /// Calls per range of fuel: `(bound, calls)` counts the calls that used less than `bound`
    /// and at least the previous bound, at [`FUEL_BOUNDS`] (powers of four), then the rest
    /// under `u64::MAX`. Exact: the histogram's buckets split at every power of two.
    pub fuel_buckets: Vec<(u64, u64)>,
    /// Likewise for nanoseconds per call, at [`NANOS_BOUNDS`].
    pub nanos_buckets: Vec<(u64, u64)>,
}

/// Where [`MetricsSnapshot::fuel_buckets`] split: 2^10 (1 Ki) to 2^30 (1 Gi) fuel.
pub const FUEL_BOUNDS: [u32; 11] = [10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];

/// Where [`MetricsSnapshot::nanos_buckets`] split: 2^13 ns (8.2 µs) to 2^33 ns (8.6 s).
pub const NANOS_BOUNDS: [u32; 11] = [13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 33];

/// A summary of a distribution. `min` and `max` are exact; the percentiles are the upper bound of
/// the histogram bucket they fall in (within 12.5% above the true value), clamped to `max`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Number of values recorded.
    pub count: u64,
    /// Smallest value (0 when `count` is 0).
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest value.
    pub max: u64,
}

/// Values below this have a bucket of their own.
const EXACT: u64 = 16;
/// Sub-buckets per power of two (2^3: a relative bucket width of 12.5%).
const SUB_BITS: u32 = 3;
/// Number of buckets: the exact ones, then 8 per power of two from 2^4 to 2^63.
const BUCKETS: usize = EXACT as usize + (64 - 4) * (1 << SUB_BITS);

/// A histogram of `u64` values in [`BUCKETS`] log-spaced buckets.
#[derive(Clone)]
struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    count: u64,
    min: u64,
    max: u64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            count: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// The bucket of `v`.
    fn bucket(v: u64) -> usize {
        if v < EXACT {
            return v as usize;
        }
        let exponent = 63 - v.leading_zeros(); // at least 4
        let sub = (v >> (exponent - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        EXACT as usize + ((exponent - 4) as usize) * (1 << SUB_BITS) + sub as usize
    }

    /// The largest value that falls in bucket `i`.
    fn upper_bound(i: usize) -> u64 {
        if i < EXACT as usize {
            return i as u64;
        }
        let i = i - EXACT as usize;
        let exponent = (i >> SUB_BITS) as u32 + 4;
        let sub = (i & ((1 << SUB_BITS) - 1)) as u64;
        // The bucket holds [(8 + sub) << shift, (9 + sub) << shift).
        let end = (u128::from((1u64 << SUB_BITS) + sub + 1)) << (exponent - SUB_BITS);
        u64::try_from(end - 1).unwrap_or(u64::MAX)
    }

    fn record(&mut self, v: u64) {
        self.counts[Self::bucket(v)] += 1;
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// The upper bound of the bucket holding the value of rank `ceil(q * count)`.
    fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::upper_bound(i).clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// Values per range: below `2^e` (and at least the previous bound) for each exponent `e` of
    /// `exponents` (ascending, at least 4), then the rest (bound `u64::MAX`).
    fn ranges(&self, exponents: &[u32]) -> Vec<(u64, u64)> {
        let mut out = Vec::with_capacity(exponents.len() + 1);
        let mut i = 0;
        for &e in exponents {
            let bound = 1u64 << e;
            let mut n = 0;
            // Every bucket lies wholly below or wholly at or above a power of two.
            while i < BUCKETS && Self::upper_bound(i) < bound {
                n += self.counts[i];
                i += 1;
            }
            out.push((bound, n));
        }
        out.push((u64::MAX, self.counts[i..].iter().sum()));
        out
    }

    fn summary(&self) -> Summary {
        if self.count == 0 {
            return Summary::default();
        }
        Summary {
            count: self.count,
            min: self.min,
            p50: self.quantile(0.50),
            p99: self.quantile(0.99),
            max: self.max,
        }
    }
}

/// The live metrics of one plugin (shared by its clones; one short lock per call).
pub(crate) struct Metrics {
    inner: Mutex<Inner>,
}

struct Inner {
    calls: u64,
    errors: [u64; FailureKind::ALL.len()],
    fuel_total: u64,
    nanos_total: u64,
    fuel: Histogram,
    nanos: Histogram,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics {
            inner: Mutex::new(Inner {
                calls: 0,
                errors: [0; FailureKind::ALL.len()],
                fuel_total: 0,
                nanos_total: 0,
                fuel: Histogram::new(),
                nanos: Histogram::new(),
            }),
        }
    }

    /// Records one call: its failure kind (none on success), fuel used and duration.
    pub(crate) fn record(&self, failure: Option<FailureKind>, fuel: u64, nanos: u64) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.calls += 1;
        if let Some(kind) = failure {
            m.errors[kind as usize] += 1;
        }
        m.fuel_total = m.fuel_total.saturating_add(fuel);
        m.nanos_total = m.nanos_total.saturating_add(nanos);
        m.fuel.record(fuel);
        m.nanos.record(nanos);
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        MetricsSnapshot {
            calls: m.calls,
            errors: FailureKind::ALL
                .into_iter()
                .zip(m.errors)
                .filter(|&(_, n)| n > 0)
                .map(|(k, n)| (k.as_str(), n))
                .collect(),
            fuel_total: m.fuel_total,
            fuel_per_call: m.fuel.summary(),
            nanos_per_call: m.nanos.summary(),
            nanos_total: m.nanos_total,
            fuel_buckets: m.fuel.ranges(&FUEL_BOUNDS),
            nanos_buckets: m.nanos.ranges(&NANOS_BOUNDS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_cover_their_values() {
        let mut previous_upper = None;
        for i in 0..BUCKETS {
            let upper = Histogram::upper_bound(i);
            if let Some(p) = previous_upper {
                assert!(upper > p, "bucket {i}: {upper} after {p}");
            }
            assert_eq!(Histogram::bucket(upper), i, "upper bound of bucket {i}");
            previous_upper = Some(upper);
        }
        assert_eq!(Histogram::upper_bound(BUCKETS - 1), u64::MAX);
        for v in [0, 1, 15, 16, 17, 100, 1000, 3500, 1 << 40, u64::MAX] {
            let i = Histogram::bucket(v);
            assert!(Histogram::upper_bound(i) >= v);
            if i > 0 {
                assert!(Histogram::upper_bound(i - 1) < v);
            }
        }
    }

    #[test]
    fn ranges_split_exactly_at_powers_of_two() {
        let mut h = Histogram::new();
        for v in [0, 1023, 1024, 4095, 4096, 5000, 1 << 30, u64::MAX] {
            h.record(v);
        }
        let r = h.ranges(&[10, 12, 30]);
        assert_eq!(
            r,
            [(1 << 10, 2), (1 << 12, 2), (1 << 30, 2), (u64::MAX, 2)],
            "below 1024: 0, 1023; below 4096: 1024, 4095; below 2^30: 4096, 5000"
        );
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), h.count);
    }

    #[test]
    fn summary_is_close() {
        let mut h = Histogram::new();
        for v in 1..=1000 {
            h.record(v);
        }
        let s = h.summary();
        assert_eq!((s.count, s.min, s.max), (1000, 1, 1000));
        assert!((500..=563).contains(&s.p50), "{s:?}");
        assert!((990..=1000).contains(&s.p99), "{s:?}");
        assert_eq!(Histogram::new().summary(), Summary::default());
    }

    #[test]
    fn errors_by_kind() {
        let m = Metrics::new();
        m.record(None, 10, 100);
        m.record(Some(FailureKind::OutOfFuel), 50, 100);
        m.record(Some(FailureKind::OutOfFuel), 50, 100);
        let s = m.snapshot();
        assert_eq!(s.calls, 3);
        assert_eq!(s.fuel_total, 110);
        assert_eq!(
            s.errors.into_iter().collect::<Vec<_>>(),
            [("out-of-fuel", 2)]
        );
    }
}
