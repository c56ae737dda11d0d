//! `[source.kafka]`: the Kafka source's configuration.

use crate::kafka::Properties;
use serde::Deserialize;

/// `[source.kafka]`: topics read by a consumer group. Several `sluice`
/// processes with the same `group` share the partitions.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub bootstrap: String,
    /// Topics to read: names, or regular expressions starting with `^`
    /// (e.g. `"^events\\..*"`), matched against the cluster's topics.
    pub topics: Vec<String>,
    /// Consumer group id. Processes with the same group share the partitions.
    pub group: String,
    /// Where a group with no committed offset starts: `earliest` (default),
    /// `latest`, or an RFC 3339 time (`2026-11-18T14:00:00Z`): the first
    /// record at or after it.
    #[serde(default)]
    pub start: StartPosition,
    /// How record values are read (default `raw`).
    #[serde(default)]
    pub format: ValueFormat,
    /// Isolation when the upstream is transactional (default `read-committed`).
    #[serde(default)]
    pub isolation: Isolation,
    /// Extra librdkafka consumer settings (e.g. `"session.timeout.ms" = "6000"`,
    /// `"security.protocol" = "SASL_SSL"`). Values are redacted in logs.
    #[serde(default)]
    pub properties: Properties,
}

/// Where a consumer group without committed offsets starts reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest record still in the topic.
    #[default]
    Earliest,
    /// Only records written after the consumer joined.
    Latest,
    /// The first record whose timestamp is at or after this time (ms since the epoch).
    Timestamp(i64),
}

impl schemars::JsonSchema for StartPosition {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StartPosition".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Where a consumer group without committed offsets starts reading: `earliest`, `latest`, or the first record at or after an RFC 3339 time.",
            "anyOf": [
                { "type": "string", "enum": ["earliest", "latest"] },
                { "type": "string", "format": "date-time" }
            ]
        })
    }
}

impl<'de> Deserialize<'de> for StartPosition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "earliest" => Ok(StartPosition::Earliest),
            "latest" => Ok(StartPosition::Latest),
            other => chrono::DateTime::parse_from_rfc3339(other)
                .map(|t| StartPosition::Timestamp(t.timestamp_millis()))
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "`{other}` is not `earliest`, `latest` or an RFC 3339 time ({e})"
                    ))
                }),
        }
    }
}

/// How a Kafka record value is read.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ValueFormat {
    /// Bytes as they are.
    #[default]
    Raw,
    /// The value must be JSON; records whose value is not go to the
    /// dead-letter queue (stage `decode`) without reaching a transform.
    Json,
}

/// Which records of a transactional upstream a consumer sees.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Only records of committed transactions.
    #[default]
    ReadCommitted,
    /// Every record, including those of open or aborted transactions.
    ReadUncommitted,
}
