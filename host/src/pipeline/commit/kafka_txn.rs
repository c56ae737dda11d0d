//! Exactly-once: groups of batches written in one Kafka transaction with
//! their consumer offsets (`send_offsets_to_transaction`). Any failure
//! aborts the transaction and ends the session, which starts again from the
//! committed offsets with a new producer; a fenced producer stops the
//! pipeline.

use super::Committer;
use crate::pipeline::PipelineError;
use crate::pipeline::deliver::{Delivery, Done, Job, Processed, Report};
use crate::record::Partition;
use crate::sink::{KafkaProducer, Sinks, TxnError};
use crate::source::SourceControl;
use futures::future::BoxFuture;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Most batches in one transaction.
const MAX_BATCHES_PER_TRANSACTION: usize = 16;

/// Exactly-once delivery through Kafka transactions.
pub(crate) struct KafkaTransactions {
    producer: Arc<KafkaProducer>,
}

impl KafkaTransactions {
    /// Takes the pipeline's transactional producer and initialises its
    /// transactions (fencing older instances with the same id).
    pub(crate) async fn prepare(
        pipeline: &str,
        sinks: &Sinks,
        transactional_id: &str,
    ) -> Result<Self, PipelineError> {
        let producer = sinks.producers.first().cloned().ok_or_else(|| {
            PipelineError::Internal("exactly-once without a Kafka producer".into())
        })?;
        tracing::info!(
            pipeline,
            transactional_id,
            "initialising transactions (fences older instances with this id)"
        );
        producer.init_transactions().await?;
        Ok(KafkaTransactions { producer })
    }
}

impl Committer for KafkaTransactions {
    fn run(
        self: Arc<Self>,
        delivery: Arc<Delivery>,
        control: Arc<dyn SourceControl>,
        batches: mpsc::UnboundedReceiver<Processed>,
        done: mpsc::UnboundedSender<Report>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(run_transactional(
            delivery,
            self.producer.clone(),
            control,
            batches,
            done,
        ))
    }

    fn coordinator_commits(&self) -> bool {
        false
    }
}

/// Exactly-once delivery: groups of batches in Kafka transactions with their
/// consumer offsets.
async fn run_transactional(
    delivery: Arc<Delivery>,
    producer: Arc<KafkaProducer>,
    control: Arc<dyn SourceControl>,
    mut batches: mpsc::UnboundedReceiver<Processed>,
    done: mpsc::UnboundedSender<Report>,
) {
    while let Some(first) = batches.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_BATCHES_PER_TRANSACTION {
            match batches.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        match transaction(&delivery, &producer, control.as_ref(), group).await {
            Ok(finished) => {
                for d in finished {
                    let _ = done.send(d.into());
                }
            }
            Err((job, e)) => {
                tracing::warn!(error = %e, "transaction failed: aborting");
                if let Err(abort) = producer.abort().await {
                    tracing::warn!(error = %abort, "abort failed too");
                }
                let _ = done.send(Done::failed(job, e).into());
                // The session ends on this error; nothing more is delivered.
                return;
            }
        }
    }
}

async fn transaction(
    delivery: &Delivery,
    producer: &Arc<KafkaProducer>,
    control: &dyn SourceControl,
    group: Vec<Processed>,
) -> Result<Vec<Done>, (Job, PipelineError)> {
    let mut offsets: BTreeMap<Partition, i64> = BTreeMap::new();
    for p in &group {
        for item in &p.job.items {
            let pos = item.position();
            let next = offsets.entry(pos.partition.clone()).or_insert(0);
            *next = (*next).max(pos.offset + 1);
        }
    }
    let mut group = group.into_iter();
    let Some(first) = group.next() else {
        return Ok(Vec::new());
    };
    if let Err(e) = producer.begin().await {
        return Err((first.job, PipelineError::Transaction(e)));
    }
    // A write that fails inside a transaction dooms it: abort, and start
    // again from the committed offsets (unless the producer is fenced).
    let doomed = |e: PipelineError| match producer.fatal() {
        Some(fatal) => PipelineError::Transaction(TxnError::Fatal(fatal)),
        None => PipelineError::Transaction(TxnError::Abort(e.to_string())),
    };
    let mut submitted = Vec::new();
    for p in std::iter::once(first).chain(group) {
        submitted.push(delivery.submit(p).await.map_err(|(j, e)| (j, doomed(e)))?);
    }
    let mut finished = Vec::with_capacity(submitted.len());
    for s in submitted {
        let (d, held) = delivery.finish(s, false).await;
        if let Err(e) = d.outcome {
            return Err((d.job, doomed(e)));
        }
        // What a sink holds must be durable before the offsets commit with
        // the transaction (no exactly-once sink holds records today).
        for h in held {
            if let Err(e) = h.await {
                return Err((d.job, doomed(e.into())));
            }
        }
        finished.push(d);
    }
    let mut list = TopicPartitionList::new();
    for (p, o) in &offsets {
        if let Err(e) = list.add_partition_offset(&p.stream, p.partition, Offset::Offset(*o)) {
            let job = take_job(&mut finished);
            return Err((job, PipelineError::Internal(format!("offset list: {e}"))));
        }
    }
    let Some(group_metadata) = control
        .as_any()
        .downcast_ref::<crate::source::kafka::KafkaControl>()
        .and_then(|k| k.group_metadata())
    else {
        let job = take_job(&mut finished);
        return Err((
            job,
            PipelineError::Internal(
                "exactly-once needs a Kafka source with consumer group metadata".into(),
            ),
        ));
    };
    if let Err(e) = producer.commit(list, group_metadata).await {
        let job = take_job(&mut finished);
        return Err((job, PipelineError::Transaction(e)));
    }
    Ok(finished)
}

fn take_job(finished: &mut Vec<Done>) -> Job {
    match finished.pop() {
        Some(d) => d.job,
        None => Job::none(),
    }
}
