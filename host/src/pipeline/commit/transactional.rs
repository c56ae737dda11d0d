//! Exactly-once: groups of batches written in one transaction of the sinks
//! ([`Transactions`], provided by the sink that can: Kafka) with the
//! source's next positions. Any failure aborts the transaction and ends the
//! session, which starts again from the committed positions with a new
//! writer; a fenced writer stops the pipeline. Nothing here knows Kafka.

use super::Committer;
use crate::pipeline::PipelineError;
use crate::pipeline::deliver::{Delivery, Done, Job, Processed, Report};
use crate::record::Partition;
use crate::sink::{Sinks, Transactions, TxnError};
use crate::source::SourceControl;
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Most batches in one transaction.
const MAX_BATCHES_PER_TRANSACTION: usize = 16;

/// Exactly-once delivery through the sinks' transactions.
pub(crate) struct Transactional {
    producer: Arc<dyn Transactions>,
}

impl Transactional {
    /// Takes the sinks' transactions and initialises them (fencing older
    /// instances with the same id).
    pub(crate) async fn prepare(
        pipeline: &str,
        sinks: &Sinks,
        transactional_id: &str,
    ) -> Result<Self, PipelineError> {
        let producer = sinks.transactions.clone().ok_or_else(|| {
            PipelineError::Internal(
                "exactly-once without a sink that writes in transactions".into(),
            )
        })?;
        tracing::info!(
            pipeline,
            transactional_id,
            "initialising transactions (fences older instances with this id)"
        );
        producer.init().await?;
        Ok(Transactional { producer })
    }
}

impl Committer for Transactional {
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

/// Exactly-once delivery: groups of batches in transactions with the
/// source's positions.
async fn run_transactional(
    delivery: Arc<Delivery>,
    producer: Arc<dyn Transactions>,
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
    producer: &Arc<dyn Transactions>,
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
    let Some(context) = control.transaction_context() else {
        let job = take_job(&mut finished);
        return Err((
            job,
            PipelineError::Internal(
                "exactly-once needs a source whose position commits in a transaction (Kafka, with its consumer group)".into(),
            ),
        ));
    };
    let positions: Vec<(Partition, i64)> = offsets.into_iter().collect();
    if let Err(e) = producer.commit(&positions, context).await {
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
