//! `lake` sinks: configuration and its checks (no I/O).

use crate::retry::RetryConfig;
use crate::sink::RecordFormat;
use crate::sink::objects::RollConfig;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `[outputs.<name>.lake]`: objects in an object store, partitioned and
/// rolled, named after the source positions they hold.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LakeSinkConfig {
    /// Where: `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix`, `file:///abs/dir`, `memory://` (tests), or
    /// a plain path (relative to the pipeline file) for local disk.
    pub url: String,
    /// Store options, as `object_store` names them (`endpoint`, `region`,
    /// `allow_http`, `access_key_id`, `account_name`, `use_emulator`, ...).
    /// Credentials may also come from the usual environment (`AWS_*`,
    /// `GOOGLE_*`, `AZURE_*`). Values never appear in logs or errors.
    #[serde(default)]
    pub options: Options,
    /// `jsonl` (default), `parquet` or `raw`.
    #[serde(default)]
    pub format: LakeFormat,
    /// For `jsonl`: what a line holds, `value` (default) or `envelope`.
    #[serde(default)]
    pub record: RecordFormat,
    /// `none`, `gzip` or `zstd` for `jsonl` and `raw` (default none);
    /// `none`, `snappy` or `zstd` for `parquet` (default snappy).
    #[serde(default)]
    pub compression: Option<Compression>,
    /// The partition path under the prefix, Hive style, e.g.
    /// `topic={stream}/dt={event_time:%Y-%m-%d}/hour={event_time:%H}`.
    /// Placeholders: `{stream}`, `{partition}`, `{event_time:FORMAT}`
    /// (strftime, UTC) and `{field:a.b}` (a field of the JSON value).
    /// Empty (default): every object directly under the prefix.
    #[serde(default)]
    pub partition: String,
    /// The value written for a placeholder a record has no value for (no
    /// event time, a missing field), so such records land in one partition
    /// instead of being lost. Default `__HIVE_DEFAULT_PARTITION__`, which
    /// Hive and Spark read as NULL.
    #[serde(default = "default_partition")]
    pub default_partition: String,
    /// Where event time comes from (default: the record's timestamp).
    #[serde(default)]
    pub event_time: EventTimeConfig,
    /// When an object closes: count, bytes (of encoded records), age.
    #[serde(default)]
    pub roll: RollConfig,
    /// Bytes all open objects of this sink may hold together (default 256
    /// MiB); above it the largest closes early.
    #[serde(default = "default_max_open_bytes")]
    pub max_open_bytes: u64,
    /// `parquet`: the columns. Without it, the schema is inferred from the
    /// first records and kept in the lake (`_sluice/schema.json`), so every
    /// later run and every host of the group writes the same columns.
    #[serde(default)]
    pub schema: Option<Vec<FieldSpec>>,
    /// `parquet`: rows per row group, at most (default 65536).
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// How transient write errors are retried.
    #[serde(default)]
    pub retry: RetryConfig,
}

/// Store options: printed by `Debug` with their values hidden, since they
/// hold keys and tokens.
#[derive(Clone, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Options(pub BTreeMap<String, String>);

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<hidden>")))
            .finish()
    }
}

fn default_partition() -> String {
    "__HIVE_DEFAULT_PARTITION__".into()
}

fn default_max_open_bytes() -> u64 {
    256 << 20
}

fn default_row_group_rows() -> usize {
    65_536
}

/// What the objects hold.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LakeFormat {
    /// JSON Lines.
    #[default]
    Jsonl,
    /// Apache Parquet, one row per record, columns from the value's fields.
    Parquet,
    /// The record values as they came, one per line.
    Raw,
}

/// Compression of an object.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// None.
    None,
    /// gzip (`jsonl`, `raw`).
    Gzip,
    /// Zstandard (every format).
    Zstd,
    /// Snappy (`parquet`).
    Snappy,
}

/// `[outputs.<name>.lake.event_time]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTimeConfig {
    /// A field of the JSON value (`ts`, `meta.time`); without it, the
    /// record's timestamp.
    #[serde(default)]
    pub field: Option<String>,
    /// How a numeric field counts: `ms` (default) or `s` since the epoch.
    /// RFC 3339 strings are read whatever the unit.
    #[serde(default)]
    pub unit: TimeUnit,
}

