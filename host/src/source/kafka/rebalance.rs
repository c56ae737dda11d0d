//! Rebalances: a revoked partition waits for its batches in flight and
//! commits them before it goes; a lost one keeps them; a new assignment
//! starts where the pipeline says.

use super::*;

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let StartPosition::Timestamp(at) = self.start {
                    self.seek_to_start_time(consumer, tpl, at);
                }
                self.resume_lost(tpl);
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                let parts: Vec<String> = partitions_of(self, tpl)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                match result {
                    Ok(()) => tracing::info!(partitions = %parts.join(" "), "partitions assigned"),
                    Err(e) => {
                        tracing::error!(%e, partitions = %parts.join(" "), "cannot take the assigned partitions")
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                let partitions = partitions_of(self, tpl);
                let names: Vec<String> = partitions.iter().map(ToString::to_string).collect();
                if self.stopping.load(Ordering::SeqCst) {
                    self.drop_pending(&partitions);
                } else {
                    tracing::info!(partitions = %names.join(" "), lost, "partitions revoked: draining");
                    let offsets = self.drain(partitions, lost);
                    if lost {
                        // The pipeline keeps these partitions' in-flight
                        // work: if they come back, read on after it.
                        self.lost_resume
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend(offsets);
                    } else if !offsets.is_empty() {
                        let list = offsets_list(&offsets);
                        if let Err(e) = consumer.commit(&list, CommitMode::Sync) {
                            tracing::warn!(%e, "cannot commit the offsets of revoked partitions; the next owner repeats their last records");
                        }
                    }
                }
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::error!(%e, "cannot release the revoked partitions");
                }
                tracing::info!(partitions = %names.join(" "), "partitions released");
            }
            other => tracing::error!(error = ?other, "rebalance failed"),
        }
        self.assignment_changed.store(true, Ordering::SeqCst);
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // Harmless for the guarantees: a later commit covers these offsets,
            // and at worst the next owner repeats some handled records.
            tracing::warn!(%e, partitions = offsets.count(), "offset commit failed");
        }
    }
}

impl SourceContext {
    /// For a start position given as a time: partitions without a committed
    /// offset start at the first record at or after that time.
    pub(super) fn seek_to_start_time(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
        at: i64,
    ) {
        let committed = match consumer.committed_offsets(tpl.clone(), CALL_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%e, "cannot read committed offsets; new partitions start at the earliest record");
                return;
            }
        };
        let mut by_time = TopicPartitionList::new();
        for el in committed.elements() {
            if matches!(el.offset(), Offset::Invalid | Offset::Stored)
                && let Err(e) =
                    by_time.add_partition_offset(el.topic(), el.partition(), Offset::Offset(at))
            {
                tracing::warn!(%e, topic = el.topic(), partition = el.partition(), "cannot look up the start time");
            }
        }
        if by_time.count() == 0 {
            return;
        }
        match consumer.offsets_for_times(by_time, CALL_TIMEOUT) {
            Ok(found) => {
                for el in found.elements() {
                    let offset = match el.offset() {
                        Offset::Offset(o) => Offset::Offset(o),
                        // No record at or after the time: start at the end.
                        _ => Offset::End,
                    };
                    if let Err(e) = tpl.set_partition_offset(el.topic(), el.partition(), offset) {
                        tracing::warn!(%e, topic = el.topic(), partition = el.partition(), "cannot set the start offset");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%e, "cannot look up offsets for the start time; new partitions start at the earliest record")
            }
        }
    }

    /// The first assignment after partitions were lost: those the pipeline
    /// kept and that are ours again are read on from after their in-flight
    /// records (instead of from the committed offset, which would deliver
    /// them all twice); the others went elsewhere. Tells the pipeline both.
    pub(super) fn resume_lost(&self, tpl: &mut TopicPartitionList) {
        let lost = std::mem::take(&mut *self.lost_resume.lock().unwrap_or_else(|e| e.into_inner()));
        if lost.is_empty() {
            return;
        }
        let assigned = partitions_of(self, tpl);
        let mut regained = Vec::new();
        for p in &assigned {
            if let Some(&at) = lost.get(p) {
                match tpl.set_partition_offset(&p.stream, p.partition, Offset::Offset(at)) {
                    Ok(()) => regained.push(p.clone()),
                    Err(e) => {
                        tracing::warn!(%e, partition = %p, "cannot read a regained partition on from where the pipeline stopped")
                    }
                }
            }
        }
        let released: Vec<Partition> = lost.into_keys().filter(|p| !regained.contains(p)).collect();
        if !regained.is_empty() {
            tracing::info!(
                partitions = regained.len(),
                "lost partitions assigned again: read on after their in-flight records"
            );
            let _ = self.events.send(Ok(SourceEvent::Regained(regained)));
        }
        if !released.is_empty() {
            tracing::info!(
                partitions = released.len(),
                "lost partitions went to another member"
            );
            let _ = self.events.send(Ok(SourceEvent::Released(released)));
        }
    }

    /// Hands revoked partitions to the pipeline and waits until their
    /// in-flight work is handled; returns the offsets to commit.
    pub(super) fn drain(&self, partitions: Vec<Partition>, lost: bool) -> Vec<(Partition, i64)> {
        self.drop_pending(&partitions);
        let (done, mut answer) = oneshot::channel();
        let revocation = Revocation {
            partitions,
            lost,
            done,
        };
        if self
            .events
            .send(Ok(SourceEvent::Revoke(revocation)))
            .is_err()
        {
            return Vec::new();
        }
        // The pipeline answers within its drain timeout; allow a margin.
        let deadline = Instant::now() + self.drain_timeout + Duration::from_secs(5);
        loop {
            match answer.try_recv() {
                Ok(offsets) => return offsets,
                Err(oneshot::error::TryRecvError::Closed) => return Vec::new(),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    "the pipeline did not drain revoked partitions in time; their uncommitted work will be repeated by the next owner"
                );
                return Vec::new();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
