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

/// Failed attempts of one write after which its sink is asked to recover.
const RECOVER_AFTER: u32 = 3;

/// A micro-batch of one partition, as cut by the coordinator.
#[derive(Debug)]
pub(crate) struct Job {
    /// The partition all items belong to.
    pub partition: Partition,
    /// The partition's epoch when the job was cut: a job of an older epoch
    /// belongs to a revoked assignment and is not committed.
    pub epoch: u64,
    /// The items, in source order.
    pub items: Vec<SourceItem>,
    /// Bytes of the items (budget accounting).
    pub bytes: usize,
    /// When the coordinator cut it (batch latency: cut → handled).
    pub dispatched: std::time::Instant,
    /// Its number among its partition's batches (0, 1, ...): delivery takes
    /// a partition's batches in this order whichever worker finishes first.
    pub seq: u64,
}

impl Job {
    /// A job that stands for no batch: it carries an error of the session
    /// itself (a worker that died, a transaction that failed before any
    /// batch was finished) to the coordinator.
    pub(crate) fn none() -> Job {
        Job {
            partition: Partition {
                stream: Arc::from("?"),
                partition: -1,
            },
            epoch: 0,
            items: Vec::new(),
            bytes: 0,
            dispatched: std::time::Instant::now(),
            seq: 0,
        }
    }
}

/// A job after the transform chain.
#[derive(Debug)]
pub(crate) struct Processed {
    /// The job.
    pub job: Job,
    /// What the chain made of it.
    pub chain: ChainResult,
}

/// Counters of one delivered batch.
#[derive(Debug, Default)]
pub(crate) struct BatchReport {
    /// Records written per output.
    pub outputs: BTreeMap<String, u64>,
    /// Dead-letter entries per stage.
    pub dead: BTreeMap<&'static str, u64>,
    /// Dead-letter entries per stage, transform (`-` for none) and kind.
    pub dead_kinds: BTreeMap<(&'static str, String, String), u64>,
    /// Bytes written per output (keys, values and headers).
    pub output_bytes: BTreeMap<String, u64>,
    /// Per-transform counters.
    pub steps: Vec<StepStats>,
}

/// A job is finished: delivered, or failed (the session ends).
#[derive(Debug)]
pub(crate) struct Done {
    /// The job.
    pub job: Job,
    /// Its outcome.
    pub outcome: Result<BatchReport, PipelineError>,
    /// Sinks hold some of its records (a file not yet closed): its budget is
    /// free, but its positions are handled only when a [`Durable`] report
    /// for it follows.
    pub held: bool,
}

impl Done {
    /// A job that failed.
    pub(crate) fn failed(job: Job, e: PipelineError) -> Done {
        Done {
            job,
            outcome: Err(e),
            held: false,
        }
    }
}

/// The records of a batch that sinks held are durable (or cannot be).
#[derive(Debug)]
pub(crate) struct DurableBatch {
    /// The batch's partition.
    pub partition: Partition,
    /// The partition's epoch when the batch was cut.
    pub epoch: u64,
    /// The source offsets of its items.
    pub offsets: crate::ledger::Offsets,
    /// Durable, or why not (the session ends without committing them).
    pub outcome: Result<(), PipelineError>,
}

/// What delivery reports to the coordinator.
#[derive(Debug)]
pub(crate) enum Report {
    /// A batch is finished.
    Done(Done),
    /// What sinks held of a finished batch is durable.
    Durable(DurableBatch),
}

impl From<Done> for Report {
    fn from(d: Done) -> Self {
        Report::Done(d)
    }
}

/// Name and module digest of each transform, for dead-letter entries.
#[derive(Debug, Clone)]
pub(crate) struct TransformInfo {
    /// Transform name.
    pub name: String,
    /// Module digest.
    pub digest: String,
}

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

/// The order in which batches' writes may be tried again. Batches are
/// submitted in order but awaited together; when an outage fails several of
/// them, each would retry on its own backoff, and a later batch's records
/// could reach a sink (a Kafka partition) before an earlier one's — a later
/// record of a key before an earlier one. So a batch tries again only once
/// every batch submitted before it is finished (written, or failed for
/// good): retries go out in batch order.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    inner: std::sync::Mutex<TurnsInner>,
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct TurnsInner {
    /// The next turn to hand out.
    next: u64,
    /// Every turn below this is finished.
    low: u64,
    /// Finished turns at or above `low`.
    finished: std::collections::BTreeSet<u64>,
    /// Turns whose writes are being tried again.
    retrying: std::collections::BTreeSet<u64>,
}

impl Turns {
    fn inner(&self) -> std::sync::MutexGuard<'_, TurnsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next turn, in submission order.
    fn take(&self) -> u64 {
        let mut i = self.inner();
        let t = i.next;
        i.next += 1;
        t
    }