/// The unit of a numeric event time.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TimeUnit {
    /// Milliseconds since the epoch.
    #[default]
    Ms,
    /// Seconds since the epoch.
    S,
}

/// One Parquet column: `{ name = "id", type = "int64", nullable = false }`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// Column (and JSON field) name.
    pub name: String,
    /// Type: `string`, `int64`, `int32`, `float64`, `float32`, `boolean`,
    /// `timestamp` (µs, UTC; RFC 3339 strings or epoch ms), `date`
    /// (`YYYY-MM-DD`), `{ list = TYPE }` or `{ struct = [FIELDS] }`.
    #[serde(rename = "type")]
    pub ty: TypeSpec,
    /// Whether the field may be missing or null (default true).
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

/// A column type as written in the pipeline file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(untagged)]
pub enum TypeSpec {
    /// A primitive, by name.
    Name(String),
    /// `{ list = TYPE }`.
    List {
        /// Item type.
        list: Box<TypeSpec>,
    },
    /// `{ struct = [FIELDS] }`.
    Struct {
        /// Fields.
        #[serde(rename = "struct")]
        fields: Vec<FieldSpec>,
    },
}

impl LakeSinkConfig {
    /// The compression in effect.
    pub fn compression(&self) -> Compression {
        match (self.compression, self.format) {
            (Some(c), _) => c,
            (None, LakeFormat::Parquet) => Compression::Snappy,
            (None, _) => Compression::None,
        }
    }

    /// Checks everything that needs no I/O; `table` is `outputs.<name>.lake`.
    pub fn check(&self, table: &str) -> Result<(), String> {
        super::store::parse(&self.url, &self.options.0, std::path::Path::new(".")).map_err(
            |e| {
                let field = if e.contains("option") {
                    "options"
                } else {
                    "url"
                };
                format!("{table}.{field}: {e}")
            },
        )?;
        super::layout::Template::parse(&self.partition)
            .map_err(|e| format!("{table}.partition: {e}"))?;
        if self.default_partition.is_empty()
            || super::layout::escape(&self.default_partition) != self.default_partition
        {
            return Err(format!(
                "{table}.default_partition must be non-empty and use only letters, digits, `.`, `_` and `-`"
            ));
        }
        self.roll.check(&format!("{table}.roll"))?;
        if self.max_open_bytes < self.roll.bytes.min(1 << 20) {
            return Err(format!(
                "{table}.max_open_bytes must be at least 1 MiB (or `roll.bytes`), not {}",
                self.max_open_bytes
            ));
        }
        let c = self.compression();
        let fits = match self.format {
            LakeFormat::Jsonl | LakeFormat::Raw => {
                matches!(c, Compression::None | Compression::Gzip | Compression::Zstd)
            }
            LakeFormat::Parquet => {
                matches!(
                    c,
                    Compression::None | Compression::Snappy | Compression::Zstd
                )
            }
        };
        if !fits {
            return Err(format!(
                "{table}.compression: {c:?} does not apply to {:?} (jsonl and raw: none, gzip, zstd; parquet: none, snappy, zstd)",
                self.format
            ));
        }
        if self.format != LakeFormat::Jsonl && self.record != RecordFormat::Value {
            return Err(format!(
                "{table}.record applies to `jsonl` only (parquet reads the JSON value; raw writes the value's bytes)"
            ));
        }
        if self.format != LakeFormat::Parquet && self.schema.is_some() {
            return Err(format!("{table}.schema applies to `parquet` only"));
        }
        if let Some(schema) = &self.schema {
            super::encode::arrow_schema(schema).map_err(|e| format!("{table}.schema: {e}"))?;
        }
        if self.row_group_rows == 0 {
            return Err(format!("{table}.row_group_rows must be at least 1"));
        }
        if let Some(f) = &self.event_time.field
            && (f.is_empty() || f.split('.').any(str::is_empty))
        {
            return Err(format!(
                "{table}.event_time.field: `{f}` is not a field path (names separated by `.`)"
            ));
        }
        Ok(())
    }
}
