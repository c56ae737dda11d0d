//! Standard output, one line per record.

use super::{Reject, Sink, SinkError, encode_lines};
use crate::config::RecordFormat;
use crate::record::Record;
use tokio::io::AsyncWriteExt;

/// Writes lines to standard output.
#[derive(Debug)]
pub struct StdoutSink {
    format: RecordFormat,
}

impl StdoutSink {
    /// A stdout sink writing records in `format`.
    pub fn new(format: RecordFormat) -> Self {
        StdoutSink { format }
    }
}

#[async_trait::async_trait]
impl Sink for StdoutSink {
    async fn write(&mut self, records: &[Record]) -> Result<Vec<Reject>, SinkError> {
        let (buf, _, rejects) = encode_lines(records, self.format);
        let mut out = tokio::io::stdout();
        let io = |source| SinkError::Io {
            sink: self.describe(),
            source,
        };
        out.write_all(&buf).await.map_err(io)?;
        out.flush().await.map_err(io)?;
        Ok(rejects)
    }

    fn describe(&self) -> String {
        "stdout".into()
    }
}
