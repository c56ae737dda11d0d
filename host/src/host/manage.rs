//! Creating, replacing and deleting pipelines through the API: the pipeline
//! file is the request body, checked like `sluice check` (parsed, source
//! validated, transforms compiled and their `init` run) before anything
//! changes; it is then kept in the pipeline directory as `<name>.toml`, so
//! a restart starts it again. Admin tokens only: a pipeline file can name
//! any file or broker the host can reach.

use super::audit::AuditEntry;
use super::auth::Principal;
use super::{DeployError, Host};
use crate::config::PipelineConfig;
use std::path::PathBuf;
use std::sync::Arc;

/// What a create or replace did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PutReport {
    /// The pipeline.
    pub pipeline: String,
    /// Whether it replaced a running one (which drained first).
    pub replaced: bool,
    /// The file it is kept in.
    pub file: String,
}

fn file_name(name: &str) -> Result<String, DeployError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(format!("{name}.toml"))
    } else {
        Err(DeployError::Invalid(format!(
            "pipelines created through the API need a name of letters, digits, `-`, `_` and `.` (at most 100, not starting with `.`), not `{name}`"
        )))
    }
}

impl Host {
    fn admin(&self, who: &Principal, what: &str) -> Result<(), DeployError> {
        if who.is_admin() {
            Ok(())
        } else {
            Err(DeployError::AdminOnly {
                who: who.name.clone(),
                what: what.to_string(),
            })
        }
    }

    pub(super) fn record(
        &self,
        who: &Principal,
        action: &str,
        pipeline: &str,
        result: Result<(), &DeployError>,
    ) {
        let (outcome, detail) = match result {
            Ok(()) => ("done", None),
            Err(e @ (DeployError::Forbidden { .. } | DeployError::AdminOnly { .. })) => {
                ("forbidden", Some(e.to_string()))
            }
            Err(e) => ("refused", Some(e.to_string())),
        };
        self.audit.record(AuditEntry {
            at: String::new(),
            who: who.name.clone(),
            action: action.to_string(),
            pipeline: pipeline.to_string(),
            transform: None,
            digest: None,
            outcome: outcome.into(),
            detail,
        });
    }

    /// Creates pipeline `name` from a pipeline file's text, or replaces it
    /// (the running one drains and commits first; its versions' history
    /// starts again from the new file).
    pub async fn put_pipeline(
        self: &Arc<Self>,
        who: &Principal,
        name: &str,
        text: &str,
    ) -> Result<PutReport, DeployError> {
        let result = self.put_inner(who, name, text).await;
        self.record(who, "put-pipeline", name, result.as_ref().map(|_| ()));
        result
    }

