//! Retry policies: the `retry` table of a sink (`RetryConfig`) and the
//! policy it becomes (`Retry`): exponential backoff with jitter, bounded by
//! attempts and by time. Used by the delivery loop and by sinks that retry
//! on their own (the lake's and the local sink's object writes).

use serde::Deserialize;
use std::time::Duration;

/// `retry`: how a sink's transient errors (a timeout, a broker or store away)
/// are retried — exponential backoff with jitter, bounded. While retries
/// remain, nothing goes to the dead-letter queue and no offset advances;
/// when they run out the pipeline stops (at-least-once delivery never skips).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included; 0 (the default): as many as
    /// fit in `max_elapsed_ms`.
    pub attempts: u32,
    /// Wait before the second attempt, in ms (default 100).
    pub initial_backoff_ms: u64,
    /// Longest wait between attempts, in ms (default 10000).
    pub max_backoff_ms: u64,
    /// Longest time a write is retried for, from its first failure, in ms
    /// (default 300000: five minutes, enough to ride out a broker restart
    /// or a network blip while the source waits; the Kafka client itself retries
    /// each record for up to its `message.timeout.ms` inside every attempt).
    pub max_elapsed_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 0,
            initial_backoff_ms: 100,
            max_backoff_ms: 10_000,
            max_elapsed_ms: 300_000,
        }
    }
}

impl RetryConfig {
    /// Checks the policy; `at` is the sink's table (`outputs.x`), for the
    /// message.
    pub fn check(&self, at: &str) -> Result<(), String> {
        if self.initial_backoff_ms > self.max_backoff_ms || self.max_elapsed_ms == 0 {
            return Err(format!(
                "`{at}.retry`: initial_backoff_ms must be at most max_backoff_ms, and max_elapsed_ms at least 1"
            ));
        }
        Ok(())
    }
}

/// Retry policy for transient sink errors (at-least-once).
#[derive(Debug, Clone)]
pub struct Retry {
    /// Attempts in all, the first included; 0: as many as fit in
    /// `max_elapsed`.
    pub attempts: u32,
    /// Wait before the second attempt.
    pub initial: Duration,
    /// Longest wait between attempts.
    pub max: Duration,
    /// Longest time one write is retried for (from its first failure).
    pub max_elapsed: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        RetryConfig::default().into()
    }
}

impl From<RetryConfig> for Retry {
    fn from(c: RetryConfig) -> Self {
        Retry {
            attempts: c.attempts,
            initial: Duration::from_millis(c.initial_backoff_ms),
            max: Duration::from_millis(c.max_backoff_ms),
            max_elapsed: Duration::from_millis(c.max_elapsed_ms),
        }
    }
}

impl Retry {
    /// Whether attempt `next` (2, 3, ...) may be made `since` the first
    /// failure, after waiting `wait`.
    pub fn allows(&self, next: u32, since: std::time::Instant, wait: Duration) -> bool {
        (self.attempts == 0 || next <= self.attempts) && since.elapsed() + wait <= self.max_elapsed
    }

    /// The wait before attempt `attempt` (2, 3, ...): exponential, capped,
    /// with full jitter in its upper half.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(2).min(16));
        let capped = exp.min(self.max);
        let nanos = capped.as_nanos() as u64;
        let jitter = pseudo_random() % (nanos / 2 + 1);
        Duration::from_nanos(nanos / 2 + jitter)
    }
}

fn pseudo_random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// When a failed pipeline is started again.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RestartPolicy {
    /// Restarts in a row (without records handled in between) before the
    /// pipeline is marked failed (default 3; 0 = never restarted). Only
    /// a source that reads on from its committed positions is restarted
    /// (Kafka, and a host's file sources): `sluice run` over files is not,
    /// it would write them again. A host's pipelines without their own
    /// `[restart]` take the host file's.
    pub max_restarts: u32,
    /// Wait before the first restart, in ms (default 1000); doubles up to
    /// `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    /// Longest wait between restarts, in ms (default 60000).
    pub max_backoff_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 3,
            initial_backoff_ms: 1000,
            max_backoff_ms: 60_000,
        }
    }
}

impl RestartPolicy {
    /// The wait before restart number `n` (1-based).
    pub fn backoff(&self, n: u32) -> Duration {
        let ms = self
            .initial_backoff_ms
            .saturating_mul(1u64 << n.saturating_sub(1).min(20))
            .min(self.max_backoff_ms.max(self.initial_backoff_ms));
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_backoff_doubles_and_is_capped() {
        let p = RestartPolicy {
            max_restarts: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 350,
        };
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(350));
        assert_eq!(p.backoff(60), Duration::from_millis(350));
    }

    #[test]
    fn the_default_policy_rides_out_minutes_and_then_gives_up() {
        let r = Retry::default();
        let now = std::time::Instant::now();
        // Attempt 1,000 after a few seconds: allowed, the count is unbounded.
        assert!(r.allows(1000, now, Duration::from_secs(10)));
        let long_ago = now - Duration::from_secs(299);
        assert!(
            !r.allows(3, long_ago, Duration::from_secs(2)),
            "past five minutes"
        );
        let counted = Retry {
            attempts: 3,
            ..Retry::default()
        };
        assert!(counted.allows(3, now, Duration::ZERO));
        assert!(!counted.allows(4, now, Duration::ZERO));
    }
}
