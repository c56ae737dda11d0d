//! `[source.file]`: the file source's configuration.

use serde::Deserialize;

/// `[source.file]`: lines of local files.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// A file, a directory (every file in it, sorted), a glob
    /// (`data/*.jsonl`), or `-` for standard input.
    pub path: String,
    /// How lines become records (default `jsonl`).
    #[serde(default)]
    pub format: LineFormat,
    /// Keep reading the last file as it grows (like `tail -f`): the
    /// pipeline runs until stopped instead of finishing at the end of its
    /// files. Lines appended to the last file are read within 200 ms.
    #[serde(default)]
    pub follow: bool,
}

/// How a line of a file becomes a record.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LineFormat {
    /// JSON Lines: each non-blank line must be valid JSON; lines that are not
    /// go to the dead-letter queue (stage `decode`) without reaching a transform.
    #[default]
    Jsonl,
    /// Raw lines: each non-blank line is a record value as is.
    Lines,
}
