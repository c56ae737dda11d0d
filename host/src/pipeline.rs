//! The pipeline: source → micro-batches → transform chain → sinks and the
//! dead-letter queue → ledger → commit.
//!
//! A batch is handled when every record read for it is either in its sink or
//! in the dead-letter queue; only then is it marked handled in the ledger and
//! may the source commit past it. If a sink or the dead-letter queue cannot be
//! written, the run stops with an error instead of skipping records.

use crate::batch::Batcher;
use crate::config::{ConfigError, PipelineConfig};
use crate::dlq::{DeadLetter, DlqEntry, DlqError, Stage};
use crate::engine::build::{BuildError, resolve_module};
use crate::engine::{
    Engine, InstanceSpec, LoadError, Outcome, RefTables, Runner, TableError, TransformError,
};
use crate::ledger::Ledger;
use crate::record::{Position, Record};
use crate::sink::{Sink, SinkError};
use crate::source::{SourceError, SourceItem};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
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
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A sink failed.
    #[error("{0} (the run stops; records of this batch are not committed)")]
    Sink(#[from] SinkError),
    /// The dead-letter queue failed.
    #[error("{0} (the run stops; records of this batch are not committed)")]
    Dlq(#[from] DlqError),
    /// A bug in the host.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Per-transform counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepStats {
    /// Transform name.
    pub name: String,
    /// Records given to it.
    pub records_in: u64,
    /// Records it dropped.
    pub dropped: u64,
    /// Records it failed (to the DLQ).
    pub failed: u64,
    /// Batches that failed as a whole (trap, deadline, ...).
    pub batch_failures: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Pipeline name.
    pub pipeline: String,
    /// Items read from the source (valid or not).
    pub records_in: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Batches processed.
    pub batches: u64,
    /// Per transform.
    pub steps: Vec<StepStats>,
    /// Records written per output.
    pub outputs: BTreeMap<String, u64>,
    /// Dead-letter entries per stage.
    pub dead_lettered: BTreeMap<&'static str, u64>,
    /// Wall time.
    pub elapsed: Duration,
    /// Offsets committable at the end, per partition.
    pub committed: Vec<(String, i64)>,
}

impl Summary {
    /// Total dead-letter entries.
    pub fn dead_letter_total(&self) -> u64 {
        self.dead_lettered.values().sum()
    }

    /// Total records dropped by transforms.
    pub fn dropped_total(&self) -> u64 {
        self.steps.iter().map(|s| s.dropped).sum()
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        writeln!(f, "pipeline `{}` finished in {:.2}s", self.pipeline, secs)?;
        writeln!(
            f,
            "  in:       {} records ({} bytes) in {} batches, {:.0} records/s",
            self.records_in,
            self.bytes_in,
            self.batches,
            if secs > 0.0 {
                self.records_in as f64 / secs
            } else {
                0.0
            }
        )?;
        for s in &self.steps {
            writeln!(
                f,
                "  step {:<10} in {:>8}  dropped {:>6}  failed {:>6}  failed batches {}",
                s.name, s.records_in, s.dropped, s.failed, s.batch_failures
            )?;
        }
        for (name, n) in &self.outputs {
            writeln!(f, "  out:      {name:<10} {n} records")?;
        }
        let stages: Vec<String> = self
            .dead_lettered
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        writeln!(
            f,
            "  dead-letter: {} records{}",
            self.dead_letter_total(),
            if stages.is_empty() {
                String::new()
            } else {
                format!(" ({})", stages.join(", "))
            }
        )?;
        write!(f, "  dropped:  {} records", self.dropped_total())
    }
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Capture cargo's output when building transform projects (tests).
    pub quiet_build: bool,
}

/// Builds, loads and initialises the transforms of a pipeline.
pub fn prepare_transforms(
    config: &PipelineConfig,
    base: &Path,
    engine: &Engine,
    opts: &RunOptions,
) -> Result<Vec<Runner>, PipelineError> {
    let mut runners = Vec::with_capacity(config.transforms.len());
    for t in &config.transforms {
        let module_path = resolve_module(&base.join(&t.module), opts.quiet_build)?;
        let module = engine.load_file(&module_path)?;
        let mut tables = RefTables::default();
        for (name, table) in &t.tables {
            tables.load(name, &base.join(&table.path), &table.key)?;
        }
        let spec = InstanceSpec {
            name: Arc::from(t.name.as_str()),
            config: t.config.to_string(),
            tables: Arc::new(tables),
            limits: t.limits.clone(),
        };
        tracing::info!(pipeline = %config.name, transform = %t.name, module = %module_path.display(), digest = %module.digest(), "transform loaded");
        runners.push(Runner::new(module, spec)?);
    }
    Ok(runners)
}

/// A record on its way through the chain.
struct Routed {
    record: Record,
    /// Index of the source item it derives from.
    origin: usize,
    /// Transform that routed it to a named output.
    from: Option<usize>,
}

/// Everything one batch produced.
struct ChainResult {
    outputs: BTreeMap<String, Vec<Routed>>,
    dead: Vec<DlqEntry>,
    steps: Vec<StepStats>,
}

/// Runs a batch through the chain (blocking: call from a blocking thread).
fn run_chain(runners: &mut [Runner], items: &[SourceItem]) -> ChainResult {
    let mut dead = Vec::new();
    let mut steps = Vec::with_capacity(runners.len());
    let mut current: Vec<Routed> = Vec::with_capacity(items.len());
    for (origin, item) in items.iter().enumerate() {
        match item {
            SourceItem::Record(r) => current.push(Routed {
                record: r.record.clone(),
                origin,
                from: None,
            }),
            SourceItem::Invalid {
                record,
                position,
                reason,
            } => {
                dead.push(DlqEntry::new(
                    record.clone(),
                    position.clone(),
                    Stage::Decode,
                    "invalid-input",
                    reason.clone(),
                ));
            }
        }
    }
    let mut outputs: BTreeMap<String, Vec<Routed>> = BTreeMap::new();
    for (step_index, runner) in runners.iter_mut().enumerate() {
        let mut stats = StepStats {
            name: runner.name().to_string(),
            records_in: current.len() as u64,
            ..Default::default()
        };
        if current.is_empty() {
            steps.push(stats);
            continue;
        }
        let digest = runner.module().digest().to_string();
        let name = runner.name().to_string();
        let inputs: Vec<(&Record, &Position)> = current
            .iter()
            .map(|r| (&r.record, items[r.origin].position()))
            .collect();
        let processed = runner.process(&inputs);
        drop(inputs);
        let processed = match processed {
            Ok(p) => p,
            Err(error) => {
                // The whole batch failed (trap, deadline, contract breach):
                // every record goes to the DLQ with the reason. (Bisection
                // to isolate the poison records is the DLQ issue's work.)
                tracing::warn!(transform = %name, records = current.len(), %error, "batch failed");
                stats.batch_failures += 1;
                stats.failed += current.len() as u64;
                for r in current.drain(..) {
                    let (record, position) = source_of(items, r.origin);
                    dead.push(
                        DlqEntry::new(
                            record,
                            position,
                            Stage::Transform,
                            error.kind(),
                            error.to_string(),
                        )
                        .in_transform(&name, &digest),
                    );
                }
                steps.push(stats);
                continue;
            }
        };
        let mut outputs_of = processed.outputs.into_iter();
        let mut next = Vec::with_capacity(current.len());
        let mut consumed = 0usize;
        for (r, outcome) in current.iter().zip(processed.outcomes) {
            match outcome {
                Outcome::Emit { start, end } => {
                    // Outputs are in order; skip nothing.
                    debug_assert_eq!(start, consumed);
                    for out in outputs_of.by_ref().take(end - start) {
                        let routed = Routed {
                            record: out.record,
                            origin: r.origin,
                            from: Some(step_index),
                        };
                        if out.slot == 0 {
                            next.push(routed);
                        } else {
                            let output = processed
                                .output_names
                                .get(out.slot as usize)
                                .cloned()
                                .unwrap_or_default();
                            outputs.entry(output).or_default().push(routed);
                        }
                    }
                    consumed = end;
                }
                Outcome::Drop => stats.dropped += 1,
                Outcome::Fail(failure) => {
                    stats.failed += 1;
                    let (record, position) = source_of(items, r.origin);
                    dead.push(
                        DlqEntry::new(
                            record,
                            position,
                            Stage::Transform,
                            failure.kind,
                            failure.message,
                        )
                        .in_transform(&name, &digest),
                    );
                }
            }
        }
        current = next;
        steps.push(stats);
    }
    outputs
        .entry("default".to_string())
        .or_default()
        .extend(current);
    ChainResult {
        outputs,
        dead,
        steps,
    }
}

fn source_of(items: &[SourceItem], origin: usize) -> (Record, Position) {
    match &items[origin] {
        SourceItem::Record(r) => (r.record.clone(), r.position.clone()),
        SourceItem::Invalid {
            record, position, ..
        } => (record.clone(), position.clone()),
    }
}

/// A pipeline ready to run.
pub struct Pipeline {
    config: PipelineConfig,
    runners: Vec<Runner>,
    sinks: BTreeMap<String, Box<dyn Sink>>,
    dlq: DeadLetter,
    ledger: Ledger,
    summary: Summary,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.config.name)
            .finish()
    }
}

