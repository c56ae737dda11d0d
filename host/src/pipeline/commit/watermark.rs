//! At-least-once: the source's watermark moves once every record before it
//! is in a sink or the dead-letter queue.

use super::Committer;
use crate::pipeline::deliver::{Delivery, Done, DurableBatch, Processed, Report};
use crate::sink::Durable;
use crate::source::SourceControl;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Most batches whose writes are awaited at once.
const MAX_PENDING_BATCHES: usize = 8;

/// At-least-once delivery.
#[derive(Debug)]
pub(crate) struct Watermark;

impl Committer for Watermark {
    fn run(
        self: Arc<Self>,
        delivery: Arc<Delivery>,
        _control: Arc<dyn SourceControl>,
        batches: mpsc::UnboundedReceiver<Processed>,
        done: mpsc::UnboundedSender<Report>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(run_plain(delivery, batches, done))
    }

    fn coordinator_commits(&self) -> bool {
        true
    }
}

type DoneFuture = Pin<Box<dyn std::future::Future<Output = (Done, Vec<Durable>)> + Send>>;
type DurableFuture = Pin<Box<dyn std::future::Future<Output = DurableBatch> + Send>>;

/// At-least-once delivery: submit in order, await concurrently, report each
/// batch when the sinks have taken it — done, when it is durable
/// everywhere; else done (its budget is free) and, later, durable.
async fn run_plain(
    delivery: Arc<Delivery>,
    mut batches: mpsc::UnboundedReceiver<Processed>,
    done: mpsc::UnboundedSender<Report>,
) {
    let mut in_flight: FuturesOrdered<DoneFuture> = FuturesOrdered::new();
    let mut held: FuturesUnordered<DurableFuture> = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            // While a batch's writes are tried again, none is submitted
            // after it (it would overtake the retry); the ones in flight go on.
            next = batches.recv(), if open && in_flight.len() < MAX_PENDING_BATCHES && !delivery.turns.troubled() => match next {
                Some(p) => match delivery.submit(p).await {
                    Ok(s) => {
                        let d = delivery.clone();
                        in_flight.push_back(Box::pin(async move { d.finish(s, true).await }));
                    }
                    Err((job, e)) => {
                        let _ = done.send(Done::failed(job, e).into());
                    }
                },
                None => open = false,
            },
            Some((mut finished, durables)) = in_flight.next(), if !in_flight.is_empty() => {
                if !durables.is_empty() && finished.outcome.is_ok() {
                    finished.held = true;
                    held.push(Box::pin(durable(&finished, durables)));
                }
                let _ = done.send(finished.into());
            }
            Some(d) = held.next(), if !held.is_empty() => {
                let _ = done.send(Report::Durable(d));
            }
            else => break,
        }
    }
}

/// Awaits what sinks hold of a finished batch.
fn durable(
    finished: &Done,
    durables: Vec<Durable>,
) -> impl std::future::Future<Output = DurableBatch> + Send + 'static {
    let partition = finished.job.partition.clone();
    let epoch = finished.job.epoch;
    let offsets = crate::ledger::Offsets::of(finished.job.items.iter().map(|i| i.position()));
    async move {
        let mut outcome = Ok(());
        for d in durables {
            if let Err(e) = d.await {
                outcome = Err(e.into());
                break;
            }
        }
        DurableBatch {
            partition,
            epoch,
            offsets,
            outcome,
        }
    }
}