    /// Whether some batch's writes are being tried again: no new batch is
    /// submitted then, so that none overtakes it (the committer waits).
    pub(crate) fn troubled(&self) -> bool {
        !self.inner().retrying.is_empty()
    }

    fn retrying(&self, t: u64) {
        self.inner().retrying.insert(t);
    }

    /// Turn `t` is finished.
    fn finish(&self, t: u64) {
        {
            let mut i = self.inner();
            i.retrying.remove(&t);
            i.finished.insert(t);
            loop {
                let low = i.low;
                if !i.finished.remove(&low) {
                    break;
                }
                i.low += 1;
            }
        }
        self.changed.notify_waiters();
    }

    /// Waits until every turn before `t` is finished.
    async fn wait_for(&self, t: u64) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner().low >= t {
                return;
            }
            notified.await;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Position, SourceRecord};
    use crate::sink::Reject;
    use std::time::Duration;

    #[test]
    fn only_values_unchanged_from_the_source_are_known_json() {
        let position = Position {
            partition: Partition {
                stream: Arc::from("f"),
                partition: 0,
            },
            offset: 0,
        };
        let items = vec![
            SourceItem::Record(SourceRecord {
                record: Record::from_value(&b"{\"a\":1}"[..]),
                position: position.clone(),
            }),
            SourceItem::Invalid {
                record: Record::from_value(&b"{\"a\":1}"[..]),
                position,
                reason: "test".into(),
            },
        ];
        let same = Record::from_value(&b"{\"a\":1}"[..]);
        assert!(unchanged_value(&same, &items, 0));
        assert!(!unchanged_value(
            &Record::from_value(&b"{\"a\":2}"[..]),
            &items,
            0
        ));
        assert!(
            !unchanged_value(&same, &items, 1),
            "an invalid item was never checked"
        );
        assert!(!unchanged_value(&same, &items, 2), "no such item");
        assert!(!unchanged_value(&Record::default(), &items, 0), "no value");
    }

    /// A sink that accepts everything and reports a reject for a record it
    /// was never given (a broken sink: no real one can be made to do it).
    struct LyingSink;

    #[async_trait::async_trait]
    impl Sink for LyingSink {
        async fn submit(&self, _batch: SinkBatch) -> Result<Pending, SinkError> {
            Ok(crate::sink::ready(vec![Reject {
                index: 7,
                reason: "made up".into(),
            }]))
        }
        fn describe(&self) -> String {
            "lying".into()
        }
    }

    /// A sink that keeps what it is given.
    #[derive(Default)]
    struct Keep(std::sync::Mutex<Vec<Record>>);

    #[async_trait::async_trait]
    impl Sink for Keep {
        async fn submit(&self, batch: SinkBatch) -> Result<Pending, SinkError> {
            let records = batch.records;
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(records);
            Ok(crate::sink::ready(Vec::new()))
        }
        fn describe(&self) -> String {
            "keep".into()
        }
    }

