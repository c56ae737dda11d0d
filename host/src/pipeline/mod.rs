//! The pipeline: source → micro-batches → transform chain → sinks and the
//! dead-letter queue → ledger → commit.
//!
//! A batch is handled when every record read for it is either in its sink or
//! in the dead-letter queue; only then is it marked handled in the ledger and
//! may the source commit past it. If a sink or the dead-letter queue cannot be
//! written (after retries), the run stops with an error instead of skipping
//! records.
//!
//! - [`chain`]: one batch through the transforms.
//! - [`deliver`]: outputs and dead letters into sinks (plain or transactional).
//! - [`run`]: the one restart loop, and what a session wires together.
//! - [`session`]: the coordinator: batchers per partition, workers, ledger,
//!   commits, rebalances.
//! - [`summary`]: what a run did.

mod breaker;
mod chain;
mod commit;
pub(crate) mod deliver;
mod handle;
pub mod live;
mod reorder;
mod run;
mod session;
mod summary;
pub mod swap;

pub use handle::PipelineHandle;
pub use live::{Live, PartitionLag, ProbationView, Snapshot, State, UndeclaredOutput};
pub use summary::{StepStats, Summary};
pub use swap::{ProbationEnd, SwapError, Swapped};

use crate::config::{ConfigError, Guarantee, PipelineConfig};
use crate::dlq::DlqError;
use crate::engine::{
    Engine, Engines, InstanceSpec, LoadError, Module, RefTables, Runner, TableError, TransformError,
};
use crate::project::{BuildError, resolve_module};
pub use crate::retry::RestartPolicy;
use crate::sink::{SinkError, TxnError};
use crate::source::SourceError;
use deliver::TransformInfo;
use session::WorkerRunners;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a pipeline could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Bad pipeline file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A transform project did not build.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A module was refused.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A reference table could not be loaded.
    #[error(transparent)]
    Table(#[from] TableError),
    /// A transform refused its configuration or could not start.
    #[error(transparent)]
    Transform(#[from] TransformError),
    /// A granted directory does not exist.
    #[error(
        "transform `{transform}`: the granted directory `{path}` (`grants.files`) is not a directory"
    )]
    Grant {
        /// The transform.
        transform: String,
        /// The resolved path.
        path: PathBuf,
    },
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A sink failed.
    #[error("{}", sink_message(.0))]
    Sink(SinkError),
    /// The dead-letter queue failed.
    #[error("{0} (the run stops; records of this batch are not committed)")]
    Dlq(DlqError),
    /// A Kafka transaction failed (exactly-once).
    #[error("{0}")]
    Transaction(#[from] TxnError),
    /// A transform failed too many records: the pipeline stops.
    #[error(transparent)]
    CircuitOpen(#[from] breaker::CircuitOpen),
    /// Setting up one transform failed (its module cannot be built or
    /// loaded, a table cannot be read): says where in which pipeline file.
    #[error("pipeline `{}`{}, transform `{transform}`: {error}", .file.display(), .line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Setup {
        /// The pipeline file.
        file: PathBuf,
        /// The line of the transform's table (or its `module` field).
        line: Option<usize>,
        /// The transform.
        transform: String,
        /// What failed.
        error: Box<PipelineError>,
    },
    /// The source failed, and records it read before could not be
    /// delivered in time (the message names them).
    #[error("{0}")]
    Undelivered(String),
    /// A bug in the host.
    #[error("internal error: {0}")]
    Internal(String),
}

fn sink_message(e: &SinkError) -> String {
    match e {
        SinkError::Config { .. } => e.to_string(),
        _ => format!("{e} (the run stops; records of this batch are not committed)"),
    }
}

// Written out rather than `#[from]`, so that the error is not also reported
// as its own source (the message already holds it).
impl From<SinkError> for PipelineError {
    fn from(e: SinkError) -> Self {
        PipelineError::Sink(e)
    }
}

impl From<DlqError> for PipelineError {
    fn from(e: DlqError) -> Self {
        PipelineError::Dlq(e)
    }
}

