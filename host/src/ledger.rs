//! The offset ledger: which source positions are fully handled (in a sink or
//! in the dead-letter queue), and so which offset may be committed per
//! partition. Offsets are committed only up to the first position that is
//! still in flight, never past it.
//!
//! Per partition the ledger keeps the offsets read and not yet committable
//! in one sorted ring (`VecDeque`), each with a handled flag: sources read
//! in increasing order, so a read is a push at the back and a handled batch
//! (usually the oldest) pops from the front. No allocation per record, no
//! tree to rebalance; an out-of-order read (a source that goes back) is
//! inserted in place.

use crate::record::{Partition, Position};
use std::collections::{BTreeMap, VecDeque};

#[derive(Debug, Default)]
struct PartitionLedger {
    /// Offsets read, ascending, from the first one not yet handled; each
    /// with whether it is handled. The front is never a handled one.
    read: VecDeque<(i64, bool)>,
    /// How many of `read` are not handled.
    pending: usize,
    /// Highest offset read so far.
    highest: Option<i64>,
}

impl PartitionLedger {
    fn read(&mut self, offset: i64) {
        self.highest = Some(self.highest.map_or(offset, |h| h.max(offset)));
        match self.read.back() {
            Some(&(last, _)) if last >= offset => {
                match self.read.binary_search_by_key(&offset, |&(o, _)| o) {
                    Ok(i) => {
                        if let Some(entry) = self.read.get_mut(i)
                            && entry.1
                        {
                            entry.1 = false;
                            self.pending += 1;
                        }
                    }
                    Err(i) => {
                        self.read.insert(i, (offset, false));
                        self.pending += 1;
                    }
                }
            }
            _ => {
                self.read.push_back((offset, false));
                self.pending += 1;
            }
        }
    }

    fn handled(&mut self, offset: i64) {
        let at = match self.read.front() {
            Some(&(first, _)) if first == offset => Some(0),
            Some(&(first, _)) if first < offset => {
                self.read.binary_search_by_key(&offset, |&(o, _)| o).ok()
            }
            _ => None,
        };
        let Some(entry) = at.and_then(|i| self.read.get_mut(i)) else {
            return;
        };
        if !entry.1 {
            entry.1 = true;
            self.pending -= 1;
        }
        while self.read.front().is_some_and(|&(_, handled)| handled) {
            self.read.pop_front();
        }
    }

    fn first_pending(&self) -> Option<i64> {
        self.read.front().map(|&(o, _)| o)
    }

    fn last_pending(&self) -> Option<i64> {
        self.read.iter().rev().find(|&&(_, h)| !h).map(|&(o, _)| o)
    }
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
        match self.partitions.get_mut(partition) {
            Some(p) => p.read(offset),
            None => self
                .partitions
                .entry(partition.clone())
                .or_default()
                .read(offset),
        }
    }

    /// Records that `offsets` of `partition` were read, in this order.
    pub fn read_all(&mut self, partition: &Partition, offsets: impl IntoIterator<Item = i64>) {
        let p = match self.partitions.get_mut(partition) {
            Some(p) => p,
            None => self.partitions.entry(partition.clone()).or_default(),
        };
        for o in offsets {
            p.read(o);
        }
    }

    /// Records that `offset` of `partition` is handled.
    pub fn handled(&mut self, partition: &Partition, offset: i64) {
        if let Some(p) = self.partitions.get_mut(partition) {
            p.handled(offset);
        }
    }

    /// Records that `offsets` of `partition` are handled.
    pub fn handled_all(&mut self, partition: &Partition, offsets: impl IntoIterator<Item = i64>) {
        if let Some(p) = self.partitions.get_mut(partition) {
            for o in offsets {
                p.handled(o);
            }
        }
    }

    /// The offset to commit for `partition` (Kafka convention: the next
    /// offset to read), or `None` if nothing was read.
    pub fn committable(&self, partition: &Partition) -> Option<i64> {
        let p = self.partitions.get(partition)?;
        match p.first_pending() {
            Some(first) => Some(first),
            None => p.highest.map(|h| h + 1),
        }
    }

    /// The offset after the highest one read of `partition` (where reading
    /// it again would go on), or `None` if nothing was read.
    pub fn next_to_read(&self, partition: &Partition) -> Option<i64> {
        self.partitions.get(partition)?.highest.map(|h| h + 1)
    }

    /// Forgets a partition (revoked: its in-flight positions will never be
    /// handled here).
    pub fn forget(&mut self, partition: &Partition) {
        self.partitions.remove(partition);
    }

    /// Number of positions in flight across all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.pending).sum()
    }

    /// Per partition with records in flight: how many, and the first and
    /// last of their offsets (for an error that says what was not
    /// delivered).
    pub fn unhandled(&self) -> Vec<(Partition, usize, i64, i64)> {
        self.partitions
            .iter()
            .filter_map(|(p, l)| {
                let first = l.first_pending()?;
                let last = l.last_pending()?;
                Some((p.clone(), l.pending, first, last))
            })
            .collect()
    }

    /// The partitions the ledger knows.
    pub fn partitions(&self) -> impl Iterator<Item = &Partition> {
        self.partitions.keys()
    }
}

