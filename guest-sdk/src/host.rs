//! Services of the host: logging and reference-data lookup.

use crate::__bindings::sluice::transform::host;

/// Severity of a log line.
pub use crate::__bindings::sluice::transform::host::Level;

/// Writes a log line attributed to this transform. The host rate-limits and
/// truncates log lines; do not log per record above `Level::Debug`.
pub fn log(level: Level, message: &str) {
    host::log(level, message)
}

/// Looks `key` up in the reference table `table` configured for this
/// transform in the pipeline. Returns the row as JSON object text.
pub fn lookup(table: &str, key: &str) -> Option<String> {
    host::lookup(table, key)
}

/// Like [`lookup`], with the row parsed as a JSON value.
pub fn lookup_json(table: &str, key: &str) -> Option<serde_json::Value> {
    lookup(table, key).and_then(|text| serde_json::from_str(&text).ok())
}
