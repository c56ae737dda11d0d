//! The pipeline file (`pipeline.toml`): typed, documented, strict.
//!
//! Relative paths in the file are resolved against the directory holding it.
//! Unknown fields are refused, and every error names the file, the line and
//! the field at fault.

use crate::engine::Limits;
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
    #[error("invalid pipeline file `{path}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
}

/// A pipeline: one source, a micro-batch policy, a chain of transforms,
/// named outputs mapped to sinks, and a dead-letter sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Pipeline name; names it in logs, metrics and dead-letter entries.
    pub name: String,
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
}

fn default_tenant() -> String {
    "default".into()
}

/// A source of records: one table named after its kind, e.g. `[source.file]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Lines of local files.
    File(FileSourceConfig),
}

/// `[source.file]`: lines of local files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// A file, a directory (every file in it, sorted), a glob
    /// (`data/*.jsonl`), or `-` for standard input.
    pub path: String,
    /// How lines become records (default `jsonl`).
    #[serde(default)]
    pub format: LineFormat,
}

/// How a line of a file becomes a record.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LineFormat {
    /// JSON Lines: each non-blank line must be valid JSON; lines that are not
    /// go to the dead-letter queue (stage `decode`) without reaching a transform.
    #[default]
    Jsonl,
    /// Raw lines: each non-blank line is a record value as is.
    Lines,
}

/// Micro-batch policy: a batch is cut on whichever limit is reached first.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchPolicy {
    /// Most records per batch (default 1000).
    pub max_records: usize,
    /// Most bytes (keys + values + headers) per batch (default 4 MiB).
    pub max_bytes: usize,
    /// Longest time the first record of a batch waits for the batch to fill,
    /// in ms (default 1000).
    pub max_wait_ms: u64,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_records: 1000,
            max_bytes: 4 << 20,
            max_wait_ms: 1000,
        }
    }
}

/// One transform of the chain.
#[derive(Debug, Clone, Deserialize)]
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
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// A reference table loaded from a file.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
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

/// A sink: one table named after its kind, e.g. `[outputs.default.local]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum SinkConfig {
    /// JSON Lines files on local disk, through `object_store`.
    Local(LocalSinkConfig),
    /// Standard output, one line per record.
    Stdout(StdoutSinkConfig),
}

/// `local`: JSON Lines files under a directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSinkConfig {
    /// Directory (prefix) the files are written under.
    pub path: PathBuf,
    /// What a line holds (default `value`).
    #[serde(default)]
    pub format: RecordFormat,
}

/// `stdout`: one line per record on standard output.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// What a line holds (default `value`).
    #[serde(default)]
    pub format: RecordFormat,
}

/// How an output record is written as one line.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RecordFormat {
    /// The record value, which must be JSON (written compactly on one line);
    /// a value that is not JSON is rejected to the dead-letter queue.
    #[default]
    Value,
    /// A JSON envelope with key, value, headers and timestamp.
    Envelope,
}

impl PipelineConfig {
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
        let config: PipelineConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("`name` must not be empty".into());
        }
        if !self.outputs.contains_key("default") {
            return Err(
                "`outputs.default` is missing: the last transform's default output needs a sink"
                    .into(),
            );
        }
        let dlq_format = match &self.dead_letter {
            SinkConfig::Local(c) => c.format,
            SinkConfig::Stdout(c) => c.format,
        };
        if dlq_format != RecordFormat::Value {
            return Err("`dead_letter`: `format` does not apply, dead-letter entries are always written as JSON envelopes".into());
        }
        let b = &self.batch;
        if b.max_records == 0 || b.max_bytes == 0 {
            return Err("`batch.max_records` and `batch.max_bytes` must be at least 1".into());
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
            if t.limits.memory_mb == 0 || t.limits.timeout_ms == 0 {
                return Err(format!(
                    "`transforms[{i}].limits`: memory_mb and timeout_ms must be at least 1"
                ));
            }
        }
        Ok(())
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
        let bad = GOOD.replace("[dead_letter.stdout]", "[dead_letter.kafka]");
        let err = PipelineConfig::parse(&bad, Path::new("p.toml"))
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("line 11") && err.contains("kafka") && err.contains("local"),
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