impl PipelineError {
    /// Whether starting the pipeline again may help — a source, sink or
    /// dead-letter queue that was down, a Kafka transaction aborted — so
    /// its restart policy applies. A refused module, a bad configuration,
    /// an open circuit breaker or a fenced transactional writer (a newer
    /// instance took over: starting again would fence it back) fail the
    /// pipeline at once.
    pub fn worth_restarting(&self) -> bool {
        match self {
            PipelineError::Source(_) | PipelineError::Dlq(_) | PipelineError::Undelivered(_) => {
                true
            }
            PipelineError::Sink(e) => !matches!(e, SinkError::Config { .. }),
            PipelineError::Transaction(e) => !matches!(e, TxnError::Fatal(_)),
            _ => false,
        }
    }
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Capture cargo's output when building transform projects (tests).
    pub quiet_build: bool,
}

/// A transform of the chain, compiled and configured, ready to instantiate.
#[derive(Debug, Clone)]
pub struct PreparedTransform {
    /// The compiled module.
    pub module: Arc<Module>,
    /// Its configuration, tables and limits.
    pub spec: InstanceSpec,
}

/// Builds, loads and compiles the transforms of a pipeline (once, whatever
/// the number of workers).
pub fn prepare_transforms(
    config: &PipelineConfig,
    base: &Path,
    engine: &Engine,
    opts: &RunOptions,
) -> Result<Vec<PreparedTransform>, PipelineError> {
    let mut prepared = Vec::with_capacity(config.transforms.len());
    for (i, t) in config.transforms.iter().enumerate() {
        let at = |field: &str, error: PipelineError| PipelineError::Setup {
            file: config.origin.path.clone(),
            line: config.origin.transform_line(i, Some(field)),
            transform: t.name.clone(),
            error: Box::new(error),
        };
        let module_path = resolve_module(&base.join(&t.module), opts.quiet_build)
            .map_err(|e| at("module", e.into()))?;
        let module = engine
            .load_file(&module_path)
            .map_err(|e| at("module", e.into()))?;
        let mut tables = RefTables::default();
        for (name, table) in &t.tables {
            tables
                .load(name, &base.join(&table.path), &table.key)
                .map_err(|e| at("tables", e.into()))?;
        }
        let grants = t.grants.clone().resolved(base);
        if let Some(dir) = &grants.files
            && !dir.is_dir()
        {
            return Err(at(
                "grants",
                PipelineError::Grant {
                    transform: t.name.clone(),
                    path: dir.clone(),
                },
            ));
        }
        let spec = InstanceSpec {
            name: Arc::from(t.name.as_str()),
            config: t.config.to_string(),
            tables: Arc::new(tables),
            limits: t.limits.clone(),
            grants,
        };
        tracing::info!(pipeline = %config.name, transform = %t.name, module = %module_path.display(), digest = %module.digest(), grants = %spec.grants.summary(), "transform loaded");
        prepared.push(PreparedTransform { module, spec });
    }
    Ok(prepared)
}

/// One set of instances of the chain (calls each transform's `init`).
pub fn instantiate(prepared: &[PreparedTransform]) -> Result<Vec<Runner>, PipelineError> {
    prepared
        .iter()
        .map(|t| Runner::new(t.module.clone(), t.spec.clone()).map_err(PipelineError::from))
        .collect()
}

/// A pipeline ready to run.
pub struct Pipeline {
    config: PipelineConfig,
    base: PathBuf,
    transforms: Arc<Vec<TransformInfo>>,
    /// Each transform's configuration, tables, limits and grants (a swap
    /// starts the new module with the same).
    specs: Vec<InstanceSpec>,
    workers: Vec<WorkerRunners>,
    /// Items to run instead of the configured source (`sluice dlq replay`).
    replay: Option<(String, Vec<crate::source::SourceItem>)>,
    /// Where a source with no upstream state keeps what it delivered.
    positions: Option<PathBuf>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.config.name)
            .finish()
    }
}

