//! The offset ledger: which source positions are fully handled (in a sink or
//! in the dead-letter queue), and so which offset may be committed per
//! partition. Offsets are committed only up to the first position that is
//! still in flight, never past it.

use crate::record::Partition;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default)]
struct PartitionLedger {
    /// Offsets read but not yet handled.
    in_flight: BTreeSet<i64>,
    /// Highest offset read so far.
    highest: Option<i64>,
}

/// Tracks in-flight positions per partition.
#[derive(Debug, Default)]
pub struct Ledger {
    partitions: BTreeMap<Partition, PartitionLedger>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` of `partition` was read and is now in flight.
    pub fn read(&mut self, partition: &Partition, offset: i64) {
        let p = self.partitions.entry(partition.clone()).or_default();
        p.in_flight.insert(offset);
        p.highest = Some(p.highest.map_or(offset, |h| h.max(offset)));
    }

    /// Records that `offset` of `partition` is handled.
    pub fn handled(&mut self, partition: &Partition, offset: i64) {
        if let Some(p) = self.partitions.get_mut(partition) {
            p.in_flight.remove(&offset);
        }
    }

    /// The offset to commit for `partition` (Kafka convention: the next
    /// offset to read), or `None` if nothing was read.
    pub fn committable(&self, partition: &Partition) -> Option<i64> {
        let p = self.partitions.get(partition)?;
        match p.in_flight.first() {
            Some(&first) => Some(first),
            None => p.highest.map(|h| h + 1),
        }
    }

    /// Forgets a partition (revoked: its in-flight positions will never be
    /// handled here).
    pub fn forget(&mut self, partition: &Partition) {
        self.partitions.remove(partition);
    }

    /// Number of positions in flight across all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }

    /// The partitions the ledger knows.
    pub fn partitions(&self) -> impl Iterator<Item = &Partition> {
        self.partitions.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    proptest! {
        /// Model: with offsets 0..n read in order and handled in any order,
        /// the committable offset is always the smallest unhandled offset
        /// (or n when all are handled) — never past an unhandled record.
        #[test]
        fn never_commits_past_unhandled(order in Just((0..60i64).collect::<Vec<_>>()).prop_shuffle(), read_upto in 0usize..60) {
            let part = Partition { stream: Arc::from("t"), partition: 3 };
            let mut ledger = Ledger::new();
            let n = 60i64;
            for o in 0..n {
                ledger.read(&part, o);
            }
            let mut handled = BTreeSet::new();
            for (step, &o) in order.iter().enumerate() {
                if step == read_upto {
                    prop_assert_eq!(ledger.in_flight(), 60 - step);
                }
                ledger.handled(&part, o);
                handled.insert(o);
                let model = (0..n).find(|x| !handled.contains(x)).unwrap_or(n);
                prop_assert_eq!(ledger.committable(&part), Some(model));
            }
        }
    }

    #[test]
    fn unknown_partition_has_nothing_to_commit() {
        let ledger = Ledger::new();
        assert_eq!(
            ledger.committable(&Partition {
                stream: Arc::from("x"),
                partition: 0
            }),
            None
        );
    }
}
