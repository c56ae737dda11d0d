//! The file source: JSON Lines or raw lines from a file, a directory, a glob
//! or standard input. Each non-blank line is a record; its position is the
//! file path (stream) and the 0-based line number (offset).

mod config;
pub mod positions;

pub use config::{FileSourceConfig, LineFormat};
pub use positions::Positions;

use super::{RunningSource, SourceError, SourceEvent, SourceItem, StartOptions, TaskControl};
use crate::batch::ByteSize;
use crate::record::{Partition, Position, Record, SourceRecord};
use bytes::{Bytes, BytesMut};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// How often a followed file is read again at its end.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// How much the source reads at a time.
const READ_CHUNK: usize = 256 << 10;

/// An open file: its lines are slices of one shared read buffer (no copy or
/// allocation per line; a buffer is freed when its last line is).
struct Lines {
    reader: Box<dyn AsyncRead + Send + Unpin>,
    buf: BytesMut,
    eof: bool,
    /// A followed file: a last line without its end is still being written,
    /// so it waits for its `\n`.
    hold_partial: bool,
}

impl Lines {
    fn new(reader: Box<dyn AsyncRead + Send + Unpin>) -> Self {
        Lines {
            reader,
            buf: BytesMut::new(),
            eof: false,
            hold_partial: false,
        }
    }

    /// The next line without its `\n` (the last one may lack it), or
    /// `None` at the end of the input.
    async fn next_line(&mut self) -> std::io::Result<Option<Bytes>> {
        let mut searched = 0;
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[searched..]) {
                let end = searched + i;
                let mut line = self.buf.split_to(end + 1).freeze();
                line.truncate(end);
                return Ok(Some(line));
            }
            searched = self.buf.len();
            if self.eof {
                if self.hold_partial {
                    return Ok(None);
                }
                return Ok((!self.buf.is_empty()).then(|| self.buf.split().freeze()));
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                self.eof = true;
            }
        }
    }

    /// Whether the next line is already in memory.
    fn ready(&self) -> bool {
        (self.eof && !self.hold_partial && !self.buf.is_empty())
            || memchr::memchr(b'\n', &self.buf).is_some()
    }
}

/// Reads lines from files in order.
pub struct FileSource {
    pending: std::vec::IntoIter<PathBuf>,
    stdin: bool,
    current: Option<(Partition, Lines, i64)>,
    format: LineFormat,
    pattern: String,
    /// What was delivered before (a host keeps it).
    positions: Option<Arc<Positions>>,
    /// Keep reading the last file as it grows.
    follow: bool,
    /// Lines of the current file below this were delivered before.
    skip_below: i64,
    /// Bytes read so far (lines and their ends), shared with the control.
    read: Arc<std::sync::atomic::AtomicU64>,
    /// Bytes of the files listed at the start (`None` for standard input).
    total: Option<u64>,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("pattern", &self.pattern)
            .finish()
    }
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl FileSource {
    /// Resolves `path` (file, directory, glob or `-`) against `base`.
    pub fn open(path: &str, base: &Path, format: LineFormat) -> Result<Self, SourceError> {
        let mut files = Vec::new();
        let mut total = 0u64;
        let stdin = path == "-";
        if !stdin {
            let full = base.join(path);
            let full_str = full.to_string_lossy().to_string();
            if has_glob(path) {
                let matches = glob::glob(&full_str).map_err(|e| SourceError::Pattern {
                    pattern: path.to_string(),
                    message: e.to_string(),
                })?;
                for m in matches {
                    let m = m.map_err(|e| SourceError::Io {
                        path: e.path().display().to_string(),
                        source: e.into(),
                    })?;
                    if m.is_file() {
                        files.push(m);
                    }
                }
            } else if full.is_dir() {
                let entries = std::fs::read_dir(&full).map_err(|source| SourceError::Io {
                    path: full_str.clone(),
                    source,
                })?;
                for e in entries {
                    let e = e.map_err(|source| SourceError::Io {
                        path: full_str.clone(),
                        source,
                    })?;
                    let p = e.path();
                    let hidden = p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                    if p.is_file() && !hidden {
                        files.push(p);
                    }
                }
            } else if full.is_file() {
                files.push(full);
            }
            files.sort();
            files = read_once(files);
            total = files
                .iter()
                .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
                .sum::<u64>();
            if files.is_empty() {
                return Err(SourceError::NoFiles(full_str));
            }
        }
        Ok(FileSource {
            pending: files.into_iter(),
            stdin,
            current: None,
            format,
            pattern: path.to_string(),
            positions: None,
            skip_below: 0,
            follow: false,
            read: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            total: (!stdin).then_some(total),
        })
    }

    /// Keeps reading the last file as it grows, instead of ending.
    pub fn following(mut self, follow: bool) -> Self {
        self.follow = follow;
        self
    }

    /// Resumes each file from `positions` and keeps them there.
    pub fn with_positions(mut self, positions: Arc<Positions>) -> Self {
        self.positions = Some(positions);
        self
    }

    async fn open_next(&mut self) -> Result<bool, SourceError> {
        let (name, reader): (String, Box<dyn AsyncRead + Send + Unpin>) = if self.stdin {
            self.stdin = false;
            self.skip_below = 0;
            ("-".to_string(), Box::new(tokio::io::stdin()))
        } else {
            let Some(path) = self.pending.next() else {
                return Ok(false);
            };
            let name = path.display().to_string();
            self.skip_below = match &self.positions {
                Some(p) => p.resume(&name, &path),
                None => 0,
            };
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|source| SourceError::Io {
                    path: name.clone(),
                    source,
                })?;
            (name, Box::new(file))
        };
        let partition = Partition {
            stream: Arc::from(name.as_str()),
            partition: 0,
        };
        let mut lines = Lines::new(reader);
        lines.hold_partial = self.follow && self.pending.len() == 0 && name != "-";
        self.current = Some((partition, lines, 0));
        Ok(true)
    }
}