impl Pipeline {
    /// Loads a pipeline file: builds and loads transforms, opens sinks.
    pub async fn load(
        path: &Path,
        opts: &RunOptions,
    ) -> Result<(Self, Box<dyn crate::source::Source>), PipelineError> {
        let (config, base) = PipelineConfig::load(path)?;
        let engine = Engine::new()?;
        let (runners, config, base) = {
            let opts = opts.clone();
            tokio::task::spawn_blocking(move || {
                let runners = prepare_transforms(&config, &base, &engine, &opts);
                (runners, config, base)
            })
            .await
            .map_err(|e| PipelineError::Internal(format!("transform loader panicked: {e}")))?
        };
        let runners = runners?;
        let mut sinks = BTreeMap::new();
        for (name, sink) in &config.outputs {
            sinks.insert(
                name.clone(),
                crate::sink::build(sink, &base, &config.name, name)?,
            );
        }
        let dlq_sink = crate::sink::build(&config.dead_letter, &base, &config.name, "dead-letter")?;
        let dlq = DeadLetter::new(dlq_sink, &config.name, &config.tenant);
        let source = crate::source::build(&config.source, &base)?;
        let summary = Summary {
            pipeline: config.name.clone(),
            steps: config
                .transforms
                .iter()
                .map(|t| StepStats {
                    name: t.name.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        Ok((
            Pipeline {
                config,
                runners,
                sinks,
                dlq,
                ledger: Ledger::new(),
                summary,
            },
            source,
        ))
    }

    /// Runs until the source is drained (or Ctrl-C / SIGTERM: stop reading,
    /// finish in-flight batches, then return).
    pub async fn run(
        mut self,
        mut source: Box<dyn crate::source::Source>,
    ) -> Result<Summary, PipelineError> {
        let started = Instant::now();
        let policy = self.config.batch.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<SourceItem, SourceError>>(
            policy.max_records.clamp(16, 65_536),
        );
        let reader = tokio::spawn(async move {
            loop {
                match source.next().await {
                    Ok(Some(item)) => {
                        if tx.send(Ok(item)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                }
            }
            source
        });
        let mut batcher = Batcher::new(policy);
        let mut ready = Vec::new();
        let mut done = false;
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        while !done {
            let deadline = batcher.deadline();
            tokio::select! {
                item = rx.recv() => match item {
                    Some(Ok(item)) => batcher.push(item, Instant::now(), &mut ready),
                    Some(Err(e)) => return Err(e.into()),
                    None => {
                        ready.extend(batcher.take());
                        done = true;
                    }
                },
                _ = sleep_until(deadline), if deadline.is_some() => ready.extend(batcher.take()),
                _ = &mut shutdown => {
                    tracing::info!(pipeline = %self.config.name, "shutdown requested: finishing in-flight batches");
                    rx.close();
                    while let Ok(Ok(item)) = rx.try_recv() {
                        batcher.push(item, Instant::now(), &mut ready);
                    }
                    ready.extend(batcher.take());
                    done = true;
                }
            }
            for batch in ready.drain(..) {
                self.handle_batch(batch).await?;
            }
        }
        drop(rx);
        let mut source = reader
            .await
            .map_err(|e| PipelineError::Internal(format!("source task failed: {e}")))?;
        source.commit(&self.ledger).await?;
        self.summary.committed = self
            .ledger
            .partitions()
            .filter_map(|p| Some((p.to_string(), self.ledger.committable(p)?)))
            .collect();
        self.summary.elapsed = started.elapsed();
        Ok(self.summary)
    }

    async fn handle_batch(&mut self, items: Vec<SourceItem>) -> Result<(), PipelineError> {
        for item in &items {
            let p = item.position();
            self.ledger.read(&p.partition, p.offset);
            self.summary.bytes_in += crate::batch::ByteSize::byte_size(item) as u64;
        }
        self.summary.records_in += items.len() as u64;
        self.summary.batches += 1;
        let runners = std::mem::take(&mut self.runners);
        let (runners, items, result) = tokio::task::spawn_blocking(move || {
            let mut runners = runners;
            let result = run_chain(&mut runners, &items);
            (runners, items, result)
        })
        .await
        .map_err(|e| PipelineError::Internal(format!("transform thread panicked: {e}")))?;
        self.runners = runners;
        let ChainResult {
            outputs,
            mut dead,
            steps,
        } = result;
        for (total, step) in self.summary.steps.iter_mut().zip(&steps) {
            total.records_in += step.records_in;
            total.dropped += step.dropped;
            total.failed += step.failed;
            total.batch_failures += step.batch_failures;
        }
        for (name, routed) in outputs {
            if routed.is_empty() {
                continue;
            }
            let Some(sink) = self.sinks.get_mut(&name) else {
                for r in routed {
                    let (record, position) = source_of(&items, r.origin);
                    let from = r.from.and_then(|i| self.runners.get(i));
                    let mut entry = DlqEntry::new(
                        record,
                        position,
                        Stage::Route,
                        "unknown-output",
                        format!(
                            "transform `{}` sent a record to output `{name}`, which the pipeline does not map to a sink (add `[outputs.{name}]`)",
                            from.map(|r| r.name()).unwrap_or("?")
                        ),
                    );
                    if let Some(runner) = from {
                        entry = entry.in_transform(runner.name(), runner.module().digest());
                    }
                    dead.push(entry);
                }
                continue;
            };
            let (records, meta): (Vec<Record>, Vec<(usize, Option<usize>)>) = routed
                .into_iter()
                .map(|r| (r.record, (r.origin, r.from)))
                .unzip();
            let rejects = sink.write(&records).await?;
            *self.summary.outputs.entry(name.clone()).or_default() +=
                (records.len() - rejects.len()) as u64;
            for reject in rejects {
                let Some(&(origin, from)) = meta.get(reject.index) else {
                    continue;
                };
                let (record, position) = source_of(&items, origin);
                let mut entry = DlqEntry::new(
                    record,
                    position,
                    Stage::Sink,
                    "rejected",
                    format!("output `{name}`: {}", reject.reason),
                );
                if let Some(runner) = from.and_then(|i| self.runners.get(i)) {
                    entry = entry.in_transform(runner.name(), runner.module().digest());
                }
                dead.push(entry);
            }
        }
        self.dlq.write(&dead).await?;
        for entry in &dead {
            *self
                .summary
                .dead_lettered
                .entry(entry.stage.as_str())
                .or_default() += 1;
        }
        for item in &items {
            let p = item.position();
            self.ledger.handled(&p.partition, p.offset);
        }
        Ok(())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

async fn shutdown_signal() {
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

/// Loads and runs a pipeline file to completion.
pub async fn run_file(path: &Path, opts: &RunOptions) -> Result<Summary, PipelineError> {
    let (pipeline, source) = Pipeline::load(path, opts).await?;
    pipeline.run(source).await
}
