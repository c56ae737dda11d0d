//! `kafka` sinks: configuration.

use crate::kafka::Properties;
use crate::retry::RetryConfig;
use serde::Deserialize;

/// `kafka`: records to a Kafka topic, keys, headers and timestamps kept.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Topic to write to.
    pub topic: String,
    /// The record key, taken from a field of the JSON value (`"$.plate"`,
    /// member names only) instead of the record's own key: records are
    /// partitioned by it, so a second pipeline reading the topic sees each
    /// plate's records in one partition, in order (re-keying a stream, as
    /// Kafka Streams' repartition topics do). A record without the field
    /// goes to the dead-letter queue, the field named. Outputs only.
    #[serde(default)]
    pub key: Option<String>,
    /// Bootstrap servers; defaults to the Kafka source's.
    #[serde(default)]
    pub bootstrap: Option<String>,
    /// Compression: `none`, `gzip`, `snappy`, `lz4` (default) or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// Extra librdkafka producer settings (e.g. `"linger.ms" = "20"`).
    /// Values are redacted in logs.
    #[serde(default)]
    pub properties: Properties,
    /// How transient write errors are retried.
    #[serde(default)]
    pub retry: RetryConfig,
}

/// Kafka compression codec.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4 (default: cheap and effective).
    #[default]
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The librdkafka name of the codec.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl KafkaSinkConfig {
    /// The bootstrap servers this sink writes to: its own, else its
    /// pipeline's Kafka source's.
    pub fn bootstrap_in<'a>(&'a self, scope: &crate::sink::SinkScope<'a>) -> Option<&'a str> {
        self.bootstrap.as_deref().or(scope.source_bootstrap)
    }
}
