//! The producer every Kafka sink (and the dead-letter queue) of a pipeline
//! writes through: idempotent, renewed when wedged, and with exactly-once
//! the transactional writer ([`KafkaTransactions`], the sink capability).

use super::*;

/// How long one transaction call may block.
pub(super) const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Least time between two replacements of a wedged producer.
pub(super) const RENEW_EVERY: Duration = Duration::from_secs(10);

/// A producer from `config`; the error hides property values.
pub(super) fn create(
    config: &rdkafka::ClientConfig,
    redactor: &crate::kafka::Redactor,
) -> Result<FutureProducer<Logs>, String> {
    config
        .create_with_context(Logs {
            client: "sink".into(),
            redactor: redactor.clone(),
        })
        .map_err(|e| format!("cannot create the producer: {}", redactor.error(&e)))
}

/// The identity of a producer: sinks with the same key share one.
pub(super) fn producer_key(bootstrap: &str, c: &KafkaSinkConfig) -> String {
    format!(
        "{bootstrap}|{}|{:?}",
        c.compression.as_str(),
        c.properties.0
    )
}

pub(super) fn txn_error(e: KafkaError) -> TxnError {
    match &e {
        KafkaError::Transaction(t) if t.is_fatal() => TxnError::Fatal(e.to_string()),
        KafkaError::Transaction(t) if t.txn_requires_abort() => TxnError::Abort(e.to_string()),
        KafkaError::Transaction(t) if t.is_retriable() => TxnError::Retriable(e.to_string()),
        _ => {
            let fenced = matches!(
                e.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::Fenced
                        | RDKafkaErrorCode::ProducerFenced
                        | RDKafkaErrorCode::InvalidProducerEpoch
                )
            );
            if fenced {
                TxnError::Fatal(e.to_string())
            } else {
                TxnError::Abort(e.to_string())
            }
        }
    }
}

/// A producer shared by the Kafka sinks that use the same settings.
pub struct KafkaProducer {
    /// The current producer: replaced by [`KafkaProducer::renew`] when it
    /// stays wedged after an outage.
    current: std::sync::RwLock<FutureProducer<Logs>>,
    /// What it was built from, to build the next one.
    config: rdkafka::ClientConfig,
    redactor: crate::kafka::Redactor,
    renewed: std::sync::Mutex<Option<std::time::Instant>>,
    bootstrap: String,
    compression: Compression,
    properties: Properties,
    pub(super) transactional_id: Option<String>,
}

impl std::fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProducer")
            .field("bootstrap", &self.bootstrap)
            .field("transactional_id", &self.transactional_id)
            .finish()
    }
}

impl KafkaProducer {
    /// Creates the producer (connections are made lazily).
    pub fn new(
        bootstrap: &str,
        c: &KafkaSinkConfig,
        pipeline: &str,
        transactional_id: Option<&str>,
        transaction_timeout_ms: u64,
    ) -> Result<Self, SinkError> {
        let client_id = format!("sluice-{pipeline}");
        let txn_timeout = transaction_timeout_ms.to_string();
        let mut defaults = vec![
            ("client.id", client_id.as_str()),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("compression.type", c.compression.as_str()),
            ("linger.ms", "5"),
            ("partitioner", "murmur2_random"),
            // Bound what librdkafka buffers (its default is 1 GiB).
            ("queue.buffering.max.kbytes", "65536"),
        ];
        if transactional_id.is_some() {
            defaults.push(("transaction.timeout.ms", txn_timeout.as_str()));
        }
        let what = format!("kafka sink `{}`", c.topic);
        let mut config = crate::kafka::client_config(bootstrap, &defaults, &c.properties, &what)
            .map_err(|message| SinkError::Config {
                sink: what.clone(),
                message,
            })?;
        if let Some(id) = transactional_id {
            config.set("transactional.id", id);
        }
        let redactor = crate::kafka::Redactor::new(&c.properties);
        let producer = create(&config, &redactor).map_err(|message| SinkError::Write {
            sink: what,
            message,
            transient: false,
        })?;
        Ok(KafkaProducer {
            current: std::sync::RwLock::new(producer),
            config,
            redactor,
            renewed: std::sync::Mutex::new(None),
            bootstrap: bootstrap.to_string(),
            compression: c.compression,
            properties: c.properties.clone(),
            transactional_id: transactional_id.map(str::to_string),
        })
    }