    async fn put_inner(
        self: &Arc<Self>,
        who: &Principal,
        name: &str,
        text: &str,
    ) -> Result<PutReport, DeployError> {
        self.admin(who, "create or replace pipelines")?;
        let file = self.config.pipelines.join(file_name(name)?);
        let config =
            PipelineConfig::parse(text, &file).map_err(|e| DeployError::Invalid(e.to_string()))?;
        if config.name != name {
            return Err(DeployError::Invalid(format!(
                "the file names pipeline `{}`, the request `{name}`",
                config.name
            )));
        }
        if let Some(other) = self.file_of_other(name, &file) {
            return Err(DeployError::Invalid(format!(
                "pipeline `{name}` is defined by `{}`, which the API does not manage",
                other.display()
            )));
        }
        // Checked like `sluice check`, with nothing changed yet.
        self.check_pipeline(&config, &self.config.pipelines).await?;
        let _one = self.changes.lock().await;
        let replaced = self.stop_and_forget(name).await;
        self.state.remove(name).map_err(DeployError::State)?;
        let tmp = file.with_extension("toml.new");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &file))
            .map_err(|e| DeployError::State(format!("`{}`: {e}", file.display())))?;
        drop(_one);
        self.start_file(&file)
            .await
            .map_err(|e| DeployError::Invalid(e.to_string()))?;
        Ok(PutReport {
            pipeline: name.to_string(),
            replaced,
            file: file.display().to_string(),
        })
    }

    /// Checks a pipeline like `sluice check`: source validated, transforms
    /// compiled and their `init` run; changes nothing.
    async fn check_pipeline(
        &self,
        config: &PipelineConfig,
        base: &std::path::Path,
    ) -> Result<(), DeployError> {
        let base = base.to_path_buf();
        let engines = self.engines.clone();
        let check = config.clone();
        tokio::task::spawn_blocking(move || {
            crate::source::validate(&check.source, &base).map_err(|e| e.to_string())?;
            let engine = engines
                .for_limits(check.transforms.iter().map(|t| &t.limits))
                .map_err(|e| e.to_string())?;
            let prepared =
                crate::pipeline::prepare_transforms(&check, &base, &engine, &Default::default())
                    .map_err(|e| e.to_string())?;
            crate::pipeline::instantiate(&prepared).map_err(|e| e.to_string())?;
            Ok::<(), String>(())
        })
        .await
        .map_err(|e| DeployError::Invalid(e.to_string()))?
        .map_err(DeployError::Invalid)
    }

    /// (Re)starts the pipeline of a file in the pipeline directory (GitOps):
    /// checked first; the running pipeline of that file (or name) drains
    /// and is replaced; its desired state starts again from the file.
    pub(super) async fn replace_from_file(
        self: &Arc<Self>,
        file: &std::path::Path,
    ) -> Result<String, DeployError> {
        let (config, base) =
            PipelineConfig::load(file).map_err(|e| DeployError::Invalid(e.to_string()))?;
        let name = config.name.clone();
        if let Some(other) = self.file_of_other(&name, file) {
            return Err(DeployError::Invalid(format!(
                "pipeline `{name}` is already defined by `{}`",
                other.display()
            )));
        }
        self.check_pipeline(&config, &base).await?;
        let _one = self.changes.lock().await;
        // The file may have named another pipeline before.
        let before: Vec<String> = self
            .pipelines
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, e)| e.file == file)
            .map(|(n, _)| n.clone())
            .collect();
        for n in before.iter().chain(std::iter::once(&name)) {
            self.stop_and_forget(n).await;
            self.state.remove(n).map_err(DeployError::State)?;
        }
        drop(_one);
        self.start_file(file)
            .await
            .map_err(|e| DeployError::Invalid(e.to_string()))?;
        Ok(name)
    }

    /// Stops pipeline `name` (it drains and commits), removes its file and
    /// forgets its desired state.
    pub async fn delete_pipeline(&self, who: &Principal, name: &str) -> Result<(), DeployError> {
        let result = async {
            self.admin(who, "delete pipelines")?;
            let file = self
                .pipelines
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .map(|e| e.file.clone())
                .ok_or_else(|| DeployError::NoPipeline(name.to_string()))?;
            let _one = self.changes.lock().await;
            self.stop_and_forget(name).await;
            std::fs::remove_file(&file)
                .map_err(|e| DeployError::State(format!("`{}`: {e}", file.display())))?;
            self.state.remove(name).map_err(DeployError::State)
        }
        .await;
        self.record(who, "delete-pipeline", name, result.as_ref().map(|_| ()));
        result
    }

    /// The file of pipeline `name` if it is not `file`.
    fn file_of_other(&self, name: &str, file: &std::path::Path) -> Option<PathBuf> {
        let pipelines = self.pipelines.read().unwrap_or_else(|e| e.into_inner());
        pipelines
            .get(name)
            .map(|e| e.file.clone())
            .filter(|f| f != file)
    }

    /// Stops a pipeline, waits for it to drain, and forgets it. Returns
    /// whether there was one.
    pub(super) async fn stop_and_forget(&self, name: &str) -> bool {
        let Some(handle) = self.pipeline(name) else {
            return false;
        };
        handle.stop();
        let _ = handle.join().await;
        self.pipelines
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        tracing::info!(pipeline = %name, "pipeline stopped and removed");
        true
    }
}
