//! `local` sinks: configuration.

use crate::config::{RecordFormat, RetryConfig};
use serde::Deserialize;
use std::path::PathBuf;

/// `local`: JSON Lines files under a directory.
#[derive(Debug, Clone, Deserialize)]
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
}
