//! The audit log: one JSON line per change made through the API (who, what,
//! on which pipeline and transform, the module digest, when, and whether it
//! was done or refused), appended to `audit.log` in the data directory.

use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One change.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// The token's name.
    pub who: String,
    /// What was asked (`deploy`, `activate`, `rollback`, `pause`, ...).
    pub action: String,
    /// The pipeline.
    pub pipeline: String,
    /// The transform, when the change is to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transform: Option<String>,
    /// The module digest, when one is involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `done`, `refused` or `forbidden`.
    pub outcome: String,
    /// Why, when not done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The audit log file.
#[derive(Debug)]
pub struct Audit {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl Audit {
    /// Opens (appends to) `data_dir/audit.log`.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join("audit.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        Ok(Audit {
            path,
            file: Mutex::new(file),
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry (and flushes it to the file).
    pub fn record(&self, mut entry: AuditEntry) {
        if entry.at.is_empty() {
            entry.at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        }
        let Ok(mut line) = serde_json::to_vec(&entry) else {
            return;
        };
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.write_all(&line).and_then(|_| f.sync_data()) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log");
        }
    }
}
