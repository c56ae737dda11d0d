//! The pipeline file (`pipeline.toml`): typed, documented, strict.
//!
//! Relative paths in the file are resolved against the directory holding it.
//! Unknown fields are refused, and every error names the file, the line and
//! the field at fault.

use crate::engine::{Grants, Limits};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod origin;
#[cfg(test)]
mod tests;
mod validate;

pub use origin::{ConfigError, Origin};

/// A pipeline: one source, a micro-batch policy, a chain of transforms,
/// named outputs mapped to sinks, and a dead-letter sink.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Pipeline name; names it in logs, metrics and dead-letter entries.
    pub name: String,
    /// The file and text it was read from (not part of the file).
    #[serde(skip)]
    pub origin: Origin,
    /// Tenant owning the pipeline (default `default`).
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Where records come from.
    pub source: SourceConfig,
    /// When a micro-batch is cut.
    #[serde(default)]
    pub batch: BatchPolicy,
    /// Transforms, applied in order: the default output of each feeds the
    /// next; named outputs leave the chain for their sinks.
    #[serde(default)]
    pub transforms: Vec<TransformConfig>,
    /// Output name → sink. `default` receives the last transform's default
    /// output; other names receive what transforms send to them.
    pub outputs: BTreeMap<String, SinkConfig>,
    /// Where failed records go, with the reason and their source position.
    pub dead_letter: SinkConfig,
    /// Delivery guarantee, parallelism and in-flight bounds.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// Stops the pipeline when a transform fails too many records.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
    /// `[restart]`: when a pipeline that failed (a sink, the dead-letter
    /// queue or the source down past its retries, a Kafka transaction
    /// aborted) is started again from its committed positions. Unset: 3
    /// restarts in a row for `sluice run`, the host file's policy for
    /// `sluice serve`.
    #[serde(default)]
    pub restart: Option<crate::retry::RestartPolicy>,
    /// `[deploy]`: how a hot-deployed version is watched after it takes
    /// over.
    #[serde(default)]
    pub deploy: DeployConfig,
}

/// `[deploy]`: automatic rollback of a new version.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DeployConfig {
    /// Records a new version is on probation for after a swap (default
    /// 1000; 0: no probation). During probation batches go to the workers
    /// one at a time, and if the new version fails more than the circuit
    /// breaker's share of its records (measured over its first
    /// `min(probation_records, window_records)` records) the previous
    /// version is swapped back before that batch is delivered, and
    /// processes it.
    pub probation_records: u64,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            probation_records: 1000,
        }
    }
}

/// `[circuit_breaker]`: when a transform fails more than `failure_ratio` of
/// the last `window_records` records, the pipeline stops before delivering
/// the batch that crossed the line (nothing past it is committed) and says
/// why, rather than sending a whole topic to the dead-letter queue.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Whether the breaker is armed (default true).
    pub enabled: bool,
    /// Largest tolerated share of failed records, 0 to 1 (default 0.5).
    pub failure_ratio: f64,
    /// Records the share is measured over (default 1000).
    pub window_records: u64,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            enabled: true,
            failure_ratio: 0.5,
            window_records: 1000,
        }
    }
}

impl CircuitBreakerConfig {
    /// Checks `[circuit_breaker]` as written.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.failure_ratio) || self.window_records == 0 {
            return Err("`circuit_breaker`: failure_ratio must be within 0 and 1, window_records at least 1".into());
        }
        Ok(())
    }
}

pub use crate::batch::BatchPolicy;
pub use crate::kafka::Properties;
pub use crate::retry::RetryConfig;
pub use crate::sink::RecordFormat;
pub use crate::sink::SinkConfig;
pub use crate::sink::kafka::{Compression, KafkaSinkConfig};
pub use crate::sink::local::LocalSinkConfig;
pub use crate::sink::stdout::StdoutSinkConfig;
pub use crate::source::SourceConfig;
pub use crate::source::file::{FileSourceConfig, LineFormat};
pub use crate::source::kafka::{Isolation, KafkaSourceConfig, StartPosition, ValueFormat};

fn default_tenant() -> String {
    "default".into()
}

