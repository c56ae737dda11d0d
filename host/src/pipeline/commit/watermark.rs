//! At-least-once: the source's watermark moves once every record before it
//! is in a sink or the dead-letter queue.

use super::Committer;
use crate::pipeline::deliver::{Delivery, Done, Processed};
use crate::source::SourceControl;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
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
        done: mpsc::UnboundedSender<Done>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(run_plain(delivery, batches, done))
    }

    fn coordinator_commits(&self) -> bool {
        true
    }
}

type DoneFuture = Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

/// At-least-once delivery: submit in order, await concurrently, report each
/// batch when it is durable everywhere.
async fn run_plain(
    delivery: Arc<Delivery>,
    mut batches: mpsc::UnboundedReceiver<Processed>,
    done: mpsc::UnboundedSender<Done>,
) {
    let mut in_flight: FuturesOrdered<DoneFuture> = FuturesOrdered::new();
    let mut open = true;
    loop {
        tokio::select! {
            next = batches.recv(), if open && in_flight.len() < MAX_PENDING_BATCHES => match next {
                Some(p) => match delivery.submit(p).await {
                    Ok(s) => {
                        let d = delivery.clone();
                        in_flight.push_back(Box::pin(async move { d.finish(s, true).await }));
                    }
                    Err((job, e)) => {
                        let _ = done.send(Done { job, outcome: Err(e) });
                    }
                },
                None => open = false,
            },
            Some(finished) = in_flight.next(), if !in_flight.is_empty() => {
                let _ = done.send(finished);
            }
            else => break,
        }
    }
}