    /// The producer to use now.
    pub(super) fn producer(&self) -> FutureProducer<Logs> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces a producer that keeps failing (at most once per
    /// [`RENEW_EVERY`]; never a transactional one, whose session restarts
    /// instead). An idempotent producer whose records timed out can stay
    /// wedged after the broker is back, until it gets a new producer id;
    /// the old one's records still in flight fail and are retried.
    pub fn renew(&self) {
        if self.transactional_id.is_some() {
            return;
        }
        {
            let mut last = self.renewed.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < RENEW_EVERY) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        match create(&self.config, &self.redactor) {
            Ok(fresh) => {
                let old = std::mem::replace(
                    &mut *self.current.write().unwrap_or_else(|e| e.into_inner()),
                    fresh,
                );
                tracing::warn!(bootstrap = %self.bootstrap, "Kafka producer replaced after repeated delivery failures");
                // Dropping a producer waits for its queue: off the runtime.
                std::thread::spawn(move || {
                    use rdkafka::producer::{Producer, PurgeConfig};
                    old.purge(PurgeConfig::default().queue().inflight());
                    drop(old);
                });
            }
            Err(message) => {
                tracing::warn!(bootstrap = %self.bootstrap, error = %message, "cannot replace the Kafka producer")
            }
        }
    }

    /// Whether a sink config would get a producer with the same settings.
    pub fn same_settings(&self, bootstrap: &str, c: &KafkaSinkConfig) -> bool {
        self.bootstrap == bootstrap
            && self.compression == c.compression
            && self.properties == c.properties
    }

    /// Checks that `topic` exists, so that a missing topic is a clear error
    /// at start rather than records timing out later.
    pub async fn check_topic(self: &Arc<Self>, topic: &str) -> Result<(), SinkError> {
        let me = self.clone();
        let name = topic.to_string();
        let found = tokio::task::spawn_blocking(move || {
            me.producer()
                .client()
                .fetch_metadata(Some(&name), Duration::from_secs(30))
                .map(|m| {
                    m.topics().iter().any(|t| {
                        t.name() == name && t.error().is_none() && !t.partitions().is_empty()
                    })
                })
        })
        .await
        .map_err(|e| SinkError::Write {
            sink: format!("kafka `{topic}`"),
            message: format!("metadata thread failed: {e}"),
            transient: true,
        })?;
        match found {
            Ok(true) => Ok(()),
            Ok(false) => Err(SinkError::Config {
                sink: format!("kafka `{topic}`"),
                message: format!(
                    "topic `{topic}` does not exist on {} (create it, or enable topic auto-creation on the cluster)",
                    self.bootstrap
                ),
            }),
            Err(e) => Err(SinkError::Write {
                sink: format!("kafka `{topic}`"),
                message: format!(
                    "cannot read the cluster's metadata from {}: {e}",
                    self.bootstrap
                ),
                transient: true,
            }),
        }
    }

    /// The transactional id, if the producer is transactional.
    pub fn transactional_id(&self) -> Option<&str> {
        self.transactional_id.as_deref()
    }

    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        call: impl FnOnce(&FutureProducer<Logs>) -> Result<T, KafkaError> + Send + 'static,
    ) -> Result<T, TxnError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || call(&me.producer()).map_err(txn_error))
            .await
            .map_err(|e| TxnError::Fatal(format!("transaction thread failed: {e}")))?
    }

    /// Registers the transactional id with the cluster, fencing any older
    /// instance that used it and aborting its open transaction.
    pub async fn init_transactions(self: &Arc<Self>) -> Result<(), TxnError> {
        self.blocking(|p| p.init_transactions(TXN_CALL_TIMEOUT))
            .await
    }

    /// Starts a transaction.
    pub async fn begin(self: &Arc<Self>) -> Result<(), TxnError> {
        self.blocking(|p| p.begin_transaction()).await
    }

    /// Adds the consumer offsets to the open transaction and commits it.
    /// A retriable failure of the commit itself is retried a few times.
    pub async fn commit(
        self: &Arc<Self>,
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
    ) -> Result<(), TxnError> {
        let group = Arc::new(group);
        let mut attempt = 0;
        loop {
            let (o, g) = (offsets.clone(), group.clone());
            match self
                .blocking(move |p| p.send_offsets_to_transaction(&o, &g, TXN_CALL_TIMEOUT))
                .await
            {
                Err(TxnError::Retriable(e)) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "sending offsets to the transaction failed; retrying");
                    continue;
                }
                other => other?,
            }
            break;
        }
        attempt = 0;
        loop {
            match self
                .blocking(|p| p.commit_transaction(TXN_CALL_TIMEOUT))
                .await
            {
                Err(TxnError::Retriable(e)) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "committing the transaction failed; retrying");
                }
                other => return other,
            }
        }
    }

    /// The producer's fatal error, if it has one (e.g. it was fenced).
    pub fn fatal(&self) -> Option<String> {
        use rdkafka::producer::Producer;
        self.producer()
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{reason} ({code:?})"))
    }

    /// Aborts the open transaction.
    pub async fn abort(self: &Arc<Self>) -> Result<(), TxnError> {
        self.blocking(|p| p.abort_transaction(TXN_CALL_TIMEOUT))
            .await
    }
}

/// The Kafka producers of one pipeline's sinks, shared by the sinks of one
/// cluster and settings (kept in the build context's shared clients).
#[derive(Default)]
pub(super) struct Producers(pub(super) std::collections::BTreeMap<String, Arc<KafkaProducer>>);

/// Exactly-once through the transactional producer: the pipeline's writes
/// and the Kafka source's offsets (its consumer group metadata, from
/// [`crate::source::SourceControl::transaction_context`]) commit in one
/// Kafka transaction.
pub(super) struct KafkaTransactions(pub(super) Arc<KafkaProducer>);

#[async_trait::async_trait]
impl crate::sink::Transactions for KafkaTransactions {
    async fn init(&self) -> Result<(), TxnError> {
        self.0.init_transactions().await
    }

    async fn begin(&self) -> Result<(), TxnError> {
        self.0.begin().await
    }

    async fn commit(
        &self,
        positions: &[(crate::record::Partition, i64)],
        source: Box<dyn std::any::Any + Send>,
    ) -> Result<(), TxnError> {
        let Ok(group) = source.downcast::<ConsumerGroupMetadata>() else {
            return Err(TxnError::Fatal(
                "exactly-once needs a Kafka source with consumer group metadata".into(),
            ));
        };
        let mut list = TopicPartitionList::new();
        for (p, o) in positions {
            list.add_partition_offset(&p.stream, p.partition, rdkafka::Offset::Offset(*o))
                .map_err(|e| TxnError::Abort(format!("offset list: {e}")))?;
        }
        self.0.commit(list, *group).await
    }

    async fn abort(&self) -> Result<(), TxnError> {
        self.0.abort().await
    }

    fn fatal(&self) -> Option<String> {
        self.0.fatal()
    }
}
