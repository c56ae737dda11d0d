//! Back-pressure: the in-flight budget of a pipeline.
//!
//! A record takes a share of the budget when the source reads it and gives it
//! back once it is handled (in a sink or in the dead-letter queue). When the
//! budget is spent the source stops reading: the file source waits, the Kafka
//! source pauses its partitions. Whatever is slow downstream (a transform, a
//! sink), memory stays bounded by the budget plus the client's own buffers.
//!
//! Fairness: a source reading many partitions at once (Kafka) asks the budget
//! to count in-flight records per partition too ([`Budget::track_partitions`]);
//! a partition holding its fair share ([`Budget::over_share`]: the budget
//! split among the partitions the source is reading) is paused so that one
//! partition's backlog cannot take the whole budget and make the others wait
//! behind it.

use crate::record::Partition;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    records: usize,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Used {
    total: InFlight,
    /// Per partition, when tracked (entries at zero are removed).
    by_partition: HashMap<Partition, InFlight>,
}

/// Records and bytes read but not yet handled, with their limits.
#[derive(Debug)]
pub struct Budget {
    max_records: usize,
    max_bytes: usize,
    used: Mutex<Used>,
    /// Whether in-flight use is counted per partition too.
    per_partition: AtomicBool,
    released: Notify,
}

impl Budget {
    /// A budget of `max_records` records and `max_bytes` bytes.
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        Budget {
            max_records: max_records.max(1),
            max_bytes: max_bytes.max(1),
            used: Mutex::new(Used::default()),
            per_partition: AtomicBool::new(false),
            released: Notify::new(),
        }
    }

    fn used(&self) -> std::sync::MutexGuard<'_, Used> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts in-flight use per partition from now on (a source that can
    /// pause partitions one by one asks for it before reading anything).
    pub fn track_partitions(&self) {
        self.per_partition.store(true, Ordering::SeqCst);
    }

    /// Takes one record of `bytes` if the budget allows it. A record larger
    /// than the whole byte budget is let through when nothing else is in
    /// flight, so that it cannot stall the pipeline forever.
    pub fn try_acquire(&self, bytes: usize) -> bool {
        let mut used = self.used();
        let fits = self.fits(&used.total, bytes);
        if fits {
            used.total.records += 1;
            used.total.bytes = used.total.bytes.saturating_add(bytes);
        }
        fits
    }

    fn fits(&self, used: &InFlight, bytes: usize) -> bool {
        used.records < self.max_records
            && (used.bytes.saturating_add(bytes) <= self.max_bytes || used.records == 0)
    }

    /// [`Budget::try_acquire`] for a record of partition `p`, counted against
    /// `p`'s share when partitions are tracked.
    pub fn try_acquire_in(&self, p: &Partition, bytes: usize) -> bool {
        let mut used = self.used();
        let fits = self.fits(&used.total, bytes);
        if fits {
            used.total.records += 1;
            used.total.bytes = used.total.bytes.saturating_add(bytes);
            if self.per_partition.load(Ordering::Relaxed) {
                // Per Kafka record: clone the partition only for a new entry.
                let mine = match used.by_partition.get_mut(p) {
                    Some(mine) => mine,
                    None => used.by_partition.entry(p.clone()).or_default(),
                };
                mine.records += 1;
                mine.bytes = mine.bytes.saturating_add(bytes);
            }
        }
        fits
    }

    /// Takes one record of `bytes`, waiting until the budget allows it.
    pub async fn acquire(&self, bytes: usize) {
        if self.try_acquire(bytes) {
            return;
        }
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.try_acquire(bytes) {
                return;
            }
            released.await;
        }
    }

    /// Gives back `records` records of `bytes` bytes in total, all of
    /// partition `p`.
    pub fn release(&self, p: &Partition, records: usize, bytes: usize) {
        {
            let mut used = self.used();
            used.total.records = used.total.records.saturating_sub(records);
            used.total.bytes = used.total.bytes.saturating_sub(bytes);
            if let Some(mine) = used.by_partition.get_mut(p) {
                mine.records = mine.records.saturating_sub(records);
                mine.bytes = mine.bytes.saturating_sub(bytes);
                if mine.records == 0 {
                    used.by_partition.remove(p);
                }
            }
        }
        self.released.notify_waiters();
    }

    /// Whether no further record fits (the source should stop reading).
    pub fn is_spent(&self) -> bool {
        let used = self.used();
        used.total.records >= self.max_records || used.total.bytes >= self.max_bytes
    }

    /// Whether use has fallen under three quarters of both limits (a paused
    /// source may resume without flapping).
    pub fn has_room(&self) -> bool {
        let used = self.used();
        used.total.records <= self.max_records / 4 * 3 && used.total.bytes <= self.max_bytes / 4 * 3
    }

    /// Whether partition `p` holds at least `quarters`/4 of its fair share
    /// of either limit, the budget split evenly among `sharing` partitions
    /// (4 quarters: the share where a partition pauses; 3: where it may
    /// resume).
    pub fn over_share(&self, p: &Partition, sharing: usize, quarters: usize) -> bool {
        let sharing = sharing.max(1);
        let share = |max: usize| (max / sharing).max(1).saturating_mul(quarters) / 4;
        self.used().by_partition.get(p).is_some_and(|mine| {
            mine.records >= share(self.max_records) || mine.bytes >= share(self.max_bytes)
        })
    }

    /// Records and bytes in flight now.
    pub fn in_flight(&self) -> (usize, usize) {
        let used = self.used();
        (used.total.records, used.total.bytes)
    }

    /// Records in flight of partition `p` (0 unless partitions are tracked).
    pub fn in_flight_of(&self, p: &Partition) -> usize {
        self.used()
            .by_partition
            .get(p)
            .map_or(0, |mine| mine.records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn part(n: i32) -> Partition {
        Partition {
            stream: Arc::from("t"),
            partition: n,
        }
    }

    #[test]
    fn limits_records_and_bytes_and_lets_one_huge_record_through() {
        let p = part(0);
        let b = Budget::new(3, 100);
        assert!(b.try_acquire(40));
        assert!(b.try_acquire(40));
        assert!(!b.try_acquire(40), "bytes spent");
        assert!(b.try_acquire(20));
        assert!(b.is_spent());
        assert!(!b.try_acquire(0), "records spent");
        b.release(&p, 3, 100);
        assert_eq!(b.in_flight(), (0, 0));
        assert!(b.try_acquire(1000), "alone, an oversized record passes");
        assert!(!b.try_acquire(1), "but nothing after it");
        b.release(&p, 1, 1000);
        assert!(b.has_room());
    }

    #[test]
    fn counts_partitions_only_when_asked_and_knows_their_shares() {
        let (a, b) = (part(0), part(1));
        let budget = Budget::new(8, 1_000);
        assert!(budget.try_acquire_in(&a, 1));
        assert_eq!(budget.in_flight_of(&a), 0, "not tracked yet");
        budget.release(&a, 1, 1);
        budget.track_partitions();
        for _ in 0..4 {
            assert!(budget.try_acquire_in(&a, 10));
        }
        assert!(
            budget.over_share(&a, 2, 4),
            "4 of 8 records: a's whole share of two"
        );
        assert!(
            !budget.over_share(&a, 1, 4),
            "alone, the whole budget is a's share"
        );
        assert!(!budget.over_share(&b, 2, 4), "b has nothing in flight");
        assert!(budget.try_acquire_in(&b, 10));
        assert_eq!((budget.in_flight_of(&a), budget.in_flight_of(&b)), (4, 1));
        budget.release(&a, 1, 10);
        assert!(
            budget.over_share(&a, 2, 3),
            "3 is still three quarters of a's share"
        );
        budget.release(&a, 1, 10);
        assert!(!budget.over_share(&a, 2, 3));
        budget.release(&a, 2, 20);
        budget.release(&b, 1, 10);
        assert_eq!(budget.in_flight(), (0, 0));
        assert_eq!(budget.in_flight_of(&a), 0);
        // Bytes count as well as records.
        assert!(budget.try_acquire_in(&a, 600));
        assert!(
            budget.over_share(&a, 2, 4),
            "600 of 1,000 bytes is over half"
        );
    }

    #[tokio::test]
    async fn acquire_waits_for_a_release() {
        let b = Arc::new(Budget::new(1, 10));
        b.acquire(5).await;
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire(5).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "must wait while the budget is spent");
        b.release(&part(0), 1, 5);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the release")
            .expect("task");
        assert_eq!(b.in_flight(), (1, 5));
    }
}
