//! Turns: batches finish in the order they were submitted, so a retried
//! batch holds back the ones after it (records keep their order per sink).

/// The order in which batches' writes may be tried again. Batches are
/// submitted in order but awaited together; when an outage fails several of
/// them, each would retry on its own backoff, and a later batch's records
/// could reach a sink (a Kafka partition) before an earlier one's — a later
/// record of a key before an earlier one. So a batch tries again only once
/// every batch submitted before it is finished (written, or failed for
/// good): retries go out in batch order.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    inner: std::sync::Mutex<TurnsInner>,
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
pub(super) struct TurnsInner {
    /// The next turn to hand out.
    next: u64,
    /// Every turn below this is finished.
    low: u64,
    /// Finished turns at or above `low`.
    finished: std::collections::BTreeSet<u64>,
    /// Turns whose writes are being tried again.
    retrying: std::collections::BTreeSet<u64>,
}

impl Turns {
    pub(super) fn inner(&self) -> std::sync::MutexGuard<'_, TurnsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next turn, in submission order.
    pub(super) fn take(&self) -> u64 {
        let mut i = self.inner();
        let t = i.next;
        i.next += 1;
        t
    }

    /// Whether some batch's writes are being tried again: no new batch is
    /// submitted then, so that none overtakes it (the committer waits).
    pub(crate) fn troubled(&self) -> bool {
        !self.inner().retrying.is_empty()
    }

    pub(super) fn retrying(&self, t: u64) {
        self.inner().retrying.insert(t);
    }

    /// Turn `t` is finished.
    pub(super) fn finish(&self, t: u64) {
        {
            let mut i = self.inner();
            i.retrying.remove(&t);
            i.finished.insert(t);
            loop {
                let low = i.low;
                if !i.finished.remove(&low) {
                    break;
                }
                i.low += 1;
            }
        }
        self.changed.notify_waiters();
    }

    /// Waits until every turn before `t` is finished.
    pub(super) async fn wait_for(&self, t: u64) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner().low >= t {
                return;
            }
            notified.await;
        }
    }
}