/// `[delivery]`: the guarantee a pipeline gives, and how much may be in flight.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// `at-least-once` (default): offsets are committed only after every
    /// output and dead-letter record of those offsets is acknowledged; a crash
    /// may repeat records, never lose one. `exactly-once`: Kafka to Kafka
    /// only; outputs, dead letters and consumer offsets are committed in one
    /// Kafka transaction.
    pub guarantee: Guarantee,
    /// Transactional id of this process (exactly-once). It must stay the same
    /// across restarts of one process, so that a restarted process fences its
    /// previous incarnation, and differ between processes of a group.
    /// Default: `<pipeline>-<SLUICE_INSTANCE or host name>`.
    pub transactional_id: Option<String>,
    /// Longest a Kafka transaction may stay open, in ms (default 60000).
    pub transaction_timeout_ms: u64,
    /// Workers running the transform chain in parallel, each with its own
    /// instances and thread (default: the machine's cores, at most 4).
    pub workers: usize,
    /// Keep each partition on one worker (default false). By default any
    /// idle worker takes the next batch, even of a partition another worker
    /// is busy with, and delivery puts each partition's batches back in
    /// source order before any sink sees them: outputs and commits keep
    /// per-partition (and so per-key) order either way. Pin partitions for
    /// a transform that keeps state in its instance's memory from one batch
    /// to the next and needs all of a partition's (or a key's) records:
    /// then one key is never in two workers at once, and a single partition
    /// uses one core.
    pub pin_partitions: bool,
    /// Most records read but not yet in a sink or the DLQ (default 100000,
    /// the number of messages a Kafka producer queues by default).
    /// When reached, the source stops reading (Kafka partitions are paused).
    /// At-least-once holds a record here until its sink acknowledges it, so
    /// against a slowly acknowledging broker this bounds throughput (records
    /// in flight ÷ acknowledgement time); `max_in_flight_mb` bounds memory.
    pub max_in_flight_records: usize,
    /// Most bytes read but not yet in a sink or the DLQ, in MiB (default 64).
    pub max_in_flight_mb: usize,
    /// On a rebalance, how long revoked partitions may take to finish their
    /// in-flight batches before their uncommitted work is dropped, in ms
    /// (default 30000).
    pub drain_timeout_ms: u64,
    /// At-least-once: how often handled offsets are committed, in ms
    /// (default 250; 0 commits after every batch). Commits are asynchronous
    /// and one request covers every partition. Offsets never pass an
    /// unhandled record whatever the interval; a longer interval means
    /// fewer commits and more records repeated after a crash. On a
    /// rebalance and at shutdown, offsets are committed at once.
    pub commit_interval_ms: u64,
    /// Adds a `sluice.module` header to every output record: the SHA-256
    /// digest of the module that emitted it (default false), so consumers
    /// can tell which version of a transform produced what.
    pub module_header: bool,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            guarantee: Guarantee::AtLeastOnce,
            transactional_id: None,
            transaction_timeout_ms: 60_000,
            workers: default_workers(),
            pin_partitions: false,
            max_in_flight_records: 100_000,
            max_in_flight_mb: 64,
            drain_timeout_ms: 30_000,
            commit_interval_ms: 250,
            module_header: false,
        }
    }
}

/// The default number of workers: the machine's cores, at most 4 (each
/// worker holds its own instance of every transform).
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// A delivery guarantee.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Guarantee {
    /// No record is lost; after a crash some may be written twice.
    #[default]
    AtLeastOnce,
    /// Kafka to Kafka: every record's outputs are committed exactly once.
    ExactlyOnce,
}

/// One transform of the chain.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// Name of this step, unique in the pipeline (used in errors, logs, DLQ).
    pub name: String,
    /// A component `.wasm` file, or a Rust transform project directory that
    /// Sluice builds for `wasm32-wasip2` (cached) before running.
    pub module: PathBuf,
    /// Configuration given to the transform's `init`, as JSON.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Reference tables the transform can `lookup`, by name.
    #[serde(default)]
    pub tables: BTreeMap<String, TableConfig>,
    /// Resource limits of the transform's instance.
    #[serde(default)]
    pub limits: Limits,
    /// What the transform may reach beyond its memory: a read-only
    /// directory, clocks, entropy. Nothing by default.
    #[serde(default)]
    pub grants: Grants,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// A reference table loaded from a file.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// A CSV file with a header row, or a JSON file (array of objects, or an
    /// object of rows keyed by their key).
    pub path: PathBuf,
    /// The key column (CSV) or field (JSON array).
    #[serde(default = "default_key")]
    pub key: String,
}

fn default_key() -> String {
    "key".into()
}

impl PipelineConfig {
    /// The JSON Schema of a pipeline file, from these types and their doc
    /// comments (`sluice schema pipeline`; `docs/schema/`).
    pub fn json_schema() -> serde_json::Value {
        let mut schema =
            serde_json::to_value(schemars::schema_for!(PipelineConfig)).unwrap_or_default();
        if let Some(o) = schema.as_object_mut() {
            o.insert("title".into(), "Sluice pipeline file".into());
        }
        schema
    }

    /// Reads and validates a pipeline file. Returns the config and the
    /// directory relative paths are resolved against.
    pub fn load(path: &Path) -> Result<(PipelineConfig, PathBuf), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Self::parse(&text, path)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        Ok((config, base))
    }

    /// Parses and validates pipeline text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<PipelineConfig, ConfigError> {
        let mut config: PipelineConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.origin = Origin {
            path: path.to_path_buf(),
            text: std::sync::Arc::from(text),
        };
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: config.origin.locate(&message),
            message,
        })?;
        Ok(config)
    }
}

impl PipelineConfig {
    /// Every sink of the pipeline with its name (`dead-letter` for the DLQ).
    pub fn sinks(&self) -> impl Iterator<Item = (&str, &SinkConfig)> {
        self.outputs
            .iter()
            .map(|(n, s)| (n.as_str(), s))
            .chain(std::iter::once(("dead-letter", &self.dead_letter)))
    }

    /// The bootstrap servers of a Kafka sink: its own, or the source's.
    pub fn sink_bootstrap<'a>(&'a self, sink: &'a KafkaSinkConfig) -> Option<&'a str> {
        sink.bootstrap_in(&self.sink_scope(Path::new(".")))
    }

    /// What the pipeline's sinks may know of it; `base`: where relative
    /// paths resolve (the pipeline file's folder).
    pub fn sink_scope<'a>(&'a self, base: &'a Path) -> crate::sink::SinkScope<'a> {
        crate::sink::SinkScope {
            pipeline: &self.name,
            base,
            source_bootstrap: self.source.plugin().transactional_cluster(),
        }
    }
}
