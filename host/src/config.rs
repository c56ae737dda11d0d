//! The pipeline file (`pipeline.toml`): typed, documented, strict.
//!
//! Relative paths in the file are resolved against the directory holding it.
//! Unknown fields are refused, and every error names the file, the line and
//! the field at fault.

use crate::engine::{Grants, Limits};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why a pipeline file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read pipeline file `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// Syntax or type error, with line, column and field.
    #[error("invalid pipeline file `{path}`: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message (line, column, field, expectation).
        message: String,
    },
    /// Semantically wrong.
    #[error("invalid pipeline file `{path}`{}: {message}", line_suffix(*.line))]
    Invalid {
        /// The line of the table or field at fault, when it can be found.
        line: Option<usize>,
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(", line {l}")).unwrap_or_default()
}

/// Where a pipeline was read from: its file and text, so that errors found
/// after parsing (a missing module, a project that does not build) can name
/// the file and the line of the transform at fault.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The pipeline file.
    pub path: PathBuf,
    text: std::sync::Arc<str>,
}

impl Origin {
    /// The 1-based line of the `index`-th `[[transforms]]` table, or of its
    /// `field` when given and present.
    pub fn transform_line(&self, index: usize, field: Option<&str>) -> Option<usize> {
        let mut seen = 0usize;
        let mut start = None;
        for (n, line) in self.text.lines().enumerate() {
            let l = line.trim();
            if l == "[[transforms]]" {
                if seen == index {
                    start = Some(n);
                } else if start.is_some() {
                    break;
                }
                seen += 1;
                continue;
            }
            if let (Some(_), Some(f)) = (start, field) {
                if l.starts_with('[') && !l.starts_with("[transforms.") {
                    break;
                }
                let key = l.split('=').next().unwrap_or("").trim();
                if key == f {
                    return Some(n + 1);
                }
            }
        }
        start.map(|n| n + 1)
    }

    /// The line of the table (or dotted key) `outputs.<name>`.
    pub fn output_line(&self, name: &str) -> Option<usize> {
        let head = format!("[outputs.{name}");
        self.text
            .lines()
            .position(|l| l.trim_start().starts_with(&head))
            .map(|n| n + 1)
    }

    /// The line an error message points at: `transforms[i]` (and its field)
    /// or `outputs.<name>`.
    fn locate(&self, message: &str) -> Option<usize> {
        if let Some(rest) = message.split("`transforms[").nth(1) {
            let (index, after) = rest.split_once(']')?;
            let index: usize = index.parse().ok()?;
            let field = after
                .strip_prefix('.')
                .and_then(|f| f.split(['.', '`', ' ']).next())
                .filter(|f| !f.is_empty());
            return self.transform_line(index, field);
        }
        if let Some(rest) = message.split("`outputs.").nth(1) {
            let name = rest.split(['.', '`', ' ']).next()?;
            return self.output_line(name);
        }
        None
    }
}

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
    /// the number of messages a librdkafka producer queues by default).
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

    fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("`name` must not be empty".into());
        }
        for (name, sink) in self
            .outputs
            .iter()
            .map(|(n, s)| (format!("outputs.{n}"), s))
            .chain(std::iter::once((
                "dead_letter".to_string(),
                &self.dead_letter,
            )))
        {
            let r = sink.retry();
            if r.initial_backoff_ms > r.max_backoff_ms || r.max_elapsed_ms == 0 {
                return Err(format!(
                    "`{name}.retry`: initial_backoff_ms must be at most max_backoff_ms, and max_elapsed_ms at least 1"
                ));
            }
        }
        let cb = &self.circuit_breaker;
        if !(0.0..=1.0).contains(&cb.failure_ratio) || cb.window_records == 0 {
            return Err("`circuit_breaker`: failure_ratio must be within 0 and 1, window_records at least 1".into());
        }
        if let Some(bad) = self
            .outputs
            .keys()
            .find(|n| !crate::engine::valid_output_name(n))
        {
            return Err(format!(
                "`outputs.{bad}`: an output name is 1 to {} ASCII letters, digits, `_`, `-` or `.`",
                crate::engine::MAX_OUTPUT_NAME
            ));
        }
        if !self.outputs.contains_key("default") {
            return Err(
                "`outputs.default` is missing: the last transform's default output needs a sink"
                    .into(),
            );
        }
        let dlq_format = self
            .dead_letter
            .plugin()
            .line_format()
            .unwrap_or(RecordFormat::Value);
        if dlq_format != RecordFormat::Value {
            return Err("`dead_letter`: `format` does not apply, dead-letter entries are always written as JSON envelopes".into());
        }
        self.validate_plugins()?;
        let b = &self.batch;
        if b.max_records == 0 || b.max_bytes == 0 {
            return Err("`batch.max_records` and `batch.max_bytes` must be at least 1".into());
        }
        let d = &self.delivery;
        if d.workers == 0 || d.max_in_flight_records == 0 || d.max_in_flight_mb == 0 {
            return Err(
                "`delivery.workers`, `max_in_flight_records` and `max_in_flight_mb` must be at least 1"
                    .into(),
            );
        }
        if d.max_in_flight_records < b.max_records {
            return Err(format!(
                "`delivery.max_in_flight_records` ({}) must be at least `batch.max_records` ({})",
                d.max_in_flight_records, b.max_records
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.transforms.iter().enumerate() {
            if t.name.trim().is_empty() {
                return Err(format!("`transforms[{i}].name` must not be empty"));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(format!(
                    "`transforms[{i}].name`: the name `{}` is used twice",
                    t.name
                ));
            }
            if t.limits.memory_mb == 0
                || t.limits.timeout_ms == 0
                || t.limits.isolation_budget_ms == 0
            {
                return Err(format!(
                    "`transforms[{i}].limits`: memory_mb, timeout_ms and isolation_budget_ms must be at least 1"
                ));
            }
            let g = &t.grants;
            if let Some(mount) = &g.files_mount {
                if g.files.is_none() {
                    return Err(format!(
                        "`transforms[{i}].grants.files_mount` is set but `files` is not"
                    ));
                }
                if !mount.starts_with('/') || mount.split('/').any(|c| c == "..") {
                    return Err(format!(
                        "`transforms[{i}].grants.files_mount`: `{mount}` must be an absolute guest path without `..`"
                    ));
                }
            }
            if t.limits.max_table_elements > crate::engine::MAX_TABLE_ELEMENTS
                || t.limits.max_instances > crate::engine::MAX_INSTANCES
                || t.limits.max_instances == 0
                || t.limits.max_record_output_kb == 0
            {
                return Err(format!(
                    "`transforms[{i}].limits`: max_table_elements at most {}, max_instances within 1 and {}, max_record_output_kb at least 1",
                    crate::engine::MAX_TABLE_ELEMENTS,
                    crate::engine::MAX_INSTANCES
                ));
            }
            if !(64..=crate::engine::MAX_TEXT_BYTES as u32).contains(&t.limits.max_message_bytes) {
                return Err(format!(
                    "`transforms[{i}].limits.max_message_bytes`: within 64 and {}",
                    crate::engine::MAX_TEXT_BYTES
                ));
            }
            if t.limits.memory_mb > crate::engine::MAX_MEMORY_MB {
                return Err(format!(
                    "`transforms[{i}].limits.memory_mb`: at most {} MiB",
                    crate::engine::MAX_MEMORY_MB
                ));
            }
        }
        Ok(())
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

    fn validate_plugins(&self) -> Result<(), String> {
        self.source.plugin().check()?;
        for (name, sink) in self.sinks() {
            let base = self.origin.path.parent().unwrap_or(Path::new("."));
            sink.plugin()
                .check(&sink_path(name), &self.sink_scope(base))?;
        }
        if self.delivery.guarantee == Guarantee::ExactlyOnce {
            if self.source.plugin().transactional_cluster().is_none() {
                return Err("`delivery.guarantee = \"exactly-once\"` needs a Kafka source: offsets are committed in the same Kafka transaction as the outputs".into());
            }
            let scope = self.sink_scope(Path::new("."));
            for (name, sink) in self.sinks() {
                if let Err(why) = sink.plugin().joins_transactions(&scope) {
                    return Err(format!(
                        "`{}`: with exactly-once, every output and the dead-letter queue must be Kafka topics on the source's cluster ({why}); use at-least-once for pipelines that write elsewhere",
                        sink_path(name)
                    ));
                }
            }
        }
        Ok(())
    }
}

fn sink_path(name: &str) -> String {
    if name == "dead-letter" {
        "dead_letter".to_string()
    } else {
        format!("outputs.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "toll"
[source.file]
path = "data/*.jsonl"
[[transforms]]
name = "map"
module = "map.wasm"
config = { mapping = { a = "$.a" } }
[outputs.default.local]
path = "lake"
[dead_letter.stdout]
"#;

    #[test]
    fn retry_policies_and_the_circuit_breaker_are_configurable_and_checked() {
        let c = PipelineConfig::parse(GOOD, Path::new("p.toml")).expect("valid");
        assert_eq!(c.outputs["default"].retry(), RetryConfig::default());
        assert_eq!(c.circuit_breaker, CircuitBreakerConfig::default());
        let custom = GOOD.replace(
            "path = \"lake\"",
            "path = \"lake\"\nretry = { attempts = 3, initial_backoff_ms = 50, max_backoff_ms = 200 }",
        ) + "[circuit_breaker]\nfailure_ratio = 0.9\n";
        let c = PipelineConfig::parse(&custom, Path::new("p.toml")).expect("valid");
        assert_eq!(c.outputs["default"].retry().attempts, 3);
        assert_eq!(c.circuit_breaker.failure_ratio, 0.9);
        let zero = custom.replace("attempts = 3", "attempts = 3, max_elapsed_ms = 0");
        let err = PipelineConfig::parse(&zero, Path::new("p.toml"))
            .expect_err("no time to retry in")
            .to_string();
        assert!(err.contains("outputs.default.retry"), "{err}");
        assert_eq!(
            RetryConfig::default().attempts,
            0,
            "bounded by time, not count"
        );
        let ratio = custom.replace("failure_ratio = 0.9", "failure_ratio = 1.5");
        let err = PipelineConfig::parse(&ratio, Path::new("p.toml"))
            .expect_err("ratio")
            .to_string();
        assert!(err.contains("circuit_breaker"), "{err}");
    }

    #[test]
    fn parses_with_defaults() {
        let c = PipelineConfig::parse(GOOD, Path::new("p.toml")).expect("valid");
        assert_eq!(c.tenant, "default");
        assert_eq!(c.batch, BatchPolicy::default());
        assert_eq!(
            c.transforms[0].config,
            serde_json::json!({"mapping": {"a": "$.a"}})
        );
        assert_eq!(c.transforms[0].limits, Limits::default());
    }

    #[test]
    fn unknown_field_names_line_and_field() {
        let bad = GOOD.replace(
            "[outputs.default.local]",
            "colour = 3\n[outputs.default.local]",
        );
        let err = PipelineConfig::parse(&bad, Path::new("p.toml"))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("p.toml"), "{err}");
        assert!(err.contains("line 9"), "{err}");
        assert!(err.contains("colour"), "{err}");
        let bad = GOOD.replace(
            "path = \"data/*.jsonl\"",
            "path = \"data/*.jsonl\"\nformat = \"xml\"",
        );
        let err = PipelineConfig::parse(&bad, Path::new("p.toml"))
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("line 5") && err.contains("format") && err.contains("xml"),
            "{err}"
        );
        let bad = GOOD.replace("[dead_letter.stdout]", "[dead_letter.pulsar]");
        let err = PipelineConfig::parse(&bad, Path::new("p.toml"))
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("line 11") && err.contains("pulsar") && err.contains("local"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let bad = GOOD.replace(
            "name = \"toll\"",
            "name = \"toll\"\n[batch]\nmax_records = \"lots\"",
        );
        let err = PipelineConfig::parse(&bad, Path::new("p.toml"))
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("max_records") || err.contains("line 4"),
            "{err}"
        );
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn kafka_pipelines_parse_and_exactly_once_is_checked() {
        let kafka = r#"
name = "k"
[source.kafka]
bootstrap = "127.0.0.1:9092"
topics = ["in", "^events\\..*"]
group = "g"
start = "2026-11-18T14:00:00Z"
properties = { "session.timeout.ms" = "6000", "sasl.password" = "hunter2" }
[delivery]
guarantee = "exactly-once"
[outputs.default.kafka]
topic = "out"
[dead_letter.kafka]
topic = "dlq"
"#;
        let c = PipelineConfig::parse(kafka, Path::new("k.toml")).expect("valid");
        let SourceConfig::Kafka(k) = &c.source else {
            panic!("kafka source")
        };
        assert_eq!(k.start, StartPosition::Timestamp(1_795_010_400_000));
        assert!(
            !format!("{k:?}").contains("hunter2"),
            "secrets are redacted"
        );
        let SinkConfig::Kafka(out) = &c.outputs["default"] else {
            panic!("kafka sink")
        };
        assert_eq!(c.sink_bootstrap(out), Some("127.0.0.1:9092"));

        let local_dlq = kafka.replace(
            "[dead_letter.kafka]\ntopic = \"dlq\"",
            "[dead_letter.local]\npath = \"e\"",
        );
        let err = PipelineConfig::parse(&local_dlq, Path::new("k.toml"))
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("dead_letter") && err.contains("exactly-once") && err.contains("local"),
            "{err}"
        );

        let bad_start = kafka.replace("2026-11-18T14:00:00Z", "yesterday");
        let err = PipelineConfig::parse(&bad_start, Path::new("k.toml"))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("yesterday") && err.contains("line 7"), "{err}");

        let file_to_kafka = GOOD.replace(
            "[outputs.default.local]\npath = \"lake\"",
            "[outputs.default.kafka]\ntopic = \"t\"",
        );
        let err = PipelineConfig::parse(&file_to_kafka, Path::new("p.toml"))
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("outputs.default") && err.contains("bootstrap"),
            "{err}"
        );
    }

    #[test]
    fn semantic_errors() {
        let no_default = GOOD.replace("[outputs.default.local]", "[outputs.other.local]");
        let err = PipelineConfig::parse(&no_default, Path::new("p.toml"))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("outputs.default"), "{err}");
        let twice = GOOD.replace(
            "[outputs.default.local]",
            "[[transforms]]\nname = \"map\"\nmodule = \"m.wasm\"\n[outputs.default.local]",
        );
        let err = PipelineConfig::parse(&twice, Path::new("p.toml"))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("used twice"), "{err}");
    }
}
