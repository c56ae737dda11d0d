//! Back-pressure: the in-flight budget of a pipeline.
//!
//! A record takes a share of the budget when the source reads it and gives it
//! back once it is handled (in a sink or in the dead-letter queue). When the
//! budget is spent the source stops reading: the file source waits, the Kafka
//! source pauses its partitions. Whatever is slow downstream (a transform, a
//! sink), memory stays bounded by the budget plus the client's own buffers.

use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    records: usize,
    bytes: usize,
}

/// Records and bytes read but not yet handled, with their limits.
#[derive(Debug)]
pub struct Budget {
    max_records: usize,
    max_bytes: usize,
    used: Mutex<InFlight>,
    released: Notify,
}

impl Budget {
    /// A budget of `max_records` records and `max_bytes` bytes.
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        Budget {
            max_records: max_records.max(1),
            max_bytes: max_bytes.max(1),
            used: Mutex::new(InFlight::default()),
            released: Notify::new(),
        }
    }

    fn used(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one record of `bytes` if the budget allows it. A record larger
    /// than the whole byte budget is let through when nothing else is in
    /// flight, so that it cannot stall the pipeline forever.
    pub fn try_acquire(&self, bytes: usize) -> bool {
        let mut used = self.used();
        let fits = used.records < self.max_records
            && (used.bytes.saturating_add(bytes) <= self.max_bytes || used.records == 0);
        if fits {
            used.records += 1;
            used.bytes = used.bytes.saturating_add(bytes);
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

    /// Gives back `records` records of `bytes` bytes in total.
    pub fn release(&self, records: usize, bytes: usize) {
        {
            let mut used = self.used();
            used.records = used.records.saturating_sub(records);
            used.bytes = used.bytes.saturating_sub(bytes);
        }
        self.released.notify_waiters();
    }

    /// Whether no further record fits (the source should stop reading).
    pub fn is_spent(&self) -> bool {
        let used = self.used();
        used.records >= self.max_records || used.bytes >= self.max_bytes
    }

    /// Whether use has fallen under three quarters of both limits (a paused
    /// source may resume without flapping).
    pub fn has_room(&self) -> bool {
        let used = self.used();
        used.records <= self.max_records / 4 * 3 && used.bytes <= self.max_bytes / 4 * 3
    }

    /// Records and bytes in flight now.
    pub fn in_flight(&self) -> (usize, usize) {
        let used = self.used();
        (used.records, used.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn limits_records_and_bytes_and_lets_one_huge_record_through() {
        let b = Budget::new(3, 100);
        assert!(b.try_acquire(40));
        assert!(b.try_acquire(40));
        assert!(!b.try_acquire(40), "bytes spent");
        assert!(b.try_acquire(20));
        assert!(b.is_spent());
        assert!(!b.try_acquire(0), "records spent");
        b.release(3, 100);
        assert_eq!(b.in_flight(), (0, 0));
        assert!(b.try_acquire(1000), "alone, an oversized record passes");
        assert!(!b.try_acquire(1), "but nothing after it");
        b.release(1, 1000);
        assert!(b.has_room());
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
        b.release(1, 5);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the release")
            .expect("task");
        assert_eq!(b.in_flight(), (1, 5));
    }
}
