//! `stdout` sinks: configuration.

use crate::sink::RecordFormat;
use serde::Deserialize;

/// `stdout`: one line per record on standard output.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// What a line holds (default `value`).
    #[serde(default)]
    pub format: RecordFormat,
}