/// Keeps one path per file: paths that resolve (through symbolic links) to a
/// file already listed are dropped, so that a link loop such as
/// `src/loop -> .` under `src/**/*.jsonl` reads every record once.
fn read_once(files: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    let mut kept = Vec::with_capacity(files.len());
    let mut dropped = 0usize;
    for f in files {
        let key = std::fs::canonicalize(&f).unwrap_or_else(|_| f.clone());
        if seen.insert(key) {
            kept.push(f);
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        tracing::warn!(
            files = kept.len(),
            duplicate_paths = dropped,
            "several paths lead to the same file (a symbolic link loop, or links to files already listed): each file is read once"
        );
    }
    kept
}

/// Reads the files on a task of its own, taking a share of the budget for
/// every record (so a slow pipeline slows the reader).
pub(super) fn start(mut source: FileSource, opts: StartOptions) -> RunningSource {
    let (tx, events) = mpsc::unbounded_channel();
    let describe = source.describe();
    let positions = source.positions.clone();
    let (read, total) = (source.read.clone(), source.total);
    let task = tokio::spawn(async move {
        // Lines already in memory go to the coordinator together, up to
        // `CHUNK` at a time, while the budget allows: one message per chunk,
        // not per record. A line that has to wait for input (a pipe, a file
        // still being written) is never held back behind the next.
        const CHUNK: usize = 512;
        let mut chunk: Vec<SourceItem> = Vec::with_capacity(CHUNK);
        loop {
            match source.next().await {
                Ok(Some(item)) => {
                    let size = item.byte_size();
                    if !opts.budget.try_acquire(size) {
                        if !chunk.is_empty() {
                            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                            if tx.send(Ok(SourceEvent::Items(full))).is_err() {
                                break;
                            }
                        }
                        opts.budget.acquire(size).await;
                    }
                    chunk.push(item);
                    if chunk.len() >= CHUNK || !source.ready() {
                        let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                        if tx.send(Ok(SourceEvent::Items(full))).is_err() {
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    if !chunk.is_empty() {
                        let _ = tx.send(Ok(SourceEvent::Items(std::mem::take(&mut chunk))));
                    }
                    let _ = tx.send(Err(e));
                    break;
                }
            }
        }
        if !chunk.is_empty() {
            let _ = tx.send(Ok(SourceEvent::Items(chunk)));
        }
    });
    let task = TaskControl::new(describe, task);
    RunningSource {
        events,
        control: Arc::new(FileControl {
            task,
            positions,
            read,
            total,
        }),
    }
}

/// The control of a file source: a commit writes its positions when it
/// keeps them (everything below is in a sink or the dead-letter queue); it
/// knows how much of its files it has read.
struct FileControl {
    task: TaskControl,
    positions: Option<Arc<Positions>>,
    read: Arc<std::sync::atomic::AtomicU64>,
    total: Option<u64>,
}

impl FileControl {
    fn keep(&self, offsets: &[(Partition, i64)]) -> Result<(), SourceError> {
        let Some(positions) = &self.positions else {
            return Ok(());
        };
        let handled: Vec<(&str, i64)> = offsets
            .iter()
            .map(|(p, next)| (&*p.stream, *next))
            .collect();
        positions.commit(&handled).map_err(SourceError::Positions)
    }
}

#[async_trait::async_trait]
impl super::SourceControl for FileControl {
    async fn commit(&self, offsets: &[(Partition, i64)]) -> Result<(), SourceError> {
        self.keep(offsets)
    }

    async fn close(&self, offsets: &[(Partition, i64)]) -> Result<(), SourceError> {
        let kept = self.keep(offsets);
        self.task.close(offsets).await?;
        kept
    }

    fn describe(&self) -> String {
        self.task.describe()
    }

    fn progress(&self) -> Option<(u64, u64)> {
        let total = self.total?;
        let read = self.read.load(std::sync::atomic::Ordering::Relaxed);
        // A file that grew while read counts as read so far.
        Some((read, total.max(read)))
    }
}

impl FileSource {
    /// The next item, or `None` when every file is read.
    pub async fn next(&mut self) -> Result<Option<SourceItem>, SourceError> {
        loop {
            if self.current.is_none() && !self.open_next().await? {
                return Ok(None);
            }
            let Some((partition, lines, line_no)) = self.current.as_mut() else {
                continue;
            };
            let line = lines.next_line().await.map_err(|source| SourceError::Io {
                path: partition.stream.to_string(),
                source,
            })?;
            let Some(mut line) = line else {
                if lines.hold_partial {
                    // The last file: wait for it to grow (a partial last
                    // line stays in the buffer until its end comes).
                    tokio::time::sleep(FOLLOW_POLL).await;
                    lines.eof = false;
                    continue;
                }
                self.current = None;
                continue;
            };
            let offset = *line_no;
            *line_no += 1;
            self.read
                .fetch_add(line.len() as u64 + 1, std::sync::atomic::Ordering::Relaxed);
            if offset < self.skip_below {
                continue;
            }
            if line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let position = Position {
                partition: partition.clone(),
                offset,
            };
            let record = Record::from_value(line);
            if self.format == LineFormat::Jsonl {
                let value = record.value.as_deref().unwrap_or_default();
                if let Err(e) = crate::record::check_json(value) {
                    let reason = format!(
                        "line {} of `{}` is not valid JSON: {e}",
                        offset + 1,
                        partition.stream
                    );
                    return Ok(Some(SourceItem::Invalid {
                        record,
                        position,
                        reason,
                    }));
                }
            }
            return Ok(Some(SourceItem::Record(SourceRecord { record, position })));
        }
    }

    /// Whether the next line is already read into memory (the next call to
    /// [`FileSource::next`] will not wait for input).
    pub fn ready(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|(_, lines, _)| lines.ready())
    }

    /// A short description for logs.
    pub fn describe(&self) -> String {
        format!("file `{}`", self.pattern)
    }
}

impl super::SourcePlugin for FileSourceConfig {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn describe(&self) -> String {
        format!("file {}", self.path)
    }

    fn run_note(&self) -> Option<String> {
        (self.path != "-").then(|| format!(
            "`sluice run` reads `{}` from its start every time; a host (`sluice serve`) keeps what it delivered and resumes",
            self.path
        ))
    }

    fn describe_at(&self, base: &Path) -> String {
        if self.path == "-" {
            return "file - (standard input)".into();
        }
        // `a/b/../c` read as `a/c`: the path as a person would write it.
        let mut resolved = PathBuf::new();
        for part in base.join(&self.path).components() {
            match part {
                std::path::Component::ParentDir if resolved.file_name().is_some() => {
                    resolved.pop();
                }
                std::path::Component::CurDir => {}
                other => resolved.push(other),
            }
        }
        format!(
            "file {}{}",
            resolved.display(),
            if self.follow { " (following)" } else { "" }
        )
    }

    fn validate(&self, base: &Path) -> Result<(), SourceError> {
        FileSource::open(&self.path, base, self.format).map(|_| ())
    }

    fn start(&self, base: &Path, opts: StartOptions) -> Result<RunningSource, SourceError> {
        let mut source = FileSource::open(&self.path, base, self.format)?.following(self.follow);
        if let Some(file) = &opts.positions {
            let positions = Positions::open(file.clone()).map_err(SourceError::Positions)?;
            source = source.with_positions(Arc::new(positions));
        }
        Ok(start(source, opts))
    }

    fn json_values(&self) -> bool {
        self.format == LineFormat::Jsonl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_followed_file_is_read_as_it_grows_whole_lines_only() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.jsonl");
        std::fs::write(&path, "{\"n\":1}\n").expect("write");
        let mut src = FileSource::open("log.jsonl", dir.path(), LineFormat::Jsonl)
            .expect("open")
            .following(true);
        let value = |item: SourceItem| match item {
            SourceItem::Record(r) => r.record.value.map(|v| v.to_vec()).unwrap_or_default(),
            other => panic!("{other:?}"),
        };
        let first = src.next().await.expect("read").expect("a line");
        assert_eq!(value(first), b"{\"n\":1}");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("append");
        f.write_all(b"{\"n\":").expect("half a line");
        f.flush().expect("flush");
        // Half a line is not a record: nothing comes (the source waits).
        let waited = tokio::time::timeout(std::time::Duration::from_millis(800), src.next()).await;
        assert!(waited.is_err(), "a partial line was read: {waited:?}");
        f.write_all(b"2}\n").expect("the rest");
        f.flush().expect("flush");
        let second = tokio::time::timeout(std::time::Duration::from_secs(10), src.next())
            .await
            .expect("read within 10 s")
            .expect("read")
            .expect("a line");
        assert_eq!(value(second), b"{\"n\":2}");
    }

    #[tokio::test]
    async fn reads_glob_in_order_and_flags_bad_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("b.jsonl"), "{\"n\":3}\n").expect("write");
        std::fs::write(
            dir.path().join("a.jsonl"),
            "{\"n\":1}\r\n\n  \nnot json\n{\"n\":2}",
        )
        .expect("write");
        std::fs::write(dir.path().join("c.txt"), "ignored").expect("write");
        let mut src = FileSource::open("*.jsonl", dir.path(), LineFormat::Jsonl).expect("open");
        let mut got = Vec::new();
        while let Some(item) = src.next().await.expect("read") {
            got.push(item);
        }
        assert_eq!(got.len(), 4);
        let SourceItem::Record(first) = &got[0] else {
            panic!("first is a record")
        };
        assert_eq!(first.record.value.as_deref(), Some(&b"{\"n\":1}"[..]));
        assert_eq!(first.position.offset, 0);
        let SourceItem::Invalid {
            position, reason, ..
        } = &got[1]
        else {
            panic!("second is invalid")
        };
        assert_eq!(position.offset, 3);
        assert!(
            reason.contains("line 4")
                && reason.contains("a.jsonl")
                && reason.contains("not valid JSON"),
            "{reason}"
        );
        assert!(got[3].position().partition.stream.ends_with("b.jsonl"));
    }

    #[tokio::test]
    async fn a_symlink_loop_reads_each_file_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).expect("mkdir");
        std::fs::write(src.join("a.jsonl"), "{\"n\":1}\n{\"n\":2}\n").expect("write");
        std::fs::write(src.join("sub/b.jsonl"), "{\"n\":3}\n").expect("write");
        std::os::unix::fs::symlink(".", src.join("loop")).expect("symlink");
        std::os::unix::fs::symlink("a.jsonl", src.join("same.jsonl")).expect("symlink");
        let mut s =
            FileSource::open("src/**/*.jsonl", dir.path(), LineFormat::Jsonl).expect("open");
        let mut n = 0;
        while s.next().await.expect("read").is_some() {
            n += 1;
        }
        assert_eq!(n, 3, "each record once");
    }

    #[tokio::test]
    async fn invalid_utf8_inside_a_json_string_is_invalid_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("a.jsonl"),
            b"{\"s\":\"ok\"}\n{\"s\":\"\xff\xfe\"}\n",
        )
        .expect("write");
        let mut s = FileSource::open("a.jsonl", dir.path(), LineFormat::Jsonl).expect("open");
        assert!(matches!(s.next().await, Ok(Some(SourceItem::Record(_)))));
        match s.next().await {
            Ok(Some(SourceItem::Invalid { reason, .. })) => {
                assert!(
                    reason.contains("line 2") && reason.contains("UTF-8"),
                    "{reason}"
                )
            }
            other => panic!("the second line is invalid input, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn lines_across_read_chunks_come_out_whole_and_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Lines of many lengths, several read chunks in all, some longer
        // than a chunk, CRLF endings, no newline after the last.
        let mut text = String::new();
        let mut want = Vec::new();
        for i in 0..3000usize {
            let pad = "x".repeat((i * 37) % 900 + if i % 1000 == 7 { READ_CHUNK } else { 0 });
            let line = format!("{{\"n\":{i},\"pad\":\"{pad}\"}}");
            text.push_str(&line);
            if i + 1 < 3000 {
                text.push_str(if i % 3 == 0 { "\r\n" } else { "\n" });
            }
            want.push(line);
        }
        std::fs::write(dir.path().join("big.jsonl"), &text).expect("write");
        let mut s = FileSource::open("big.jsonl", dir.path(), LineFormat::Jsonl).expect("open");
        let mut got = Vec::new();
        while let Some(item) = s.next().await.expect("read") {
            let SourceItem::Record(r) = item else {
                panic!("every line is JSON: {item:?}")
            };
            assert_eq!(r.position.offset, got.len() as i64);
            got.push(String::from_utf8(r.record.value.expect("value").to_vec()).expect("utf8"));
        }
        assert_eq!(got.len(), want.len());
        assert!(got == want, "lines differ");
    }

    #[test]
    fn nothing_matching_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = FileSource::open("*.jsonl", dir.path(), LineFormat::Lines).expect_err("no files");
        assert!(err.to_string().contains("*.jsonl"), "{err}");
    }
}
