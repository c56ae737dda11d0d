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

mod client;
mod config;
mod context;
mod control;
mod fairness;
mod poll;
mod rebalance;

use client::*;
use context::*;
use control::KafkaControl;
use fairness::*;
use poll::*;

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
