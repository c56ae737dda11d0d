//! The transform chain: one micro-batch through every transform in order.
//! The default output of each transform feeds the next; named outputs leave
//! the chain for their sinks; failures become dead-letter entries that carry
//! the original source record and position.

use super::breaker::Breaker;
use super::summary::StepStats;
use crate::dlq::{DlqEntry, Stage};
use crate::engine::{Outcome, Runner};
use crate::record::{Position, Record};
use crate::source::SourceItem;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A record on its way through the chain.
#[derive(Debug)]
pub(crate) struct Routed {
    /// The record.
    pub record: Record,
    /// Index of the source item it derives from.
    pub origin: usize,
    /// Index of the transform that emitted it.
    pub from: Option<usize>,
}

/// Everything one batch produced.
#[derive(Debug, Default)]
pub(crate) struct ChainResult {
    /// Output name → records, in order.
    pub outputs: BTreeMap<String, Vec<Routed>>,
    /// Dead-letter entries.
    pub dead: Vec<DlqEntry>,
    /// Per-transform counters.
    pub steps: Vec<StepStats>,
    /// Per transform: the digest of the module that processed this batch
    /// (a swap changes it between batches, never inside one).
    pub digests: Vec<Arc<str>>,
}

/// The original record and position of a source item.
pub(crate) fn source_of(items: &[SourceItem], origin: usize) -> (Record, Position) {
    match items.get(origin) {
        Some(item) => (item.record().clone(), item.position().clone()),
        None => (Record::default(), unknown_position()),
    }
}

fn unknown_position() -> Position {
    Position {
        partition: crate::record::Partition {
            stream: std::sync::Arc::from("?"),
            partition: -1,
        },
        offset: -1,
    }
}

/// Runs a batch through the chain (blocking: call from a blocking thread).
/// `outputs` are the output names the pipeline maps to sinks; records sent
/// elsewhere go to the dead-letter queue (stage `route`).
pub(crate) fn run_chain(
    runners: &mut [Runner],
    items: &[SourceItem],
    outputs: &BTreeSet<String>,
    breaker: &Breaker,
) -> ChainResult {
    let mut dead = Vec::new();
    let mut steps = Vec::with_capacity(runners.len());
    let mut current: Vec<Routed> = Vec::with_capacity(items.len());
    for (origin, item) in items.iter().enumerate() {
        match item {
            SourceItem::Record(r) => current.push(Routed {
                record: r.record.clone(),
                origin,
                from: None,
            }),
            SourceItem::Invalid {
                record,
                position,
                reason,
            } => {
                dead.push(DlqEntry::new(
                    record.clone(),
                    position.clone(),
                    Stage::Decode,
                    "invalid-input",
                    reason.clone(),
                ));
            }
        }
    }
    let mut routed: BTreeMap<String, Vec<Routed>> = BTreeMap::new();
    for (step_index, runner) in runners.iter_mut().enumerate() {
        let mut stats = StepStats {
            name: runner.name().to_string(),
            records_in: current.len() as u64,
            ..Default::default()
        };
        if current.is_empty() {
            steps.push(stats);
            continue;
        }
        let digest = runner.module().digest().to_string();
        let name = runner.name().to_string();
        let inputs: Vec<(&Record, &Position)> = current
            .iter()
            .map(|r| {
                let position = items
                    .get(r.origin)
                    .map(SourceItem::position)
                    .unwrap_or(&UNKNOWN);
                (&r.record, position)
            })
            .collect();
        let records_in = stats.records_in;
        let started = std::time::Instant::now();
        let processed = runner.process_isolating_with(&inputs, &mut |failed| {
            breaker.would_open(&name, records_in, failed)
        });
        stats.elapsed = started.elapsed();
        drop(inputs);
        let processed = match processed {
            Ok((p, bisection)) => {
                if bisection.split {
                    stats.batch_failures += 1;
                    stats.bisection_calls += bisection.extra_calls;
                    stats.isolated += bisection.isolated;
                    stats.not_isolated += bisection.not_isolated;
                    tracing::info!(transform = %name, records = current.len(), isolated = bisection.isolated, not_isolated = bisection.not_isolated, extra_calls = bisection.extra_calls, depth = bisection.depth, "poison records isolated");
                }
                p
            }
            Err(error) => {
                // No instance could be created: nothing can be isolated, so
                // every record of the batch goes to the DLQ with the reason.
                tracing::warn!(transform = %name, records = current.len(), %error, "batch failed");
                stats.batch_failures += 1;
                stats.failed += current.len() as u64;
                for r in current.drain(..) {
                    let (record, position) = source_of(items, r.origin);
                    dead.push(
                        DlqEntry::new(
                            record,
                            position,
                            Stage::Transform,
                            error.kind(),
                            error.to_string(),
                        )
                        .in_transform(&name, &digest),
                    );
                }
                steps.push(stats);
                continue;
            }
        };
        let mut outputs_of = processed.outputs.into_iter();
        let mut next = Vec::with_capacity(current.len());
        for (r, outcome) in current.iter().zip(processed.outcomes) {
            match outcome {
                Outcome::Emit { start, end } => {
                    for out in outputs_of.by_ref().take(end - start) {
                        let record = Routed {
                            record: out.record,
                            origin: r.origin,
                            from: Some(step_index),
                        };
                        if out.slot == 0 {
                            next.push(record);
                            continue;
                        }
                        let output = processed
                            .output_names
                            .get(out.slot as usize)
                            .cloned()
                            .unwrap_or_default();
                        if outputs.contains(&output) {
                            routed.entry(output).or_default().push(record);
                        } else {
                            *stats.unrouted.entry(output.clone()).or_default() += 1;
                            let (original, position) = source_of(items, r.origin);
                            dead.push(
                                DlqEntry::new(
                                    original,
                                    position,
                                    Stage::Route,
                                    "unknown-output",
                                    format!(
                                        "transform `{name}` sent a record to output `{output}`, which the pipeline does not map to a sink (add `[outputs.{output}]`)"
                                    ),
                                )
                                .in_transform(&name, &digest),
                            );
                        }
                    }
                }
                Outcome::Drop => stats.dropped += 1,
                Outcome::Fail(failure) => {
                    stats.failed += 1;
                    let (record, position) = source_of(items, r.origin);
                    dead.push(
                        DlqEntry::new(
                            record,
                            position,
                            Stage::Transform,
                            failure.kind,
                            failure.message,
                        )
                        .in_transform(&name, &digest)
                        .with_attempts(failure.attempts),
                    );
                }
            }
        }
        current = next;
        steps.push(stats);
    }
    routed
        .entry("default".to_string())
        .or_default()
        .extend(current);
    ChainResult {
        outputs: routed,
        dead,
        steps,
        digests: runners
            .iter()
            .map(|r| Arc::from(r.module().digest()))
            .collect(),
    }
}

static UNKNOWN: std::sync::LazyLock<Position> = std::sync::LazyLock::new(unknown_position);
