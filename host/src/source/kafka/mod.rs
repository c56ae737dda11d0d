//! The Kafka source: one consumer-group member, polled on a thread of its
//! own so that rebalances are served promptly whatever the pipeline does.
//!
//! - Offsets are never committed automatically: the pipeline commits what
//!   its ledger says is handled ([`SourceControl::commit`]).
//! - Back-pressure: when the pipeline's in-flight budget is spent, the
//!   assigned partitions are paused (the consumer keeps its group membership
//!   and heartbeats), and resumed once a quarter of the budget is free.
//! - Fairness: a partition holding its whole share of the budget (the budget
//!   split among the partitions assigned or read from in the last few
//!   seconds) is paused
//!   alone until it is back under three quarters of its share, so the
//!   partitions of a backlog advance side by side, while a busy partition
//!   among idle ones still has the whole budget. (Pausing drops librdkafka's prefetched
//!   records of that partition; they are fetched again on resume. Without it
//!   the first partition in a fetch took the whole budget, again and again.)
//!   A partition paused this way, or with all the others while the budget is
//!   spent, keeps its share however long it waits ([`Sharing`]).
//! - Rebalances use the cooperative-sticky protocol. A revoked partition is
//!   handed to the pipeline as a [`Revocation`]; the rebalance callback waits
//!   (up to the drain timeout) until the partition's in-flight batches are
//!   handled, commits their offsets, and only then lets the partition go, so
//!   the next owner neither loses nor re-processes what this process finished.

mod config;

pub use config::{Isolation, KafkaSourceConfig, StartPosition, ValueFormat};

use super::{
    Revocation, RunningSource, SourceControl, SourceError, SourceEvent, SourceItem, StartOptions,
};
use crate::batch::ByteSize;
use crate::flow::Budget;
use crate::record::{Header, Partition, Position, Record, SourceRecord};
use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long one blocking broker call (committed offsets, offsets for times,
/// a synchronous commit) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The consumer settings for a `[source.kafka]` table.
pub(super) fn client_config(
    c: &KafkaSourceConfig,
    pipeline: &str,
) -> Result<ClientConfig, SourceError> {
    let client_id = format!("sluice-{pipeline}");
    let reset = match c.start {
        StartPosition::Latest => "latest",
        StartPosition::Earliest | StartPosition::Timestamp(_) => "earliest",
    };
    let isolation = match c.isolation {
        Isolation::ReadCommitted => "read_committed",
        Isolation::ReadUncommitted => "read_uncommitted",
    };
    let defaults = [
        ("client.id", client_id.as_str()),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", reset),
        ("isolation.level", isolation),
        ("partition.assignment.strategy", "cooperative-sticky"),
        ("enable.partition.eof", "false"),
        // Bound what librdkafka prefetches per partition (its default is
        // 64 MiB). Pausing a partition (back-pressure, fairness) discards
        // what it prefetched, and resuming fetches it again: a shallow
        // prefetch wastes less of the broker's work. A fetch may not bring
        // more than one partition's prefetch either: with 16 MiB fetches
        // and 4 MiB of prefetch, a 1,000,000-record backlog drained its
        // partitions one after another (BENCHMARKS.md, Kafka section).
        ("queued.max.messages.kbytes", "4096"),
        ("fetch.max.bytes", "4194304"),
    ];
    let mut config =
        crate::kafka::client_config(&c.bootstrap, &defaults, &c.properties, "source.kafka")
            .map_err(|message| SourceError::Client {
                source_kind: "kafka",
                what: "configuration",
                message,
                fatal: true,
            })?;
    config.set("group.id", &c.group);
    Ok(config)
}

fn kafka_err(what: &'static str, e: &KafkaError) -> SourceError {
    SourceError::Client {
        source_kind: "kafka",
        what,
        message: e.to_string(),
        fatal: matches!(e, KafkaError::MessageConsumptionFatal(_)),
    }
}

/// [`kafka_err`] for errors that may quote a property's value.
fn config_err(
    what: &'static str,
    e: &KafkaError,
    redactor: &crate::kafka::Redactor,
) -> SourceError {
    SourceError::Client {
        source_kind: "kafka",
        what,
        message: redactor.error(e),
        fatal: true,
    }
}

/// Starts the consumer and its polling thread.
pub(super) fn start(
    c: &KafkaSourceConfig,
    opts: StartOptions,
) -> Result<RunningSource, SourceError> {
    let mut config = client_config(c, &opts.pipeline)?;
    if config.get("statistics.interval.ms").is_none() {
        config.set("statistics.interval.ms", STATS_INTERVAL_MS);
    }
    let lag = Arc::new(std::sync::atomic::AtomicI64::new(-1));
    let partition_lags = Arc::new(Mutex::new(Vec::new()));
    let reach = Arc::new(Reachability::new(&c.bootstrap, &opts.pipeline));
    let redactor = crate::kafka::Redactor::new(&c.properties);
    let (events_tx, events) = mpsc::unbounded_channel();
    opts.budget.track_partitions();
    let context = SourceContext {
        events: events_tx,
        budget: opts.budget.clone(),
        pending: Mutex::new(VecDeque::new()),
        lost_resume: Mutex::new(HashMap::new()),
        stopping: AtomicBool::new(false),
        assignment_changed: AtomicBool::new(true),
        drain_timeout: opts.drain_timeout,
        start: c.start.clone(),
        format: c.format,
        topics: Mutex::new(HashMap::new()),
        redactor: redactor.clone(),
        lag: lag.clone(),
        partition_lags: partition_lags.clone(),
        reach: reach.clone(),
    };
    let consumer: BaseConsumer<SourceContext> = config
        .create_with_context(context)
        .map_err(|e| config_err("create consumer", &e, &redactor))?;
    let topics: Vec<&str> = c.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| kafka_err("subscribe", &e))?;
    let consumer = Arc::new(consumer);
    let (commands, commands_rx) = std::sync::mpsc::channel();
    let thread = {
        let consumer = consumer.clone();
        std::thread::Builder::new()
            .name("sluice-kafka-source".into())
            .spawn(move || poll_loop(&consumer, &commands_rx))
            .map_err(|e| SourceError::Client {
                source_kind: "kafka",
                what: "start",
                message: format!("cannot start the polling thread: {e}"),
                fatal: true,
            })?
    };
    let describe = format!("kafka {} (group `{}`)", c.topics.join(","), c.group);
    tracing::info!(pipeline = %opts.pipeline, source = %describe, bootstrap = %c.bootstrap, "kafka source started");
    Ok(RunningSource {
        events,
        control: Arc::new(KafkaControl {
            consumer,
            commands: Mutex::new(commands),
            thread: Mutex::new(Some(thread)),
            describe,
            lag,
            partition_lags,
            reach,
        }),
    })
}

