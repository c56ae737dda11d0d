//! The host: many tenants' pipelines in one long-running process
//! (`sluice serve`).
//!
//! A [`Host`] owns the engines (one plain engine with one pool sized for the
//! host, one epoch ticker and one set of compiled modules; a fuel-metered
//! engine only if some pipeline asks for fuel), the metrics registry and the
//! running pipelines, each behind a [`PipelineHandle`]. Every pipeline is
//! independent: its own tenant, transforms, sinks, in-flight budget, circuit
//! breaker and restart policy; one that fails is marked failed alone, with
//! the reason, and the others keep running.

pub mod audit;
pub mod auth;
pub mod config;
pub mod deploy;
pub mod manage;
pub mod preparing;
pub mod registry;
pub mod shared;
pub mod state;
pub mod watch;

pub use config::{HostConfig, HostConfigError};
pub use deploy::{DeployError, DeployReport};

use crate::config::{ConfigError, Guarantee, PipelineConfig};
use crate::engine::{EngineOptions, Engines, LoadError};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineError, PipelineHandle, RestartPolicy, Snapshot, State};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Why a pipeline file was refused by the host.
#[derive(Debug, thiserror::Error)]
pub enum RefusedPipeline {
    /// It does not parse or validate (the message names file, line, field).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Another pipeline has the same name.
    #[error("pipeline file `{file}`: a pipeline named `{name}` is already defined by `{other}`")]
    DuplicateName {
        /// The refused file.
        file: PathBuf,
        /// The name.
        name: String,
        /// The file that has it.
        other: PathBuf,
    },
    /// Another pipeline has the same Kafka transactional id.
    #[error(
        "pipeline file `{file}`: transactional id `{id}` is already used by pipeline `{other}` (two producers with one id fence each other)"
    )]
    DuplicateTransactionalId {
        /// The refused file.
        file: PathBuf,
        /// The id.
        id: String,
        /// The pipeline that has it.
        other: String,
    },
    /// Its transforms could not be prepared (module refused, table, init).
    #[error(transparent)]
    Setup(#[from] PipelineError),
}

/// Why a host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The engine (its pool) could not be made.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The module registry cannot be opened.
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    /// The data directory cannot be used.
    #[error("data directory `{}`: {source}", .path.display())]
    Data {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A pipeline the host knows: running (or ended) or refused.
#[derive(Debug)]
struct Entry {
    file: PathBuf,
    transactional_id: Option<String>,
    handle: Arc<PipelineHandle>,
}

/// Many pipelines in one process, on shared engines.
pub struct Host {
    config: HostConfig,
    engines: Engines,
    metrics: Arc<Metrics>,
    pipelines: RwLock<BTreeMap<String, Entry>>,
    refused: RwLock<Vec<(PathBuf, String)>>,
    /// Pipelines being prepared (compiling their transforms).
    preparing: preparing::PreparingList,
    registry: registry::Registry,
    state: state::StateStore,
    audit: Arc<audit::Audit>,
    /// Serialises changes of the desired state.
    changes: Arc<tokio::sync::Mutex<()>>,
    /// The desired state shared with other hosts, once connected.
    shared: std::sync::OnceLock<Arc<shared::SharedState>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").finish_non_exhaustive()
    }
}

impl Host {
    /// A host with `config`: reserves the instance pool now (an error says
    /// how many slots would fit when it cannot).
    pub fn new(config: HostConfig) -> Result<Arc<Self>, HostError> {
        let engines = Engines::new(EngineOptions {
            slots: config.instance_slots,
            require_pool: true,
            cache_dir: Some(config.data_dir.join("components")),
            ..EngineOptions::default()
        });
        engines.plain()?;
        let data = |source| HostError::Data {
            path: config.data_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&config.data_dir).map_err(data)?;
        let registry = registry::Registry::open(&config.registry, &config.data_dir)?;
        let state = state::StateStore::open(&config.data_dir).map_err(data)?;
        let audit = Arc::new(audit::Audit::open(&config.data_dir).map_err(data)?);
        Ok(Arc::new(Host {
            config,
            engines,
            metrics: Arc::new(Metrics::new()),
            pipelines: RwLock::new(BTreeMap::new()),
            refused: RwLock::new(Vec::new()),
            preparing: preparing::PreparingList::default(),
            registry,
            state,
            audit,
            changes: Arc::new(tokio::sync::Mutex::new(())),
            shared: std::sync::OnceLock::new(),
        }))
    }

