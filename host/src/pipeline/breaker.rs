//! The circuit breaker: when a transform fails more than a set share of the
//! records over a window (a bad deploy), the pipeline stops before that batch
//! is delivered, instead of filling the dead-letter queue with a whole
//! topic. The batches handled before it are delivered and committed first
//! (what the sinks hold is made durable); nothing from the batch that
//! tripped it on is committed: those records are read again once the
//! transform is fixed and the pipeline restarted.

use super::summary::StepStats;
use crate::config::CircuitBreakerConfig;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Why the breaker opened.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "circuit breaker open: transform `{transform}` failed {failed} of the last {records} records ({:.0} % > {:.0} % allowed); the pipeline stops without committing this batch — fix the transform (see the dead-letter queue) and start it again",
    100.0 * *failed as f64 / (*records).max(1) as f64,
    100.0 * limit
)]
pub struct CircuitOpen {
    /// The transform at fault.
    pub transform: String,
    /// Records it failed in the window.
    pub failed: u64,
    /// Records in the window.
    pub records: u64,
    /// The allowed failure share.
    pub limit: f64,
}

impl CircuitOpen {
    /// What was measured, without what happens next: `failed 1000 of its
    /// 1000 records (100 % > 50 % allowed)`.
    pub fn measured(&self) -> String {
        format!(
            "failed {} of its {} records ({:.0} % > {:.0} % allowed)",
            self.failed,
            self.records,
            100.0 * self.failed as f64 / self.records.max(1) as f64,
            100.0 * self.limit
        )
    }
}

/// Failure shares per transform over a sliding window of recent batches.
#[derive(Debug)]
pub(crate) struct Breaker {
    config: CircuitBreakerConfig,
    windows: Mutex<HashMap<String, Window>>,
}

#[derive(Debug, Default)]
struct Window {
    batches: VecDeque<(u64, u64)>,
    records: u64,
    failed: u64,
}

impl Breaker {
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Breaker {
            config,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Adds one batch's counters; errors when a transform's failure share
    /// over a full window is above the limit.
    pub fn observe(&self, steps: &[StepStats]) -> Result<(), CircuitOpen> {
        if !self.config.enabled {
            return Ok(());
        }
        let size = self.config.window_records.max(1);
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        for s in steps {
            if s.records_in == 0 {
                continue;
            }
            let w = windows.entry(s.name.clone()).or_default();
            w.batches.push_back((s.records_in, s.failed));
            w.records += s.records_in;
            w.failed += s.failed;
            // Keep the newest batches that cover the window.
            while let Some(&(r, f)) = w.batches.front() {
                if w.records - r < size {
                    break;
                }
                w.records -= r;
                w.failed -= f;
                w.batches.pop_front();
            }
            if w.records >= size && w.failed as f64 > self.config.failure_ratio * w.records as f64 {
                return Err(CircuitOpen {
                    transform: s.name.clone(),
                    failed: w.failed,
                    records: w.records,
                    limit: self.config.failure_ratio,
                });
            }
        }
        Ok(())
    }

    /// Forgets `transform`'s window (its module was swapped back: the
    /// failures were the other version's).
    pub fn reset(&self, transform: &str) {
        self.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(transform);
    }

    /// Whether the breaker would open if `transform`'s current batch of
    /// `records` ended with `failed` failures: checked while a batch is
    /// being isolated, so that a bad deploy stops the pipeline as its
    /// failures happen rather than after hours of bisection. Changes
    /// nothing.
    pub fn would_open(&self, transform: &str, records: u64, failed: u64) -> bool {
        if !self.config.enabled || records == 0 {
            return false;
        }
        let size = self.config.window_records.max(1);
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let (mut total, mut bad) = (records, failed);
        if let Some(w) = windows.get(transform) {
            total += w.records;
            bad += w.failed;
            for &(r, f) in &w.batches {
                if total - r < size {
                    break;
                }
                total -= r;
                bad -= f;
            }
        }
        total >= size && bad as f64 > self.config.failure_ratio * total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(records_in: u64, failed: u64) -> Vec<StepStats> {
        vec![StepStats {
            name: "t".into(),
            records_in,
            failed,
            ..Default::default()
        }]
    }

    fn breaker() -> Breaker {
        Breaker::new(CircuitBreakerConfig {
            enabled: true,
            failure_ratio: 0.5,
            window_records: 1000,
        })
    }

    #[test]
    fn opens_only_over_a_full_window_above_the_share() {
        let b = breaker();
        // 600 of 900 failed: the window is not full yet.
        assert!(b.observe(&step(900, 600)).is_ok());
        // 1,000 records, 600 failed: open.
        let open = b.observe(&step(100, 0)).expect_err("open");
        assert_eq!((open.failed, open.records), (600, 1000));
        assert!(
            open.to_string()
                .contains("transform `t` failed 600 of the last 1000")
        );
    }

    #[test]
    fn would_open_sees_a_batch_before_it_ends_and_changes_nothing() {
        let b = breaker();
        assert!(b.observe(&step(500, 100)).is_ok());
        // With 500 more records of which 401 failed so far: 501 of 1,000.
        assert!(!b.would_open("t", 500, 400));
        assert!(b.would_open("t", 500, 401));
        assert!(!b.would_open("other", 500, 401), "a window of its own");
        // Nothing was counted: the real batch ends well.
        assert!(b.observe(&step(500, 0)).is_ok());
        // A batch as large as the window opens it on its own.
        assert!(b.would_open("fresh", 1000, 501));
        assert!(!b.would_open("fresh", 999, 999), "not a full window");
    }

    #[test]
    fn old_failures_slide_out_of_the_window() {
        let b = breaker();
        assert!(b.observe(&step(400, 400)).is_ok());
        for _ in 0..20 {
            assert!(b.observe(&step(100, 10)).is_ok(), "10 % of recent records");
        }
    }

    #[test]
    fn a_steady_share_at_the_limit_stays_closed_and_disabled_never_opens() {
        let b = breaker();
        for _ in 0..30 {
            assert!(b.observe(&step(100, 50)).is_ok());
        }
        let off = Breaker::new(CircuitBreakerConfig {
            enabled: false,
            ..CircuitBreakerConfig::default()
        });
        assert!(off.observe(&step(5000, 5000)).is_ok());
    }
}
