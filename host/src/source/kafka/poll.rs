//! The consumer's thread: polls, forwards records, pauses and resumes,
//! serves commands, and closes.

use super::*;

pub(super) fn poll_loop(
    consumer: &BaseConsumer<SourceContext>,
    commands: &std::sync::mpsc::Receiver<Command>,
) {
    let ctx = consumer.context().clone();
    let mut paused = false;
    let mut held_back = HeldBack::default();
    let mut failed = false;
    loop {
        match commands.try_recv() {
            Ok(Command::Close { offsets, done }) => {
                let _ = done.send(close(consumer, &ctx, &offsets));
                return;
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                let _ = close(consumer, &ctx, &TopicPartitionList::new());
                return;
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        if failed {
            // A fatal consumer error was reported; wait to be closed.
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let drained = ctx.flush_pending();
        let spent = !drained || ctx.budget.is_spent();
        let changed = ctx.assignment_changed.swap(false, Ordering::SeqCst);
        if changed && let Ok(assignment) = consumer.assignment() {
            let assigned = partitions_of(&ctx, &assignment);
            held_back.reassigned(consumer, &assigned);
            if !paused {
                // librdkafka keeps a partition's pause across a revocation
                // and a later re-assignment: one paused when it was last
                // ours would never be read again. Resuming a partition that
                // is not paused does nothing.
                let mut resume = TopicPartitionList::new();
                for p in assigned
                    .iter()
                    .filter(|p| !held_back.partitions.contains(*p))
                {
                    resume.add_partition(&p.stream, p.partition);
                }
                if let Err(e) = consumer.resume(&resume) {
                    tracing::warn!(%e, "cannot resume the assigned partitions");
                }
            }
        }
        if spent && (!paused || changed) {
            if let Ok(assignment) = consumer.assignment() {
                match consumer.pause(&assignment) {
                    Ok(()) => {
                        if !paused {
                            tracing::debug!(
                                partitions = assignment.count(),
                                "in-flight budget spent: partitions paused"
                            );
                        }
                        paused = true;
                    }
                    Err(e) => tracing::warn!(%e, "cannot pause partitions"),
                }
            }
        } else if paused
            && drained
            && ctx.budget.has_room()
            && let Ok(assignment) = consumer.assignment()
        {
            // Partitions still over three quarters of their share stay
            // paused: the others take the room first.
            let mut resume = TopicPartitionList::new();
            held_back.sharing.unpaused(Instant::now());
            held_back.partitions.clear();
            let sharing = held_back.sharing();
            for p in partitions_of(&ctx, &assignment) {
                if ctx.budget.over_share(&p, sharing, 3) {
                    held_back.partitions.insert(p);
                } else {
                    resume.add_partition(&p.stream, p.partition);
                }
            }
            match consumer.resume(&resume) {
                Ok(()) => {
                    tracing::debug!(
                        partitions = resume.count(),
                        held_back = held_back.partitions.len(),
                        "budget has room: partitions resumed"
                    );
                    paused = false;
                }
                Err(e) => tracing::warn!(%e, "cannot resume partitions"),
            }
        }
        if !paused {
            held_back.release(consumer, &ctx);
        }
        let wait = if paused || !held_back.partitions.is_empty() {
            20
        } else {
            100
        };
        match consumer.poll(Duration::from_millis(wait)) {
            None => {}
            Some(Ok(msg)) => {
                ctx.reach.answered();
                let item = ctx.convert(&msg);
                let partition = item.position().partition.clone();
                ctx.offer(item);
                if !paused {
                    held_back.check(consumer, &ctx, &partition);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => {
                let error = kafka_err("poll", &e);
                if let SourceError::Client { fatal: true, .. } = error {
                    tracing::error!(%e, "the Kafka consumer failed fatally");
                    let _ = ctx.events.send(Err(error));
                    failed = true;
                } else {
                    if crate::kafka::is_unreachable(&e) {
                        ctx.reach.lost(&ctx.redactor.error(&e));
                    }
                    crate::kafka::warn_limited(
                        "source poll",
                        &format!(
                            "kafka consumer error (retried by librdkafka): {}",
                            ctx.redactor.error(&e)
                        ),
                    );
                }
            }
        }
    }
}

pub(super) fn close(
    consumer: &BaseConsumer<SourceContext>,
    ctx: &SourceContext,
    offsets: &TopicPartitionList,
) -> Result<(), SourceError> {
    ctx.stopping.store(true, Ordering::SeqCst);
    let committed = if offsets.count() > 0 {
        consumer
            .commit(offsets, CommitMode::Sync)
            .map_err(|e| kafka_err("final commit", &e))
    } else {
        Ok(())
    };
    // Leave the group now rather than when the last handle is dropped.
    match consumer.close_queue() {
        Ok(()) => {
            let deadline = Instant::now() + CALL_TIMEOUT;
            while !consumer.closed() && Instant::now() < deadline {
                let _ = consumer.poll(Duration::from_millis(50));
            }
        }
        Err(e) => tracing::warn!(%e, "cannot leave the consumer group cleanly"),
    }
    tracing::info!(committed = offsets.count(), "kafka source closed");
    committed
}
