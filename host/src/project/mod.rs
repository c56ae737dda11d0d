//! Transform projects: a pipeline's `module`, `sluice test`, `sluice build`
//! and `sluice deploy` may name a project directory instead of a `.wasm`
//! file. Sluice tells its language from the files in it, builds it into a
//! component and returns the component's path:
//!
//! - **Rust**: a `Cargo.toml` (cargo, `wasm32-wasip2`, release; `rust.rs`);
//! - **Python**: a `pyproject.toml` or a `transform.py` (componentize-py,
//!   installed into the project's `.sluice/venv` when missing; `python.rs`);
//! - **JavaScript**: a `package.json` or a `transform.js` (componentize-js,
//!   installed into the project's `node_modules` when missing; `js.rs`).
//!
//! Python and JavaScript builds take the SDK and the WIT world from this
//! binary, so a component always matches the host that built it. Their
//! output is cached in `.sluice/build/` under a hash of every input, so an
//! unchanged project is not rebuilt. `new.rs` scaffolds projects.

mod js;
pub mod new;
mod python;
mod rust;

pub use rust::GUEST_TARGET;

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The WIT world every guest is built against (the host's own copy).
pub const WIT: &str = include_str!("../../../wit/transform.wit");

/// Why a transform project could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The path is neither a `.wasm` file nor a project directory.
    #[error(
        "module `{0}` is neither a .wasm file nor a transform project (a directory with a Cargo.toml, pyproject.toml, package.json, transform.py or transform.js)"
    )]
    NotAModule(PathBuf),
    /// Nothing is at the path.
    #[error(
        "module `{0}`: no such file or directory (a module is a .wasm file or a transform project's directory)"
    )]
    Missing(PathBuf),
    /// cargo could not be run.
    #[error("cannot run cargo to build `{path}`: {message}")]
    Cargo {
        /// Project directory.
        path: PathBuf,
        /// Explanation.
        message: String,
    },
    /// A language's tool (Python, Node.js, npm) is missing or cannot run.
    #[error("cannot build `{path}`: {message}")]
    Tool {
        /// Project directory.
        path: PathBuf,
        /// Explanation, with what to install.
        message: String,
    },
    /// The build failed.
    #[error("building transform project `{path}` failed:\n{output}{hint}")]
    Failed {
        /// Project directory.
        path: PathBuf,
        /// The tool's diagnostics (tail).
        output: String,
        /// A hint, e.g. to install the target.
        hint: String,
    },
    /// The build produced no component.
    #[error("building `{0}` produced no .wasm component (is its crate-type `cdylib`?)")]
    NoArtifact(PathBuf),
    /// The project is malformed (its manifest, a missing entry file).
    #[error("transform project `{path}`: {message}")]
    Project {
        /// Project directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Writing the build's files failed.
    #[error("cannot write `{path}`: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// A transform project's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    /// Rust, with the `sluice-guest` crate.
    Rust,
    /// Python, with componentize-py.
    Python,
    /// JavaScript, with componentize-js.
    Js,
}

impl std::fmt::Display for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Language::Rust => "rust",
            Language::Python => "python",
            Language::Js => "js",
        })
    }
}

/// A transform project directory.
#[derive(Debug, Clone)]
pub struct Project {
    /// The directory.
    pub dir: PathBuf,
    /// Its language.
    pub language: Language,
    /// Its fixtures folder (default `fixtures/`; a project may point at a
    /// shared one: `[tool.sluice] fixtures` in `pyproject.toml`,
    /// `"sluice": {"fixtures": ..}` in `package.json`,
    /// `[package.metadata.sluice] fixtures` in `Cargo.toml`).
    pub fixtures: PathBuf,
}

