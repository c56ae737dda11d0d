//! Helpers shared by the end-to-end tests: where the workspace is, the
//! example and test guests built once per test process, the Kafka broker
//! ([`broker`]), the `sluice` process ([`process`]) and the building blocks of
//! the Kafka scenarios ([`scenario`]).

pub mod broker;
pub mod process;
pub mod scenario;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The component of a transform project (relative to the workspace root),
/// built once per process.
pub fn module(project: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let cache = BUILT.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cache.get(project) {
        return p.clone();
    }
    let path = sluice::engine::build::resolve_module(&root().join(project), true)
        .unwrap_or_else(|e| panic!("building {project} failed: {e}"));
    cache.insert(project.to_string(), path.clone());
    path
}

/// TOML string literal for a path.
pub fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Every line of every file under `dir`, parsed as JSON, files in name order.
pub fn read_lake(dir: &Path) -> Vec<serde_json::Value> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        for line in text.lines() {
            out.push(
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: bad JSON line {line:?}: {e}", f.display())),
            );
        }
    }
    out
}
