//! Restores each partition's batch order between the workers and delivery.
//!
//! When batches of one partition may run on several workers at once
//! (`delivery.pin_partitions = false`, the default), a later batch can
//! finish before an earlier one. The coordinator numbers each partition's
//! batches as it cuts them (0, 1, 2, ...); this window hands them to
//! delivery in that order, per partition, so sinks see a partition's records
//! in source order and offsets are committed as before. A batch that will
//! never come (the worker gave it back: a probation rollback, a breaker that
//! opened) is *skipped* so that the ones after it are not held forever.
//! Partitions never wait on each other.

use crate::record::Partition;
use std::collections::{BTreeMap, HashMap};

/// Batches that finished out of order, per partition.
#[derive(Debug)]
pub(crate) struct Reorder<T> {
    partitions: HashMap<Partition, Window<T>>,
}

#[derive(Debug)]
struct Window<T> {
    /// The number of the next batch to hand on.
    next: u64,
    /// Finished (`Some`) or skipped (`None`) batches after `next`.
    waiting: BTreeMap<u64, Option<T>>,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Reorder {
            partitions: HashMap::new(),
        }
    }
}

impl<T> Reorder<T> {
    /// Batch `seq` of `p` is finished (`Some`) or will never come (`None`):
    /// appends to `out` every batch of `p` that is now next in order.
    pub fn push(&mut self, p: &Partition, seq: u64, item: Option<T>, out: &mut Vec<T>) {
        let w = match self.partitions.get_mut(p) {
            Some(w) => w,
            None => self.partitions.entry(p.clone()).or_insert(Window {
                next: 0,
                waiting: BTreeMap::new(),
            }),
        };
        if seq < w.next {
            // Already handed on or skipped: a duplicate cannot be ordered.
            out.extend(item);
            return;
        }
        if seq > w.next {
            w.waiting.insert(seq, item);
            return;
        }
        out.extend(item);
        w.next += 1;
        while let Some(entry) = w.waiting.first_entry() {
            if *entry.key() != w.next {
                break;
            }
            out.extend(entry.remove());
            w.next += 1;
        }
    }

    /// Batches held back, waiting for an earlier one.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.partitions.values().map(|w| w.waiting.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn p(n: i32) -> Partition {
        Partition {
            stream: Arc::from("s"),
            partition: n,
        }
    }

    #[test]
    fn in_order_batches_pass_straight_through() {
        let mut r = Reorder::default();
        let mut out = Vec::new();
        for seq in 0..5 {
            r.push(&p(0), seq, Some(seq), &mut out);
            assert_eq!(out.last(), Some(&seq));
        }
        assert_eq!(r.waiting(), 0);
    }

    #[test]
    fn a_late_batch_holds_only_its_own_partition() {
        let mut r = Reorder::default();
        let mut out = Vec::new();
        r.push(&p(0), 1, Some("p0/1"), &mut out);
        r.push(&p(1), 0, Some("p1/0"), &mut out);
        assert_eq!(
            out,
            vec!["p1/0"],
            "partition 1 does not wait on partition 0"
        );
        assert_eq!(r.waiting(), 1);
        r.push(&p(0), 0, Some("p0/0"), &mut out);
        assert_eq!(out, vec!["p1/0", "p0/0", "p0/1"]);
        assert_eq!(r.waiting(), 0);
    }

    #[test]
    fn a_skipped_batch_releases_the_ones_after_it() {
        let mut r = Reorder::default();
        let mut out = Vec::new();
        r.push(&p(0), 1, Some(1), &mut out);
        r.push(&p(0), 2, Some(2), &mut out);
        assert!(out.is_empty());
        r.push(&p(0), 0, None, &mut out);
        assert_eq!(out, vec![1, 2]);
    }

    proptest! {
        /// Whatever order batches finish in (some skipped), each partition's
        /// batches come out exactly once, in their numbers' order, and
        /// nothing is held at the end.
        #[test]
        fn any_arrival_order_comes_out_in_order(
            counts in proptest::collection::vec(0u64..20, 1..4),
            skips in proptest::collection::vec(any::<bool>(), 80),
            seed in any::<u64>(),
        ) {
            let mut arrivals: Vec<(i32, u64)> = counts
                .iter()
                .enumerate()
                .flat_map(|(i, &n)| (0..n).map(move |s| (i as i32, s)))
                .collect();
            // A deterministic shuffle from the seed.
            let mut x = seed | 1;
            for i in (1..arrivals.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                arrivals.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut r = Reorder::default();
            let mut out = Vec::new();
            for (k, &(part, seq)) in arrivals.iter().enumerate() {
                let skipped = skips[k % skips.len()];
                r.push(&p(part), seq, (!skipped).then_some((part, seq)), &mut out);
            }
            prop_assert_eq!(r.waiting(), 0);
            for (i, &n) in counts.iter().enumerate() {
                let got: Vec<u64> = out.iter().filter(|(q, _)| *q == i as i32).map(|(_, s)| *s).collect();
                let mut sorted = got.clone();
                sorted.sort_unstable();
                prop_assert_eq!(&got, &sorted, "partition {} out of order", i);
                let expected: Vec<u64> = (0..n)
                    .filter(|s| {
                        let k = arrivals.iter().position(|a| *a == (i as i32, *s)).unwrap_or(0);
                        !skips[k % skips.len()]
                    })
                    .collect();
                prop_assert_eq!(got, expected);
            }
        }
    }
}
