//! Standard output, one line per record.
//!
//! Lines are written by a thread of its own, in submission order, so that a
//! slow reader on the other end of the pipe slows the pipeline (through the
//! in-flight budget) without blocking the async runtime.

mod config;

pub use config::StdoutSinkConfig;

use super::{BuildContext, Pending, Sink, SinkError, encode_lines_of, ready};
use crate::sink::RecordFormat;
use std::io::Write;
use std::sync::Mutex;
use tokio::sync::oneshot;

type Job = (Vec<u8>, oneshot::Sender<std::io::Result<()>>);

/// Writes lines to standard output.
#[derive(Debug)]
pub struct StdoutSink {
    format: RecordFormat,
    writer: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
}

impl StdoutSink {
    /// A stdout sink writing records in `format`.
    pub fn new(format: RecordFormat) -> Self {
        StdoutSink {
            format,
            writer: Mutex::new(None),
        }
    }

    fn writer(&self) -> Result<std::sync::mpsc::Sender<Job>, SinkError> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = writer.as_ref() {
            return Ok(w.clone());
        }
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sluice-stdout".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                for (buf, done) in rx {
                    let mut out = stdout.lock();
                    let result = out.write_all(&buf).and_then(|()| out.flush());
                    let _ = done.send(result);
                }
            })
            .map_err(|source| SinkError::Io {
                sink: "stdout".into(),
                source,
            })?;
        *writer = Some(tx.clone());
        Ok(tx)
    }
}

#[async_trait::async_trait]
impl Sink for StdoutSink {
    async fn submit(&self, batch: super::SinkBatch) -> Result<Pending, SinkError> {
        let (buf, lines, rejects) = encode_lines_of(&batch.records, &batch.lineage, self.format);
        if lines == 0 {
            return Ok(ready(rejects));
        }
        let (done, written) = oneshot::channel();
        self.writer()?
            .send((buf, done))
            .map_err(|_| SinkError::Io {
                sink: "stdout".into(),
                source: std::io::Error::other("the stdout writer stopped"),
            })?;
        Ok(Box::pin(async move {
            let io = |source| SinkError::Io {
                sink: "stdout".into(),
                source,
            };
            written
                .await
                .map_err(|_| io(std::io::Error::other("the stdout writer stopped")))?
                .map_err(io)?;
            Ok(rejects.into())
        }))
    }

    fn describe(&self) -> String {
        "stdout".into()
    }
}

impl super::SinkPlugin for StdoutSinkConfig {
    fn kind(&self) -> &'static str {
        "stdout"
    }

    fn line_format(&self) -> Option<RecordFormat> {
        Some(self.format)
    }

    fn build(&self, _ctx: &mut BuildContext<'_>) -> Result<std::sync::Arc<dyn Sink>, SinkError> {
        Ok(std::sync::Arc::new(StdoutSink::new(self.format)))
    }
}