    /// Connects to the shared desired state (`[state]` of the host file),
    /// reads it, and follows it. Call before [`start_all`](Self::start_all).
    pub async fn share_state(self: &Arc<Self>) -> Result<(), String> {
        let Some(c) = self.config.shared_state.clone() else {
            return Ok(());
        };
        let shared = shared::SharedState::connect(c.topic()).await?;
        let _ = self.shared.set(Arc::new(shared));
        self.join_shared_state().await
    }

    /// The host's configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// The host's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The shared engines.
    pub fn engines(&self) -> &Engines {
        &self.engines
    }

    /// Pipeline files of the host's pipeline directory, in name order.
    pub fn pipeline_files(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.config.pipelines)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
            .collect();
        files.sort();
        Ok(files)
    }

    /// Starts every pipeline file of the pipeline directory. A file that is
    /// refused is reported (and kept for the status page); the others start.
    pub async fn start_all(self: &Arc<Self>) -> std::io::Result<Vec<RefusedPipeline>> {
        let mut refused = Vec::new();
        for file in self.pipeline_files()? {
            if let Err(e) = self.start_file(&file).await {
                tracing::error!(file = %file.display(), error = %e, "pipeline refused");
                self.refused
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((file.clone(), e.to_string()));
                refused.push(e);
            }
        }
        Ok(refused)
    }

    /// Loads, checks and starts one pipeline file.
    pub async fn start_file(self: &Arc<Self>, file: &Path) -> Result<(), RefusedPipeline> {
        let (mut config, base) = PipelineConfig::load(file)?;
        self.check_unique(file, &config)?;
        let (desired, unproven) = self.apply_desired_state(&mut config).await?;
        let name = config.name.clone();
        let tenant = config.tenant.clone();
        let transactional_id = (config.delivery.guarantee == Guarantee::ExactlyOnce)
            .then(|| config.delivery.transactional_id.clone())
            .flatten();
        let restart = config
            .restart
            .clone()
            .unwrap_or_else(|| self.config.restart.clone());
        let span = tracing::info_span!("pipeline", pipeline = %name, tenant = %tenant);
        let transforms: Vec<String> = config.transforms.iter().map(|t| t.name.clone()).collect();
        tracing::info!(pipeline = %name, tenant = %tenant, file = %file.display(), transforms = %transforms.join(" "),
            "preparing pipeline: compiling its transforms");
        let prepared_since = std::time::Instant::now();
        let preparing = self.preparing.begin(preparing::Preparing {
            name: name.clone(),
            tenant: tenant.clone(),
            file: file.to_path_buf(),
            transforms,
            elapsed: std::time::Duration::ZERO,
        });
        let mut pipeline = tracing::Instrument::instrument(
            Pipeline::prepare(config, base, &self.engines, &Default::default()),
            span,
        )
        .await?;
        // File sources resume where the last run stopped.
        pipeline.keep_positions(crate::source::file::positions::file_for(
            &self.config.data_dir.join("positions"),
            &name,
        ));
        self.record_file_versions(&pipeline, desired).await;
        let live = pipeline.live(self.metrics.clone());
        let handle = {
            // Checked again: another file may have taken the name meanwhile.
            let mut pipelines = self.pipelines.write().unwrap_or_else(|e| e.into_inner());
            if let Some(other) = pipelines.get(&name) {
                return Err(RefusedPipeline::DuplicateName {
                    file: file.to_path_buf(),
                    name,
                    other: other.file.clone(),
                });
            }
            let handle = Arc::new(PipelineHandle::spawn(pipeline, live, restart));
            let prepared_ms = prepared_since.elapsed().as_millis();
            drop(preparing);
            tracing::info!(pipeline = %name, tenant = %tenant, file = %file.display(), prepared_ms, "pipeline started");
            pipelines.insert(
                name,
                Entry {
                    file: file.to_path_buf(),
                    transactional_id,
                    handle: handle.clone(),
                },
            );
            handle
        };
        // A version that was on probation when the host stopped goes on
        // probation again (the pipeline started on the version before it):
        // it is judged on its own records, and rolled back if it fails them.
        for (transform, digest, previous) in unproven {
            let resumed = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                self.resume_probation(&handle, &transform, &digest),
            )
            .await;
            let note = match resumed {
                Ok(Ok(_)) => format!(
                    "transform `{transform}`: version {digest} was on probation when the host stopped; it is on probation again"
                ),
                Ok(Err(e)) => format!(
                    "transform `{transform}`: version {digest} was on probation when the host stopped and cannot be put on probation again ({e}); the pipeline runs {previous}, the last version that passed it"
                ),
                Err(_) => format!(
                    "transform `{transform}`: version {digest} was on probation when the host stopped and could not be swapped in again within 60 s; the pipeline runs {previous}, the last version that passed it"
                ),
            };
            tracing::warn!(pipeline = %handle.name(), "{note}");
            handle.live().note_error(note);
        }
        Ok(())
    }

    /// Points the transforms of `config` at their active versions in the
    /// desired state (kept across restarts). Returns the state.
    async fn apply_desired_state(
        &self,
        config: &mut PipelineConfig,
    ) -> Result<(state::PipelineState, Vec<(String, String, String)>), RefusedPipeline> {
        let mut desired = self
            .state
            .load(&config.name)
            .map_err(|e| RefusedPipeline::Setup(PipelineError::Internal(e)))?;
        // A version that was still on probation when the host stopped has
        // not shown it works: start on the one before it.
        let unproven = desired.drop_unproven();
        for (transform, dropped, active) in &unproven {
            tracing::info!(pipeline = %config.name, transform = %transform, dropped = %dropped, active = %active,
                "a version was on probation when the host stopped: starting on the last version that passed it, then putting it on probation again");
        }
        if !unproven.is_empty()
            && let Err(e) = self.state.save(&desired)
        {
            tracing::error!(pipeline = %config.name, error = %e, "cannot keep the desired state");
        }
        for t in &mut config.transforms {
            if let Some(digest) = desired.active(&t.name) {
                let path = self.registry.local_file(digest).await.map_err(|e| {
                    RefusedPipeline::Setup(PipelineError::Internal(format!(
                        "pipeline `{}`, transform `{}`: its active version cannot be loaded: {e}",
                        config.name, t.name
                    )))
                })?;
                tracing::info!(pipeline = %config.name, transform = %t.name, digest, "starting with the active version of the desired state");
                t.module = path;
            }
        }
        Ok((desired, unproven))
    }

    /// Stores the modules a pipeline started with in the registry, and
    /// makes them the first version of transforms with no desired state,
    /// so that a later rollback can come back to them.
    async fn record_file_versions(&self, pipeline: &Pipeline, mut desired: state::PipelineState) {
        let mut changed = false;
        for module in pipeline.modules() {
            let name = module.0;
            if desired.active(&name).is_some() {
                continue;
            }
            let stored = match std::fs::read(module.1.path()) {
                Ok(bytes) => self.registry.put(&bytes).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match stored {
                Ok(digest) => {
                    desired.transforms.insert(name, vec![digest]);
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!(pipeline = %pipeline.config().name, transform = %name, error = %e, "cannot store the module in the registry: a rollback to it will not be possible");
                }
            }
        }
        if changed && let Err(e) = self.state.save(&desired) {
            tracing::warn!(pipeline = %pipeline.config().name, error = %e, "cannot keep the desired state");
        }
    }

    fn check_unique(&self, file: &Path, config: &PipelineConfig) -> Result<(), RefusedPipeline> {
        let pipelines = self.pipelines.read().unwrap_or_else(|e| e.into_inner());
        if let Some(other) = pipelines.get(&config.name) {
            return Err(RefusedPipeline::DuplicateName {
                file: file.to_path_buf(),
                name: config.name.clone(),
                other: other.file.clone(),
            });
        }
        if config.delivery.guarantee == Guarantee::ExactlyOnce
            && let Some(id) = &config.delivery.transactional_id
            && let Some((other, _)) = pipelines
                .iter()
                .find(|(_, e)| e.transactional_id.as_deref() == Some(id))
        {
            return Err(RefusedPipeline::DuplicateTransactionalId {
                file: file.to_path_buf(),
                id: id.clone(),
                other: other.clone(),
            });
        }
        Ok(())
    }

    /// The handle of pipeline `name`.
    pub fn pipeline(&self, name: &str) -> Option<Arc<PipelineHandle>> {
        self.pipelines
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|e| e.handle.clone())
    }

    /// Every pipeline's handle, in name order.
    pub fn handles(&self) -> Vec<Arc<PipelineHandle>> {
        self.pipelines
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|e| e.handle.clone())
            .collect()
    }

    /// Every pipeline's snapshot, in name order.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.handles().iter().map(|h| h.snapshot()).collect()
    }

    /// The tenant of pipeline `name`.
    pub fn tenant_of(&self, name: &str) -> Option<String> {
        self.pipeline(name).map(|h| h.live().tenant().to_string())
    }

    /// The newest `limit` dead-letter entries of pipeline `name`, as JSON,
    /// for a caller who may act on it.
    pub async fn dead_letters(
        &self,
        who: &auth::Principal,
        name: &str,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, DeployError> {
        let file = {
            let pipelines = self.pipelines.read().unwrap_or_else(|e| e.into_inner());
            let entry = pipelines
                .get(name)
                .ok_or_else(|| DeployError::NoPipeline(name.to_string()))?;
            if !who.may_act_on(entry.handle.live().tenant()) {
                return Err(DeployError::Forbidden {
                    who: who.name.clone(),
                    pipeline: name.to_string(),
                });
            }
            entry.file.clone()
        };
        tokio::task::spawn_blocking(move || {
            let (config, base) =
                PipelineConfig::load(&file).map_err(|e| DeployError::State(e.to_string()))?;
            let entries = crate::replay::read_newest(&config, &base, limit)
                .map_err(|e| DeployError::State(e.to_string()))?;
            let skip = entries.len().saturating_sub(limit);
            Ok(entries.iter().skip(skip).map(|e| e.to_json()).collect())
        })
        .await
        .map_err(|e| DeployError::State(e.to_string()))?
    }

    /// Pipelines being prepared now (compiling their transforms), oldest
    /// first.
    pub fn preparing(&self) -> Vec<preparing::Preparing> {
        self.preparing.list()
    }

    /// Pipeline files refused at start, with why.
    pub fn refused(&self) -> Vec<(PathBuf, String)> {
        self.refused
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The metrics text, with the gauges read now.
    pub fn metrics_text(&self) -> String {
        for h in self.handles() {
            h.snapshot();
        }
        self.metrics.encode()
    }

    /// Stops every pipeline: each finishes its in-flight batches, commits
    /// and ends. Returns the pipelines still running after `timeout`.
    pub async fn shutdown(&self, timeout: Duration) -> Vec<String> {
        let handles = self.handles();
        for h in &handles {
            h.stop();
        }
        let all = futures::future::join_all(handles.iter().map(|h| h.join()));
        if tokio::time::timeout(timeout, all).await.is_ok() {
            return Vec::new();
        }
        handles
            .iter()
            .filter(|h| !h.is_done())
            .map(|h| h.name().to_string())
            .collect()
    }

    /// Waits until every pipeline has ended (bounded sources drained, or
    /// failed) — for tests and batch hosts.
    pub async fn wait_all(&self) {
        for h in self.handles() {
            let _ = h.join().await;
        }
    }

    /// Counts of pipelines per state.
    pub fn states(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for h in self.handles() {
            *m.entry(h.live().state().as_str()).or_default() += 1;
        }
        m
    }

    /// Whether any pipeline is in `state`.
    pub fn any_in(&self, state: State) -> bool {
        self.handles().iter().any(|h| h.live().state() == state)
    }
}

/// The restart policy `sluice serve` gives pipelines that set none.
pub fn default_restart() -> RestartPolicy {
    RestartPolicy::default()
}