    #[tokio::test]
    async fn a_reject_naming_no_record_stops_the_run_without_committing() {
        let part = Partition {
            stream: Arc::from("s"),
            partition: 0,
        };
        let record = Record::from_value(&b"{}"[..]);
        let job = Job {
            partition: part.clone(),
            epoch: 0,
            items: vec![SourceItem::Record(SourceRecord {
                record: record.clone(),
                position: Position {
                    partition: part,
                    offset: 0,
                },
            })],
            bytes: 2,
            dispatched: std::time::Instant::now(),
            seq: 0,
        };
        let mut chain = ChainResult::default();
        chain.outputs.insert(
            "default".into(),
            vec![super::super::chain::Routed {
                record,
                origin: 0,
                from: None,
            }],
        );
        let dlq_sink = Arc::new(Keep::default());
        let delivery = Delivery {
            sinks: BTreeMap::from([("default".to_string(), Arc::new(LyingSink) as Arc<dyn Sink>)]),
            dlq: Arc::new(DeadLetter::new(dlq_sink.clone(), "p", "t")),
            transforms: Arc::new(Vec::new()),
            retries: BTreeMap::new(),
            dlq_retry: Retry::default(),
            turns: Turns::default(),
            metrics: crate::metrics::PipelineMetrics::detached("p", "t"),
            module_header: false,
            source_json: false,
        };
        let submitted = delivery
            .submit(Processed { job, chain })
            .await
            .map_err(|(_, e)| e)
            .expect("submitted");
        let (done, _) = delivery.finish(submitted, true).await;
        let err = done.outcome.expect_err("the run stops");
        assert!(
            matches!(err, PipelineError::Internal(_))
                && err
                    .to_string()
                    .contains("rejected record 7 of a write of 1"),
            "{err}"
        );
        assert!(
            dlq_sink
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty(),
            "nothing is written as if it were handled"
        );
    }

    /// A sink that writes every other record the first time and everything
    /// the second: a retry must write only what failed.
    #[derive(Default)]
    struct HalfThenAll {
        calls: std::sync::Mutex<Vec<Vec<Record>>>,
        lineages: std::sync::Mutex<Vec<Lineage>>,
    }

    #[async_trait::async_trait]
    impl Sink for HalfThenAll {
        async fn submit(&self, batch: SinkBatch) -> Result<Pending, SinkError> {
            let records = batch.records;
            self.lineages
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(batch.lineage);
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            calls.push(records.clone());
            if calls.len() == 1 {
                let failed: Vec<usize> = (0..records.len()).filter(|i| i % 2 == 1).collect();
                return Ok(Box::pin(std::future::ready(Err(SinkError::Partial {
                    sink: "half".into(),
                    message: "broker away".into(),
                    transient: true,
                    failed,
                    rejects: vec![Reject {
                        index: 0,
                        reason: "too large".into(),
                    }],
                }))));
            }
            // The second write: its record 1 is refused for itself.
            Ok(crate::sink::ready(vec![Reject {
                index: 1,
                reason: "refused".into(),
            }]))
        }
        fn describe(&self) -> String {
            "half".into()
        }
    }

