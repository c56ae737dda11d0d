//! Partitions taken away: a revocation waits (up to the drain timeout) for
//! the partitions' batches in flight and answers with the offsets to
//! commit; a lost partition's work is kept (at-least-once) until the source
//! says whether it is ours again.

use super::*;

pub(super) struct PendingRevoke {
    pub(super) partitions: Vec<Partition>,
    pub(super) done: tokio::sync::oneshot::Sender<Vec<(Partition, i64)>>,
    pub(super) deadline: Instant,
}

/// Revocations waiting for their partitions, and lost partitions whose
/// work is kept.
#[derive(Default)]
pub(super) struct Revocations {
    pub(super) pending: Vec<PendingRevoke>,
    /// Lost partitions whose in-flight work is kept (at-least-once) until
    /// the source says whether they are ours again: not committed meanwhile.
    pub(super) held_lost: std::collections::HashSet<Partition>,
}

impl Coordinator<'_> {
    pub(super) fn on_revoke(&mut self, r: Revocation) {
        if r.lost && self.commits.enabled {
            self.hold_lost(r);
            return;
        }
        for p in &r.partitions {
            if let Some(mut b) = self.intake.batchers.remove(p)
                && let Some(items) = b.take()
            {
                if r.lost {
                    self.budget.release(
                        p,
                        items.len(),
                        items.iter().map(ByteSize::byte_size).sum(),
                    );
                } else {
                    self.dispatch(p, items);
                }
            }
        }
        if r.lost {
            for p in &r.partitions {
                self.forget(p);
            }
            let _ = r.done.send(Vec::new());
            return;
        }
        self.revocations.pending.push(PendingRevoke {
            partitions: r.partitions,
            done: r.done,
            deadline: Instant::now() + self.drain_timeout,
        });
        if self.in_flight.held_jobs > 0 {
            // The partitions' records held by sinks must be durable before
            // their offsets are committed and the partitions let go.
            self.request_flush();
        }
        self.check_revokes();
    }

    /// Lost partitions (at-least-once): their records in flight are still
    /// delivered — the sinks write them whoever owns the partition now —
    /// but not committed until the source says the partitions are ours
    /// again. Answers at once with where to read each on if they are.
    pub(super) fn hold_lost(&mut self, r: Revocation) {
        let mut resume = Vec::new();
        for p in &r.partitions {
            if let Some(mut b) = self.intake.batchers.remove(p)
                && let Some(items) = b.take()
            {
                self.dispatch(p, items);
            }
            match self.ledger.next_to_read(p) {
                Some(next) => {
                    self.revocations.held_lost.insert(p.clone());
                    resume.push((p.clone(), next));
                }
                None => self.forget(p),
            }
        }
        tracing::info!(pipeline = %self.pipeline, partitions = resume.len(),
            "partitions lost: their records in flight are still delivered, committed only if the partitions come back");
        let _ = r.done.send(resume);
    }

    /// Lost partitions assigned to this member again: read on after what is
    /// in flight, and committed again.
    pub(super) fn on_regained(&mut self, partitions: &[Partition]) {
        for p in partitions {
            self.revocations.held_lost.remove(p);
        }
        if self.commits.enabled && self.commits.due.is_none() {
            self.commits.due = Some(Instant::now() + self.commits.interval);
        }
    }

    /// Lost partitions that went to another member: what is in flight is
    /// still written, but no longer this member's to commit.
    pub(super) fn on_released(&mut self, partitions: &[Partition]) {
        for p in partitions {
            if self.revocations.held_lost.remove(p) {
                self.forget(p);
            }
        }
    }

    /// Drops everything known of a partition: later results of its
    /// in-flight jobs are ignored.
    pub(super) fn forget(&mut self, p: &Partition) {
        let budget = self.budget.clone();
        self.swapping.deferred.retain(|(q, items)| {
            if q == p {
                budget.release(p, items.len(), items.iter().map(ByteSize::byte_size).sum());
            }
            q != p
        });
        *self.intake.epochs.entry(p.clone()).or_default() += 1;
        self.ledger.forget(p);
        self.commits.committed.remove(p);
    }

    /// Answers revocations whose partitions have nothing in flight (with the
    /// offsets to commit), and those past their deadline (with none).
    pub(super) fn check_revokes(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.revocations.pending.len() {
            let idle = self.revocations.pending[i]
                .partitions
                .iter()
                .all(|p| !self.in_flight.per_partition.contains_key(p));
            if !idle && self.revocations.pending[i].deadline > now {
                i += 1;
                continue;
            }
            let r = self.revocations.pending.swap_remove(i);
            let offsets: Vec<(Partition, i64)> = if idle && self.commits.enabled {
                r.partitions
                    .iter()
                    .filter_map(|p| Some((p.clone(), self.ledger.committable(p)?)))
                    .filter(|(p, o)| self.not_backwards(p, *o))
                    .collect()
            } else {
                Vec::new()
            };
            for (p, o) in &offsets {
                self.note_committed(p, *o);
            }
            if !idle {
                tracing::warn!(pipeline = %self.pipeline, partitions = r.partitions.len(), "revoked partitions did not drain in time: their uncommitted work is dropped");
            }
            for p in &r.partitions {
                self.forget(p);
            }
            let _ = r.done.send(offsets);
        }
    }

    pub(super) fn answer_all_revokes(&mut self) {
        for r in self.revocations.pending.drain(..) {
            let _ = r.done.send(Vec::new());
        }
    }
}
