//! Micro-batching: records are grouped until the batch holds `max_records`
//! records or `max_bytes` bytes, or its first record has waited
//! `max_wait_ms` — whichever comes first (like Firehose buffering hints).

use serde::Deserialize;
use std::time::{Duration, Instant};

/// Something that can be batched and knows its size in bytes.
pub trait ByteSize {
    /// Bytes this item counts for.
    fn byte_size(&self) -> usize;
}

/// Groups items into micro-batches according to a [`BatchPolicy`].
#[derive(Debug)]
pub struct Batcher<T> {
    policy: BatchPolicy,
    items: Vec<T>,
    bytes: usize,
    opened: Option<Instant>,
}

impl<T: ByteSize> Batcher<T> {
    /// An empty batcher.
    pub fn new(policy: BatchPolicy) -> Self {
        Batcher {
            policy,
            items: Vec::new(),
            bytes: 0,
            opened: None,
        }
    }

    /// Adds an item; appends to `ready` every batch this closes (at most two:
    /// the batch the item did not fit into, and a batch the item filled).
    /// A single item larger than `max_bytes` forms a batch of its own.
    pub fn push(&mut self, item: T, now: Instant, ready: &mut Vec<Vec<T>>) {
        let size = item.byte_size();
        if !self.items.is_empty() && self.bytes.saturating_add(size) > self.policy.max_bytes {
            ready.extend(self.take());
        }
        if self.items.is_empty() {
            self.opened = Some(now);
        }
        self.bytes = self.bytes.saturating_add(size);
        self.items.push(item);
        if self.items.len() >= self.policy.max_records || self.bytes >= self.policy.max_bytes {
            ready.extend(self.take());
        }
    }

    /// When the open batch must be flushed, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened
            .map(|t| t + Duration::from_millis(self.policy.max_wait_ms))
    }

    /// Closes the open batch, if any.
    pub fn take(&mut self) -> Option<Vec<T>> {
        self.opened = None;
        self.bytes = 0;
        if self.items.is_empty() {
            None
        } else {
            // The next batch is likely as long: room for it at once, not by
            // doubling (a bounded amount, held while the partition is idle).
            let room = self.items.len().min(1024);
            Some(std::mem::replace(&mut self.items, Vec::with_capacity(room)))
        }
    }

    /// Number of items in the open batch.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no batch is open.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    impl ByteSize for usize {
        fn byte_size(&self) -> usize {
            *self
        }
    }

    proptest! {
        /// Model: batches, concatenated, are the input in order; no batch is
        /// empty or over `max_records`; a batch is over `max_bytes` only when
        /// it holds one item; every batch but the last was closed for a reason
        /// (full by count, full by bytes, or the next item did not fit).
        #[test]
        fn batches_respect_the_policy(
            sizes in proptest::collection::vec(0usize..300, 0..400),
            max_records in 1usize..50,
            max_bytes in 1usize..1000,
        ) {
            let policy = BatchPolicy { max_records, max_bytes, max_wait_ms: 1000 };
            let mut b = Batcher::new(policy);
            let now = Instant::now();
            let mut out = Vec::new();
            for &s in &sizes {
                b.push(s, now, &mut out);
            }
            let closed = out.len();
            out.extend(b.take());
            let flat: Vec<usize> = out.iter().flatten().copied().collect();
            prop_assert_eq!(&flat, &sizes);
            let mut next_index = 0;
            for (i, batch) in out.iter().enumerate() {
                prop_assert!(!batch.is_empty());
                prop_assert!(batch.len() <= max_records);
                let bytes: usize = batch.iter().sum();
                prop_assert!(bytes <= max_bytes || batch.len() == 1);
                next_index += batch.len();
                if i < closed {
                    let full = batch.len() == max_records || bytes >= max_bytes;
                    let next_did_not_fit = sizes.get(next_index).is_some_and(|n| bytes + n > max_bytes);
                    prop_assert!(full || next_did_not_fit, "batch {} closed early", i);
                }
            }
        }
    }

    #[test]
    fn deadline_runs_from_the_first_item() {
        let mut b = Batcher::new(BatchPolicy {
            max_records: 10,
            max_bytes: 100,
            max_wait_ms: 50,
        });
        assert_eq!(b.deadline(), None);
        let t0 = Instant::now();
        let mut out = Vec::new();
        b.push(1usize, t0, &mut out);
        b.push(1usize, t0 + Duration::from_millis(30), &mut out);
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(50)));
        assert_eq!(b.take(), Some(vec![1, 1]));
        assert_eq!(b.deadline(), None);
    }
}

/// Micro-batch policy: a batch is cut on whichever limit is reached first.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BatchPolicy {
    /// Most records per batch (default 1000).
    pub max_records: usize,
    /// Most bytes (keys + values + headers) per batch (default 4 MiB).
    pub max_bytes: usize,
    /// Longest time the first record of a batch waits for the batch to fill,
    /// in ms (default 1000).
    pub max_wait_ms: u64,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_records: 1000,
            max_bytes: 4 << 20,
            max_wait_ms: 1000,
        }
    }
}

impl BatchPolicy {
    /// Checks the policy as written in `[batch]`.
    pub fn check(&self) -> Result<(), String> {
        if self.max_records == 0 || self.max_bytes == 0 {
            return Err("`batch.max_records` and `batch.max_bytes` must be at least 1".into());
        }
        Ok(())
    }
}
