//! The delivery guarantee, behind one seam: how processed batches are
//! written and when a batch counts as done (so that the coordinator may
//! move the source's position past it).
//!
//! - [`watermark`] — at-least-once: batches are submitted in order and
//!   awaited concurrently; a batch is done when all its outputs and dead
//!   letters are acknowledged, and the coordinator commits the source's
//!   watermark (never past a record in flight) or acknowledges each item
//!   (sources that take per-item acknowledgements). A sink that holds
//!   records (a file that closes later) makes a batch done in two steps:
//!   taken (its in-flight budget is free) and durable (its positions count
//!   as handled).
//! - [`transactional`] — exactly-once: groups of batches are written in one
//!   transaction of the sinks (a capability of the Kafka sink:
//!   [`crate::sink::Transactions`]) with the source's positions; a batch is
//!   done when the transaction commits.

pub(crate) mod transactional;
pub(crate) mod watermark;

use super::PipelineError;
use super::deliver::{Delivery, Processed, Report};
use crate::config::{Guarantee, PipelineConfig};
use crate::sink::Sinks;
use crate::source::SourceControl;
use futures::future::BoxFuture;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A delivery guarantee.
pub(crate) trait Committer: Send + Sync {
    /// Delivers every processed batch from `batches`, reporting each one
    /// done (or failed: the session then ends) on `done` — and, when sinks
    /// held some of its records, durable later — until `batches` closes.
    /// `control` is the running source's.
    fn run(
        self: Arc<Self>,
        delivery: Arc<Delivery>,
        control: Arc<dyn SourceControl>,
        batches: mpsc::UnboundedReceiver<Processed>,
        done: mpsc::UnboundedSender<Report>,
    ) -> BoxFuture<'static, ()>;

    /// Whether the coordinator commits the source's position itself once
    /// batches are done (at-least-once), or the guarantee commits it with
    /// the outputs (a Kafka transaction).
    fn coordinator_commits(&self) -> bool;
}

/// The guarantee a pipeline asks for, ready for one session: with
/// exactly-once, the transactional producer has fenced older instances.
pub(crate) async fn prepare(
    config: &PipelineConfig,
    sinks: &Sinks,
    transactional_id: Option<&str>,
) -> Result<Arc<dyn Committer>, PipelineError> {
    match (config.delivery.guarantee, transactional_id) {
        (Guarantee::ExactlyOnce, Some(id)) => Ok(Arc::new(
            transactional::Transactional::prepare(&config.name, sinks, id).await?,
        )),
        _ => Ok(Arc::new(watermark::Watermark)),
    }
}
