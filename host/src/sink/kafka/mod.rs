//! Kafka topics as sinks. Keys, headers and timestamps of output records are
//! kept; records are partitioned by key with the Java client's murmur2 hash
//! (so Sluice and JVM producers agree on where a key lives). The producer is
//! idempotent: librdkafka's retries neither reorder nor duplicate records.
//!
//! With exactly-once, every Kafka sink of a pipeline shares one
//! transactional producer, and the pipeline wraps each group of batches in a
//! transaction together with the consumer offsets.

mod config;
pub(crate) mod dead_letters;
mod producer;

pub use config::{Compression, KafkaSinkConfig};
pub use producer::KafkaProducer;
use producer::{KafkaTransactions, Producers, producer_key};

use super::{BuildContext, Pending, Reject, Sink, SinkError, TxnError};
use crate::kafka::Logs;
use crate::kafka::Properties;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::topic_partition_list::TopicPartitionList;
use std::sync::Arc;
use std::time::Duration;

/// Whether a produce error concerns only this record (it goes to the
/// dead-letter queue) rather than the sink (the write is retried or fails).
fn record_at_fault(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
}

/// Whether a produce error may go away if the write is tried again.
/// Whether the error is librdkafka taking a record back (a purge).
fn purged(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
    )
}

fn transient(e: &KafkaError) -> bool {
    !matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::InvalidArgument
        )
    )
}

/// Writes records to one topic.
pub struct KafkaSink {
    producer: Arc<KafkaProducer>,
    topic: String,
    /// Where each record's key comes from, when not its own key.
    key: Option<crate::field_path::FieldPath>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.topic)
            .finish()
    }
}

impl KafkaSink {
    /// A sink writing to `topic` through `producer`.
    pub fn new(producer: Arc<KafkaProducer>, topic: &str) -> Self {
        KafkaSink {
            producer,
            topic: topic.to_string(),
            key: None,
        }
    }

    /// Takes each record's key from `key` (a field of its value) instead.
    pub fn keyed_by(self, key: Option<crate::field_path::FieldPath>) -> Self {
        KafkaSink { key, ..self }
    }

    fn error(&self, e: &KafkaError, what: &str) -> SinkError {
        SinkError::Write {
            sink: self.describe(),
            message: format!("{what}: {e}"),
            transient: transient(e),
        }
    }
}

#[async_trait::async_trait]
impl Sink for KafkaSink {
    async fn submit(&self, batch: super::SinkBatch) -> Result<Pending, SinkError> {
        let records = batch.records;
        let producer = self.producer.producer();
        let mut rejects = Vec::new();
        let mut deliveries = Vec::with_capacity(records.len());
        // Keys taken from the values (`key = "$.plate"`); a record without
        // the field is refused to the dead-letter queue.
        let keys: Vec<Option<Vec<u8>>> = match &self.key {
            None => Vec::new(),
            Some(path) => records
                .iter()
                .enumerate()
                .map(|(index, r)| match path.key_of(r.value.as_deref()) {
                    Ok(k) => Some(k),
                    Err(reason) => {
                        rejects.push(Reject { index, reason });
                        None
                    }
                })
                .collect(),
        };
        for (index, r) in records.iter().enumerate() {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic);
            match keys.get(index) {
                Some(Some(k)) => record = record.key(&k[..]),
                Some(None) => continue,
                None => {
                    if let Some(k) = &r.key {
                        record = record.key(&k[..]);
                    }
                }
            }
            if let Some(v) = &r.value {
                record = record.payload(&v[..]);
            }
            if let Some(t) = r.timestamp {
                record = record.timestamp(t);
            }
            if !r.headers.is_empty() {
                let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
                for h in &r.headers {
                    headers = headers.insert(Header {
                        key: &h.name_str(),
                        value: Some(&h.value[..]),
                    });
                }
                record = record.headers(headers);
            }
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push((index, delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // librdkafka's buffer is full: wait for deliveries.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) if record_at_fault(&e) => {
                        rejects.push(Reject {
                            index,
                            reason: format!("topic `{}` refused the record: {e}", self.topic),
                        });
                        break;
                    }
                    Err((e, _)) => return Err(self.error(&e, "cannot enqueue a record")),
                }
            }
        }
        let sink = self.describe();
        let topic = self.topic.clone();
        // Not in a transaction, whose own abort takes its records back.
        let purge = self.producer.transactional_id.is_none();
        Ok(Box::pin(async move {
            // The first failure's message and whether all were transient.
            let mut failure: Option<(String, bool)> = None;
            let mut failed = Vec::new();
            for (index, delivery) in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) if record_at_fault(&e) => rejects.push(Reject {
                        index,
                        reason: format!("topic `{topic}` refused the record: {e}"),
                    }),
                    Ok(Err((e, _))) => {
                        // Keep awaiting the others: which records were
                        // written decides what a retry writes again.
                        failed.push(index);
                        let t = transient(&e);
                        if purge && failure.is_none() && t && !purged(&e) {
                            // The records queued behind this one (later
                            // batches) must not reach the topic before it
                            // is written again: take them back, so that they
                            // fail too and are retried in batch order.
                            producer
                                .purge(PurgeConfig::default().queue().inflight().non_blocking());
                        }
                        match &mut failure {
                            Some((_, all_transient)) => *all_transient &= t,
                            None => failure = Some((format!("delivery failed: {e}"), t)),
                        }
                    }
                    Err(_) => {
                        failed.push(index);
                        failure.get_or_insert((
                            "the producer was closed before delivery".into(),
                            true,
                        ));
                    }
                }
            }
            rejects.sort_by_key(|r| r.index);
            match failure {
                Some((message, transient)) => Err(SinkError::Partial {
                    sink,
                    message,
                    transient,
                    failed,
                    rejects,
                }),
                None => Ok(rejects.into()),
            }
        }))
    }

    fn describe(&self) -> String {
        format!("kafka `{}`", self.topic)
    }

    fn dead_letter_encoding(&self) -> super::DeadLetterEncoding {
        super::DeadLetterEncoding::Headers
    }

    fn recover(&self) {
        self.producer.renew();
    }

    async fn check(&self) -> Result<(), SinkError> {
        self.producer.check_topic(&self.topic).await
    }
}