/// A batch's source offsets, in runs of one partition (a batch's items are
/// one partition's, so usually one run): what a finished batch hands the
/// ledger, without a [`Position`] — and a reference count on its partition —
/// per record.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Offsets {
    runs: Vec<(Partition, Vec<i64>)>,
}

impl Offsets {
    /// The offsets of `positions`, in their order.
    pub fn of<'a>(positions: impl IntoIterator<Item = &'a Position>) -> Self {
        let mut runs: Vec<(Partition, Vec<i64>)> = Vec::new();
        for p in positions {
            match runs.last_mut() {
                Some((partition, offsets))
                    if (std::sync::Arc::ptr_eq(&partition.stream, &p.partition.stream)
                        && partition.partition == p.partition.partition)
                        || *partition == p.partition =>
                {
                    offsets.push(p.offset)
                }
                _ => runs.push((p.partition.clone(), vec![p.offset])),
            }
        }
        Offsets { runs }
    }

    /// How many offsets.
    pub fn len(&self) -> usize {
        self.runs.iter().map(|(_, o)| o.len()).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.runs.iter().all(|(_, o)| o.is_empty())
    }

    /// The runs: a partition and its offsets.
    pub fn runs(&self) -> impl Iterator<Item = (&Partition, &[i64])> {
        self.runs.iter().map(|(p, o)| (p, o.as_slice()))
    }

    /// The positions again (for sources acknowledged per item).
    pub fn positions(&self) -> Vec<Position> {
        self.runs
            .iter()
            .flat_map(|(p, offsets)| {
                offsets.iter().map(|&offset| Position {
                    partition: p.clone(),
                    offset,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
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
        /// Read an offset `back` before the next one again (a source that
        /// goes back: a seek, a replay).
        Reread { p: usize, back: i64 },
        /// Acknowledge one in-flight offset of `p`, chosen by `pick`.
        Handle { p: usize, pick: usize },
        /// The partition is revoked: forgotten.
        Forget { p: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize, 1..4i64).prop_map(|(p, gap)| Op::Read { p, gap }),
            1 => (0..3usize, 1..8i64).prop_map(|(p, back)| Op::Reread { p, back }),
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
                    Op::Reread { p, back } => {
                        let o = (next[p] - back).max(0);
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
                let unhandled: Vec<(i32, usize, i64, i64)> = ledger
                    .unhandled()
                    .into_iter()
                    .map(|(p, n, first, last)| (p.partition, n, first, last))
                    .collect();
                let want: Vec<(i32, usize, i64, i64)> = model
                    .iter()
                    .enumerate()
                    .filter_map(|(p, m)| {
                        let set = &m.as_ref()?.0;
                        Some((p as i32, set.len(), *set.first()?, *set.last()?))
                    })
                    .collect();
                prop_assert_eq!(unhandled, want);
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

    #[test]
    fn offsets_keep_runs_of_one_partition_in_order() {
        use crate::record::{Partition, Position};
        let a = Partition {
            stream: Arc::from("t"),
            partition: 0,
        };
        // Equal, but another allocation: still one run.
        let a2 = Partition {
            stream: Arc::from("t"),
            partition: 0,
        };
        let b = Partition {
            stream: Arc::from("t"),
            partition: 1,
        };
        let at = |p: &Partition, offset| Position {
            partition: p.clone(),
            offset,
        };
        let positions = vec![at(&a, 5), at(&a2, 6), at(&b, 1), at(&a, 7)];
        let o = super::Offsets::of(&positions);
        let runs: Vec<_> = o.runs().map(|(p, o)| (p.partition, o.to_vec())).collect();
        assert_eq!(runs, vec![(0, vec![5, 6]), (1, vec![1]), (0, vec![7])]);
        assert_eq!(o.len(), 4);
        assert_eq!(o.positions(), positions);
        assert!(super::Offsets::of(&[]).is_empty());
    }
}
