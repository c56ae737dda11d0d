//! Building a pipeline's sinks: what a plugin is given (a narrow scope, the
//! output's name, clients shared between sinks) and the one `build_all`.

use super::*;

/// How sinks are built for one run of a pipeline.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// `Some(id)`: Kafka sinks share one transactional producer with this
    /// transactional id (exactly-once).
    pub transactional_id: Option<String>,
    /// Transaction timeout (exactly-once).
    pub transaction_timeout_ms: u64,
}

/// The sinks of a pipeline: one per output, and the dead-letter sink.
pub struct Sinks {
    /// Output name → sink.
    pub outputs: BTreeMap<String, Arc<dyn Sink>>,
    /// The dead-letter sink.
    pub dead_letter: Arc<dyn Sink>,
    /// With exactly-once: the transactions the sinks write in.
    pub transactions: Option<Arc<dyn Transactions>>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sinks")
            .field("outputs", &self.outputs.keys().collect::<Vec<_>>())
            .field("dead_letter", &self.dead_letter.describe())
            .finish()
    }
}

/// What a sink may know of the pipeline it writes for — and no more: its
/// name, where relative paths resolve, and the Kafka cluster of its source
/// (where a Kafka sink without a `bootstrap` of its own writes).
#[derive(Debug, Clone, Copy)]
pub struct SinkScope<'a> {
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// What relative paths resolve against (the pipeline file's folder).
    pub base: &'a Path,
    /// The bootstrap servers of the pipeline's Kafka source, if it has one.
    pub source_bootstrap: Option<&'a str>,
}

/// What building one sink needs.
pub struct BuildContext<'a> {
    /// The pipeline, as a sink sees it.
    pub scope: SinkScope<'a>,
    /// The output name (`dead-letter` for the DLQ).
    pub output: &'a str,
    /// Transactions.
    pub opts: &'a SinkOptions,
    /// Clients the sinks of one pipeline share (Kafka producers of one
    /// cluster), by type: each plugin keeps its own kind here.
    pub shared: &'a mut SharedClients,
    /// The transactions the sinks write in (exactly-once): set by the
    /// sink that provides them.
    pub transactions: &'a mut Option<Arc<dyn Transactions>>,
}

/// Clients shared by the sinks of one pipeline, one value per type (as
/// Vector's `SinkContext::extra_context`): a plugin stores what it shares
/// under a type of its own, and no other code needs to know it.
#[derive(Default)]
pub struct SharedClients {
    by_type: std::collections::HashMap<std::any::TypeId, Box<dyn std::any::Any + Send + Sync>>,
}

impl SharedClients {
    /// The value of type `T`, made with `T::default()` the first time.
    pub fn get_or_default<T: std::any::Any + Send + Sync + Default>(&mut self) -> &mut T {
        let slot = self
            .by_type
            .entry(std::any::TypeId::of::<T>())
            .or_insert_with(|| Box::new(T::default()));
        match slot.downcast_mut::<T>() {
            Some(t) => t,
            // The map is keyed by the type's id: the value has that type.
            None => unreachable!("a shared client stored under another type's id"),
        }
    }
}

/// Builds every sink of a pipeline: its outputs and its dead-letter sink.
/// Kafka sinks with the same cluster and settings share one producer; with
/// a transactional id, all Kafka sinks share one transactional producer.
pub fn build_all(
    outputs_config: &BTreeMap<String, SinkConfig>,
    dead_letter_config: &SinkConfig,
    scope: SinkScope<'_>,
    opts: &SinkOptions,
) -> Result<Sinks, SinkError> {
    let mut shared = SharedClients::default();
    let mut transactions = None;
    let mut build = |name: &str, sink: &SinkConfig| {
        sink.plugin().build(&mut BuildContext {
            scope,
            output: name,
            opts,
            shared: &mut shared,
            transactions: &mut transactions,
        })
    };
    let mut outputs = BTreeMap::new();
    for (name, sink) in outputs_config {
        outputs.insert(name.clone(), build(name, sink)?);
    }
    let dead_letter = build("dead-letter", dead_letter_config)?;
    Ok(Sinks {
        outputs,
        dead_letter,
        transactions,
    })
}
