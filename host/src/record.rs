//! Records as the host sees them, from source to sink.

use bytes::Bytes;
use std::sync::Arc;

/// One record header. `name` is valid UTF-8 (checked where the record enters
/// the host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name (UTF-8).
    pub name: Bytes,
    /// Header value.
    pub value: Bytes,
}

impl Header {
    /// A header from a text name and any value.
    pub fn new(name: &str, value: impl Into<Bytes>) -> Self {
        Header {
            name: Bytes::copy_from_slice(name.as_bytes()),
            value: value.into(),
        }
    }

    /// The name as text (lossy only if a caller broke the UTF-8 invariant).
    pub fn name_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.name)
    }
}

/// A record: optional key and value bytes, headers and event time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Key bytes, if any.
    pub key: Option<Bytes>,
    /// Value bytes, if any.
    pub value: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<Header>,
    /// Event time, ms since the Unix epoch, if known.
    pub timestamp: Option<i64>,
}

impl Record {
    /// A record with only a value.
    pub fn from_value(value: impl Into<Bytes>) -> Self {
        Record {
            value: Some(value.into()),
            ..Default::default()
        }
    }

    /// Bytes this record occupies (keys, values, headers), for batch sizing.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|h| h.name.len() + h.value.len())
                .sum::<usize>()
    }
}

/// Identity of a source partition: a Kafka topic-partition, a file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    /// Stream name: topic, file path, ...
    pub stream: Arc<str>,
    /// Partition number (0 for unpartitioned sources).
    pub partition: i32,
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.stream, self.partition)
    }
}

/// Where a record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The partition it was read from.
    pub partition: Partition,
    /// Offset in the partition (Kafka offset, 0-based line number).
    pub offset: i64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.partition, self.offset)
    }
}

/// A record read from a source, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    /// The record.
    pub record: Record,
    /// Where it came from.
    pub position: Position,
}
