//! What the sinks that write objects share (`local`, `lake`): when an open
//! object closes (`roll`), and which object-store errors pass if tried
//! again.

use serde::Deserialize;

/// `[outputs.<name>.local.roll]`, `[outputs.<name>.lake.roll]`: when an
/// open object closes.
#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema)]
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

/// Whether a failed write may succeed if tried again: not when the file
/// system says the path cannot be written at all (no permission, a file
/// where a directory should be, a read-only file system), which no wait
/// mends; yes otherwise (a full disk, an interrupted write, ...).
pub fn transient(e: &object_store::Error) -> bool {
    use std::io::ErrorKind;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return !matches!(
                io.kind(),
                ErrorKind::PermissionDenied
                    | ErrorKind::NotADirectory
                    | ErrorKind::IsADirectory
                    | ErrorKind::ReadOnlyFilesystem
                    | ErrorKind::InvalidFilename
                    | ErrorKind::InvalidInput
            );
        }
        source = err.source();
    }
    true
}