impl super::SinkPlugin for KafkaSinkConfig {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn retry(&self) -> crate::retry::RetryConfig {
        self.retry
    }

    fn check(&self, field: &str, scope: &crate::sink::SinkScope<'_>) -> Result<(), String> {
        if self.topic.trim().is_empty() {
            return Err(format!("`{field}`: `topic` must not be empty"));
        }
        if self.bootstrap_in(scope).is_none() {
            return Err(format!(
                "`{field}`: `bootstrap` is needed when the source is not Kafka"
            ));
        }
        if let Some(key) = &self.key {
            if field == "dead_letter" {
                return Err(format!(
                    "`{field}.kafka.key` does not apply: dead letters keep the key of the record that failed"
                ));
            }
            crate::field_path::FieldPath::parse(key)
                .map_err(|e| format!("`{field}.kafka.key`: {e}"))?;
        }
        Ok(())
    }

    fn probe(&self, scope: &crate::sink::SinkScope<'_>) -> Result<String, String> {
        let bootstrap = self
            .bootstrap_in(scope)
            .ok_or_else(|| "no `bootstrap`".to_string())?;
        let config = crate::kafka::client_config(bootstrap, &[], &self.properties, "check")?;
        crate::kafka::probe_brokers(&config, bootstrap, &[self.topic.as_str()], false)
            .map_err(|m| crate::kafka::Redactor::new(&self.properties).redact(&m))
    }

    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Arc<dyn Sink>, SinkError> {
        let c = self;
        let bootstrap = c
            .bootstrap_in(&ctx.scope)
            .ok_or_else(|| SinkError::Config {
                sink: format!("kafka `{}`", c.topic),
                message: "no bootstrap servers".into(),
            })?;
        let transactional = ctx.opts.transactional_id.is_some();
        let key = if transactional {
            "transactional".to_string()
        } else {
            producer_key(bootstrap, c)
        };
        let producers = ctx.shared.get_or_default::<Producers>();
        let producer = match producers.0.get(&key) {
            Some(p) => {
                if transactional && !p.same_settings(bootstrap, c) {
                    return Err(SinkError::Config {
                        sink: format!("kafka `{}`", c.topic),
                        message: "with exactly-once, every Kafka output must use the same compression and properties: one transactional producer writes them all".into(),
                    });
                }
                p.clone()
            }
            None => {
                let p = Arc::new(KafkaProducer::new(
                    bootstrap,
                    c,
                    ctx.scope.pipeline,
                    ctx.opts.transactional_id.as_deref(),
                    ctx.opts.transaction_timeout_ms,
                )?);
                producers.0.insert(key, p.clone());
                p
            }
        };
        if transactional && ctx.transactions.is_none() {
            *ctx.transactions = Some(Arc::new(KafkaTransactions(producer.clone())));
        }
        let key = c
            .key
            .as_deref()
            .map(crate::field_path::FieldPath::parse)
            .transpose()
            .map_err(|message| SinkError::Config {
                sink: format!("kafka `{}`", c.topic),
                message,
            })?;
        Ok(Arc::new(KafkaSink::new(producer, &c.topic).keyed_by(key)))
    }

    fn read_dead_letters(
        &self,
        scope: &crate::sink::SinkScope<'_>,
        newest: Option<usize>,
    ) -> Result<Vec<crate::dlq_entry::DeadLetterRecord>, crate::dlq_entry::ReplayError> {
        let bootstrap =
            self.bootstrap_in(scope)
                .ok_or_else(|| crate::dlq_entry::ReplayError::Read {
                    dlq: format!("kafka topic `{}`", self.topic),
                    message: "no bootstrap servers".into(),
                })?;
        crate::sink::kafka::dead_letters::read_kafka(
            bootstrap,
            &self.topic,
            &self.properties,
            newest,
        )
    }

    fn joins_transactions(&self, scope: &crate::sink::SinkScope<'_>) -> Result<(), String> {
        match (self.bootstrap_in(scope), scope.source_bootstrap) {
            (Some(mine), Some(source)) if mine == source => Ok(()),
            (_, Some(source)) => Err(format!(
                "it must be on the source's cluster (`{source}`), because one transaction covers outputs and consumer offsets"
            )),
            (_, None) => Err("the source has no transactions to join".into()),
        }
    }
}
