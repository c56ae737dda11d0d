//! Delivery: a processed batch's outputs into their sinks and its failures
//! into the dead-letter queue, then a [`Done`] report to the coordinator,
//! which alone decides what may be committed. Writing is in two phases
//! ([`Delivery::submit`] in batch order, [`Delivery::finish`] awaited);
//! transient sink errors are retried with exponential backoff and jitter
//! and never reach the dead-letter queue. *When* a batch counts as done —
//! the delivery guarantee — is the [`super::commit`] seam's.

use super::PipelineError;
use super::chain::{ChainResult, source_of};
use super::summary::StepStats;
use crate::dlq::{DeadLetter, DlqEntry, Stage};
use crate::record::{Partition, Record};
use crate::retry::Retry;
use crate::sink::{Accepted, Durable, Lineage, Pending, Sink, SinkBatch, SinkError};
use crate::source::SourceItem;
use std::collections::BTreeMap;
use std::sync::Arc;

mod messages;
#[cfg(test)]
mod tests;
mod turns;

pub(crate) use messages::{BatchReport, Done, DurableBatch, Job, Processed, Report, TransformInfo};
pub(crate) use turns::Turns;

/// Failed attempts of one write after which its sink is asked to recover.
const RECOVER_AFTER: u32 = 3;

/// One output's write of one batch.
struct Write {
    output: String,
    sink: Arc<dyn Sink>,
    records: Vec<Record>,
    lineage: Lineage,
    /// Per record: (origin item, emitting transform).
    meta: Vec<(usize, Option<usize>)>,
    pending: Pending,
    submitted: std::time::Instant,
}

/// A batch whose writes are enqueued.
pub(crate) struct Submitted {
    /// Its place in the order batches were submitted (see [`Turns`]).
    turn: u64,
    job: Job,
    digests: Vec<Arc<str>>,
    steps: Vec<StepStats>,
    dead: Vec<DlqEntry>,
    writes: Vec<Write>,
}

/// The sinks and dead-letter queue of a session.
pub(crate) struct Delivery {
    /// Output name → sink.
    pub sinks: BTreeMap<String, Arc<dyn Sink>>,
    /// The dead-letter queue.
    pub dlq: Arc<DeadLetter>,
    /// Transform names and digests.
    pub transforms: Arc<Vec<TransformInfo>>,
    /// Retry policy per output (at-least-once only); missing: the default.
    pub retries: BTreeMap<String, Retry>,
    /// Retry policy of the dead-letter queue.
    pub dlq_retry: Retry,
    /// The pipeline's metrics.
    pub metrics: crate::metrics::PipelineMetrics,
    /// Tag output records with the emitting module's digest.
    pub module_header: bool,
    /// Whether the source checks that every record's value is one JSON
    /// document (see [`Lineage::json_checked`]).
    pub source_json: bool,
    /// Retries go in the order batches were submitted.
    pub turns: Turns,
}

/// The output header naming the module that emitted a record.
pub const MODULE_HEADER: &str = "sluice.module";

