//! What the pipeline asks of the running source: commits, close, lag.

use super::*;

/// Commits and closes through the consumer shared with the polling thread.
pub(crate) struct KafkaControl {
    pub(super) consumer: Arc<BaseConsumer<SourceContext>>,
    pub(super) commands: Mutex<std::sync::mpsc::Sender<Command>>,
    pub(super) thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub(super) describe: String,
    pub(super) lag: Arc<std::sync::atomic::AtomicI64>,
    pub(super) partition_lags: Arc<Mutex<Vec<(Partition, i64)>>>,
    pub(super) reach: Arc<Reachability>,
}

#[async_trait::async_trait]
impl SourceControl for KafkaControl {
    async fn commit(&self, offsets: &[(Partition, i64)]) -> Result<(), SourceError> {
        if offsets.is_empty() {
            return Ok(());
        }
        // Asynchronous: a failure is logged by the commit callback and a later
        // commit covers it. Synchronous commits happen on revocation and close.
        self.consumer
            .commit(&offsets_list(offsets), CommitMode::Async)
            .map_err(|e| kafka_err("commit", &e))
    }

    async fn close(&self, offsets: &[(Partition, i64)]) -> Result<(), SourceError> {
        let (done, answer) = oneshot::channel();
        let sent = self
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Command::Close {
                offsets: offsets_list(offsets),
                done,
            });
        let result = if sent.is_ok() {
            answer.await.unwrap_or(Ok(()))
        } else {
            Ok(())
        };
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }

    fn transaction_context(&self) -> Option<Box<dyn std::any::Any + Send>> {
        self.consumer
            .group_metadata()
            .map(|g| Box::new(g) as Box<dyn std::any::Any + Send>)
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn lag(&self) -> Option<i64> {
        let lag = self.lag.load(Ordering::Relaxed);
        (lag >= 0).then_some(lag)
    }

    fn health(&self) -> Option<String> {
        self.reach.health()
    }

    fn partition_lags(&self) -> Vec<(Partition, i64)> {
        self.partition_lags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
