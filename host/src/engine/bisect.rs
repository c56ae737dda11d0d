//! Poison isolation: when a whole `process` call fails (trap, out of memory,
//! deadline, broken contract), the batch is run again on fresh instances,
//! split in halves, until the records that make the guest fail stand alone.
//! Those fail individually (to the dead-letter queue, with the error); every
//! other record gets its normal outcome.
//!
//! Work is bounded: the split depth is at most ⌈log2(batch)⌉, so a batch of
//! `n` records with `k` poison records costs at most `2·k·⌈log2 n⌉` extra
//! calls, and a clean half is never split again. Time is bounded too: when
//! every record of a batch loops, each of those calls costs a whole
//! deadline, so isolating one batch may take at most
//! `limits.isolation_budget_ms`; past it, the segments still failing fail
//! whole (each record with the error and a note that it was not isolated).
//! The caller may also stop isolating at any failure (`stop`), which the
//! pipeline does when its circuit breaker would open.

use super::{Failure, Outcome, Processed, Runner, TransformError};
use crate::record::{Position, Record};
use std::time::{Duration, Instant};

/// What isolating cost, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Bisection {
    /// Whether the first call failed and the batch was split.
    pub split: bool,
    /// Extra `process` calls made after the first failed.
    pub extra_calls: u64,
    /// Deepest split level reached (0 when not split).
    pub depth: u32,
    /// Records that failed on their own and were isolated.
    pub isolated: u64,
    /// Records failed without being isolated: the batch's isolation budget
    /// was spent, or the caller stopped isolating.
    pub not_isolated: u64,
}

/// Why isolating stopped early.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Budget(Duration),
    Stopped,
}

struct Isolating<'s> {
    deadline: Instant,
    budget: Duration,
    stop: &'s mut dyn FnMut(u64) -> bool,
    failed: u64,
    cut: Option<Cut>,
}

impl Runner {
    /// Processes a batch, isolating poison records by bisection when the call
    /// fails as a whole. Fails only when no instance can be created at all
    /// (then nothing can be isolated).
    pub fn process_isolating(
        &mut self,
        records: &[(&Record, &Position)],
    ) -> Result<(Processed, Bisection), TransformError> {
        self.process_isolating_with(records, &mut |_| false)
    }

    /// [`Runner::process_isolating`], asking `stop` after each record that
    /// fails (with the batch's failures so far) whether to stop isolating:
    /// then the records not yet isolated fail as they are.
    pub fn process_isolating_with(
        &mut self,
        records: &[(&Record, &Position)],
        stop: &mut dyn FnMut(u64) -> bool,
    ) -> Result<(Processed, Bisection), TransformError> {
        let mut merged = Processed {
            outcomes: Vec::with_capacity(records.len()),
            outputs: Vec::new(),
            output_names: vec![String::new()],
        };
        let mut stats = Bisection::default();
        let budget = Duration::from_millis(self.spec.limits.isolation_budget_ms);
        let mut isolating = Isolating {
            deadline: Instant::now() + budget,
            budget,
            stop,
            failed: 0,
            cut: None,
        };
        self.bisect(records, &mut merged, &mut stats, &mut isolating, 0)?;
        Ok((merged, stats))
    }

    fn bisect(
        &mut self,
        records: &[(&Record, &Position)],
        merged: &mut Processed,
        stats: &mut Bisection,
        isolating: &mut Isolating<'_>,
        depth: u32,
    ) -> Result<(), TransformError> {
        if depth > 0 {
            stats.extra_calls += 1;
            stats.depth = stats.depth.max(depth);
        }
        match self.process(records) {
            Ok(part) => {
                append(merged, part);
                Ok(())
            }
            Err(
                e @ (TransformError::Instantiate { .. }
                | TransformError::Init { .. }
                | TransformError::NotGranted { .. }),
            ) => Err(e),
            Err(e) if records.len() <= 1 => {
                for _ in records {
                    stats.isolated += 1;
                    isolating.failed += 1;
                    merged.outcomes.push(Outcome::Fail(Failure {
                        kind: e.kind().to_string(),
                        message: e.to_string(),
                        // The batch's call, one per split level, and its own.
                        attempts: depth + 1,
                    }));
                }
                if isolating.cut.is_none() && (isolating.stop)(isolating.failed) {
                    isolating.cut = Some(Cut::Stopped);
                }
                Ok(())
            }
            Err(e) => {
                if depth == 0 {
                    stats.split = true;
                    tracing::warn!(transform = %self.name(), records = records.len(), error = %e, "batch failed: isolating the records at fault by bisection");
                }
                if isolating.cut.is_none() && depth > 0 && Instant::now() >= isolating.deadline {
                    isolating.cut = Some(Cut::Budget(isolating.budget));
                    tracing::warn!(transform = %self.name(), budget_ms = isolating.budget.as_millis() as u64, "isolation budget spent: the records still failing fail without being isolated");
                }
                if let Some(cut) = isolating.cut {
                    let why = match cut {
                        Cut::Budget(b) => format!(
                            "not isolated: the batch's isolation budget of {} ms was spent",
                            b.as_millis()
                        ),
                        Cut::Stopped => {
                            "not isolated: the pipeline's circuit breaker opened".to_string()
                        }
                    };
                    for _ in records {
                        stats.not_isolated += 1;
                        isolating.failed += 1;
                        merged.outcomes.push(Outcome::Fail(Failure {
                            kind: e.kind().to_string(),
                            message: format!(
                                "{e} ({why}; the record was in a failing group of {})",
                                records.len()
                            ),
                            attempts: depth + 1,
                        }));
                    }
                    return Ok(());
                }
                let (left, right) = records.split_at(records.len() / 2);
                self.bisect(left, merged, stats, isolating, depth + 1)?;
                // A cut during the left half leaves the right one untried:
                // it is not known to fail, so it is tried once more whole
                // (and fails whole only if it fails).
                self.bisect(right, merged, stats, isolating, depth + 1)
            }
        }
    }
}