impl Delivery {
    /// Phase one, in batch order: enqueue every output of the batch.
    pub(crate) async fn submit(
        &self,
        processed: Processed,
    ) -> Result<Submitted, (Job, PipelineError)> {
        let Processed { job, chain } = processed;
        let turn = self.turns.take();
        let result = self.submit_writes(job, chain).await;
        match result {
            Ok((job, digests, steps, dead, writes)) => Ok(Submitted {
                turn,
                job,
                digests,
                steps,
                dead,
                writes,
            }),
            Err(e) => {
                self.turns.finish(turn);
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    async fn submit_writes(
        &self,
        job: Job,
        chain: super::chain::ChainResult,
    ) -> Result<
        (
            Job,
            Vec<Arc<str>>,
            Vec<StepStats>,
            Vec<DlqEntry>,
            Vec<Write>,
        ),
        (Job, PipelineError),
    > {
        let mut writes = Vec::new();
        let digests = chain.digests;
        for (output, routed) in chain.outputs {
            if routed.is_empty() {
                continue;
            }
            let Some(sink) = self.sinks.get(&output).cloned() else {
                return Err((
                    job,
                    PipelineError::Internal(format!("no sink for output `{output}`")),
                ));
            };
            let (mut records, meta): (Vec<Record>, Vec<(usize, Option<usize>)>) = routed
                .into_iter()
                .map(|r| (r.record, (r.origin, r.from)))
                .unzip();
            if self.module_header {
                for (record, &(_, from)) in records.iter_mut().zip(&meta) {
                    if let Some(d) = from.and_then(|i| digests.get(i)) {
                        record
                            .headers
                            .retain(|h| h.name.as_ref() != MODULE_HEADER.as_bytes());
                        record
                            .headers
                            .push(crate::record::Header::new(MODULE_HEADER, d.to_string()));
                    }
                }
            }
            let lineage = Lineage {
                positions: meta
                    .iter()
                    .map(|&(origin, _)| source_of_position(&job.items, origin))
                    .collect(),
                modules: meta
                    .iter()
                    .map(|&(_, from)| from.and_then(|i| digests.get(i).cloned()))
                    .collect(),
                json_checked: if self.source_json {
                    records
                        .iter()
                        .zip(&meta)
                        .map(|(r, &(origin, _))| unchanged_value(r, &job.items, origin))
                        .collect()
                } else {
                    Vec::new()
                },
            };
            let submitted = std::time::Instant::now();
            let pending = match sink
                .submit(SinkBatch {
                    records: records.clone(),
                    lineage: lineage.clone(),
                })
                .await
            {
                Ok(p) => p,
                Err(e) => return Err((job, e.into())),
            };
            writes.push(Write {
                output,
                sink,
                records,
                lineage,
                meta,
                pending,
                submitted,
            });
        }
        Ok((job, digests, chain.steps, chain.dead, writes))
    }

    /// Awaits one write, trying it again on transient errors when `retry`.
    /// A retry writes again only the records not yet written (when the
    /// sink says which), so that riding out an outage adds no duplicates.
    async fn await_write(
        &self,
        write: &mut Write,
        retry: bool,
        turn: u64,
    ) -> Result<Accepted, SinkError> {
        let policy = self.retries.get(&write.output).cloned().unwrap_or_default();
        let mut attempt = 1;
        let mut first_failure: Option<std::time::Instant> = None;
        // Indices (into `write.records`) of what the pending write holds.
        let mut current: Vec<usize> = (0..write.records.len()).collect();
        let mut rejects = Vec::new();
        loop {
            let pending = std::mem::replace(&mut write.pending, crate::sink::ready(Vec::new()));
            let error = match pending.await {
                Ok(accepted) => {
                    rejects.extend(
                        accepted
                            .rejects
                            .into_iter()
                            .map(|r| remap(r, &current, write.records.len())),
                    );
                    rejects.sort_by_key(|r: &crate::sink::Reject| r.index);
                    return Ok(Accepted {
                        rejects,
                        held: accepted.held,
                    });
                }
                Err(e) => e,
            };
            let since = *first_failure.get_or_insert_with(std::time::Instant::now);
            let wait = policy.backoff(attempt + 1);
            if !(retry && error.is_transient() && policy.allows(attempt + 1, since, wait)) {
                if retry && error.is_transient() {
                    tracing::error!(output = %write.output, sink = %write.sink.describe(), error = %error, attempts = attempt, elapsed_ms = since.elapsed().as_millis() as u64, "the sink stayed unavailable past its retry policy");
                }
                return Err(error);
            }
            attempt += 1;
            self.turns.retrying(turn);
            let error_text = error.to_string();
            let next: Vec<usize> = match error {
                SinkError::Partial {
                    failed, rejects: r, ..
                } => {
                    rejects.extend(
                        r.into_iter()
                            .map(|r| remap(r, &current, write.records.len())),
                    );
                    failed
                        .iter()
                        .filter_map(|&i| current.get(i).copied())
                        .collect()
                }
                _ => current.clone(),
            };
            tracing::warn!(output = %write.output, sink = %write.sink.describe(), attempt, records = next.len(), wait_ms = wait.as_millis() as u64, elapsed_ms = since.elapsed().as_millis() as u64, error = %error_text, "transient sink error: retrying what is not written");
            if attempt >= RECOVER_AFTER {
                write.sink.recover();
            }
            tokio::time::sleep(wait).await;
            // After every earlier batch: records of one key stay in order.
            self.turns.wait_for(turn).await;
            current = next;
            let records: Vec<Record> = current
                .iter()
                .filter_map(|&i| write.records.get(i).cloned())
                .collect();
            write.pending = write
                .sink
                .submit(SinkBatch {
                    records,
                    lineage: write.lineage.subset(&current),
                })
                .await?;
        }
    }

    /// Makes what every sink holds durable now (shutdown, revocation).
    pub(crate) async fn flush(&self) -> Result<(), SinkError> {
        for sink in self.sinks.values() {
            sink.flush().await?;
        }
        self.dlq.flush().await
    }

    /// Phase two: await the writes, then write the dead letters (the
    /// transform's failures and the sinks' rejects). Returns, with the
    /// report, the durability of what sinks hold (empty: all durable).
    pub(crate) async fn finish(&self, submitted: Submitted, retry: bool) -> (Done, Vec<Durable>) {
        let turn = submitted.turn;
        let finished = self.finish_turn(submitted, retry).await;
        self.turns.finish(turn);
        finished
    }

    async fn finish_turn(&self, submitted: Submitted, retry: bool) -> (Done, Vec<Durable>) {
        let Submitted {
            turn,
            job,
            digests,
            steps,
            mut dead,
            writes,
        } = submitted;
        let mut report = BatchReport {
            steps,
            ..Default::default()
        };
        let mut held = Vec::new();
        for mut write in writes {
            let rejects = match self.await_write(&mut write, retry, turn).await {
                Ok(Accepted { rejects, held: h }) => {
                    held.extend(h);
                    rejects
                }
                Err(e) => return (Done::failed(job, e.into()), held),
            };
            self.metrics.observe_time(
                |m| &m.sink_write_seconds,
                &[("output", &write.output)],
                write.submitted.elapsed(),
            );
            *report.outputs.entry(write.output.clone()).or_default() +=
                (write.records.len() - rejects.len()) as u64;
            let rejected: std::collections::BTreeSet<usize> =
                rejects.iter().map(|r| r.index).collect();
            let bytes: u64 = write
                .records
                .iter()
                .enumerate()
                .filter(|(i, _)| !rejected.contains(i))
                .map(|(_, r)| r.size() as u64)
                .sum();
            *report.output_bytes.entry(write.output.clone()).or_default() += bytes;
            if let Some(bad) = rejects.iter().find(|r| r.index >= write.meta.len()) {
                // A record the sink refused but cannot name would be in
                // neither the sink nor the DLQ: stop without committing.
                let e = PipelineError::Internal(format!(
                    "sink {} rejected record {} of a write of {} records: no such record (the run stops; records of this batch are not committed)",
                    write.sink.describe(),
                    bad.index,
                    write.meta.len()
                ));
                return (Done::failed(job, e), held);
            }
            for reject in rejects {
                let Some(&(origin, from)) = write.meta.get(reject.index) else {
                    continue;
                };
                let (record, position) = source_of(&job.items, origin);
                let mut entry = DlqEntry::new(
                    record,
                    position,
                    Stage::Sink,
                    "rejected",
                    format!("output `{}`: {}", write.output, reject.reason),
                );
                if let Some(i) = from
                    && let (Some(t), Some(d)) = (self.transforms.get(i), digests.get(i))
                {
                    entry = entry.in_transform(&t.name, d);
                }
                dead.push(entry);
            }
        }
        let mut attempt = 1;
        let mut first_failure: Option<std::time::Instant> = None;
        loop {
            let e = match self.dlq.write(&dead).await {
                Ok(h) => {
                    held.extend(h);
                    break;
                }
                Err(e) => e,
            };
            self.metrics.count(|m| &m.dlq_write_failures, &[], 1);
            let since = *first_failure.get_or_insert_with(std::time::Instant::now);
            let wait = self.dlq_retry.backoff(attempt + 1);
            if !(retry && e.transient && self.dlq_retry.allows(attempt + 1, since, wait)) {
                return (Done::failed(job, e.into()), held);
            }
            attempt += 1;
            tracing::warn!(error = %e, attempt, wait_ms = wait.as_millis() as u64, "dead-letter write failed: retrying");
            if attempt >= RECOVER_AFTER {
                self.dlq.recover();
            }
            tokio::time::sleep(wait).await;
        }
        self.metrics
            .count(|m| &m.dlq_writes, &[], dead.len() as u64);
        for e in &dead {
            *report.dead.entry(e.stage.as_str()).or_default() += 1;
            *report
                .dead_kinds
                .entry((
                    e.stage.as_str(),
                    e.transform.clone().unwrap_or_else(|| "-".into()),
                    e.kind.clone(),
                ))
                .or_default() += 1;
        }
        (
            Done {
                job,
                outcome: Ok(report),
                held: false,
            },
            held,
        )
    }
}

/// Whether `record`'s value is, byte for byte, the value of source record
/// `origin` (which the source checked).
fn unchanged_value(record: &Record, items: &[SourceItem], origin: usize) -> bool {
    match (items.get(origin), &record.value) {
        (Some(SourceItem::Record(r)), Some(v)) => r.record.value.as_ref() == Some(v),
        _ => false,
    }
}

/// The source position of item `origin`.
fn source_of_position(items: &[SourceItem], origin: usize) -> crate::record::Position {
    source_of(items, origin).1
}

/// A reject of a retried subset, renumbered into the whole write.
fn remap(mut r: crate::sink::Reject, current: &[usize], total: usize) -> crate::sink::Reject {
    r.index = match current.get(r.index) {
        Some(&i) => i,
        // Out of range of the subset: kept out of range of the whole write
        // too, which `finish` refuses.
        None if current.len() == total => r.index,
        None => total.saturating_add(r.index),
    };
    r
}
