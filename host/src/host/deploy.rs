//! Deploys: validate a module, store it, activate it (a hot swap at a batch
//! boundary), roll back — with the desired state kept and every change in
//! the audit log.
//!
//! Validation happens before anything is stored or changed: the bytes must
//! be a component within the size limit implementing a world version the
//! host knows (`Engine::load_bytes`), import nothing beyond the
//! transform's grants, and `init` must accept the pipeline's configuration
//! on a scratch instance (`Runner::new`). A refused module changes nothing:
//! the running version keeps serving.

use super::Host;
use super::audit::AuditEntry;
use super::auth::Principal;
use super::registry::{RegistryError, digest_of};
use crate::engine::{InstanceSpec, Module};
use crate::pipeline::{PipelineHandle, ProbationEnd, SwapError, Swapped};
use std::sync::Arc;
use std::time::Instant;

/// Versions kept per transform in the desired state (the oldest go; their
/// modules stay in the registry).
const MAX_VERSIONS: usize = 50;

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No such pipeline.
    #[error("no pipeline `{0}`")]
    NoPipeline(String),
    /// No such transform in the pipeline.
    #[error("pipeline `{pipeline}` has no transform `{transform}`")]
    NoTransform {
        /// The pipeline.
        pipeline: String,
        /// The transform.
        transform: String,
    },
    /// The caller may not act on this pipeline.
    #[error("`{who}` may not change pipeline `{pipeline}` (another tenant's)")]
    Forbidden {
        /// The token's name.
        who: String,
        /// The pipeline.
        pipeline: String,
    },
    /// The module was refused; the running version keeps serving.
    #[error("module refused, the running version keeps serving: {0}")]
    Refused(String),
    /// The swap did not happen.
    #[error(transparent)]
    Swap(#[from] SwapError),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The desired state could not be kept.
    #[error("cannot keep the desired state: {0}")]
    State(String),
    /// Only an admin may do this.
    #[error(
        "`{who}` may not {what}: only an admin token may (a pipeline file reaches the host's files and network)"
    )]
    AdminOnly {
        /// The token's name.
        who: String,
        /// What was asked.
        what: String,
    },
    /// A pipeline file sent through the API was refused.
    #[error("pipeline file refused: {0}")]
    Invalid(String),
    /// Nothing to roll back to.
    #[error(
        "transform `{transform}` of pipeline `{pipeline}` has no earlier version to roll back to"
    )]
    NoEarlierVersion {
        /// The pipeline.
        pipeline: String,
        /// The transform.
        transform: String,
    },
}

/// What a deploy, activation or rollback did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeployReport {
    /// The pipeline.
    pub pipeline: String,
    /// The transform.
    pub transform: String,
    /// The module's digest.
    pub digest: String,
    /// The swap, when the module was activated.
    pub swapped: Option<Swapped>,
    /// Time to validate the module (compile, check, scratch `init`), ms.
    pub validate_ms: f64,
    /// From the request to the new version taking traffic (or to the
    /// module being stored, without activation), ms.
    pub total_ms: f64,
}

impl Host {
    fn target(
        &self,
        who: &Principal,
        pipeline: &str,
        transform: &str,
    ) -> Result<(Arc<PipelineHandle>, InstanceSpec), DeployError> {
        let handle = self
            .pipeline(pipeline)
            .ok_or_else(|| DeployError::NoPipeline(pipeline.to_string()))?;
        if !who.may_act_on(handle.live().tenant()) {
            return Err(DeployError::Forbidden {
                who: who.name.clone(),
                pipeline: pipeline.to_string(),
            });
        }
        let spec = handle
            .spec(transform)
            .cloned()
            .ok_or_else(|| DeployError::NoTransform {
                pipeline: pipeline.to_string(),
                transform: transform.to_string(),
            })?;
        Ok((handle, spec))
    }

