//! Intake: what the source sends becomes batches, per partition, and
//! batches become jobs for the workers.

use super::*;

/// Per partition: the batch being cut, the epoch (bumped when the
/// partition's work is dropped), and the number of the next batch.
pub(super) struct Intake {
    pub(super) policy: BatchPolicy,
    pub(super) batchers: HashMap<Partition, Batcher<SourceItem>>,
    pub(super) epochs: HashMap<Partition, u64>,
    pub(super) next_seq: HashMap<Partition, u64>,
}

impl Intake {
    pub(super) fn new(policy: BatchPolicy) -> Self {
        Intake {
            policy,
            batchers: HashMap::new(),
            epochs: HashMap::new(),
            next_seq: HashMap::new(),
        }
    }
}

impl Coordinator<'_> {
    pub(super) fn epoch(&self, p: &Partition) -> u64 {
        self.intake.epochs.get(p).copied().unwrap_or(0)
    }

    pub(super) fn on_item(&mut self, item: SourceItem, now: Instant) {
        let p = &item.position().partition;
        self.ledger.read(p, item.position().offset);
        let mut ready = Vec::new();
        let batcher = match self.intake.batchers.get_mut(p) {
            Some(b) => b,
            None => self
                .intake
                .batchers
                .entry(p.clone())
                .or_insert_with(|| Batcher::new(self.intake.policy.clone())),
        };
        let p = p.clone();
        batcher.push(item, now, &mut ready);
        for items in ready {
            self.dispatch(&p, items);
        }
    }

    /// Items as a source sends them in a chunk: each run of one partition's
    /// items finds its ledger and batcher once.
    pub(super) fn on_items(&mut self, items: Vec<SourceItem>, now: Instant) {
        let mut items = items.into_iter().peekable();
        let mut ready = Vec::new();
        while let Some(first) = items.next() {
            let p = first.position().partition.clone();
            let batcher = match self.intake.batchers.get_mut(&p) {
                Some(b) => b,
                None => self
                    .intake
                    .batchers
                    .entry(p.clone())
                    .or_insert_with(|| Batcher::new(self.intake.policy.clone())),
            };
            let mut offsets = Vec::new();
            offsets.push(first.position().offset);
            batcher.push(first, now, &mut ready);
            while let Some(item) = items.next_if(|i| i.position().partition == p) {
                offsets.push(item.position().offset);
                batcher.push(item, now, &mut ready);
            }
            self.ledger.read_all(&p, offsets);
            for batch in ready.drain(..) {
                self.dispatch(&p, batch);
            }
        }
    }

    pub(super) fn dispatch(&mut self, p: &Partition, items: Vec<SourceItem>) {
        if items.is_empty() {
            return;
        }
        if self.swapping.request.is_some()
            || (self.swapping.probation.is_some() && self.in_flight.jobs > 0)
        {
            // After the swap (by the new version), or, on probation, once
            // the batch before it is delivered.
            self.swapping.deferred.push_back((p.clone(), items));
            return;
        }
        let bytes = items.iter().map(ByteSize::byte_size).sum();
        let epoch = self.epoch(p);
        let next = self.intake.next_seq.entry(p.clone()).or_default();
        let seq = *next;
        *next += 1;
        let job = Job {
            partition: p.clone(),
            epoch,
            items,
            bytes,
            dispatched: std::time::Instant::now(),
            seq,
        };
        let w = worker_of(p, self.workers.len());
        *self.in_flight.per_partition.entry(p.clone()).or_default() += 1;
        self.in_flight.jobs += 1;
        if let Some(tx) = self.workers.get(w)
            && let Err(e) = tx.send(job)
        {
            // The worker is gone: the session is ending; count it done.
            let job = e.0;
            self.budget
                .release(&job.partition, job.items.len(), job.bytes);
            self.job_taken();
            self.partition_done(&job.partition);
        }
    }

    pub(super) fn flush_all(&mut self) {
        let all: Vec<(Partition, Batcher<SourceItem>)> = self.intake.batchers.drain().collect();
        for (p, mut b) in all {
            if let Some(items) = b.take() {
                self.dispatch(&p, items);
            }
        }
    }

    pub(super) fn flush_due(&mut self, now: Instant) {
        let due: Vec<Partition> = self
            .intake
            .batchers
            .iter()
            .filter(|(_, b)| b.deadline().is_some_and(|d| d <= now))
            .map(|(p, _)| p.clone())
            .collect();
        for p in due {
            if let Some(mut b) = self.intake.batchers.remove(&p)
                && let Some(items) = b.take()
            {
                self.dispatch(&p, items);
            }
        }
    }
}
