//! Committing the source's position: only handled offsets, never one
//! lower than committed before.

use super::*;

/// What is committed, and when the next commit is due.
pub(super) struct Commits {
    /// Whether the coordinator commits the source's position
    /// (at-least-once) or the guarantee does (a Kafka transaction).
    pub(super) enabled: bool,
    pub(super) committed: HashMap<Partition, i64>,
    /// The highest offset committed per partition in this session, kept
    /// across a revocation and a new assignment: nothing lower is ever
    /// committed (a partition read again from an older position after a
    /// rebalance must not move the group's offset back).
    pub(super) high: HashMap<Partition, i64>,
    pub(super) interval: Duration,
    /// When handled offsets not yet committed must be (at-least-once).
    pub(super) due: Option<Instant>,
}

impl Commits {
    pub(super) fn new(enabled: bool, interval: Duration) -> Self {
        Commits {
            enabled,
            committed: HashMap::new(),
            high: HashMap::new(),
            interval,
            due: None,
        }
    }
}

impl Coordinator<'_> {
    /// Commits the handled offsets that moved since the last commit.
    pub(super) async fn commit(&mut self) -> Result<(), PipelineError> {
        self.commits.due = None;
        let changes = self.committable_changes();
        if !changes.is_empty() {
            let committed = self.control.commit(&changes).await;
            self.metrics.count(|m| &m.commits, &[], 1);
            if committed.is_err() {
                self.metrics.count(|m| &m.commit_failures, &[], 1);
            }
            committed?;
            for (p, o) in changes {
                self.note_committed(&p, o);
                self.commits.committed.insert(p, o);
            }
        }
        Ok(())
    }

    /// Committable offsets that moved since the last commit, never below
    /// one committed before for the partition.
    pub(super) fn committable_changes(&self) -> Vec<(Partition, i64)> {
        self.ledger
            .partitions()
            .filter(|p| !self.revocations.held_lost.contains(*p))
            .filter_map(|p| {
                let o = self.ledger.committable(p)?;
                (self.commits.committed.get(p) != Some(&o) && self.not_backwards(p, o))
                    .then(|| (p.clone(), o))
            })
            .collect()
    }

    /// Whether committing `o` for `p` keeps the committed offset from going
    /// back.
    pub(super) fn not_backwards(&self, p: &Partition, o: i64) -> bool {
        match self.commits.high.get(p) {
            Some(&high) if o < high => {
                tracing::debug!(pipeline = %self.pipeline, partition = %p, offset = o, committed = high,
                    "not committing an offset below one committed before (the partition is read again from an older position)");
                false
            }
            _ => true,
        }
    }

    pub(super) fn note_committed(&mut self, p: &Partition, o: i64) {
        let high = self.commits.high.entry(p.clone()).or_insert(o);
        *high = (*high).max(o);
    }
}
