//! Read side: the host's columnar batch seen as records.

use crate::__bindings::sluice::transform::types::{Batch as WireBatch, Source};
use crate::Error;

/// Span length meaning "absent" (see the WIT contract).
pub(crate) const ABSENT: u32 = u32::MAX;
/// Timestamp meaning "unknown" (see the WIT contract).
pub(crate) const NO_TIMESTAMP: i64 = i64::MIN;

/// Reads the `(start, len)` pair at `pair` (0 for key, 1 for value) of entry
/// `index` of a four-per-entry span list. Malformed spans read as absent.
pub(crate) fn span<'a>(
    arena: &'a [u8],
    spans: &[u32],
    index: usize,
    pair: usize,
) -> Option<&'a [u8]> {
    let at = index.checked_mul(4)?.checked_add(pair * 2)?;
    let start = *spans.get(at)? as usize;
    let len = *spans.get(at + 1)?;
    if len == ABSENT {
        return None;
    }
    arena.get(start..start.checked_add(len as usize)?)
}

/// One micro-batch of input records.
#[derive(Clone, Copy)]
pub struct Batch<'a> {
    wire: &'a WireBatch,
}

impl<'a> Batch<'a> {
    pub(crate) fn new(wire: &'a WireBatch) -> Self {
        Batch { wire }
    }

    /// Number of records in the batch.
    pub fn len(&self) -> usize {
        self.wire.timestamps.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Record `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<Record<'a>> {
        (index < self.len()).then_some(Record {
            wire: self.wire,
            index,
        })
    }

    /// The records, in order.
    pub fn records(&self) -> impl Iterator<Item = Record<'a>> + 'a {
        let wire = self.wire;
        (0..self.len()).map(move |index| Record { wire, index })
    }
}

/// One input record: key, value, headers, event time and source position.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    wire: &'a WireBatch,
    index: usize,
}

/// One record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Header name (UTF-8).
    pub name: &'a str,
    /// Header value bytes.
    pub value: &'a [u8],
}

impl<'a> Record<'a> {
    /// Position of this record in its batch (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The key, if the record has one.
    pub fn key(&self) -> Option<&'a [u8]> {
        span(&self.wire.arena, &self.wire.spans, self.index, 0)
    }

    /// The value, if the record has one.
    pub fn value(&self) -> Option<&'a [u8]> {
        span(&self.wire.arena, &self.wire.spans, self.index, 1)
    }

    /// The value as UTF-8 text; fails with `invalid-input` otherwise.
    pub fn value_str(&self) -> Result<&'a str, Error> {
        let value = self
            .value()
            .ok_or_else(|| Error::invalid_input("record has no value"))?;
        std::str::from_utf8(value)
            .map_err(|e| Error::invalid_input(format!("record value is not UTF-8: {e}")))
    }

    /// The value parsed as JSON into any deserializable type; fails with
    /// `invalid-input` and serde's message (line, column) otherwise.
    pub fn json<T: serde::de::Deserialize<'a>>(&self) -> Result<T, Error> {
        let value = self
            .value()
            .ok_or_else(|| Error::invalid_input("record has no value"))?;
        serde_json::from_slice(value)
            .map_err(|e| Error::invalid_input(format!("record value is not valid JSON: {e}")))
    }

    /// The headers, in order.
    pub fn headers(&self) -> impl Iterator<Item = Header<'a>> + 'a {
        let wire = self.wire;
        let end = wire.header_ends.get(self.index).copied().unwrap_or(0) as usize;
        let start = match self.index {
            0 => 0,
            i => wire.header_ends.get(i - 1).copied().unwrap_or(0) as usize,
        };
        (start..end.max(start)).filter_map(move |h| {
            let name = span(&wire.arena, &wire.header_spans, h, 0)?;
            let value = span(&wire.arena, &wire.header_spans, h, 1).unwrap_or_default();
            Some(Header {
                name: std::str::from_utf8(name).ok()?,
                value,
            })
        })
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers().find(|h| h.name == name).map(|h| h.value)
    }

    /// Event time in milliseconds since the Unix epoch, if known.
    pub fn timestamp(&self) -> Option<i64> {
        self.wire
            .timestamps
            .get(self.index)
            .copied()
            .filter(|&t| t != NO_TIMESTAMP)
    }

    fn source(&self) -> Option<&'a Source> {
        let at = *self.wire.source_index.get(self.index)? as usize;
        self.wire.sources.get(at)
    }

    /// The stream (topic, file) this record was read from, if known.
    pub fn stream(&self) -> Option<&'a str> {
        self.source().map(|s| s.stream.as_str())
    }

    /// The partition of the stream, if known.
    pub fn partition(&self) -> Option<i32> {
        self.source().map(|s| s.partition)
    }

    /// The position of the record in its source (offset, line number), if known.
    pub fn offset(&self) -> Option<i64> {
        self.wire
            .offsets
            .get(self.index)
            .copied()
            .filter(|&o| o >= 0)
    }
}

impl std::fmt::Debug for Record<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("index", &self.index)
            .field("key", &self.key().map(String::from_utf8_lossy))
            .field("value", &self.value().map(String::from_utf8_lossy))
            .field("timestamp", &self.timestamp())
            .finish()
    }
}
