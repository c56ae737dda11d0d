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
    /// When set, records are collected into larger objects that close at a
    /// size, a record count or an age, whichever comes first (and on
    /// shutdown); the source's offsets are committed once the object
    /// holding their records is written. Without it, every write is one
    /// object.
    #[serde(default)]
    pub roll: Option<RollConfig>,
}

/// `[outputs.<name>.local.roll]`, `[outputs.<name>.lake.roll]`: when an
/// open object closes.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollConfig {
    /// Close once the object holds this many records (default: no limit).
    #[serde(default)]
    pub records: Option<u64>,
    /// Close once the object holds this many bytes (default 64 MiB, at most
    /// 1 GiB). This bounds the sink's memory: about two objects' worth.
    #[serde(default = "default_roll_bytes")]
    pub bytes: u64,
    /// Close once the object's first record is this old, in ms (default
    /// 60000).
    #[serde(default = "default_roll_age_ms")]
    pub age_ms: u64,
}

impl Default for RollConfig {
    fn default() -> Self {
        RollConfig {
            records: None,
            bytes: default_roll_bytes(),
            age_ms: default_roll_age_ms(),
        }
    }
}

/// Largest `roll.bytes`.
pub const MAX_ROLL_BYTES: u64 = 1 << 30;

fn default_roll_bytes() -> u64 {
    64 << 20
}

fn default_roll_age_ms() -> u64 {
    60_000
}

impl RollConfig {
    /// Checks the values; `table` is where they are written
    /// (`outputs.lake.local.roll`), for messages.
    pub fn check(&self, table: &str) -> Result<(), String> {
        if self.records == Some(0) {
            return Err(format!("{table}.records must be at least 1"));
        }
        if self.bytes == 0 || self.bytes > MAX_ROLL_BYTES {
            return Err(format!(
                "{table}.bytes must be between 1 and {MAX_ROLL_BYTES} (1 GiB), not {}",
                self.bytes
            ));
        }
        if self.age_ms == 0 {
            return Err(format!("{table}.age_ms must be at least 1"));
        }
        Ok(())
    }
}
