//! A bounded source of items held in memory: what `sluice dlq replay` feeds
//! a pipeline with. Commits do nothing (the items have no upstream).

use super::{RunningSource, SourceEvent, SourceItem, StartOptions, TaskControl};
use crate::batch::ByteSize;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Starts a source that yields `items` in order, then ends.
pub fn start_items(describe: String, items: Vec<SourceItem>, opts: StartOptions) -> RunningSource {
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        for item in items {
            opts.budget.acquire(item.byte_size()).await;
            if tx.send(Ok(SourceEvent::Item(item))).is_err() {
                break;
            }
        }
    });
    RunningSource {
        events,
        control: Arc::new(TaskControl::new(describe, task)),
    }
}
