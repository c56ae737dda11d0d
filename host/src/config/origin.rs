//! Where a pipeline came from (its file and text), and errors that name
//! the file, the line and the field at fault.

use std::path::PathBuf;

/// Why a pipeline file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read pipeline file `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// Syntax or type error, with line, column and field.
    #[error("invalid pipeline file `{path}`: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message (line, column, field, expectation).
        message: String,
    },
    /// Semantically wrong.
    #[error("invalid pipeline file `{path}`{}: {message}", line_suffix(*.line))]
    Invalid {
        /// The line of the table or field at fault, when it can be found.
        line: Option<usize>,
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
}

pub(super) fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(", line {l}")).unwrap_or_default()
}

/// Where a pipeline was read from: its file and text, so that errors found
/// after parsing (a missing module, a project that does not build) can name
/// the file and the line of the transform at fault.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The pipeline file.
    pub path: PathBuf,
    pub(super) text: std::sync::Arc<str>,
}

impl Origin {
    /// The 1-based line of the `index`-th `[[transforms]]` table, or of its
    /// `field` when given and present.
    pub fn transform_line(&self, index: usize, field: Option<&str>) -> Option<usize> {
        let mut seen = 0usize;
        let mut start = None;
        for (n, line) in self.text.lines().enumerate() {
            let l = line.trim();
            if l == "[[transforms]]" {
                if seen == index {
                    start = Some(n);
                } else if start.is_some() {
                    break;
                }
                seen += 1;
                continue;
            }
            if let (Some(_), Some(f)) = (start, field) {
                if l.starts_with('[') && !l.starts_with("[transforms.") {
                    break;
                }
                let key = l.split('=').next().unwrap_or("").trim();
                if key == f {
                    return Some(n + 1);
                }
            }
        }
        start.map(|n| n + 1)
    }

    /// The line of the table (or dotted key) `outputs.<name>`.
    pub fn output_line(&self, name: &str) -> Option<usize> {
        let head = format!("[outputs.{name}");
        self.text
            .lines()
            .position(|l| l.trim_start().starts_with(&head))
            .map(|n| n + 1)
    }

    /// The line an error message points at: `transforms[i]` (and its field)
    /// or `outputs.<name>`.
    pub(super) fn locate(&self, message: &str) -> Option<usize> {
        if let Some(rest) = message.split("`transforms[").nth(1) {
            let (index, after) = rest.split_once(']')?;
            let index: usize = index.parse().ok()?;
            let field = after
                .strip_prefix('.')
                .and_then(|f| f.split(['.', '`', ' ']).next())
                .filter(|f| !f.is_empty());
            return self.transform_line(index, field);
        }
        if let Some(rest) = message.split("`outputs.").nth(1) {
            let name = rest.split(['.', '`', ' ']).next()?;
            return self.output_line(name);
        }
        None
    }
}