/// Appends the result of a sub-batch: output spans are shifted and output
/// slots renumbered into `merged`'s names.
fn append(merged: &mut Processed, part: Processed) {
    let shift = merged.outputs.len();
    let slots: Vec<u32> = part
        .output_names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            if i == 0 {
                return 0;
            }
            match merged.output_names.iter().position(|n| n == name) {
                Some(p) => p as u32,
                None => {
                    merged.output_names.push(name.clone());
                    (merged.output_names.len() - 1) as u32
                }
            }
        })
        .collect();
    // The common case, the whole batch in one call: take the part as it is
    // (no copy of every outcome and output) when that changes nothing.
    if merged.outcomes.is_empty()
        && merged.outputs.is_empty()
        && slots.iter().enumerate().all(|(i, &s)| s as usize == i)
    {
        let mut part = part;
        for out in &mut part.outputs {
            if out.slot as usize >= slots.len() {
                out.slot = 0;
            }
        }
        merged.outcomes = part.outcomes;
        merged.outputs = part.outputs;
        return;
    }
    for outcome in part.outcomes {
        merged.outcomes.push(match outcome {
            Outcome::Emit { start, end } => Outcome::Emit {
                start: start + shift,
                end: end + shift,
            },
            other => other,
        });
    }
    for mut out in part.outputs {
        out.slot = slots.get(out.slot as usize).copied().unwrap_or(0);
        merged.outputs.push(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Output;

    fn out(slot: u32, v: &str) -> Output {
        Output {
            slot,
            record: Record {
                value: Some(v.as_bytes().to_vec().into()),
                ..Default::default()
            },
        }
    }

    #[test]
    fn append_shifts_spans_and_renumbers_slots() {
        let mut merged = Processed {
            outcomes: Vec::new(),
            outputs: Vec::new(),
            output_names: vec![String::new()],
        };
        append(
            &mut merged,
            Processed {
                outcomes: vec![Outcome::Emit { start: 0, end: 2 }, Outcome::Drop],
                outputs: vec![out(0, "a"), out(1, "b")],
                output_names: vec![String::new(), "alerts".into()],
            },
        );
        append(
            &mut merged,
            Processed {
                outcomes: vec![Outcome::Emit { start: 0, end: 2 }],
                outputs: vec![out(1, "c"), out(2, "d")],
                output_names: vec![String::new(), "audit".into(), "alerts".into()],
            },
        );
        assert_eq!(merged.output_names, vec!["", "alerts", "audit"]);
        assert_eq!(
            merged.outcomes,
            vec![
                Outcome::Emit { start: 0, end: 2 },
                Outcome::Drop,
                Outcome::Emit { start: 2, end: 4 }
            ]
        );
        let slots: Vec<u32> = merged.outputs.iter().map(|o| o.slot).collect();
        assert_eq!(slots, vec![0, 1, 2, 1]);
    }

    #[test]
    fn a_first_part_taken_whole_ends_as_the_slow_path_would() {
        for names in [
            vec![String::new(), "a".into(), "b".into()],
            // Not one-to-one: the copy renumbers.
            vec![String::new(), "a".into(), "a".into()],
            vec!["x".into(), String::new()],
        ] {
            let part = || Processed {
                outcomes: vec![Outcome::Emit { start: 0, end: 4 }],
                outputs: vec![out(0, "p"), out(1, "q"), out(2, "r"), out(9, "s")],
                output_names: names.clone(),
            };
            let mut fast = Processed {
                outcomes: Vec::new(),
                outputs: Vec::new(),
                output_names: vec![String::new()],
            };
            append(&mut fast, part());
            // The copying path, forced by a merged batch that is not empty.
            let mut slow = Processed {
                outcomes: vec![Outcome::Drop],
                outputs: Vec::new(),
                output_names: vec![String::new()],
            };
            append(&mut slow, part());
            assert_eq!(fast.output_names, slow.output_names, "{names:?}");
            assert_eq!(fast.outcomes[..], slow.outcomes[1..], "{names:?}");
            let slots = |p: &Processed| p.outputs.iter().map(|o| o.slot).collect::<Vec<_>>();
            assert_eq!(slots(&fast), slots(&slow), "{names:?}");
        }
    }
}
