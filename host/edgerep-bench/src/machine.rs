//! Whether the machine was quiet enough for a run's figures to mean something. These machines
//! are shared: another tenant's load, the hypervisor taking CPU time (steal) or a limit that
//! moves during the run make ratios unreliable, so every benchmark that compares against a
//! limit says so instead of printing figures as if they held.

use std::time::Duration;

use serde_json::{Value as Json, json};

/// CPU busy on the whole machine, before the run, above which it was not idle (fraction).
const BUSY_BEFORE_MAX: f64 = 0.5;
/// Steal time during the run above which the hypervisor took too much (fraction of CPU time).
const STEAL_MAX: f64 = 0.05;
/// How far the limit may move between the start and the end of a run (fraction of the higher).
const LIMIT_SPREAD_MAX: f64 = 0.2;

/// The machine's CPU time counters (`/proc/stat`, first line): user, nice, system, idle,
/// iowait, irq, softirq, steal, in clock ticks.
fn cpu_ticks() -> Option<[u64; 8]> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let mut out = [0u64; 8];
    for (slot, field) in out.iter_mut().zip(line.split_whitespace()) {
        *slot = field.parse().ok()?;
    }
    Some(out)
}

/// (busy, steal, total) ticks between two samples.
fn delta(a: &[u64; 8], b: &[u64; 8]) -> (u64, u64, u64) {
    let d: Vec<u64> = a.iter().zip(b).map(|(x, y)| y.saturating_sub(*x)).collect();
    let idle = d[3] + d[4];
    let busy = d[0] + d[1] + d[2] + d[5] + d[6] + d[7];
    (busy, d[7], busy + idle)
}

/// Watches the machine from before a run to its end.
pub(crate) struct Watch {
    /// CPU busy on the whole machine while this process was idle, just before the run.
    busy_before: Option<f64>,
    start: Option<[u64; 8]>,
}

impl Watch {
    /// Samples the machine for half a second while this process does nothing, then starts
    /// counting steal time.
    pub(crate) fn start() -> Watch {
        let first = cpu_ticks();
        std::thread::sleep(Duration::from_millis(500));
        let start = cpu_ticks();
        let busy_before = match (&first, &start) {
            (Some(a), Some(b)) => {
                let (busy, _, total) = delta(a, b);
                (total > 0).then(|| busy as f64 / total as f64)
            }
            _ => None,
        };
        Watch { busy_before, start }
    }

    /// The verdict at the end of the run; `limit_before` and `limit_after` are the limit the
    /// run compares with, measured at both ends.
    pub(crate) fn verdict(&self, limit_before: f64, limit_after: f64) -> Verdict {
        self.verdict_of(Some((limit_before, limit_after)))
    }

    /// The verdict of a run that compares figures taken together, without a limit measured
    /// at both ends (the load before it and the steal during it only).
    pub(crate) fn verdict_alone(&self) -> Verdict {
        self.verdict_of(None)
    }

    fn verdict_of(&self, limit: Option<(f64, f64)>) -> Verdict {
        let steal = match (&self.start, cpu_ticks()) {
            (Some(a), Some(b)) => {
                let (_, steal, total) = delta(a, &b);
                (total > 0).then(|| steal as f64 / total as f64)
            }
            _ => None,
        };
        let spread = limit.map(|(before, after)| {
            let higher = before.max(after);
            if higher > 0.0 {
                (before - after).abs() / higher
            } else {
                0.0
            }
        });
        let mut reasons = Vec::new();
        if let Some(b) = self.busy_before.filter(|b| *b > BUSY_BEFORE_MAX) {
            reasons.push(format!(
                "the machine was {:.0}% busy before the run began (other work; at most {:.0}%)",
                b * 100.0,
                BUSY_BEFORE_MAX * 100.0
            ));
        }
        if let Some(s) = steal.filter(|s| *s > STEAL_MAX) {
            reasons.push(format!(
                "the hypervisor took {:.1}% of CPU time during the run (steal; at most {:.0}%)",
                s * 100.0,
                STEAL_MAX * 100.0
            ));
        }
        if let (Some(spread), Some((before, after))) = (spread, limit)
            && spread > LIMIT_SPREAD_MAX
        {
            reasons.push(format!(
                "the limit moved {:.0}% between the start and the end ({before:.0} and {after:.0} events/s; at most {:.0}%)",
                spread * 100.0,
                LIMIT_SPREAD_MAX * 100.0
            ));
        }
        Verdict {
            busy_before: self.busy_before,
            steal,
            spread,
            reasons,
        }
    }
}

/// What the watch found.
pub(crate) struct Verdict {
    busy_before: Option<f64>,
    steal: Option<f64>,
    spread: Option<f64>,
    /// Why the figures may not mean much; empty when the machine was quiet enough.
    pub(crate) reasons: Vec<String>,
}

impl Verdict {
    /// One line for the report.
    pub(crate) fn line(&self) -> String {
        let pct = |x: Option<f64>| x.map_or("unknown".to_owned(), |x| format!("{:.1}%", x * 100.0));
        let mut measured = format!(
            "busy before the run {}, steal during it {}",
            pct(self.busy_before),
            pct(self.steal)
        );
        if let Some(spread) = self.spread {
            measured.push_str(&format!(", the limit moved {:.1}%", spread * 100.0));
        }
        if self.reasons.is_empty() {
            format!("machine check: quiet enough ({measured})")
        } else {
            format!(
                "machine check: TOO LOADED for this run's figures to mean much: {} ({measured})",
                self.reasons.join("; ")
            )
        }
    }

    /// The same for the JSON summary.
    pub(crate) fn json(&self) -> Json {
        json!({
            "quiet": self.reasons.is_empty(),
            "busy_before": self.busy_before,
            "steal": self.steal,
            "limit_spread": self.spread,
            "reasons": self.reasons,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moving_limit_is_called_out_and_a_steady_one_is_not() {
        let watch = Watch {
            busy_before: Some(0.1),
            start: None,
        };
        let steady = watch.verdict(100.0, 95.0);
        assert!(steady.reasons.is_empty(), "{:?}", steady.reasons);
        assert!(steady.line().starts_with("machine check: quiet enough"));
        let moved = watch.verdict(100.0, 60.0);
        assert_eq!(moved.reasons.len(), 1, "{:?}", moved.reasons);
        assert!(moved.line().contains("TOO LOADED"), "{}", moved.line());
        let busy = Watch {
            busy_before: Some(0.9),
            start: None,
        }
        .verdict(100.0, 100.0);
        assert!(busy.reasons[0].contains("90% busy"), "{:?}", busy.reasons);
        let alone = watch.verdict_alone();
        assert!(alone.reasons.is_empty());
        assert!(!alone.line().contains("limit"), "{}", alone.line());
    }

    #[test]
    fn proc_stat_reads_on_linux() {
        if cfg!(target_os = "linux") {
            let t = cpu_ticks().expect("/proc/stat");
            assert!(t.iter().sum::<u64>() > 0);
        }
    }
}
