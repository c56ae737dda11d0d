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

    /// Per partition with records in flight: how many, and the first and
    /// last of their offsets (for an error that says what was not
    /// delivered).
    pub fn unhandled(&self) -> Vec<(Partition, usize, i64, i64)> {
        self.partitions
            .iter()
            .filter_map(|(p, l)| {
                let first = *l.in_flight.first()?;
                let last = *l.in_flight.last()?;
                Some((p.clone(), l.in_flight.len(), first, last))
            })
            .collect()
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

    #[derive(Debug, Clone)]
    enum Op {
        /// Read the next offset of partition `p`, `gap` offsets after the
        /// previous one (compaction, transaction markers).
        Read { p: usize, gap: i64 },
        /// Acknowledge one in-flight offset of `p`, chosen by `pick`.
        Handle { p: usize, pick: usize },
        /// The partition is revoked: forgotten.
        Forget { p: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize, 1..4i64).prop_map(|(p, gap)| Op::Read { p, gap }),
            4 => (0..3usize, any::<usize>()).prop_map(|(p, pick)| Op::Handle { p, pick }),
            1 => (0..3usize).prop_map(|p| Op::Forget { p }),
        ]
    }

    proptest! {
        /// Model: per partition, a set of in-flight offsets and the highest
        /// read. Offsets arrive with gaps, are acknowledged in any order,
        /// and partitions are revoked and read again: the committable offset
        /// is always the smallest in-flight offset, else one past the
        /// highest read, and nothing for a partition not read since it was
        /// forgotten.
        #[test]
        fn commits_follow_the_model_with_gaps_reordering_and_revocations(ops in proptest::collection::vec(op(), 1..300)) {
            let parts: Vec<Partition> = (0..3)
                .map(|n| Partition { stream: Arc::from("t"), partition: n })
                .collect();
            let mut ledger = Ledger::new();
            let mut next = [0i64; 3];
            let mut model: Vec<Option<(BTreeSet<i64>, i64)>> = vec![None, None, None];
            for op in ops {
                match op {
                    Op::Read { p, gap } => {
                        let o = next[p] + gap - 1;
                        next[p] = o + 1;
                        ledger.read(&parts[p], o);
                        let m = model[p].get_or_insert_with(|| (BTreeSet::new(), o));
                        m.0.insert(o);
                        m.1 = m.1.max(o);
                    }
                    Op::Handle { p, pick } => {
                        if let Some((set, _)) = model[p].as_mut()
                            && !set.is_empty()
                        {
                            let o = *set.iter().nth(pick % set.len()).expect("in range");
                            set.remove(&o);
                            ledger.handled(&parts[p], o);
                        }
                    }
                    Op::Forget { p } => {
                        ledger.forget(&parts[p]);
                        model[p] = None;
                    }
                }
                for p in 0..3 {
                    let want = model[p]
                        .as_ref()
                        .map(|(set, high)| set.first().copied().unwrap_or(high + 1));
                    prop_assert_eq!(ledger.committable(&parts[p]), want, "partition {}", p);
                }
                let in_flight: usize = model.iter().flatten().map(|(s, _)| s.len()).sum();
                prop_assert_eq!(ledger.in_flight(), in_flight);
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
