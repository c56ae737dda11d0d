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
use crate::kafka::compacted::{CompactedTopic, Entry, TopicSettings};
use std::sync::{Arc, Weak};

/// The shared-state topic.
#[derive(Debug)]
pub struct SharedState {
    topic: CompactedTopic,
}

impl SharedState {
    /// Connects, creating the topic (compacted, one partition) if missing.
    pub async fn connect(settings: TopicSettings) -> Result<Self, String> {
        Ok(SharedState {
            topic: CompactedTopic::open(settings).await?,
        })
    }

    /// Publishes a pipeline's state and waits until the broker has it.
    pub async fn publish(&self, state: &PipelineState) -> Result<(), String> {
        let value = serde_json::to_vec(state).map_err(|e| e.to_string())?;
        self.topic.put(state.pipeline.as_bytes(), &value).await
    }

    /// Reads the topic from its start to its end: the last state of each
    /// pipeline, and the position to follow from. Blocking.
    fn catch_up(&self) -> Result<(Vec<PipelineState>, i64), String> {
        let (entries, next) = self.topic.read_to_end()?;
        let mut last: std::collections::BTreeMap<String, PipelineState> = Default::default();
        for e in &entries {
            if let Some(s) = parse(e) {
                last.insert(s.pipeline.clone(), s);
            }
        }
        Ok((last.into_values().collect(), next))
    }
}

fn parse(e: &Entry) -> Option<PipelineState> {
    let payload = e.value.as_deref()?;
    match serde_json::from_slice::<PipelineState>(payload) {
        Ok(s) => Some(s),
        Err(err) => {
            tracing::warn!(offset = e.offset, error = %err, "a state record that is not a pipeline state: skipped");
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
        tracing::info!(topic = %shared.topic.settings().topic, pipelines = states.len(), "joined the shared desired state");
        let host = Arc::downgrade(self);
        let runtime = tokio::runtime::Handle::current();
        let follower = shared.clone();
        std::thread::Builder::new()
            .name("sluice-state".into())
            .spawn(move || follow(host, runtime, &follower, from))
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

/// Follows the state topic from `from`, converging each state read, until
/// the host is gone.
fn follow(host: Weak<Host>, runtime: tokio::runtime::Handle, shared: &SharedState, from: i64) {
    shared.topic.follow(from, |entry| {
        let Some(h) = host.upgrade() else {
            return false;
        };
        if let Some(state) = entry.as_ref().and_then(parse) {
            runtime.block_on(h.converge(state));
        }
        true
    });
}