impl Pipeline {
    /// Loads a pipeline file: builds, compiles and initialises transforms
    /// (one set of instances per worker) on an engine of its own. Sources
    /// and sinks open in [`run`](Self::run).
    pub async fn load(path: &Path, opts: &RunOptions) -> Result<Self, PipelineError> {
        let (config, base) = PipelineConfig::load(path)?;
        Self::prepare(config, base, &Engines::default(), opts).await
    }

    /// Builds, compiles and initialises a parsed pipeline's transforms on
    /// `engines` (a host's shared engines).
    pub async fn prepare(
        config: PipelineConfig,
        base: PathBuf,
        engines: &Engines,
        opts: &RunOptions,
    ) -> Result<Self, PipelineError> {
        crate::source::validate(&config.source, &base)?;
        let engine = engines.for_limits(config.transforms.iter().map(|t| &t.limits))?;
        let (result, config, base) = {
            let opts = opts.clone();
            let span = tracing::Span::current();
            tokio::task::spawn_blocking(move || {
                let _entered = span.enter();
                let workers = prepare_transforms(&config, &base, &engine, &opts).and_then(|p| {
                    let infos: Vec<TransformInfo> = p
                        .iter()
                        .map(|t| TransformInfo {
                            name: t.spec.name.to_string(),
                            digest: t.module.digest().to_string(),
                        })
                        .collect();
                    let workers = (0..config.delivery.workers)
                        .map(|_| instantiate(&p).map(|r| Arc::new(Mutex::new(r))))
                        .collect::<Result<Vec<_>, _>>()?;
                    let specs = p.into_iter().map(|t| t.spec).collect();
                    Ok((infos, workers, specs))
                });
                (workers, config, base)
            })
            .await
            .map_err(|e| PipelineError::Internal(format!("transform loader panicked: {e}")))?
        };
        let (infos, workers, specs) = result?;
        Ok(Pipeline {
            config,
            base,
            transforms: Arc::new(infos),
            specs,
            workers,
            replay: None,
            positions: None,
        })
    }

    /// Keeps what a source with no upstream state (files) delivered in
    /// `file`, and resumes from it: a host's pipelines do, `sluice run`
    /// reads its files from the start.
    pub fn keep_positions(&mut self, file: PathBuf) {
        self.positions = Some(file);
    }

    /// The transforms and the digests of their modules.
    pub fn transforms(&self) -> Vec<live::TransformView> {
        self.transforms
            .iter()
            .map(|t| live::TransformView {
                name: t.name.clone(),
                digest: t.digest.clone(),
            })
            .collect()
    }

    /// Live state for this pipeline, reporting into `metrics`.
    pub fn live(&self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Arc<Live> {
        Live::new(
            &self.config.name,
            &self.config.tenant,
            self.config.source.plugin().describe_at(&self.base),
            self.transforms(),
            crate::metrics::PipelineMetrics::new(metrics, &self.config.name, &self.config.tenant),
        )
    }

    /// Runs `items` through the pipeline instead of its configured source
    /// (a replay): same transforms, sinks and dead-letter queue; nothing is
    /// committed upstream. Exactly-once pipelines replay at-least-once (the
    /// items come from no consumer group to commit in a transaction).
    pub fn with_items(mut self, describe: String, items: Vec<crate::source::SourceItem>) -> Self {
        if self.config.delivery.guarantee == Guarantee::ExactlyOnce {
            tracing::warn!(pipeline = %self.config.name, "replaying at-least-once: replayed items belong to no consumer group");
            self.config.delivery.guarantee = Guarantee::AtLeastOnce;
        }
        self.replay = Some((describe, items));
        self
    }

    /// The pipeline's configuration.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// Each transform's name and module, in chain order.
    pub fn modules(&self) -> Vec<(String, Arc<Module>)> {
        let Some(first) = self.workers.first() else {
            return Vec::new();
        };
        first
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| (r.name().to_string(), r.module().clone()))
            .collect()
    }

