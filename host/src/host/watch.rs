//! GitOps: `sluice serve host.toml --watch DIR` takes its pipeline files
//! from DIR and watches it (polling once a second). A changed pipeline file
//! is checked like `sluice check` and, if good, replaces the running
//! pipeline (which drains first); a new file starts a pipeline; a removed
//! file stops and removes it. A changed module file (a `.wasm` a pipeline's
//! transform names) is deployed like an upload: validated, stored, swapped
//! in at a batch boundary, on probation. A bad file is refused and reported
//! (logs, the status page's refused list, the audit log) and the running
//! version stays. Changes are made as `gitops`.

use super::Host;
use super::auth::{Principal, Role};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

fn hash_file(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| hex::encode(Sha256::digest(&b)))
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    files.sort();
    files
}

/// What the watcher saw last.
#[derive(Default)]
struct Seen {
    /// Pipeline file → content hash.
    files: BTreeMap<PathBuf, String>,
    /// (pipeline, transform) → (module file, content hash).
    modules: BTreeMap<(String, String), (PathBuf, String)>,
}

impl Host {
    fn gitops() -> Principal {
        Principal {
            name: "gitops".into(),
            role: Role::Admin,
        }
    }

    /// The `.wasm` module files the transforms of the pipeline in `file`
    /// name (projects to build are not watched).
    fn module_files(file: &Path) -> Vec<(String, String, PathBuf)> {
        let Ok((config, base)) = crate::config::PipelineConfig::load(file) else {
            return Vec::new();
        };
        config
            .transforms
            .iter()
            .map(|t| (config.name.clone(), t.name.clone(), base.join(&t.module)))
            .filter(|(_, _, p)| p.is_file())
            .collect()
    }

    fn note_refused(&self, file: &Path, error: String) {
        tracing::error!(file = %file.display(), error = %error, "watched file refused; the running version stays");
        let mut refused = self.refused.write().unwrap_or_else(|e| e.into_inner());
        refused.retain(|(f, _)| f != file);
        refused.push((file.to_path_buf(), error));
    }

    fn clear_refused(&self, file: &Path) {
        self.refused
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(f, _)| f != file);
    }

    /// Watches the pipeline directory until the host is dropped.
    pub async fn watch(self: Arc<Self>) {
        let dir = self.config.pipelines.clone();
        let mut seen = Seen::default();
        for f in toml_files(&dir) {
            if let Some(h) = hash_file(&f) {
                seen.files.insert(f.clone(), h);
            }
            for (p, t, m) in Self::module_files(&f) {
                if let Some(h) = hash_file(&m) {
                    seen.modules.insert((p, t), (m, h));
                }
            }
        }
        tracing::info!(dir = %dir.display(), files = seen.files.len(), "watching pipeline and module files");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.watch_once(&dir, &mut seen).await;
        }
    }

    async fn watch_once(self: &Arc<Self>, dir: &Path, seen: &mut Seen) {
        let who = Self::gitops();
        let now: BTreeMap<PathBuf, String> = toml_files(dir)
            .into_iter()
            .filter_map(|f| hash_file(&f).map(|h| (f, h)))
            .collect();
        // Removed files: their pipelines go.
        let removed: Vec<PathBuf> = seen
            .files
            .keys()
            .filter(|f| !now.contains_key(*f))
            .cloned()
            .collect();
        for f in removed {
            seen.files.remove(&f);
            self.clear_refused(&f);
            let name = self.name_of_file(&f);
            if let Some(name) = name {
                let _one = self.changes.lock().await;
                self.stop_and_forget(&name).await;
                if let Err(e) = self.state.remove(&name) {
                    tracing::warn!(pipeline = %name, error = %e, "cannot forget its state");
                }
                self.record(&who, "remove-pipeline-file", &name, Ok(()));
            }
        }
        // New and changed files.
        for (f, h) in &now {
            if seen.files.get(f) == Some(h) {
                continue;
            }
            seen.files.insert(f.clone(), h.clone());
            match self.replace_from_file(f).await {
                Ok(name) => {
                    self.clear_refused(f);
                    self.record(&who, "pipeline-file", &name, Ok(()));
                    for (p, t, m) in Self::module_files(f) {
                        if let Some(h) = hash_file(&m) {
                            seen.modules.insert((p, t), (m, h));
                        }
                    }
                }
                Err(e) => {
                    let name = f
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    self.record(&who, "pipeline-file", &name, Err(&e));
                    self.note_refused(f, e.to_string());
                }
            }
        }
        // Changed module files: deployed.
        let modules: Vec<((String, String), (PathBuf, String))> = seen
            .modules
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for ((pipeline, transform), (file, old)) in modules {
            let Ok(bytes) = std::fs::read(&file) else {
                continue;
            };
            let h = hex::encode(Sha256::digest(&bytes));
            if h == old {
                continue;
            }
            seen.modules
                .insert((pipeline.clone(), transform.clone()), (file.clone(), h));
            match self.deploy(&who, &pipeline, &transform, bytes, true).await {
                Ok(r) => {
                    self.clear_refused(&file);
                    tracing::info!(pipeline = %pipeline, transform = %transform, digest = %r.digest, file = %file.display(), "module file deployed");
                }
                Err(e) => self.note_refused(&file, format!("{pipeline}/{transform}: {e}")),
            }
        }
    }

    /// The pipeline started from `file`.
    fn name_of_file(&self, file: &Path) -> Option<String> {
        self.pipelines
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(_, e)| e.file == file)
            .map(|(n, _)| n.clone())
    }
}
