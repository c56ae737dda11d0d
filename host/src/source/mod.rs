//! Sources: where records come from. One folder per source kind; [`build`]
//! maps a `[source]` config to its implementation.

mod file;

use crate::batch::ByteSize;
use crate::config::SourceConfig;
use crate::ledger::Ledger;
use crate::record::{Position, Record, SourceRecord};
use std::path::Path;

pub use file::FileSource;

/// One item read from a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceItem {
    /// A record to process.
    Record(SourceRecord),
    /// Input the host could not turn into a record of the configured format
    /// (e.g. a line that is not JSON). It goes to the dead-letter queue.
    Invalid {
        /// The raw input as a record (value = the raw bytes).
        record: Record,
        /// Where it was read.
        position: Position,
        /// Why it is invalid.
        reason: String,
    },
}

impl SourceItem {
    /// The position of the item.
    pub fn position(&self) -> &Position {
        match self {
            SourceItem::Record(r) => &r.position,
            SourceItem::Invalid { position, .. } => position,
        }
    }
}

impl ByteSize for SourceItem {
    fn byte_size(&self) -> usize {
        match self {
            SourceItem::Record(r) => r.record.size(),
            SourceItem::Invalid { record, .. } => record.size(),
        }
    }
}

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Nothing matches the configured path.
    #[error("file source: nothing matches `{0}`")]
    NoFiles(String),
    /// A bad glob pattern.
    #[error("file source: bad pattern `{pattern}`: {message}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Explanation.
        message: String,
    },
    /// Reading failed.
    #[error("file source: cannot read `{path}`: {source}")]
    Io {
        /// The file.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
}

/// A source of records. `next` is called from one task until it returns
/// `Ok(None)` (a bounded source is drained).
#[async_trait::async_trait]
pub trait Source: Send {
    /// The next item, or `None` when the source is drained.
    async fn next(&mut self) -> Result<Option<SourceItem>, SourceError>;

    /// Makes the handled prefix of every partition durable upstream (a Kafka
    /// offset commit). Called only after every record up to that point is in
    /// a sink or in the dead-letter queue. Sources without upstream state do
    /// nothing.
    async fn commit(&mut self, _ledger: &Ledger) -> Result<(), SourceError> {
        Ok(())
    }

    /// A short description for logs and the summary.
    fn describe(&self) -> String;
}

/// Builds the source a config describes; relative paths resolve against `base`.
pub fn build(config: &SourceConfig, base: &Path) -> Result<Box<dyn Source>, SourceError> {
    match config {
        SourceConfig::File(c) => Ok(Box::new(FileSource::open(&c.path, base, c.format)?)),
    }
}