    /// Each transform's instance settings (configuration, tables, limits,
    /// grants), in chain order.
    pub fn specs(&self) -> &[InstanceSpec] {
        &self.specs
    }

    /// Runs until a bounded source is drained or `shutdown` resolves (then
    /// stops reading, finishes in-flight batches, commits and returns),
    /// started again after failures as its `[restart]` table says (see
    /// [`run::run_restarting`]).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Summary, PipelineError> {
        let live = self.live(Arc::new(crate::metrics::Metrics::new()));
        let span = tracing::info_span!("pipeline", pipeline = %self.config.name, tenant = %self.config.tenant);
        tracing::Instrument::instrument(self.run_until(&live, shutdown), span).await
    }

    /// [`run`](Self::run), publishing its counters and state to `live`.
    pub async fn run_until(
        &self,
        live: &Arc<Live>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Summary, PipelineError> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let policy = self.config.restart.clone().unwrap_or_default();
        let forward = async {
            shutdown.await;
            stop.send_replace(true);
            std::future::pending::<()>().await
        };
        tokio::select! {
            result = run::run_restarting(self, live, &policy, stopped) => result,
            () = forward => Err(PipelineError::Internal("the shutdown forwarder ended".into())),
        }
    }

    /// Whether a restart reads on from where the pipeline's records were
    /// committed (a source with upstream positions, or a file source whose
    /// positions are kept) rather than from the start: only then is a
    /// restart worth it.
    fn resumes(&self) -> bool {
        self.replay.is_none() && (self.positions.is_some() || self.config.source.plugin().resumes())
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// [`shutdown_signal`], setting `stopped` when it comes.
pub async fn noting_shutdown(stopped: Arc<std::sync::atomic::AtomicBool>) {
    shutdown_signal().await;
    stopped.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Loads and runs a pipeline file until its source is drained (or Ctrl-C /
/// SIGTERM).
pub async fn run_file(path: &Path, opts: &RunOptions) -> Result<Summary, PipelineError> {
    let (config, base) = PipelineConfig::load(path)?;
    let span = tracing::info_span!("pipeline", pipeline = %config.name, tenant = %config.tenant);
    let pipeline = tracing::Instrument::instrument(
        Pipeline::prepare(config, base, &Engines::default(), opts),
        span,
    )
    .await?;
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let signal = noting_shutdown(stopped.clone());
    let live = pipeline.live(Arc::new(crate::metrics::Metrics::new()));
    let progress = progress(&live);
    let span = tracing::info_span!("pipeline", pipeline = %pipeline.config.name, tenant = %pipeline.config.tenant);
    let result = tracing::Instrument::instrument(pipeline.run_until(&live, signal), span).await;
    if let Some((task, bar)) = progress {
        task.abort();
        bar.finish_and_clear();
    }
    let mut summary = result?;
    summary.stopped = stopped.load(std::sync::atomic::Ordering::SeqCst);
    Ok(summary)
}

/// On a terminal, a line that follows a run: records in, out, to the
/// dead-letter queue, bytes read, records per second.
fn progress(live: &Arc<Live>) -> Option<(tokio::task::JoinHandle<()>, indicatif::ProgressBar)> {
    use std::io::IsTerminal as _;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    let (live, shown) = (live.clone(), bar.clone());
    let task = tokio::spawn(async move {
        let mut last = (Instant::now(), 0u64);
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let s = live.summary();
            let now = Instant::now();
            let secs = now.duration_since(last.0).as_secs_f64().max(1e-3);
            let rate = s.records_in.saturating_sub(last.1) as f64 / secs;
            last = (now, s.records_in);
            shown.set_message(format!(
                "{} records in ({:.1} MiB read), {} out, {} dead-lettered · {rate:.0} records/s",
                s.records_in,
                s.bytes_in as f64 / (1024.0 * 1024.0),
                s.outputs.values().sum::<u64>(),
                s.dead_letter_total(),
            ));
            shown.tick();
        }
    });
    Some((task, bar))
}