/// Whether the brokers answer: librdkafka retries an unreachable broker for
/// ever and reports each failure, so the first failure is said once, as an
/// error naming the bootstrap address; the pipeline's status shows it
/// (`health`) until a broker answers again.
struct Reachability {
    bootstrap: String,
    pipeline: String,
    since: Mutex<Option<(chrono::DateTime<chrono::Utc>, String)>>,
}

impl Reachability {
    fn new(bootstrap: &str, pipeline: &str) -> Self {
        Reachability {
            bootstrap: bootstrap.to_string(),
            pipeline: pipeline.to_string(),
            since: Mutex::new(None),
        }
    }

    fn lost(&self, why: &str) {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        if since.is_none() {
            tracing::error!(pipeline = %self.pipeline, bootstrap = %self.bootstrap, reason = %why,
                "cannot reach the Kafka brokers at `{}`; librdkafka keeps trying (repeats of its warnings are rate-limited)", self.bootstrap);
            *since = Some((chrono::Utc::now(), why.to_string()));
        }
    }

    fn answered(&self) {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, _)) = since.take() {
            tracing::info!(pipeline = %self.pipeline, bootstrap = %self.bootstrap, unreachable_since = %at.to_rfc3339(),
                "the Kafka brokers answer again");
        }
    }

    fn health(&self) -> Option<String> {
        let since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        since.as_ref().map(|(at, why)| {
            format!(
                "source unreachable since {}: cannot reach the Kafka brokers at `{}` ({why}); retrying",
                at.format("%Y-%m-%d %H:%M:%S UTC"),
                self.bootstrap
            )
        })
    }
}

enum Command {
    Close {
        offsets: TopicPartitionList,
        done: oneshot::Sender<Result<(), SourceError>>,
    },
}

/// A record read while the budget was spent, waiting for room.
struct Held {
    item: SourceItem,
    bytes: usize,
}

/// State shared by the polling thread and librdkafka's callbacks (which run
/// on the polling thread, inside `poll`).
struct SourceContext {
    events: mpsc::UnboundedSender<Result<SourceEvent, SourceError>>,
    budget: Arc<Budget>,
    pending: Mutex<VecDeque<Held>>,
    stopping: AtomicBool,
    assignment_changed: AtomicBool,
    drain_timeout: Duration,
    start: StartPosition,
    format: ValueFormat,
    topics: Mutex<HashMap<String, Arc<str>>>,
    redactor: crate::kafka::Redactor,
    /// Consumer lag over the assigned partitions, from librdkafka's
    /// statistics; -1 until known.
    lag: Arc<std::sync::atomic::AtomicI64>,
    /// The same per partition (those whose lag is known).
    partition_lags: Arc<Mutex<Vec<(Partition, i64)>>>,
    /// Whether the brokers answer.
    reach: Arc<Reachability>,
    /// Lost partitions whose in-flight work the pipeline kept: where to
    /// read on if they are assigned to this member again.
    lost_resume: Mutex<HashMap<Partition, i64>>,
}

