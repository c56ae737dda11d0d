//! A bounded source of items held in memory: what `sluice dlq replay` feeds
//! a pipeline with. Commits do nothing (the items have no upstream).

use super::{RunningSource, SourceControl, SourceError, SourceEvent, SourceItem, StartOptions};
use crate::batch::ByteSize;
use crate::record::Partition;
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
        control: Arc::new(MemoryControl {
            describe,
            task: std::sync::Mutex::new(Some(task)),
        }),
    }
}

struct MemoryControl {
    describe: String,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[async_trait::async_trait]
impl SourceControl for MemoryControl {
    async fn commit(&self, _offsets: &[(Partition, i64)]) -> Result<(), SourceError> {
        Ok(())
    }

    async fn close(&self, _offsets: &[(Partition, i64)]) -> Result<(), SourceError> {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}