    #[tokio::test]
    async fn a_retry_writes_only_what_was_not_written() {
        let sink = Arc::new(HalfThenAll::default());
        let records: Vec<Record> = (0..6)
            .map(|i| Record::from_value(format!("{i}").into_bytes()))
            .collect();
        let delivery = Delivery {
            sinks: BTreeMap::new(),
            dlq: Arc::new(DeadLetter::new(Arc::new(Keep::default()), "p", "t")),
            transforms: Arc::new(Vec::new()),
            retries: BTreeMap::new(),
            dlq_retry: Retry::default(),
            turns: Turns::default(),
            metrics: crate::metrics::PipelineMetrics::detached("p", "t"),
            module_header: false,
            source_json: false,
        };
        let part = Partition {
            stream: Arc::from("orders"),
            partition: 3,
        };
        let lineage = Lineage {
            positions: (0..6)
                .map(|i| Position {
                    partition: part.clone(),
                    offset: 100 + i,
                })
                .collect(),
            modules: (0..6)
                .map(|i| (i % 2 == 0).then(|| Arc::from("sha256:even")))
                .collect(),
            ..Default::default()
        };
        assert_eq!(
            lineage.spans(),
            BTreeMap::from([(part.clone(), (100, 105))])
        );
        let mut write = Write {
            output: "default".into(),
            sink: sink.clone(),
            records: records.clone(),
            meta: (0..6).map(|i| (i, None)).collect(),
            pending: sink
                .submit(SinkBatch {
                    records: records.clone(),
                    lineage: lineage.clone(),
                })
                .await
                .expect("submit"),
            lineage,
            submitted: std::time::Instant::now(),
        };
        let rejects = delivery
            .await_write(&mut write, true, 0)
            .await
            .expect("written");
        let calls = sink.calls.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(calls.len(), 2);
        let values = |batch: &[Record]| -> Vec<String> {
            batch
                .iter()
                .map(|r| {
                    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()
                })
                .collect()
        };
        assert_eq!(
            values(&calls[1]),
            vec!["1", "3", "5"],
            "only the failed records again"
        );
        // Record 0 refused in the first write, record 3 (index 1 of the
        // retry) in the second: both in the whole write's numbering.
        let idx: Vec<usize> = rejects.rejects.iter().map(|r| r.index).collect();
        assert_eq!(idx, vec![0, 3]);
        // The retry's lineage is that of the records it carries.
        let lineages = sink.lineages.lock().unwrap_or_else(|e| e.into_inner());
        let offsets: Vec<i64> = lineages[1].positions.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![101, 103, 105]);
        assert_eq!(lineages[1].modules, vec![None, None, None]);
        assert_eq!(lineages[0].modules[0].as_deref(), Some("sha256:even"));
    }

    /// What a sink is given says where each record came from and which
    /// module made it.
    #[tokio::test]
    async fn sinks_see_the_lineage_of_what_they_write() {
        let part = Partition {
            stream: Arc::from("s"),
            partition: 1,
        };
        let items: Vec<SourceItem> = (0..3)
            .map(|i| {
                SourceItem::Record(SourceRecord {
                    record: Record::from_value(&b"{}"[..]),
                    position: Position {
                        partition: part.clone(),
                        offset: 40 + i,
                    },
                })
            })
            .collect();
        let job = Job {
            partition: part.clone(),
            epoch: 0,
            items,
            bytes: 6,
            dispatched: std::time::Instant::now(),
            seq: 0,
        };
        let routed = |origin: usize, from: Option<usize>| super::super::chain::Routed {
            record: Record::from_value(&b"{\"out\":1}"[..]),
            origin,
            from,
        };
        let chain = ChainResult {
            outputs: BTreeMap::from([(
                "default".to_string(),
                vec![routed(2, Some(1)), routed(0, Some(0)), routed(0, None)],
            )]),
            dead: Vec::new(),
            steps: Vec::new(),
            digests: vec![Arc::from("sha256:aaa"), Arc::from("sha256:bbb")],
        };
        let sink = Arc::new(HalfThenAll::default());
        let delivery = Delivery {
            sinks: BTreeMap::from([("default".to_string(), sink.clone() as Arc<dyn Sink>)]),
            dlq: Arc::new(DeadLetter::new(Arc::new(Keep::default()), "p", "t")),
            transforms: Arc::new(vec![
                TransformInfo {
                    name: "a".into(),
                    digest: "sha256:aaa".into(),
                },
                TransformInfo {
                    name: "b".into(),
                    digest: "sha256:bbb".into(),
                },
            ]),
            retries: BTreeMap::new(),
            dlq_retry: Retry::default(),
            turns: Turns::default(),
            metrics: crate::metrics::PipelineMetrics::detached("p", "t"),
            module_header: false,
            source_json: false,
        };
        let _ = delivery
            .submit(Processed { job, chain })
            .await
            .map_err(|(_, e)| e)
            .expect("submitted");
        let lineages = sink.lineages.lock().unwrap_or_else(|e| e.into_inner());
        let l = &lineages[0];
        let offsets: Vec<i64> = l.positions.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![42, 40, 40]);
        let modules: Vec<Option<&str>> = l.modules.iter().map(|m| m.as_deref()).collect();
        assert_eq!(modules, vec![Some("sha256:bbb"), Some("sha256:aaa"), None]);
        assert_eq!(l.spans(), BTreeMap::from([(part, (40, 42))]));
    }

    #[tokio::test]
    async fn a_retry_waits_until_every_earlier_batch_is_finished() {
        let turns = Arc::new(Turns::default());
        let (a, b, c) = (turns.take(), turns.take(), turns.take());
        assert_eq!((a, b, c), (0, 1, 2));
        let waiting = {
            let turns = turns.clone();
            tokio::spawn(async move { turns.wait_for(c).await })
        };
        // The batch before it finishes first, the first one still retries.
        turns.finish(b);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "batch 0 is not finished yet");
        turns.finish(a);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("its turn came")
            .expect("task");
        // The first batch never waits.
        tokio::time::timeout(std::time::Duration::from_secs(10), turns.wait_for(0))
            .await
            .expect("no wait");
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let r = Retry {
            attempts: 10,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(60),
        };
        for attempt in 2..12 {
            let d = r.backoff(attempt);
            let full = Duration::from_millis(100)
                .saturating_mul(1 << (attempt - 2))
                .min(Duration::from_secs(1));
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
    }
}
