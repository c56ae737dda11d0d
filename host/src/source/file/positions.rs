//! What a file source in a long-running host has delivered, per file, kept
//! in one small JSON file per pipeline (`<data_dir>/positions/…`) and
//! written like Kafka offsets: only once every record before the position is
//! in a sink or the dead-letter queue. A restarted host, or a pipeline
//! replaced through the API, resumes each file where it stopped; a file
//! that is not the same file any more (another inode, or its first bytes
//! changed) is read from its start.

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How many leading bytes of a file tell it apart from another.
const HEAD_BYTES: u64 = 4096;

/// What identifies a file across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    /// The device and inode (0 where the platform has none).
    pub dev: u64,
    /// The inode.
    pub ino: u64,
    /// How many leading bytes the hash covers (the file's size, up to
    /// 4 KiB, when it was first seen).
    pub head_len: u64,
    /// SHA-256 of those bytes, hex.
    pub head: String,
}

impl FileId {
    /// The identity of the file at `path`.
    pub fn of(path: &Path) -> std::io::Result<FileId> {
        let meta = std::fs::metadata(path)?;
        let (dev, ino) = dev_ino(&meta);
        let head_len = meta.len().min(HEAD_BYTES);
        Ok(FileId {
            dev,
            ino,
            head_len,
            head: head_hash(path, head_len)?.unwrap_or_default(),
        })
    }

    /// Whether `path` is still this file (appended to or not).
    fn matches(&self, path: &Path) -> bool {
        let Ok(meta) = std::fs::metadata(path) else {
            return false;
        };
        if dev_ino(&meta) != (self.dev, self.ino) || meta.len() < self.head_len {
            return false;
        }
        head_hash(path, self.head_len).ok().flatten().as_deref() == Some(self.head.as_str())
    }
}

#[cfg(unix)]
fn dev_ino(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn dev_ino(_meta: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// SHA-256 of the first `len` bytes (`None` if the file is shorter).
fn head_hash(path: &Path, len: u64) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(len as usize);
    std::fs::File::open(path)?
        .take(len)
        .read_to_end(&mut head)?;
    Ok((head.len() as u64 == len).then(|| hex::encode(sha2::Sha256::digest(&head))))
}

/// One file's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition {
    /// Which file.
    pub id: FileId,
    /// The first line (0-based) not yet delivered.
    pub next_line: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    files: BTreeMap<String, FilePosition>,
}

/// The positions of one pipeline's files.
#[derive(Debug)]
pub struct Positions {
    file: PathBuf,
    saved: Mutex<Saved>,
}

impl Positions {
    /// The positions kept in `file` (none yet when it does not exist). A
    /// file that cannot be read is an error naming it: reading everything
    /// again would duplicate what was delivered.
    pub fn open(file: PathBuf) -> Result<Positions, String> {
        let saved = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("positions file `{}`: {e}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(format!("positions file `{}`: {e}", file.display())),
        };
        Ok(Positions {
            file,
            saved: Mutex::new(saved),
        })
    }

    fn saved(&self) -> std::sync::MutexGuard<'_, Saved> {
        self.saved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where reading `stream` (the file at `path`) starts: the kept
    /// position when it is still the same file, else 0 (and the file's new
    /// identity is kept from now on).
    pub fn resume(&self, stream: &str, path: &Path) -> i64 {
        let mut saved = self.saved();
        if let Some(p) = saved.files.get(stream)
            && p.id.matches(path)
        {
            if p.next_line > 0 {
                tracing::info!(file = %stream, line = p.next_line + 1, "resuming the file where the last run stopped");
            }
            return p.next_line;
        }
        match FileId::of(path) {
            Ok(id) => {
                if saved.files.contains_key(stream) {
                    tracing::info!(file = %stream, "the file was replaced since the last run: reading it from its start");
                }
                saved
                    .files
                    .insert(stream.to_string(), FilePosition { id, next_line: 0 });
            }
            Err(e) => {
                tracing::warn!(file = %stream, error = %e, "cannot identify the file: its position will not be kept")
            }
        }
        0
    }

    /// Keeps the handled positions (`next` is the first line not handled)
    /// and writes them (a temporary file, then a rename).
    pub fn commit(&self, handled: &[(&str, i64)]) -> Result<(), String> {
        let text = {
            let mut saved = self.saved();
            let mut changed = false;
            for (stream, next) in handled {
                if let Some(p) = saved.files.get_mut(*stream)
                    && *next > p.next_line
                {
                    p.next_line = *next;
                    changed = true;
                }
            }
            if !changed && self.file.exists() {
                return Ok(());
            }
            serde_json::to_vec_pretty(&*saved).map_err(|e| e.to_string())?
        };
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("positions folder `{}`: {e}", dir.display()))?;
        }
        let tmp = self.file.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &self.file))
            .map_err(|e| format!("positions file `{}`: {e}", self.file.display()))
    }
}

/// The file a host keeps a pipeline's positions in: under `dir`, named by
/// a hash (a pipeline name never becomes a path).
pub fn file_for(dir: &Path, pipeline: &str) -> PathBuf {
    let h = hex::encode(sha2::Sha256::digest(pipeline.as_bytes()));
    dir.join(format!("{}.json", &h[..32]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_resume_the_same_file_and_restart_a_replaced_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("a.jsonl");
        std::fs::write(&data, "1\n2\n3\n").expect("data");
        let keep = file_for(dir.path(), "p");
        let stream = data.display().to_string();
        let p = Positions::open(keep.clone()).expect("open");
        assert_eq!(p.resume(&stream, &data), 0);
        p.commit(&[(&stream, 2)]).expect("commit");
        p.commit(&[(&stream, 1)])
            .expect("an older position changes nothing");
        // A new process: the same file resumes, appended or not.
        let p = Positions::open(keep.clone()).expect("open");
        assert_eq!(p.resume(&stream, &data), 2);
        std::fs::write(&data, "1\n2\n3\n4\n").expect("rewrite in place");
        let p = Positions::open(keep.clone()).expect("open");
        assert_eq!(p.resume(&stream, &data), 2, "same inode, same head");
        // Replaced by another file of the same name: from the start.
        std::fs::remove_file(&data).expect("rm");
        std::fs::write(&data, "x\ny\n").expect("new file");
        let p = Positions::open(keep.clone()).expect("open");
        assert_eq!(p.resume(&stream, &data), 0);
        // A positions file that is not ours is an error naming it.
        std::fs::write(&keep, "not json").expect("garbage");
        let e = Positions::open(keep.clone()).expect_err("refused");
        assert!(e.contains(&keep.display().to_string()), "{e}");
    }
}
