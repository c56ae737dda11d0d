//! What a run did: counters per step, per output and per dead-letter stage.

use std::collections::BTreeMap;
use std::time::Duration;

/// Per-transform counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepStats {
    /// Transform name.
    pub name: String,
    /// Records given to it.
    pub records_in: u64,
    /// Records it dropped.
    pub dropped: u64,
    /// Records it failed (to the DLQ).
    pub failed: u64,
    /// Batches that failed as a whole (trap, deadline, ...) and were
    /// bisected to isolate the records at fault.
    pub batch_failures: u64,
    /// Extra `process` calls spent on bisection.
    pub bisection_calls: u64,
    /// Records isolated by bisection (failed alone; in the DLQ).
    pub isolated: u64,
    /// Records failed without being isolated (the isolation budget was
    /// spent, or the circuit breaker opened while isolating).
    pub not_isolated: u64,
    /// Time spent in the transform's calls (bisection included).
    pub elapsed: std::time::Duration,
    /// Records it sent to outputs the pipeline does not declare (to the
    /// dead-letter queue, stage `route`), per output name.
    pub unrouted: BTreeMap<String, u64>,
}

impl StepStats {
    /// Adds another batch's counters.
    pub fn add(&mut self, other: &StepStats) {
        self.records_in += other.records_in;
        self.dropped += other.dropped;
        self.failed += other.failed;
        self.batch_failures += other.batch_failures;
        self.bisection_calls += other.bisection_calls;
        self.isolated += other.isolated;
        self.not_isolated += other.not_isolated;
        self.elapsed += other.elapsed;
        for (output, n) in &other.unrouted {
            *self.unrouted.entry(output.clone()).or_default() += n;
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Pipeline name.
    pub pipeline: String,
    /// Items read from the source (valid or not) and handled.
    pub records_in: u64,
    /// Bytes of those items.
    pub bytes_in: u64,
    /// Batches handled.
    pub batches: u64,
    /// Per transform.
    pub steps: Vec<StepStats>,
    /// Records written per output.
    pub outputs: BTreeMap<String, u64>,
    /// Dead-letter entries per stage.
    pub dead_lettered: BTreeMap<&'static str, u64>,
    /// Sessions started again after a failure (a Kafka transaction abort, a
    /// consumer that failed fatally).
    pub restarts: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Offsets committed at the end, per partition.
    pub committed: Vec<(String, i64)>,
    /// Whether the run was stopped (a signal, a stop request) before its
    /// source was drained.
    pub stopped: bool,
}

impl Summary {
    /// Total dead-letter entries.
    pub fn dead_letter_total(&self) -> u64 {
        self.dead_lettered.values().sum()
    }

    /// Total records dropped by transforms.
    pub fn dropped_total(&self) -> u64 {
        self.steps.iter().map(|s| s.dropped).sum()
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        if self.stopped {
            writeln!(
                f,
                "pipeline `{}` stopped after {:.2}s (what was read is delivered and committed)",
                self.pipeline, secs
            )?;
        } else {
            writeln!(f, "pipeline `{}` finished in {:.2}s", self.pipeline, secs)?;
        }
        writeln!(
            f,
            "  in:       {} records ({} bytes) in {} batches, {:.0} records/s",
            self.records_in,
            self.bytes_in,
            self.batches,
            if secs > 0.0 {
                self.records_in as f64 / secs
            } else {
                0.0
            }
        )?;
        for s in &self.steps {
            write!(
                f,
                "  step {:<10} in {:>8}  dropped {:>6}  failed {:>6}",
                s.name, s.records_in, s.dropped, s.failed
            )?;
            if s.batch_failures > 0 {
                write!(
                    f,
                    "  (failed batches {}: {} records isolated in {} extra calls)",
                    s.batch_failures, s.isolated, s.bisection_calls
                )?;
                if s.not_isolated > 0 {
                    write!(f, " ({} failed without being isolated)", s.not_isolated)?;
                }
            }
            writeln!(f)?;
        }
        for (name, n) in &self.outputs {
            writeln!(f, "  out:      {name:<10} {n} records")?;
        }
        let stages: Vec<String> = self
            .dead_lettered
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        writeln!(
            f,
            "  dead-letter: {} records{}",
            self.dead_letter_total(),
            if stages.is_empty() {
                String::new()
            } else {
                format!(" ({})", stages.join(", "))
            }
        )?;
        for s in &self.steps {
            for (output, n) in &s.unrouted {
                writeln!(
                    f,
                    "  WARNING: transform `{}` sent {n} records to output `{output}`, which the pipeline does not declare: they are in the dead-letter queue (add `[outputs.{output}]`)",
                    s.name
                )?;
            }
        }
        if self.restarts > 0 {
            writeln!(f, "  restarts: {}", self.restarts)?;
        }
        write!(f, "  dropped:  {} records", self.dropped_total())
    }
}
