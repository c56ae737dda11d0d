//! The host's desired state, kept in its data directory
//! (`state/<pipeline>.json`): per pipeline and transform, the versions that
//! were activated, the active one last. It survives a restart: a pipeline
//! file starts with its transforms' active versions, not the file's. A
//! rollback activates the version before the active one.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A pipeline's desired state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PipelineState {
    /// The pipeline.
    pub pipeline: String,
    /// Per transform: the module digests activated, oldest first; the last
    /// is active.
    pub transforms: BTreeMap<String, Vec<String>>,
    /// Per transform: the active version while it is still on probation
    /// (cleared when it passes). A host that stops during a probation
    /// starts again on the version before it, the last one that passed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probation: BTreeMap<String, String>,
    /// Per transform: versions uploaded without being activated
    /// (`activate=false`), oldest first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stored: BTreeMap<String, Vec<String>>,
}

impl PipelineState {
    /// Takes back the versions still on probation (their host stopped
    /// before they passed): each transform's active version becomes the one
    /// before it. Returns `(transform, version dropped, version active)`.
    pub fn drop_unproven(&mut self) -> Vec<(String, String, String)> {
        let mut dropped = Vec::new();
        for (transform, digest) in std::mem::take(&mut self.probation) {
            let Some(versions) = self.transforms.get_mut(&transform) else {
                continue;
            };
            if versions.len() >= 2 && versions.last() == Some(&digest) {
                versions.pop();
                let now = versions.last().cloned().unwrap_or_default();
                dropped.push((transform, digest, now));
            }
        }
        dropped
    }

    /// The active digest of `transform`, if one was ever activated.
    pub fn active(&self, transform: &str) -> Option<&str> {
        self.transforms.get(transform)?.last().map(String::as_str)
    }
}

/// Where desired states are kept.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// The store under `data_dir/state`.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("state");
        std::fs::create_dir_all(&dir)?;
        Ok(StateStore { dir })
    }

    fn file(&self, pipeline: &str) -> PathBuf {
        // Named by a hash: a pipeline name never becomes a path.
        let h = hex::encode(Sha256::digest(pipeline.as_bytes()));
        self.dir.join(format!("{}.json", &h[..32]))
    }

    /// The state of `pipeline` (empty when none is kept). A state file that
    /// cannot be read is an error naming it.
    pub fn load(&self, pipeline: &str) -> Result<PipelineState, String> {
        let f = self.file(pipeline);
        match std::fs::read(&f) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("state file `{}`: {e}", f.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PipelineState {
                pipeline: pipeline.to_string(),
                ..Default::default()
            }),
            Err(e) => Err(format!("state file `{}`: {e}", f.display())),
        }
    }

    /// Writes the state of a pipeline (atomically: temporary file, rename).
    pub fn save(&self, state: &PipelineState) -> Result<(), String> {
        let f = self.file(&state.pipeline);
        let tmp = f.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &f))
            .map_err(|e| format!("state file `{}`: {e}", f.display()))
    }

    /// Forgets a pipeline's state (the pipeline was deleted).
    pub fn remove(&self, pipeline: &str) -> Result<(), String> {
        match std::fs::remove_file(self.file(pipeline)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_names_never_become_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = StateStore::open(dir.path()).expect("open");
        let mut st = s.load("../../etc/x").expect("empty");
        assert_eq!(st.active("t"), None);
        st.transforms
            .insert("t".into(), vec!["sha256:a".into(), "sha256:b".into()]);
        s.save(&st).expect("save");
        let back = s.load("../../etc/x").expect("load");
        assert_eq!(back, st);
        assert_eq!(back.active("t"), Some("sha256:b"));
        let files: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .expect("dir")
            .collect();
        assert_eq!(files.len(), 1);
    }

    #[test]
    fn a_version_still_on_probation_is_taken_back() {
        let mut st = PipelineState {
            pipeline: "p".into(),
            ..Default::default()
        };
        st.transforms
            .insert("t".into(), vec!["sha256:a".into(), "sha256:b".into()]);
        st.probation.insert("t".into(), "sha256:b".into());
        let text = serde_json::to_string(&st).expect("json");
        let mut back: PipelineState = serde_json::from_str(&text).expect("back");
        assert_eq!(
            back.drop_unproven(),
            vec![("t".into(), "sha256:b".into(), "sha256:a".into())]
        );
        assert_eq!(back.active("t"), Some("sha256:a"));
        assert!(back.probation.is_empty());
        // An older state file, without `probation`, reads as none.
        let old: PipelineState =
            serde_json::from_str(r#"{"pipeline":"p","transforms":{"t":["sha256:a"]}}"#)
                .expect("old");
        assert!(old.probation.is_empty());
    }
}