/// Every how many ms librdkafka reports statistics (the lag), unless the
/// pipeline sets `statistics.interval.ms` itself.
const STATS_INTERVAL_MS: &str = "5000";

impl SourceContext {
    fn pending(&self) -> std::sync::MutexGuard<'_, VecDeque<Held>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stream(&self, topic: &str) -> Arc<str> {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        topics
            .entry(topic.to_string())
            .or_insert_with(|| Arc::from(topic))
            .clone()
    }

    fn convert(&self, msg: &BorrowedMessage<'_>) -> SourceItem {
        let position = Position {
            partition: Partition {
                stream: self.stream(&crate::kafka::raw::topic(msg)),
                partition: msg.partition(),
            },
            offset: msg.offset(),
        };
        let headers: Vec<Header> = crate::kafka::raw::headers(msg)
            .into_iter()
            .map(|(name, value)| Header { name, value })
            .collect();
        let record = Record {
            key: msg.key().map(Bytes::copy_from_slice),
            value: msg.payload().map(Bytes::copy_from_slice),
            headers,
            timestamp: msg.timestamp().to_millis(),
        };
        if let Some(i) = record
            .headers
            .iter()
            .position(|h| std::str::from_utf8(&h.name).is_err())
        {
            return SourceItem::Invalid {
                reason: format!(
                    "record {position} has a header (number {}) whose name is not UTF-8: header names must be text",
                    i + 1
                ),
                record,
                position,
            };
        }
        if self.format == ValueFormat::Json {
            let check = match record.value.as_deref() {
                None => Err("the record has no value".to_string()),
                Some(v) => crate::record::check_json(v),
            };
            if let Err(e) = check {
                return SourceItem::Invalid {
                    reason: format!("record {position} is not valid JSON: {e}"),
                    record,
                    position,
                };
            }
        }
        SourceItem::Record(SourceRecord { record, position })
    }

    /// Hands an item to the pipeline if the budget allows, else holds it.
    fn offer(&self, item: SourceItem) {
        let bytes = item.byte_size();
        let mut pending = self.pending();
        if pending.is_empty()
            && self
                .budget
                .try_acquire_in(&item.position().partition, bytes)
        {
            drop(pending);
            let _ = self.events.send(Ok(SourceEvent::Item(item)));
        } else {
            pending.push_back(Held { item, bytes });
        }
    }

    /// Hands held items over while the budget allows; true when none is left.
    fn flush_pending(&self) -> bool {
        let mut pending = self.pending();
        while let Some(held) = pending.front() {
            if !self
                .budget
                .try_acquire_in(&held.item.position().partition, held.bytes)
            {
                return false;
            }
            if let Some(held) = pending.pop_front() {
                let _ = self.events.send(Ok(SourceEvent::Item(held.item)));
            }
        }
        true
    }

    /// Forgets held items of partitions that are going away.
    fn drop_pending(&self, partitions: &[Partition]) {
        self.pending()
            .retain(|h| !partitions.contains(&h.item.position().partition));
    }

    /// For a start position given as a time: partitions without a committed
    /// offset start at the first record at or after that time.
    fn seek_to_start_time(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
        at: i64,
    ) {
        let committed = match consumer.committed_offsets(tpl.clone(), CALL_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%e, "cannot read committed offsets; new partitions start at the earliest record");
                return;
            }
        };
        let mut by_time = TopicPartitionList::new();
        for el in committed.elements() {
            if matches!(el.offset(), Offset::Invalid | Offset::Stored)
                && let Err(e) =
                    by_time.add_partition_offset(el.topic(), el.partition(), Offset::Offset(at))
            {
                tracing::warn!(%e, topic = el.topic(), partition = el.partition(), "cannot look up the start time");
            }
        }
        if by_time.count() == 0 {
            return;
        }
        match consumer.offsets_for_times(by_time, CALL_TIMEOUT) {
            Ok(found) => {
                for el in found.elements() {
                    let offset = match el.offset() {
                        Offset::Offset(o) => Offset::Offset(o),
                        // No record at or after the time: start at the end.
                        _ => Offset::End,
                    };
                    if let Err(e) = tpl.set_partition_offset(el.topic(), el.partition(), offset) {
                        tracing::warn!(%e, topic = el.topic(), partition = el.partition(), "cannot set the start offset");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%e, "cannot look up offsets for the start time; new partitions start at the earliest record")
            }
        }
    }

    /// The first assignment after partitions were lost: those the pipeline
    /// kept and that are ours again are read on from after their in-flight
    /// records (instead of from the committed offset, which would deliver
    /// them all twice); the others went elsewhere. Tells the pipeline both.
    fn resume_lost(&self, tpl: &mut TopicPartitionList) {
        let lost = std::mem::take(&mut *self.lost_resume.lock().unwrap_or_else(|e| e.into_inner()));
        if lost.is_empty() {
            return;
        }
        let assigned = partitions_of(self, tpl);
        let mut regained = Vec::new();
        for p in &assigned {
            if let Some(&at) = lost.get(p) {
                match tpl.set_partition_offset(&p.stream, p.partition, Offset::Offset(at)) {
                    Ok(()) => regained.push(p.clone()),
                    Err(e) => {
                        tracing::warn!(%e, partition = %p, "cannot read a regained partition on from where the pipeline stopped")
                    }
                }
            }
        }
        let released: Vec<Partition> = lost.into_keys().filter(|p| !regained.contains(p)).collect();
        if !regained.is_empty() {
            tracing::info!(
                partitions = regained.len(),
                "lost partitions assigned again: read on after their in-flight records"
            );
            let _ = self.events.send(Ok(SourceEvent::Regained(regained)));
        }
        if !released.is_empty() {
            tracing::info!(
                partitions = released.len(),
                "lost partitions went to another member"
            );
            let _ = self.events.send(Ok(SourceEvent::Released(released)));
        }
    }

    /// Hands revoked partitions to the pipeline and waits until their
    /// in-flight work is handled; returns the offsets to commit.
    fn drain(&self, partitions: Vec<Partition>, lost: bool) -> Vec<(Partition, i64)> {
        self.drop_pending(&partitions);
        let (done, mut answer) = oneshot::channel();
        let revocation = Revocation {
            partitions,
            lost,
            done,
        };
        if self
            .events
            .send(Ok(SourceEvent::Revoke(revocation)))
            .is_err()
        {
            return Vec::new();
        }
        // The pipeline answers within its drain timeout; allow a margin.
        let deadline = Instant::now() + self.drain_timeout + Duration::from_secs(5);
        loop {
            match answer.try_recv() {
                Ok(offsets) => return offsets,
                Err(oneshot::error::TryRecvError::Closed) => return Vec::new(),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    "the pipeline did not drain revoked partitions in time; their uncommitted work will be repeated by the next owner"
                );
                return Vec::new();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn partitions_of(ctx: &SourceContext, tpl: &TopicPartitionList) -> Vec<Partition> {
    tpl.elements()
        .iter()
        .map(|el| Partition {
            stream: ctx.stream(el.topic()),
            partition: el.partition(),
        })
        .collect()
}

fn offsets_list(offsets: &[(Partition, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        if let Err(e) = tpl.add_partition_offset(&p.stream, p.partition, Offset::Offset(*o)) {
            tracing::warn!(%e, partition = %p, "cannot add an offset to commit");
        }
    }
    tpl
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        crate::kafka::forward_log("source", &self.redactor, level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if crate::kafka::is_unreachable(&error) {
            self.reach.lost(&self.redactor.redact(reason));
        }
        crate::kafka::forward_error("source", &self.redactor, &error, reason);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        // A broker's statistics are outside input: a document that does not
        // parse is ignored (the lag stays as it was).
        match serde_json::from_slice::<rdkafka::Statistics>(statistics) {
            Ok(stats) => {
                let mut lags: Vec<(Partition, i64)> = stats
                    .topics
                    .iter()
                    .flat_map(|(topic, t)| t.partitions.iter().map(move |p| (topic, p)))
                    .filter(|(_, (id, p))| **id >= 0 && p.consumer_lag >= 0)
                    .map(|(topic, (id, p))| {
                        let partition = Partition {
                            stream: self.stream(topic),
                            partition: *id,
                        };
                        (partition, p.consumer_lag)
                    })
                    .collect();
                lags.sort();
                let lag = if lags.is_empty() {
                    -1
                } else {
                    lags.iter().map(|(_, l)| l).sum()
                };
                self.lag.store(lag, Ordering::Relaxed);
                *self
                    .partition_lags
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = lags;
            }
            Err(e) => tracing::debug!(error = %e, "cannot read librdkafka's statistics"),
        }
        // Statistics come from a client that talks to its brokers: count a
        // broker in state UP as an answer.
        if std::str::from_utf8(statistics).is_ok_and(|t| t.contains("\"state\":\"UP\"")) {
            self.reach.answered();
        }
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let StartPosition::Timestamp(at) = self.start {
                    self.seek_to_start_time(consumer, tpl, at);
                }
                self.resume_lost(tpl);
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                let parts: Vec<String> = partitions_of(self, tpl)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                match result {
                    Ok(()) => tracing::info!(partitions = %parts.join(" "), "partitions assigned"),
                    Err(e) => {
                        tracing::error!(%e, partitions = %parts.join(" "), "cannot take the assigned partitions")
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                let partitions = partitions_of(self, tpl);
                let names: Vec<String> = partitions.iter().map(ToString::to_string).collect();
                if self.stopping.load(Ordering::SeqCst) {
                    self.drop_pending(&partitions);
                } else {
                    tracing::info!(partitions = %names.join(" "), lost, "partitions revoked: draining");
                    let offsets = self.drain(partitions, lost);
                    if lost {
                        // The pipeline keeps these partitions' in-flight
                        // work: if they come back, read on after it.
                        self.lost_resume
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend(offsets);
                    } else if !offsets.is_empty() {
                        let list = offsets_list(&offsets);
                        if let Err(e) = consumer.commit(&list, CommitMode::Sync) {
                            tracing::warn!(%e, "cannot commit the offsets of revoked partitions; the next owner repeats their last records");
                        }
                    }
                }
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::error!(%e, "cannot release the revoked partitions");
                }
                tracing::info!(partitions = %names.join(" "), "partitions released");
            }
            other => tracing::error!(error = ?other, "rebalance failed"),
        }
        self.assignment_changed.store(true, Ordering::SeqCst);
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // Harmless for the guarantees: a later commit covers these offsets,
            // and at worst the next owner repeats some handled records.
            tracing::warn!(%e, partitions = offsets.count(), "offset commit failed");
        }
    }
}

/// A partition counts as read from (it shares the budget) this long after
/// its last record.
const ACTIVE_WINDOW: Duration = Duration::from_secs(5);

/// Which partitions share the budget: those read from within
/// [`ACTIVE_WINDOW`] (or assigned, until they have been idle that long), and
/// those this source holds back. A partition the source paused is not idle:
/// however long it waits it keeps its share, or the others' shares would
/// grow over it and it would wait longer still (with slow acknowledgements,
/// two partitions of four once waited 16 s while the other two drained).
#[derive(Default)]
struct Sharing {
    /// When each partition was last read from (or assigned, or resumed).
    last_read: HashMap<Partition, Instant>,
    /// How many share the budget, and when that was counted.
    count: usize,
    counted: Option<Instant>,
}

impl Sharing {
    /// Notes a record of `p` read at `now`.
    fn read(&mut self, p: &Partition, now: Instant) {
        match self.last_read.get_mut(p) {
            Some(t) => *t = now,
            None => {
                self.last_read.insert(p.clone(), now);
                self.counted = None;
            }
        }
    }

    /// How many partitions share the budget, counted again at most every
    /// 100 ms; `held` are the partitions this source holds back.
    fn count(&mut self, held: &BTreeSet<Partition>, now: Instant) -> usize {
        if self
            .counted
            .is_none_or(|t| now.duration_since(t) > Duration::from_millis(100))
        {
            self.last_read
                .retain(|p, t| held.contains(p) || now.duration_since(*t) <= ACTIVE_WINDOW);
            self.count = self.last_read.len();
            self.counted = Some(now);
        }
        self.count
    }

    /// `p` was resumed at `now`: its wait does not count as idle.
    fn resumed(&mut self, p: Partition, now: Instant) {
        self.last_read.insert(p, now);
    }

    /// The whole assignment was paused (budget spent) until `now`: the time
    /// paused does not count as idle for any partition that was sharing.
    fn unpaused(&mut self, now: Instant) {
        for t in self.last_read.values_mut() {
            *t = now;
        }
        self.count = self.last_read.len();
        self.counted = Some(now);
    }

    /// A new assignment at `now`: partitions no longer assigned leave; a
    /// newly assigned one shares from the start (until it has been idle for
    /// the window), otherwise the first partition read would take all of it
    /// before the others' records are seen.
    fn reassigned(&mut self, assignment: &[Partition], now: Instant) {
        self.last_read.retain(|p, _| assignment.contains(p));
        for p in assignment {
            self.last_read.entry(p.clone()).or_insert(now);
        }
        self.counted = None;
    }
}

/// Partitions paused one by one for holding more than their share of the
/// budget (see the module's notes on fairness).
#[derive(Default)]
struct HeldBack {
    partitions: BTreeSet<Partition>,
    /// Which partitions share the budget.
    sharing: Sharing,
    /// When the held-back partitions were last looked at.
    checked: Option<Instant>,
}

impl HeldBack {
    /// How many partitions share the budget now.
    fn sharing(&mut self) -> usize {
        self.sharing.count(&self.partitions, Instant::now())
    }

    /// Notes a record of `p`, and pauses `p` if it holds its whole share of
    /// the budget.
    fn check(
        &mut self,
        consumer: &BaseConsumer<SourceContext>,
        ctx: &SourceContext,
        p: &Partition,
    ) {
        self.sharing.read(p, Instant::now());
        let sharing = self.sharing();
        if self.partitions.contains(p) || !ctx.budget.over_share(p, sharing, 4) {
            return;
        }
        match consumer.pause(&one_partition(p)) {
            Ok(()) => {
                tracing::debug!(partition = %p, in_flight = ctx.budget.in_flight_of(p), sharing, "partition over its share of the budget: paused");
                self.partitions.insert(p.clone());
            }
            Err(e) => tracing::warn!(%e, partition = %p, "cannot pause a partition"),
        }
    }

    /// Resumes the partitions back under three quarters of their share.
    fn release(&mut self, consumer: &BaseConsumer<SourceContext>, ctx: &SourceContext) {
        if self.partitions.is_empty()
            || self
                .checked
                .is_some_and(|t| t.elapsed() < Duration::from_millis(5))
        {
            return;
        }
        self.checked = Some(Instant::now());
        let sharing = self.sharing();
        let ready: Vec<Partition> = self
            .partitions
            .iter()
            .filter(|p| !ctx.budget.over_share(p, sharing, 3))
            .cloned()
            .collect();
        for p in ready {
            match consumer.resume(&one_partition(&p)) {
                Ok(()) => {
                    tracing::debug!(partition = %p, "partition back within its share: resumed");
                    self.partitions.remove(&p);
                    self.sharing.resumed(p, Instant::now());
                }
                Err(e) => tracing::warn!(%e, partition = %p, "cannot resume a partition"),
            }
        }
    }

    /// After a rebalance: forgets partitions no longer assigned and pauses
    /// the others again (an assignment may reset their state).
    fn reassigned(&mut self, consumer: &BaseConsumer<SourceContext>, assignment: &[Partition]) {
        self.partitions.retain(|p| assignment.contains(p));
        self.sharing.reassigned(assignment, Instant::now());
        for p in &self.partitions {
            if let Err(e) = consumer.pause(&one_partition(p)) {
                tracing::warn!(%e, partition = %p, "cannot pause a partition");
            }
        }
    }
}

fn one_partition(p: &Partition) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&p.stream, p.partition);
    tpl
}

