//! `local` sinks: configuration.

use crate::retry::RetryConfig;
use crate::sink::RecordFormat;
use crate::sink::objects::RollConfig;
use serde::Deserialize;
use std::path::PathBuf;

/// `local`: JSON Lines files under a directory.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalSinkConfig {
    /// Directory (prefix) the files are written under.
    pub path: PathBuf,
    /// What a line holds (default `value`).
    #[serde(default)]
    pub format: RecordFormat,
    /// How transient write errors are retried.
    #[serde(default)]
    pub retry: RetryConfig,
    /// When set, records are collected into larger objects that close at a
    /// size, a record count or an age, whichever comes first (and on
    /// shutdown); the source's offsets are committed once the object
    /// holding their records is written. Without it, every write is one
    /// object.
    #[serde(default)]
    pub roll: Option<RollConfig>,
}
