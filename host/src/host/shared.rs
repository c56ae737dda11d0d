//! Desired state shared by several hosts, as Kafka Connect's distributed
//! mode keeps its configuration: a compacted, single-partition Kafka topic
//! (`[state] kafka_bootstrap`, `kafka_topic`), one record per pipeline
//! (key: its name; value: its [`PipelineState`] as JSON). A host publishes
//! every change it makes, reads the topic to its end before it starts its
//! pipelines, and then follows it: a state whose active version differs
//! from what runs here is swapped in (the module comes from the registry,
//! which the hosts share — `registry` in the host file). Every host applies
//! the records in topic order, so all converge on the last one. No cluster
//! protocol of our own: Kafka orders, compacts and keeps the records.

use super::Host;
use super::state::PipelineState;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The shared-state topic.
pub struct SharedState {
    bootstrap: String,
    topic: String,
    producer: FutureProducer,
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

fn consumer(bootstrap: &str) -> Result<BaseConsumer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "sluice-state-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(|e| e.to_string())
}

impl SharedState {
    /// Connects, creating the topic (compacted, one partition) if missing.
    pub async fn connect(bootstrap: &str, topic: &str) -> Result<Self, String> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .map_err(|e| e.to_string())?;
        let new =
            NewTopic::new(topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
        let created = admin
            .create_topics(
                [&new],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .map_err(|e| format!("cannot create the state topic `{topic}`: {e}"))?;
        for r in created {
            match r {
                Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(format!("cannot create the state topic `{name}`: {code}"));
                }
            }
        }
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .create()
            .map_err(|e| e.to_string())?;
        Ok(SharedState {
            bootstrap: bootstrap.to_string(),
            topic: topic.to_string(),
            producer,
        })
    }

    /// Publishes a pipeline's state and waits until the broker has it.
    pub async fn publish(&self, state: &PipelineState) -> Result<(), String> {
        let value = serde_json::to_vec(state).map_err(|e| e.to_string())?;
        self.producer
            .send(
                FutureRecord::to(&self.topic)
                    .key(state.pipeline.as_bytes())
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| format!("cannot publish to the state topic `{}`: {e}", self.topic))
    }

    /// Reads the topic from its start to its end: the last state of each
    /// pipeline, and the position to follow from. Blocking.
    fn catch_up(&self) -> Result<(Vec<PipelineState>, i64), String> {
        let c = consumer(&self.bootstrap)?;
        let (_, high) = c
            .fetch_watermarks(&self.topic, 0, Duration::from_secs(30))
            .map_err(|e| format!("state topic `{}`: {e}", self.topic))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Beginning)
            .map_err(|e| e.to_string())?;
        c.assign(&tpl).map_err(|e| e.to_string())?;
        let mut last: std::collections::BTreeMap<String, PipelineState> = Default::default();
        let mut next = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while next < high {
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "state topic `{}`: could not read to its end ({next} of {high}) within 60 s",
                    self.topic
                ));
            }
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    next = m.offset() + 1;
                    if let Some(s) = parse(&m) {
                        last.insert(s.pipeline.clone(), s);
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "reading the state topic"),
                None => {}
            }
        }
        Ok((last.into_values().collect(), high))
    }
}

fn parse(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<PipelineState> {
    let payload = m.payload()?;
    match serde_json::from_slice::<PipelineState>(payload) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(offset = m.offset(), error = %e, "a state record that is not a pipeline state: skipped");
            None
        }
    }
}

impl Host {
    /// Joins the shared desired state: reads it into the local state store
    /// (before pipelines start), then follows it on a thread of its own.
    pub async fn join_shared_state(self: &Arc<Self>) -> Result<(), String> {
        let Some(shared) = self.shared.get() else {
            return Ok(());
        };
        let (states, from) = {
            let s = shared.clone();
            tokio::task::spawn_blocking(move || s.catch_up())
                .await
                .map_err(|e| e.to_string())??
        };
        for s in &states {
            self.state.save(s)?;
        }
        tracing::info!(topic = %shared.topic, pipelines = states.len(), "joined the shared desired state");
        let host = Arc::downgrade(self);
        let runtime = tokio::runtime::Handle::current();
        let bootstrap = shared.bootstrap.clone();
        let topic = shared.topic.clone();
        std::thread::Builder::new()
            .name("sluice-state".into())
            .spawn(move || follow(host, runtime, &bootstrap, &topic, from))
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Publishes a pipeline's state, when the hosts share one.
    pub(crate) async fn publish_state(&self, state: &PipelineState) {
        if let Some(shared) = self.shared.get()
            && let Err(e) = shared.publish(state).await
        {
            tracing::error!(pipeline = %state.pipeline, error = %e, "the other hosts will not see this change");
        }
    }

    /// Makes what runs here match a state read from the topic.
    async fn converge(&self, desired: PipelineState) {
        let _one = self.changes.lock().await;
        if let Err(e) = self.state.save(&desired) {
            tracing::error!(pipeline = %desired.pipeline, error = %e, "cannot keep the shared state");
        }
        let Some(handle) = self.pipeline(&desired.pipeline) else {
            return;
        };
        for t in handle.live().transforms() {
            let Some(active) = desired.active(&t.name) else {
                continue;
            };
            if active == t.digest {
                continue;
            }
            let result = async {
                let spec = handle
                    .spec(&t.name)
                    .cloned()
                    .ok_or_else(|| "no such transform".to_string())?;
                let bytes = self.registry.get(active).await.map_err(|e| e.to_string())?;
                let module = self
                    .validate(&spec, Arc::new(bytes))
                    .await
                    .map_err(|e| e.to_string())?;
                handle
                    .swap(&t.name, module, None)
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            match result {
                Ok(s) => {
                    tracing::info!(pipeline = %desired.pipeline, transform = %t.name, digest = %s.digest, previous = %s.previous, "swapped to the shared desired state")
                }
                Err(e) => {
                    tracing::error!(pipeline = %desired.pipeline, transform = %t.name, digest = %active, error = %e, "cannot apply the shared desired state")
                }
            }
        }
    }
}

/// Follows the state topic from `from`, converging each state read.
fn follow(
    host: Weak<Host>,
    runtime: tokio::runtime::Handle,
    bootstrap: &str,
    topic: &str,
    from: i64,
) {
    let c = match consumer(bootstrap) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot follow the state topic");
            return;
        }
    };
    let mut tpl = TopicPartitionList::new();
    if tpl
        .add_partition_offset(topic, 0, Offset::Offset(from))
        .and_then(|_| c.assign(&tpl))
        .is_err()
    {
        tracing::error!(topic, "cannot follow the state topic");
        return;
    }
    loop {
        let Some(h) = host.upgrade() else {
            return;
        };
        drop(h);
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let Some(state) = parse(&m) else {
                    continue;
                };
                let Some(h) = host.upgrade() else {
                    return;
                };
                runtime.block_on(h.converge(state));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "reading the state topic"),
        }
    }
}