fn poll_loop(
    consumer: &BaseConsumer<SourceContext>,
    commands: &std::sync::mpsc::Receiver<Command>,
) {
    let ctx = consumer.context().clone();
    let mut paused = false;
    let mut held_back = HeldBack::default();
    let mut failed = false;
    loop {
        match commands.try_recv() {
            Ok(Command::Close { offsets, done }) => {
                let _ = done.send(close(consumer, &ctx, &offsets));
                return;
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                let _ = close(consumer, &ctx, &TopicPartitionList::new());
                return;
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        if failed {
            // A fatal consumer error was reported; wait to be closed.
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let drained = ctx.flush_pending();
        let spent = !drained || ctx.budget.is_spent();
        let changed = ctx.assignment_changed.swap(false, Ordering::SeqCst);
        if changed && let Ok(assignment) = consumer.assignment() {
            let assigned = partitions_of(&ctx, &assignment);
            held_back.reassigned(consumer, &assigned);
            if !paused {
                // librdkafka keeps a partition's pause across a revocation
                // and a later re-assignment: one paused when it was last
                // ours would never be read again. Resuming a partition that
                // is not paused does nothing.
                let mut resume = TopicPartitionList::new();
                for p in assigned
                    .iter()
                    .filter(|p| !held_back.partitions.contains(*p))
                {
                    resume.add_partition(&p.stream, p.partition);
                }
                if let Err(e) = consumer.resume(&resume) {
                    tracing::warn!(%e, "cannot resume the assigned partitions");
                }
            }
        }
        if spent && (!paused || changed) {
            if let Ok(assignment) = consumer.assignment() {
                match consumer.pause(&assignment) {
                    Ok(()) => {
                        if !paused {
                            tracing::debug!(
                                partitions = assignment.count(),
                                "in-flight budget spent: partitions paused"
                            );
                        }
                        paused = true;
                    }
                    Err(e) => tracing::warn!(%e, "cannot pause partitions"),
                }
            }
        } else if paused
            && drained
            && ctx.budget.has_room()
            && let Ok(assignment) = consumer.assignment()
        {
            // Partitions still over three quarters of their share stay
            // paused: the others take the room first.
            let mut resume = TopicPartitionList::new();
            held_back.sharing.unpaused(Instant::now());
            held_back.partitions.clear();
            let sharing = held_back.sharing();
            for p in partitions_of(&ctx, &assignment) {
                if ctx.budget.over_share(&p, sharing, 3) {
                    held_back.partitions.insert(p);
                } else {
                    resume.add_partition(&p.stream, p.partition);
                }
            }
            match consumer.resume(&resume) {
                Ok(()) => {
                    tracing::debug!(
                        partitions = resume.count(),
                        held_back = held_back.partitions.len(),
                        "budget has room: partitions resumed"
                    );
                    paused = false;
                }
                Err(e) => tracing::warn!(%e, "cannot resume partitions"),
            }
        }
        if !paused {
            held_back.release(consumer, &ctx);
        }
        let wait = if paused || !held_back.partitions.is_empty() {
            20
        } else {
            100
        };
        match consumer.poll(Duration::from_millis(wait)) {
            None => {}
            Some(Ok(msg)) => {
                ctx.reach.answered();
                let item = ctx.convert(&msg);
                let partition = item.position().partition.clone();
                ctx.offer(item);
                if !paused {
                    held_back.check(consumer, &ctx, &partition);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => {
                let error = kafka_err("poll", &e);
                if let SourceError::Client { fatal: true, .. } = error {
                    tracing::error!(%e, "the Kafka consumer failed fatally");
                    let _ = ctx.events.send(Err(error));
                    failed = true;
                } else {
                    if crate::kafka::is_unreachable(&e) {
                        ctx.reach.lost(&ctx.redactor.error(&e));
                    }
                    crate::kafka::warn_limited(
                        "source poll",
                        &format!(
                            "kafka consumer error (retried by librdkafka): {}",
                            ctx.redactor.error(&e)
                        ),
                    );
                }
            }
        }
    }
}

fn close(
    consumer: &BaseConsumer<SourceContext>,
    ctx: &SourceContext,
    offsets: &TopicPartitionList,
) -> Result<(), SourceError> {
    ctx.stopping.store(true, Ordering::SeqCst);
    let committed = if offsets.count() > 0 {
        consumer
            .commit(offsets, CommitMode::Sync)
            .map_err(|e| kafka_err("final commit", &e))
    } else {
        Ok(())
    };
    // Leave the group now rather than when the last handle is dropped.
    match consumer.close_queue() {
        Ok(()) => {
            let deadline = Instant::now() + CALL_TIMEOUT;
            while !consumer.closed() && Instant::now() < deadline {
                let _ = consumer.poll(Duration::from_millis(50));
            }
        }
        Err(e) => tracing::warn!(%e, "cannot leave the consumer group cleanly"),
    }
    tracing::info!(committed = offsets.count(), "kafka source closed");
    committed
}

/// Commits and closes through the consumer shared with the polling thread.
pub(crate) struct KafkaControl {
    consumer: Arc<BaseConsumer<SourceContext>>,
    commands: Mutex<std::sync::mpsc::Sender<Command>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    describe: String,
    lag: Arc<std::sync::atomic::AtomicI64>,
    partition_lags: Arc<Mutex<Vec<(Partition, i64)>>>,
    reach: Arc<Reachability>,
}

#[async_trait::async_trait]
impl SourceControl for KafkaControl {
    async fn commit(&self, offsets: &[(Partition, i64)]) -> Result<(), SourceError> {
        if offsets.is_empty() {
            return Ok(());
        }
        // Asynchronous: a failure is logged by the commit callback and a later
        // commit covers it. Synchronous commits happen on revocation and close.
        self.consumer
            .commit(&offsets_list(offsets), CommitMode::Async)
            .map_err(|e| kafka_err("commit", &e))
    }

    async fn close(&self, offsets: &[(Partition, i64)]) -> Result<(), SourceError> {
        let (done, answer) = oneshot::channel();
        let sent = self
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Command::Close {
                offsets: offsets_list(offsets),
                done,
            });
        let result = if sent.is_ok() {
            answer.await.unwrap_or(Ok(()))
        } else {
            Ok(())
        };
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }

    fn transaction_context(&self) -> Option<Box<dyn std::any::Any + Send>> {
        self.consumer
            .group_metadata()
            .map(|g| Box::new(g) as Box<dyn std::any::Any + Send>)
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn lag(&self) -> Option<i64> {
        let lag = self.lag.load(Ordering::Relaxed);
        (lag >= 0).then_some(lag)
    }

    fn health(&self) -> Option<String> {
        self.reach.health()
    }

    fn partition_lags(&self) -> Vec<(Partition, i64)> {
        self.partition_lags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl super::SourcePlugin for KafkaSourceConfig {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn describe(&self) -> String {
        format!("kafka {} (group {})", self.topics.join(", "), self.group)
    }

    fn check(&self) -> Result<(), String> {
        if self.topics.is_empty() {
            return Err("`source.kafka.topics` must name at least one topic".into());
        }
        if self.group.trim().is_empty() {
            return Err("`source.kafka.group` must not be empty".into());
        }
        for t in self.topics.iter().filter(|t| t.starts_with('^')) {
            regex::Regex::new(t).map_err(|e| {
                format!("`source.kafka.topics`: `{t}` is not a valid regular expression: {e}")
            })?;
        }
        Ok(())
    }

    fn validate(&self, _base: &std::path::Path) -> Result<(), SourceError> {
        client_config(self, "check").map(|_| ())
    }

    fn probe(&self, _base: &std::path::Path) -> Result<String, SourceError> {
        let config = client_config(self, "check")?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        crate::kafka::probe_brokers(&config, &self.bootstrap, &topics, true).map_err(|message| {
            SourceError::Client {
                source_kind: "kafka",
                what: "connect",
                message: crate::kafka::Redactor::new(&self.properties).redact(&message),
                fatal: true,
            }
        })
    }

    fn start(
        &self,
        _base: &std::path::Path,
        opts: StartOptions,
    ) -> Result<RunningSource, SourceError> {
        start(self, opts)
    }

    fn json_values(&self) -> bool {
        self.format == ValueFormat::Json
    }

    fn resumes(&self) -> bool {
        true
    }

    fn transactional_cluster(&self) -> Option<&str> {
        Some(&self.bootstrap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(i: i32) -> Partition {
        Partition {
            stream: Arc::from("t"),
            partition: i,
        }
    }

    fn assigned(t0: Instant) -> Sharing {
        let mut s = Sharing::default();
        s.reassigned(&[part(0), part(1), part(2), part(3)], t0);
        s
    }

    #[test]
    fn a_partition_held_back_keeps_its_share_however_long_it_waits() {
        let t0 = Instant::now();
        let later = t0 + ACTIVE_WINDOW + Duration::from_secs(1);
        let mut s = assigned(t0);
        assert_eq!(s.count(&BTreeSet::new(), t0), 4);
        // Partitions 0 and 1 are read; 2 is held back, 3 is idle.
        s.read(&part(0), later);
        s.read(&part(1), later);
        let held: BTreeSet<Partition> = [part(2)].into();
        assert_eq!(
            s.count(&held, later),
            3,
            "0 and 1 read, 2 held back; 3 idle"
        );
        // The control: not held back, 2 is idle too.
        let mut s = assigned(t0);
        s.read(&part(0), later);
        s.read(&part(1), later);
        assert_eq!(s.count(&BTreeSet::new(), later), 2);
    }

    #[test]
    fn the_time_the_whole_assignment_was_paused_is_not_idle() {
        let t0 = Instant::now();
        let resumed = t0 + ACTIVE_WINDOW * 2;
        let mut s = assigned(t0);
        s.unpaused(resumed);
        s.read(&part(0), resumed + Duration::from_millis(200));
        assert_eq!(
            s.count(&BTreeSet::new(), resumed + Duration::from_millis(200)),
            4
        );
        // The control: without it, only the partition read still shares.
        let mut s = assigned(t0);
        s.read(&part(0), resumed + Duration::from_millis(200));
        assert_eq!(
            s.count(&BTreeSet::new(), resumed + Duration::from_millis(200)),
            1
        );
    }

    #[test]
    fn a_partition_shares_from_its_resume_until_idle_for_the_window() {
        let t0 = Instant::now();
        let mut s = assigned(t0);
        let resumed = t0 + ACTIVE_WINDOW * 2;
        s.resumed(part(3), resumed);
        assert_eq!(s.count(&BTreeSet::new(), resumed), 1);
        let idle = resumed + ACTIVE_WINDOW + Duration::from_secs(1);
        assert_eq!(s.count(&BTreeSet::new(), idle), 0);
        // A new assignment brings partitions back in, at once.
        s.reassigned(&[part(0), part(1)], idle);
        assert_eq!(s.count(&BTreeSet::new(), idle), 2);
    }
}