impl Project {
    /// The project in `dir`, or `None` when `dir` is not a project.
    pub fn detect(dir: &Path) -> Result<Option<Project>, BuildError> {
        if !dir.is_dir() {
            return Ok(None);
        }
        let bad = |message: String| BuildError::Project {
            path: dir.to_path_buf(),
            message,
        };
        let read = |name: &str| -> Result<Option<String>, BuildError> {
            let p = dir.join(name);
            if !p.is_file() {
                return Ok(None);
            }
            std::fs::read_to_string(&p)
                .map(Some)
                .map_err(|e| bad(format!("cannot read {name}: {e}")))
        };
        let toml_fixtures = |text: &str, name: &str, path: &[&str]| -> Result<_, BuildError> {
            let doc: toml::Value = toml::from_str(text).map_err(|e| bad(format!("{name}: {e}")))?;
            let mut v = Some(&doc);
            for p in path {
                v = v.and_then(|v| v.get(*p));
            }
            match v {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(PathBuf::from(s))),
                Some(_) => Err(bad(format!("{name}: `{}` must be a path", path.join(".")))),
            }
        };
        let (language, fixtures) = if let Some(text) = read("Cargo.toml")? {
            let f = toml_fixtures(
                &text,
                "Cargo.toml",
                &["package", "metadata", "sluice", "fixtures"],
            )?;
            (Language::Rust, f)
        } else if let Some(text) = read("pyproject.toml")? {
            let f = toml_fixtures(&text, "pyproject.toml", &["tool", "sluice", "fixtures"])?;
            (Language::Python, f)
        } else if let Some(text) = read("package.json")? {
            let doc: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad(format!("package.json: {e}")))?;
            let f = match doc.get("sluice").and_then(|s| s.get("fixtures")) {
                None => None,
                Some(serde_json::Value::String(s)) => Some(PathBuf::from(s)),
                Some(_) => {
                    return Err(bad("package.json: `sluice.fixtures` must be a path".into()));
                }
            };
            (Language::Js, f)
        } else if dir.join("transform.py").is_file() {
            (Language::Python, None)
        } else if dir.join("transform.js").is_file() {
            (Language::Js, None)
        } else {
            return Ok(None);
        };
        Ok(Some(Project {
            dir: dir.to_path_buf(),
            language,
            fixtures: dir.join(fixtures.unwrap_or_else(|| PathBuf::from("fixtures"))),
        }))
    }

    /// Builds the project and returns the component's path.
    pub fn build(&self, quiet: bool) -> Result<PathBuf, BuildError> {
        match self.language {
            Language::Rust => rust::build(&self.dir, &self.dir.join("Cargo.toml"), quiet),
            Language::Python => python::build(&self.dir, quiet),
            Language::Js => js::build(&self.dir, quiet),
        }
    }
}

/// Returns the component file for `module`: the file itself, or the built
/// artifact of a transform project directory.
pub fn resolve_module(module: &Path, quiet: bool) -> Result<PathBuf, BuildError> {
    if module.is_file() {
        return Ok(module.to_path_buf());
    }
    if !module.exists() {
        return Err(BuildError::Missing(module.to_path_buf()));
    }
    match Project::detect(module)? {
        Some(project) => project.build(quiet),
        None => Err(BuildError::NotAModule(module.to_path_buf())),
    }
}

/// Writes `contents` to `path` unless it already holds them (so that file
/// times only change when the contents do).
pub(crate) fn write_if_changed(path: &Path, contents: &[u8]) -> Result<(), BuildError> {
    if std::fs::read(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    let io = |e: std::io::Error| BuildError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, contents).map_err(io)
}