    /// Compiles and checks `bytes` for a transform with `spec`, and runs its
    /// `init` on a scratch instance.
    pub(super) async fn validate(
        &self,
        spec: &InstanceSpec,
        bytes: Arc<Vec<u8>>,
    ) -> Result<Arc<Module>, DeployError> {
        let engine = self
            .engines
            .for_limits(std::iter::once(&spec.limits))
            .map_err(|e| DeployError::Refused(e.to_string()))?;
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || {
            let label = std::path::PathBuf::from(format!("upload {}", digest_of(&bytes)));
            let module = engine
                .load_bytes(&label, &bytes)
                .map_err(|e| DeployError::Refused(e.to_string()))?;
            // A scratch instance: init must accept the configuration.
            crate::engine::Runner::new(module.clone(), spec)
                .map_err(|e| DeployError::Refused(e.to_string()))?;
            Ok(module)
        })
        .await
        .map_err(|e| DeployError::Refused(format!("validation failed: {e}")))?
    }

    fn audit(
        &self,
        who: &Principal,
        action: &str,
        pipeline: &str,
        transform: Option<&str>,
        digest: Option<&str>,
        result: Result<(), &DeployError>,
    ) {
        let (outcome, detail) = match result {
            Ok(()) => ("done", None),
            Err(e @ DeployError::Forbidden { .. }) => ("forbidden", Some(e.to_string())),
            Err(e) => ("refused", Some(e.to_string())),
        };
        self.audit.record(AuditEntry {
            at: String::new(),
            who: who.name.clone(),
            action: action.to_string(),
            pipeline: pipeline.to_string(),
            transform: transform.map(str::to_string),
            digest: digest.map(str::to_string),
            outcome: outcome.to_string(),
            detail,
        });
    }

    /// Records an upload refused before its module was read (too large).
    pub fn audit_refused_upload(
        &self,
        who: &Principal,
        pipeline: &str,
        transform: &str,
        activate: bool,
        detail: &str,
    ) {
        self.audit.record(AuditEntry {
            at: String::new(),
            who: who.name.clone(),
            action: if activate { "deploy" } else { "upload" }.to_string(),
            pipeline: pipeline.to_string(),
            transform: Some(transform.to_string()),
            digest: None,
            outcome: "refused".to_string(),
            detail: Some(detail.to_string()),
        });
    }

    /// Validates and stores a module for a transform of a pipeline, and
    /// (when `activate`) swaps it in.
    pub async fn deploy(
        &self,
        who: &Principal,
        pipeline: &str,
        transform: &str,
        bytes: Vec<u8>,
        activate: bool,
    ) -> Result<DeployReport, DeployError> {
        let digest = digest_of(&bytes);
        let result = self
            .deploy_inner(who, pipeline, transform, bytes, activate)
            .await;
        self.audit(
            who,
            if activate { "deploy" } else { "upload" },
            pipeline,
            Some(transform),
            Some(&digest),
            result.as_ref().map(|_| ()),
        );
        result
    }

    async fn deploy_inner(
        &self,
        who: &Principal,
        pipeline: &str,
        transform: &str,
        bytes: Vec<u8>,
        activate: bool,
    ) -> Result<DeployReport, DeployError> {
        let started = Instant::now();
        let (handle, spec) = self.target(who, pipeline, transform)?;
        let bytes = Arc::new(bytes);
        let module = self.validate(&spec, bytes.clone()).await?;
        let validate_ms = ms(started);
        let digest = self.registry.put(&bytes).await?;
        let swapped = if activate {
            Some(
                self.switch(&handle, transform, module, &digest, Push::Activate)
                    .await?,
            )
        } else {
            // Stored, not active: listed among the transform's versions.
            let _one = self.changes.lock().await;
            let mut state = self.state.load(pipeline).map_err(DeployError::State)?;
            let stored = state.stored.entry(transform.to_string()).or_default();
            stored.retain(|d| d != &digest);
            stored.push(digest.clone());
            let excess = stored.len().saturating_sub(MAX_VERSIONS);
            stored.drain(..excess);
            self.state.save(&state).map_err(DeployError::State)?;
            self.publish_state(&state).await;
            None
        };
        Ok(DeployReport {
            pipeline: pipeline.to_string(),
            transform: transform.to_string(),
            digest,
            swapped,
            validate_ms,
            total_ms: ms(started),
        })
    }

    /// Activates a stored module for a transform.
    pub async fn activate(
        &self,
        who: &Principal,
        pipeline: &str,
        transform: &str,
        digest: &str,
    ) -> Result<DeployReport, DeployError> {
        let result = async {
            let (handle, spec) = self.target(who, pipeline, transform)?;
            self.activate_stored(&handle, &spec, transform, digest, Push::Activate)
                .await
        }
        .await;
        self.audit(
            who,
            "activate",
            pipeline,
            Some(transform),
            Some(digest),
            result.as_ref().map(|_| ()),
        );
        result
    }

    /// Activates the version that was active before the current one.
    pub async fn rollback(
        &self,
        who: &Principal,
        pipeline: &str,
        transform: &str,
    ) -> Result<DeployReport, DeployError> {
        let mut target = None;
        let result = async {
            let (handle, spec) = self.target(who, pipeline, transform)?;
            let state = self.state.load(pipeline).map_err(DeployError::State)?;
            let versions = state.transforms.get(transform).cloned().unwrap_or_default();
            let Some(previous) = versions.len().checked_sub(2).and_then(|i| versions.get(i)) else {
                return Err(DeployError::NoEarlierVersion {
                    pipeline: pipeline.to_string(),
                    transform: transform.to_string(),
                });
            };
            target = Some(previous.clone());
            self.activate_stored(&handle, &spec, transform, previous, Push::Rollback)
                .await
        }
        .await;
        self.audit(
            who,
            "rollback",
            pipeline,
            Some(transform),
            target.as_deref(),
            result.as_ref().map(|_| ()),
        );
        result
    }

    /// Puts a version that was on probation when the host stopped on
    /// probation again, on a pipeline that just started on the version
    /// before it (see `Host::start_file`).
    pub(super) async fn resume_probation(
        &self,
        handle: &Arc<PipelineHandle>,
        transform: &str,
        digest: &str,
    ) -> Result<DeployReport, DeployError> {
        let spec = handle
            .spec(transform)
            .cloned()
            .ok_or_else(|| DeployError::NoTransform {
                pipeline: handle.name().to_string(),
                transform: transform.to_string(),
            })?;
        let result = self
            .activate_stored(handle, &spec, transform, digest, Push::Activate)
            .await;
        self.audit.record(AuditEntry {
            at: String::new(),
            who: "sluice".into(),
            action: "resume-probation".into(),
            pipeline: handle.name().to_string(),
            transform: Some(transform.to_string()),
            digest: Some(digest.to_string()),
            outcome: if result.is_ok() { "done" } else { "refused" }.into(),
            detail: result.as_ref().err().map(ToString::to_string),
        });
        result
    }

    async fn activate_stored(
        &self,
        handle: &Arc<PipelineHandle>,
        spec: &InstanceSpec,
        transform: &str,
        digest: &str,
        push: Push,
    ) -> Result<DeployReport, DeployError> {
        let started = Instant::now();
        let bytes = Arc::new(self.registry.get(digest).await?);
        let module = self.validate(spec, bytes).await?;
        let validate_ms = ms(started);
        let swapped = self.switch(handle, transform, module, digest, push).await?;
        Ok(DeployReport {
            pipeline: handle.name().to_string(),
            transform: transform.to_string(),
            digest: digest.to_string(),
            swapped: Some(swapped),
            validate_ms,
            total_ms: ms(started),
        })
    }

    /// Swaps `module` in and records it in the desired state.
    async fn switch(
        &self,
        handle: &Arc<PipelineHandle>,
        transform: &str,
        module: Arc<Module>,
        digest: &str,
        push: Push,
    ) -> Result<Swapped, DeployError> {
        // One change at a time per host: the desired state follows the
        // order in which swaps happen.
        let _one = self.changes.lock().await;
        let (rolled_tx, rolled_rx) = tokio::sync::oneshot::channel();
        let watch = matches!(push, Push::Activate).then_some(rolled_tx);
        let swapped = handle.swap(transform, module, watch).await?;
        // An automatic rollback (the new version tripped its breaker on
        // probation) is kept in the desired state and the audit log too.
        {
            let (state, audit, changes, shared) = (
                self.state.clone(),
                self.audit.clone(),
                self.changes.clone(),
                self.shared.get().cloned(),
            );
            let (pipeline, transform, digest) = (
                handle.name().to_string(),
                transform.to_string(),
                digest.to_string(),
            );
            tokio::spawn(async move {
                // Closed without an answer: the pipeline stopped during the
                // probation, which the desired state keeps.
                let Ok(end) = rolled_rx.await else {
                    return;
                };
                let _one = changes.lock().await;
                let reason = match end {
                    ProbationEnd::Passed => {
                        let result = state.load(&pipeline).and_then(|mut st| {
                            if st.probation.get(&transform) == Some(&digest) {
                                st.probation.remove(&transform);
                                state.save(&st)?;
                            }
                            Ok(st)
                        });
                        match result {
                            Ok(st) => {
                                if let Some(shared) = &shared
                                    && let Err(e) = shared.publish(&st).await
                                {
                                    tracing::warn!(pipeline = %pipeline, error = %e, "the other hosts will not see that the version passed its probation");
                                }
                            }
                            Err(e) => {
                                tracing::error!(pipeline = %pipeline, error = %e, "cannot keep in the desired state that the version passed its probation")
                            }
                        }
                        return;
                    }
                    ProbationEnd::RolledBack(reason) => reason,
                };
                let result = state.load(&pipeline).and_then(|mut st| {
                    let versions = st.transforms.entry(transform.clone()).or_default();
                    if versions.last() == Some(&digest) {
                        versions.pop();
                    }
                    if st.probation.get(&transform) == Some(&digest) {
                        st.probation.remove(&transform);
                    }
                    state.save(&st).map(|_| st)
                });
                if let (Ok(st), Some(shared)) = (&result, &shared)
                    && let Err(e) = shared.publish(st).await
                {
                    tracing::error!(pipeline = %pipeline, error = %e, "the other hosts will not see the automatic rollback");
                }
                let result = result.map(|_| ());
                if let Err(e) = &result {
                    tracing::error!(pipeline = %pipeline, error = %e, "cannot keep the automatic rollback in the desired state");
                }
                audit.record(AuditEntry {
                    at: String::new(),
                    who: "sluice".into(),
                    action: "auto-rollback".into(),
                    pipeline,
                    transform: Some(transform),
                    digest: Some(digest),
                    outcome: if result.is_ok() { "done" } else { "refused" }.into(),
                    detail: Some(reason),
                });
            });
        }
        let mut state = self.state.load(handle.name()).map_err(DeployError::State)?;
        let versions = state.transforms.entry(transform.to_string()).or_default();
        match push {
            Push::Activate => {
                if versions.is_empty() {
                    versions.push(swapped.previous.clone());
                }
                // Distinct versions, in the order they were last activated,
                // at most MAX_VERSIONS: activating one again moves it last.
                versions.retain(|v| v != digest);
                versions.push(digest.to_string());
                let excess = versions.len().saturating_sub(MAX_VERSIONS);
                versions.drain(..excess);
                // On probation until it passes (cleared above when it does).
                state
                    .probation
                    .insert(transform.to_string(), digest.to_string());
            }
            Push::Rollback => {
                versions.pop();
                state.probation.remove(transform);
            }
        }
        self.state.save(&state).map_err(DeployError::State)?;
        self.publish_state(&state).await;
        tracing::info!(pipeline = %handle.name(), transform, digest, previous = %swapped.previous, waited_ms = swapped.waited_ms, "module activated");
        Ok(swapped)
    }

    /// Pauses or resumes a pipeline.
    pub fn set_paused(
        &self,
        who: &Principal,
        pipeline: &str,
        paused: bool,
    ) -> Result<(), DeployError> {
        let result = (|| {
            let handle = self
                .pipeline(pipeline)
                .ok_or_else(|| DeployError::NoPipeline(pipeline.to_string()))?;
            if !who.may_act_on(handle.live().tenant()) {
                return Err(DeployError::Forbidden {
                    who: who.name.clone(),
                    pipeline: pipeline.to_string(),
                });
            }
            if paused {
                handle.pause();
            } else {
                handle.resume();
            }
            Ok(())
        })();
        self.audit(
            who,
            if paused { "pause" } else { "resume" },
            pipeline,
            None,
            None,
            result.as_ref().copied(),
        );
        result
    }

    /// Versions of a transform uploaded without being activated (and not
    /// activated since), oldest first.
    pub fn stored_versions(&self, pipeline: &str, transform: &str) -> Vec<String> {
        let Ok(state) = self.state.load(pipeline) else {
            return Vec::new();
        };
        let active = state.transforms.get(transform).cloned().unwrap_or_default();
        state
            .stored
            .get(transform)
            .map(|s| s.iter().filter(|d| !active.contains(d)).cloned().collect())
            .unwrap_or_default()
    }

    /// The versions of a transform, oldest first (the last is active).
    pub fn versions(
        &self,
        who: &Principal,
        pipeline: &str,
        transform: &str,
    ) -> Result<Vec<String>, DeployError> {
        let (handle, _) = self.target(who, pipeline, transform)?;
        let state = self.state.load(pipeline).map_err(DeployError::State)?;
        Ok(match state.transforms.get(transform) {
            Some(v) if !v.is_empty() => v.clone(),
            _ => handle
                .live()
                .transforms()
                .into_iter()
                .filter(|t| t.name == transform)
                .map(|t| t.digest)
                .collect(),
        })
    }
}

/// How a switch changes the version list.
#[derive(Debug, Clone, Copy)]
enum Push {
    Activate,
    Rollback,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
