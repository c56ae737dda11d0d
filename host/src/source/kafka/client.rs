//! Consumer settings (through the one Kafka client configuration), errors,
//! and whether the brokers answer.

use super::*;

/// How long one blocking broker call (committed offsets, offsets for times,
/// a synchronous commit) may take.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

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

pub(super) fn kafka_err(what: &'static str, e: &KafkaError) -> SourceError {
    SourceError::Client {
        source_kind: "kafka",
        what,
        message: e.to_string(),
        fatal: matches!(e, KafkaError::MessageConsumptionFatal(_)),
    }
}

/// [`kafka_err`] for errors that may quote a property's value.
pub(super) fn config_err(
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

/// Whether the brokers answer: librdkafka retries an unreachable broker for
/// ever and reports each failure, so the first failure is said once, as an
/// error naming the bootstrap address; the pipeline's status shows it
/// (`health`) until a broker answers again.
pub(super) struct Reachability {
    pub(super) bootstrap: String,
    pub(super) pipeline: String,
    pub(super) since: Mutex<Option<(chrono::DateTime<chrono::Utc>, String)>>,
}

impl Reachability {
    pub(super) fn new(bootstrap: &str, pipeline: &str) -> Self {
        Reachability {
            bootstrap: bootstrap.to_string(),
            pipeline: pipeline.to_string(),
            since: Mutex::new(None),
        }
    }

    pub(super) fn lost(&self, why: &str) {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        if since.is_none() {
            tracing::error!(pipeline = %self.pipeline, bootstrap = %self.bootstrap, reason = %why,
                "cannot reach the Kafka brokers at `{}`; librdkafka keeps trying (repeats of its warnings are rate-limited)", self.bootstrap);
            *since = Some((chrono::Utc::now(), why.to_string()));
        }
    }

    pub(super) fn answered(&self) {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, _)) = since.take() {
            tracing::info!(pipeline = %self.pipeline, bootstrap = %self.bootstrap, unreachable_since = %at.to_rfc3339(),
                "the Kafka brokers answer again");
        }
    }

    pub(super) fn health(&self) -> Option<String> {
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
