//! Exactly-once as a sink capability: the transactional writer a sink may
//! provide, and how its calls fail.

/// Why a transaction step failed, by what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TxnError {
    /// The writer can no longer be used: most often a newer instance with
    /// the same transactional id fenced this one. The process must stop.
    #[error("the transactional producer is fenced or failed fatally: {0}")]
    Fatal(String),
    /// The transaction must be aborted; its records are repeated after a
    /// rewind to the committed position.
    #[error("the transaction must be aborted: {0}")]
    Abort(String),
    /// The same call may be tried again.
    #[error("the transaction call may be retried: {0}")]
    Retriable(String),
}

/// Exactly-once as a sink capability (Arroyo's two-phase committer): the
/// pipeline's outputs and dead letters are written in transactions that
/// commit together with the source's position. Provided by the sink that
/// builds the transactional writer (Kafka), through
/// [`BuildContext::transactions`].
#[async_trait::async_trait]
pub trait Transactions: Send + Sync {
    /// Registers the writer, fencing older instances with the same id.
    async fn init(&self) -> Result<(), TxnError>;
    /// Starts a transaction.
    async fn begin(&self) -> Result<(), TxnError>;
    /// Adds the source's next positions and commits the transaction.
    /// `source` is what the running source gives for it
    /// ([`crate::source::SourceControl::transaction_context`]).
    async fn commit(
        &self,
        positions: &[(crate::record::Partition, i64)],
        source: Box<dyn std::any::Any + Send>,
    ) -> Result<(), TxnError>;
    /// Aborts the open transaction.
    async fn abort(&self) -> Result<(), TxnError>;
    /// Why the writer can no longer be used, if it cannot.
    fn fatal(&self) -> Option<String>;
}