/// Files of a project's sources, relative to `dir`, sorted: every file whose
/// name ends with one of `exts`, skipping hidden folders, `fixtures`,
/// `node_modules`, `target`, `__pycache__` and virtual environments.
pub(crate) fn sources(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>, BuildError> {
    fn walk(
        root: &Path,
        dir: &Path,
        exts: &[&str],
        out: &mut Vec<PathBuf>,
        depth: usize,
    ) -> std::io::Result<()> {
        if depth > 16 {
            return Ok(());
        }
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                let skip = name.starts_with('.')
                    || matches!(
                        name.as_ref(),
                        "fixtures" | "node_modules" | "target" | "__pycache__" | "venv" | "env"
                    )
                    || entry.path().join("pyvenv.cfg").exists();
                if !skip {
                    walk(root, &entry.path(), exts, out, depth + 1)?;
                }
            } else if kind.is_file()
                && exts.iter().any(|e| name.ends_with(e))
                && let Ok(rel) = entry.path().strip_prefix(root)
            {
                out.push(rel.to_path_buf());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, exts, &mut out, 0).map_err(|e| BuildError::Io {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    out.sort();
    Ok(out)
}

/// A hash of `parts` and of the named files' paths and contents: the key of
/// a cached build.
pub(crate) fn inputs_hash(
    dir: &Path,
    files: &[PathBuf],
    parts: &[&[u8]],
) -> Result<String, BuildError> {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    for f in files {
        let bytes = std::fs::read(dir.join(f)).map_err(|e| BuildError::Io {
            path: dir.join(f),
            message: e.to_string(),
        })?;
        let name = f.to_string_lossy();
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(hex::encode(h.finalize()))
}

/// A build's output in `.sluice/build/` and the hash of its inputs.
pub(crate) struct Cached {
    /// The component.
    pub out: PathBuf,
    hash_file: PathBuf,
    hash: String,
}

impl Cached {
    /// The cache entry of `dir` for `files` and `parts`; `fresh` says whether
    /// the component there was built from exactly these inputs.
    pub(crate) fn new(dir: &Path, files: &[PathBuf], parts: &[&[u8]]) -> Result<Self, BuildError> {
        let build = dir.join(".sluice").join("build");
        Ok(Cached {
            out: build.join("transform.wasm"),
            hash_file: build.join("transform.wasm.inputs"),
            hash: inputs_hash(dir, files, parts)?,
        })
    }

    /// Whether the component was built from exactly these inputs.
    pub(crate) fn fresh(&self) -> bool {
        self.out.is_file() && std::fs::read_to_string(&self.hash_file).is_ok_and(|h| h == self.hash)
    }

    /// Records that the component was built from these inputs.
    pub(crate) fn done(&self, dir: &Path) -> Result<PathBuf, BuildError> {
        if !self.out.is_file() {
            return Err(BuildError::NoArtifact(dir.to_path_buf()));
        }
        write_if_changed(&self.hash_file, self.hash.as_bytes())?;
        Ok(self.out.clone())
    }
}

/// Finds a program on `PATH` (or the one an environment variable names).
pub(crate) fn find_program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Runs a build command, returning its combined output on failure as
/// [`BuildError::Failed`]; with `quiet` false its output goes to stderr.
pub(crate) fn run_tool(
    dir: &Path,
    cmd: &mut std::process::Command,
    what: &str,
    quiet: bool,
) -> Result<(), BuildError> {
    use std::io::IsTerminal as _;
    use std::process::Stdio;
    cmd.stdin(Stdio::null());
    // On a terminal: a spinner with the time spent, and the tool's output
    // only if it fails. Elsewhere: a line before and after, and the tool's
    // output as it comes.
    let terminal = !quiet && std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let spinner = terminal.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(format!("sluice: {what}"));
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    });
    if !quiet && !terminal {
        eprintln!("sluice: {what}…");
    }
    let out = if quiet || terminal {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output()
    } else {
        cmd.stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .output()
    }
    .map_err(|e| BuildError::Tool {
        path: dir.to_path_buf(),
        message: format!("cannot run {what}: {e}"),
    })?;
    if let Some(bar) = spinner {
        bar.finish_and_clear();
    }
    if !quiet {
        eprintln!(
            "sluice: {what} {} in {:.1} s",
            if out.status.success() {
                "done"
            } else {
                "failed"
            },
            started.elapsed().as_secs_f64()
        );
    }
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    let mut tail = lines[lines.len().saturating_sub(40)..].join("\n");
    if !quiet && !terminal {
        tail.push_str(&format!("({what}'s output is above)"));
    }
    Err(BuildError::Failed {
        path: dir.to_path_buf(),
        output: tail,
        hint: String::new(),
    })
}

#[cfg(test)]
mod tests;
