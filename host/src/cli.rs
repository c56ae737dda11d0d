//! The `sluice` command line: run pipelines, test transforms against
//! fixtures, check pipeline files. `anyhow` lives here, at the edge.

use crate::engine::Engine;
use crate::pipeline::{self, RunOptions};
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Sluice: a WebAssembly-sandboxed stream transformation runtime.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a pipeline file until its source is drained (or Ctrl-C / SIGTERM).
    Run {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
    },
    /// Runs a host: every pipeline file of its pipeline directory, on shared
    /// engines, with the status page, `/metrics` and the JSON API on its
    /// listener, until SIGTERM or Ctrl-C (then drains every pipeline,
    /// commits and exits).
    Serve {
        /// The host file (TOML).
        host: PathBuf,
        /// Take the pipeline files from this directory (instead of the host
        /// file's `pipelines`) and watch it: changed pipeline and module
        /// files are checked and deployed, bad ones refused and reported.
        #[arg(long)]
        watch: Option<PathBuf>,
    },
    /// Checks a pipeline file: parses it, builds and loads its transforms,
    /// runs their `init` with the configured settings; processes nothing.
    Check {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Also connect to the source and every sink (brokers answer,
        /// topics exist, buckets list, folders are writable), reading and
        /// writing no record.
        #[arg(long)]
        connect: bool,
    },
    /// Reads a pipeline's dead-letter queue: list, show or replay entries.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Uploads a module (component bytes) to a running host, validates it
    /// there and activates it for one transform of a pipeline: it takes over
    /// at the next batch boundary.
    Deploy {
        #[command(flatten)]
        remote: Remote,
        /// The pipeline.
        pipeline: String,
        /// The transform of the pipeline.
        transform: String,
        /// The component (`.wasm`), or a transform project (Rust, Python or
        /// JavaScript) to build first.
        module: PathBuf,
        /// Store and validate only; do not activate.
        #[arg(long)]
        no_activate: bool,
        /// Return once the version is active, without waiting for its
        /// probation (by default `deploy` waits, and fails if the host rolls
        /// the version back).
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the probation, in seconds (it needs records
        /// to flow: `[deploy] probation_records` of them); then it exits 2,
        /// the version active and still undecided.
        #[arg(long, default_value_t = 300)]
        wait_timeout: u64,
    },
    /// Activates the version of a transform that was active before the
    /// current one.
    Rollback {
        #[command(flatten)]
        remote: Remote,
        /// The pipeline.
        pipeline: String,
        /// The transform of the pipeline.
        transform: String,
    },
    /// Shows a running host's pipeline (or all of them): state, counters,
    /// active module digests, last errors.
    Status {
        #[command(flatten)]
        remote: Remote,
        /// One pipeline (default: all).
        pipeline: Option<String>,
        /// The API's JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Lists a running host's pipelines: a table with a header.
    Pipelines {
        #[command(flatten)]
        remote: Remote,
        /// The API's JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Lists the versions of a transform kept by a running host, oldest
    /// first; the active one is marked.
    Versions {
        #[command(flatten)]
        remote: Remote,
        /// The pipeline.
        pipeline: String,
        /// The transform of the pipeline.
        transform: String,
        /// The API's JSON instead of the list.
        #[arg(long)]
        json: bool,
    },
    /// Pauses a pipeline of a running host: it reads nothing until resumed
    /// (in-flight batches are delivered).
    Pause {
        #[command(flatten)]
        remote: Remote,
        /// The pipeline.
        pipeline: String,
    },
    /// Resumes a paused pipeline of a running host.
    Resume {
        #[command(flatten)]
        remote: Remote,
        /// The pipeline.
        pipeline: String,
    },
    /// Creates or replaces a pipeline on a running host from a pipeline file
    /// (named by its `name`); the host checks it before it starts.
    Apply {
        #[command(flatten)]
        remote: Remote,
        /// The pipeline file (TOML).
        file: PathBuf,
    },
    /// Stops and removes a pipeline of a running host (admins).
    Delete {
        #[command(flatten)]
        remote: Remote,
        /// The pipeline.
        pipeline: String,
    },
    /// Prints a shell completion script: `sluice completions bash >
    /// ~/.local/share/bash-completion/completions/sluice`, or for zsh, fish,
    /// elvish, powershell.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Prints the JSON Schema of a pipeline file or a host file, for
    /// editors that complete and check TOML (Taplo, Even Better TOML); the
    /// same schemas are in `docs/schema/`.
    Schema {
        /// Which file: `pipeline` or `host`.
        #[arg(value_enum)]
        of: SchemaOf,
    },
    /// Scaffolds a transform project: a sample transform, fixtures that
    /// pass and a README. It builds anywhere, not only in this repository.
    New {
        /// The project directory to create (its last component names it).
        name: PathBuf,
        /// The language.
        #[arg(long, value_enum, default_value_t = crate::project::Language::Rust)]
        lang: crate::project::Language,
    },
    /// Builds a transform project (Rust, Python or JavaScript) into a
    /// component and checks it against the transform world; installs the
    /// language's build tool into the project when it is missing.
    Build {
        /// The project directory (default: the current one).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Runs a transform against its fixture files and shows a diff on mismatch.
    Test {
        /// A transform project folder (its `fixtures/` are used), a fixtures
        /// folder, or one fixture file.
        paths: Vec<PathBuf>,
        /// Rewrite expectations from the actual results.
        #[arg(long)]
        bless: bool,
    },
}

/// Where a running host is, and the token to use.
#[derive(Debug, clap::Args)]
struct Remote {
    /// The host's API (default http://127.0.0.1:7070).
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    host: String,
    /// A file holding the bearer token (default: `SLUICE_TOKEN`).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl Remote {
    fn client(&self) -> anyhow::Result<crate::client::Client> {
        let token = match &self.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read the token file `{}`", f.display()))?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("SLUICE_TOKEN")
                .ok()
                .map(|t| t.trim().to_string()),
        };
        Ok(crate::client::Client::new(&self.host, token)?)
    }
}

/// Runs one API call and prints its answer; an error status is an error.
fn remote_call(
    remote: &Remote,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<serde_json::Value> {
    let client = remote.client()?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let answer = rt.block_on(client.call(method, path, body))?;
    let json = answer.json();
    if !answer.ok() {
        let message = json["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or(answer.body);
        let hint = match answer.status {
            401 if remote.token_file.is_none() && std::env::var_os("SLUICE_TOKEN").is_none() => {
                " (this host wants a token: export SLUICE_TOKEN or give --token-file)"
            }
            401 | 403 => " (check the token in SLUICE_TOKEN or --token-file)",
            _ => "",
        };
        anyhow::bail!("{} {path}: {} {message}{hint}", method, answer.status);
    }
    Ok(json)
}

/// A path segment, percent-encoded.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Rows under a header, each column as wide as its widest cell.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn pipeline_row(p: &serde_json::Value) -> Vec<String> {
    let digests: Vec<String> = p["transforms"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    let d = t["digest"].as_str().unwrap_or_default();
                    format!(
                        "{}={}",
                        t["name"].as_str().unwrap_or_default(),
                        d.get(..19).unwrap_or(d)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let outputs: Vec<String> = p["outputs"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| format!("{k}={v}")).collect())
        .unwrap_or_default();
    vec![
        p["name"].as_str().unwrap_or_default().to_string(),
        p["tenant"].as_str().unwrap_or_default().to_string(),
        p["state"].as_str().unwrap_or_default().to_string(),
        p["records_in"].to_string(),
        if outputs.is_empty() {
            p["records_out"].to_string()
        } else {
            outputs.join(" ")
        },
        p["dropped"].to_string(),
        p["dead_letter"].to_string(),
        digests.join(" "),
    ]
}

const PIPELINE_HEADER: [&str; 8] = [
    "PIPELINE", "TENANT", "STATE", "IN", "OUT", "DROPPED", "DLQ", "MODULES",
];

/// The file a schema describes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SchemaOf {
    /// A pipeline file.
    Pipeline,
    /// A host file (`sluice serve`).
    Host,
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// A table, one row per entry: id, stage, kind, transform, source
    /// position, message (and when it was replayed).
    List {
        #[command(flatten)]
        args: DlqArgs,
        /// A JSON array instead of the table (the record itself apart: see
        /// `dlq show`).
        #[arg(long)]
        json: bool,
    },
    /// Every entry in full, one JSON object per line.
    Show(DlqArgs),
    /// Runs the entries' original records through the pipeline (its current
    /// transforms, e.g. a fixed module) into its sinks; records that fail
    /// again go back to the dead-letter queue. Each replayed record carries
    /// a `sluice.replay.of` header naming its entry.
    Replay {
        #[command(flatten)]
        args: DlqArgs,
        /// Only say what would be replayed.
        #[arg(long)]
        dry_run: bool,
        /// Replay entries that were replayed before too (by default they
        /// are skipped: `.sluice/dlq/` beside the pipeline file remembers).
        #[arg(long)]
        again: bool,
    },
    /// Marks the entries (same filters) as purged: no longer listed or
    /// replayed. The queue itself is left as it is (a Kafka topic cannot
    /// drop one record; its retention does); the marks are kept beside the
    /// pipeline file, in `.sluice/dlq/`.
    Purge {
        #[command(flatten)]
        args: DlqArgs,
        /// Only say what would be purged.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, clap::Args)]
struct DlqArgs {
    /// The pipeline file whose `[dead_letter]` sink is read.
    pipeline: PathBuf,
    /// Only entries of this stage (decode, transform, route, sink).
    #[arg(long)]
    stage: Option<String>,
    /// Only entries with this error kind (e.g. trap, deadline, poison).
    #[arg(long)]
    kind: Option<String>,
    /// Only entries failed by this transform.
    #[arg(long)]
    transform: Option<String>,
    /// Only entries that last failed at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// Only entries that last failed before this time (RFC 3339).
    #[arg(long)]
    until: Option<chrono::DateTime<chrono::FixedOffset>>,
}

impl DlqArgs {
    fn read(
        &self,
    ) -> anyhow::Result<(
        crate::config::PipelineConfig,
        Vec<crate::dlq_entry::DeadLetterRecord>,
    )> {
        let (config, base) = crate::config::PipelineConfig::load(&self.pipeline)?;
        let filter = crate::replay::Filter {
            stage: self.stage.clone(),
            kind: self.kind.clone(),
            transform: self.transform.clone(),
            since: self.since.map(|t| t.with_timezone(&chrono::Utc)),
            until: self.until.map(|t| t.with_timezone(&chrono::Utc)),
        };
        let entries = crate::replay::read(&config, &base, &filter)?;
        Ok((config, entries))
    }

    /// The entries not purged, and the pipeline's ledger.
    fn read_live(
        &self,
    ) -> anyhow::Result<(
        crate::config::PipelineConfig,
        Vec<crate::dlq_entry::DeadLetterRecord>,
        crate::replay::Ledger,
    )> {
        let (config, entries) = self.read()?;
        let base = self
            .pipeline
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let ledger = crate::replay::Ledger::open_for(&base, &config.name)?;
        let entries = entries
            .into_iter()
            .filter(|e| ledger.get(&e.id).is_none_or(|l| l.action != "purged"))
            .collect();
        Ok((config, entries, ledger))
    }
}

fn dlq(action: DlqAction) -> anyhow::Result<ExitCode> {
    match action {
        DlqAction::List { args, json } => {
            let (_, entries, ledger) = args.read_live()?;
            if json {
                let listed: Vec<serde_json::Value> = entries
                    .iter()
                    .map(|e| {
                        let mut v = e.to_json();
                        if let Some(o) = v.as_object_mut() {
                            o.remove("record");
                            o.insert(
                                "replayed_at".into(),
                                ledger.get(&e.id).map(|l| l.at.clone()).into(),
                            );
                        }
                        v
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&listed).unwrap_or_default()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    let mut message = e.message.replace(['\n', '\t'], " ");
                    if message.chars().count() > 100 {
                        message = message.chars().take(99).collect::<String>() + "…";
                    }
                    if let Some(done) = ledger.get(&e.id) {
                        message.push_str(&format!(" (replayed {})", done.at));
                    }
                    vec![
                        e.id.clone(),
                        e.stage.clone(),
                        e.kind.clone(),
                        e.transform.clone().unwrap_or_else(|| "-".into()),
                        e.source_text().unwrap_or_else(|| "-".into()),
                        message,
                    ]
                })
                .collect();
            print_table(
                &["ENTRY", "STAGE", "KIND", "TRANSFORM", "SOURCE", "MESSAGE"],
                &rows,
            );
            eprintln!("{} entries", entries.len());
        }
        DlqAction::Show(args) => {
            let (_, entries, _) = args.read_live()?;
            for e in &entries {
                println!("{}", e.to_json());
            }
            eprintln!("{} entries", entries.len());
        }
        DlqAction::Purge { args, dry_run } => {
            let (config, entries, mut ledger) = args.read_live()?;
            if !dry_run {
                ledger.record(entries.iter().map(|e| e.id.as_str()), "purged", &[])?;
            }
            eprintln!(
                "{} entries of pipeline `{}` {} (kept in `{}`)",
                entries.len(),
                config.name,
                if dry_run { "would be purged" } else { "purged" },
                ledger.path().display()
            );
        }
        DlqAction::Replay {
            args,
            dry_run,
            again,
        } => {
            let (config, entries, mut ledger) = args.read_live()?;
            let before = entries.len();
            let entries: Vec<_> = entries
                .into_iter()
                .filter(|e| again || ledger.get(&e.id).is_none())
                .collect();
            if entries.len() < before {
                eprintln!(
                    "{} entries skipped: replayed before (`--again` replays them too)",
                    before - entries.len()
                );
            }
            if dry_run || entries.is_empty() {
                eprintln!(
                    "{} entries would be replayed through pipeline `{}`",
                    entries.len(),
                    config.name
                );
                return Ok(ExitCode::SUCCESS);
            }
            let stream = format!("replay of {}", args.pipeline.display());
            let items = crate::replay::items(&config, &stream, &entries);
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let (summary, modules) = rt.block_on(async {
                let p = pipeline::Pipeline::load(&args.pipeline, &RunOptions::default()).await?;
                let modules: Vec<String> = p.transforms().into_iter().map(|t| t.digest).collect();
                let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let mut summary = p
                    .with_items(stream, items)
                    .run(pipeline::noting_shutdown(stopped.clone()))
                    .await?;
                summary.stopped = stopped.load(std::sync::atomic::Ordering::SeqCst);
                anyhow::Ok((summary, modules))
            })?;
            eprintln!("{summary}");
            if summary.stopped {
                eprintln!("the replay was stopped: nothing is marked as replayed");
            } else {
                ledger.record(entries.iter().map(|e| e.id.as_str()), "replayed", &modules)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(host_file: &std::path::Path, watch: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let mut config = crate::host::HostConfig::load(host_file)?;
    if let Some(dir) = &watch {
        config.pipelines = dir.clone();
    }
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listen = config.listen;
        let timeout = std::time::Duration::from_millis(config.shutdown_timeout_ms);
        let host = crate::host::Host::new(config)?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let bound = listener.local_addr().context("listener address")?;
        eprintln!("sluice host listening on http://{bound}/");
        host.share_state()
            .await
            .map_err(|e| anyhow::anyhow!("shared desired state: {e}"))?;
        let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let api = tokio::spawn(crate::api::serve(host.clone(), listener, async move {
            let _ = api_stopped.await;
        }));
        let started = std::time::Instant::now();
        let progress = start_progress(host.clone());
        let refused = host.start_all().await;
        progress.abort();
        let _ = progress.await;
        let refused = refused
            .with_context(|| format!("cannot read the pipeline directory `{}`", host.config().pipelines.display()))?;
        for e in &refused {
            eprintln!("refused: {e}");
        }
        if watch.is_some() {
            tokio::spawn(host.clone().watch());
        }
        eprintln!(
            "{} pipelines started in {:.1} s, {} refused",
            host.handles().len(),
            started.elapsed().as_secs_f64(),
            refused.len()
        );
        pipeline::shutdown_signal().await;
        eprintln!("shutting down: draining every pipeline");
        let left = host.shutdown(timeout).await;
        let _ = stop_api.send(());
        let _ = api.await;
        for h in host.handles() {
            let s = h.snapshot();
            eprintln!(
                "pipeline `{}`: {} ({} in, {} out, {} dead-lettered){}",
                s.name,
                s.state.as_str(),
                s.records_in,
                s.records_out,
                s.dead_letter,
                s.reason.map(|r| format!(": {r}")).unwrap_or_default()
            );
        }
        if left.is_empty() {
            Ok(ExitCode::SUCCESS)
        } else {
            eprintln!(
                "error: pipelines still draining after {timeout:?}: {} (their uncommitted records are read again on the next start)",
                left.join(", ")
            );
            Ok(ExitCode::FAILURE)
        }
    })
}

/// While a host prepares its pipelines (compiling their transforms takes
/// seconds for a Python or JavaScript guest): a spinner on a terminal, plain
/// lines otherwise — one when a pipeline starts preparing, one every 10 s
/// while it still does. Aborting the task clears the spinner.
fn start_progress(host: std::sync::Arc<crate::host::Host>) -> tokio::task::JoinHandle<()> {
    use std::io::IsTerminal as _;
    let files = host.pipeline_files().map(|f| f.len()).unwrap_or_default();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar
    });
    struct Clear(Option<indicatif::ProgressBar>);
    impl Drop for Clear {
        fn drop(&mut self) {
            if let Some(bar) = &self.0 {
                bar.finish_and_clear();
            }
        }
    }
    tokio::spawn(async move {
        let shown = Clear(bar);
        let mut told: std::collections::HashMap<String, u64> = Default::default();
        loop {
            let preparing = host.preparing();
            let done = host.handles().len() + host.refused().len();
            match &shown.0 {
                Some(bar) => {
                    let now: Vec<String> = preparing
                        .iter()
                        .map(|p| {
                            format!(
                                "`{}` ({} transforms, {:.0} s)",
                                p.name,
                                p.transforms.len(),
                                p.elapsed.as_secs_f64()
                            )
                        })
                        .collect();
                    bar.set_message(format!(
                        "preparing pipelines: {done} of {files} files done{}{}",
                        if now.is_empty() { "" } else { " · compiling " },
                        now.join(", ")
                    ));
                    bar.tick();
                }
                None => {
                    for p in &preparing {
                        let tens = p.elapsed.as_secs() / 10;
                        let key = format!("{}\0{}", p.name, p.file.display());
                        match told.get(&key) {
                            None => eprintln!(
                                "preparing pipeline `{}` ({}): compiling {}",
                                p.name,
                                p.file.display(),
                                p.transforms.join(", ")
                            ),
                            Some(&t) if t < tens => eprintln!(
                                "still preparing pipeline `{}` after {} s ({done} of {files} files done)",
                                p.name,
                                tens * 10
                            ),
                            Some(_) => continue,
                        }
                        told.insert(key, tens);
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    })
}

fn pause_or_resume(remote: &Remote, pipeline: &str, verb: &str) -> anyhow::Result<ExitCode> {
    let json = remote_call(
        remote,
        "POST",
        &format!("/api/pipelines/{}/{verb}", segment(pipeline)),
        Vec::new(),
    )?;
    eprintln!(
        "pipeline `{pipeline}`: {}",
        json["state"].as_str().unwrap_or(verb)
    );
    Ok(ExitCode::SUCCESS)
}

/// Follows a new version's probation on the host: exit 0 when it passed,
/// non-zero with the host's reason when it was rolled back.
fn wait_for_probation(
    remote: &Remote,
    pipeline: &str,
    transform: &str,
    digest: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let path = format!("/api/pipelines/{}", segment(pipeline));
    let mut said = None;
    loop {
        let snap = remote_call(remote, "GET", &path, Vec::new())?;
        let active = snap["transforms"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["name"] == transform)
            .and_then(|t| t["digest"].as_str())
            .unwrap_or_default()
            .to_string();
        let on_probation = snap["probation"]["digest"].as_str() == Some(digest);
        if active != digest {
            let why = snap["last_errors"]
                .as_array()
                .into_iter()
                .flatten()
                .rev()
                .filter_map(|e| e["message"].as_str())
                .find(|m| m.contains(digest) && m.contains("rolled back"))
                .map(str::to_string)
                .unwrap_or_else(|| format!("the active version is now {active}"));
            anyhow::bail!("{pipeline}/{transform}: {digest} was rolled back: {why}");
        }
        if !on_probation {
            eprintln!("{pipeline}/{transform}: {digest} passed its probation and stays active");
            return Ok(ExitCode::SUCCESS);
        }
        let state = snap["state"].as_str().unwrap_or_default();
        if matches!(state, "finished" | "stopped" | "failed") {
            anyhow::bail!(
                "{pipeline}/{transform}: the pipeline is {state} while {digest} is on probation; it is judged when the pipeline runs again (start it again, e.g. `sluice apply` its file)"
            );
        }
        let remaining = snap["probation"]["remaining"].as_u64().unwrap_or_default();
        if said != Some(remaining) {
            eprintln!(
                "{pipeline}/{transform}: on probation, {remaining} records to go (--no-wait to return at once)"
            );
            said = Some(remaining);
        }
        if started.elapsed() >= timeout {
            eprintln!(
                "{pipeline}/{transform}: {digest} is active and still on probation after {} s ({remaining} records to go: are records flowing?); the host rolls it back by itself if it fails",
                timeout.as_secs()
            );
            return Ok(ExitCode::from(2));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Pipelines the host is still preparing, and files it refused.
fn print_refused(json: &serde_json::Value) {
    for p in json["preparing"].as_array().into_iter().flatten() {
        println!(
            "preparing: {} (tenant {}, {}): compiling its transforms for {:.1} s",
            p["name"].as_str().unwrap_or_default(),
            p["tenant"].as_str().unwrap_or_default(),
            p["file"].as_str().unwrap_or_default(),
            p["elapsed_ms"].as_u64().unwrap_or_default() as f64 / 1000.0
        );
    }
    for r in json["refused"].as_array().into_iter().flatten() {
        println!(
            "refused: {}: {}",
            r["file"].as_str().unwrap_or_default(),
            r["error"].as_str().unwrap_or_default()
        );
    }
}

/// One pipeline's snapshot as a person reads it.
fn print_status(p: &serde_json::Value) {
    let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
    println!("{} (tenant {}): {}", s("name"), s("tenant"), s("state"));
    if let Some(reason) = p["reason"].as_str() {
        println!("  reason:   {reason}");
    }
    println!("  source:   {}", s("source"));
    for t in p["transforms"].as_array().into_iter().flatten() {
        println!(
            "  module:   {} {}",
            t["name"].as_str().unwrap_or_default(),
            t["digest"].as_str().unwrap_or_default()
        );
    }
    println!(
        "  in:       {} records ({:.0}/s)",
        p["records_in"],
        p["rate_in"].as_f64().unwrap_or_default()
    );
    for (name, n) in p["outputs"].as_object().into_iter().flatten() {
        println!("  out:      {name} {n} records");
    }
    println!("  dropped:  {}", p["dropped"]);
    println!("  dlq:      {}", p["dead_letter"]);
    for u in p["undeclared_outputs"].as_array().into_iter().flatten() {
        println!(
            "            {} of them sent by `{}` to undeclared output `{}`",
            u["records"],
            u["transform"].as_str().unwrap_or_default(),
            u["output"].as_str().unwrap_or_default()
        );
    }
    if let Some(lag) = p["lag"].as_i64() {
        println!("  lag:      {lag} records");
    }
    if let Some(e) = p["last_errors"].as_array().and_then(|a| a.last()) {
        println!(
            "  last error: {} {}",
            e["at"].as_str().unwrap_or_default(),
            e["message"].as_str().unwrap_or_default()
        );
    }
}

/// Runs the command line with the process arguments.
pub fn main() -> ExitCode {
    // rust-rdkafka logs a spurious error when a consumer that already left
    // its group is dropped; hide that module unless asked for.
    let spec = std::env::var("SLUICE_LOG").unwrap_or_else(|_| "warn".into());
    let spec = if spec.contains("rdkafka") {
        spec
    } else {
        format!("{spec},rdkafka::consumer::base_consumer=off")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("SLUICE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        // One JSON object per line; the pipeline and tenant of the span
        // are fields of every line.
        builder.json().flatten_event(true).init();
    } else {
        builder
            // Colours only for a person at a terminal, never into a log file.
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none(),
            )
            .init();
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { pipeline } => {
            if let Ok((config, _)) = crate::config::PipelineConfig::load(&pipeline)
                && let crate::source::SourceConfig::File(f) = &config.source
                && f.path != "-"
            {
                eprintln!(
                    "note: `sluice run` reads `{}` from its start every time; a host (`sluice serve`) keeps what it delivered and resumes",
                    f.path
                );
            }
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let summary = rt.block_on(pipeline::run_file(&pipeline, &RunOptions::default()));
            // A read of standard input blocks a thread of the runtime until
            // a line comes: a stopped run must not wait for one to exit.
            rt.shutdown_background();
            let summary = summary?;
            eprintln!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { host, watch } => serve(&host, watch),
        Command::Deploy {
            remote,
            pipeline,
            transform,
            module,
            no_activate,
            no_wait,
            wait_timeout,
        } => {
            // The host, the token and the pipeline are checked before a
            // build that can take a minute.
            remote_call(
                &remote,
                "GET",
                &format!("/api/pipelines/{}", segment(&pipeline)),
                Vec::new(),
            )?;
            let path = crate::project::resolve_module(&module, false)?;
            let bytes = std::fs::read(&path)
                .with_context(|| format!("cannot read `{}`", path.display()))?;
            let report = remote_call(
                &remote,
                "POST",
                &format!(
                    "/api/pipelines/{}/transforms/{}/modules?activate={}",
                    segment(&pipeline),
                    segment(&transform),
                    !no_activate
                ),
                bytes,
            )?;
            let digest = report["digest"].as_str().unwrap_or_default().to_string();
            match report["swapped"].as_object() {
                Some(s) => eprintln!(
                    "{pipeline}/{transform}: {digest} active (was {}), taking traffic {:.0} ms after the upload",
                    s.get("previous")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default(),
                    report["total_ms"].as_f64().unwrap_or_default()
                ),
                None => {
                    eprintln!(
                        "{pipeline}/{transform}: {digest} stored and validated (not active; `sluice versions` lists it)"
                    );
                    return Ok(ExitCode::SUCCESS);
                }
            }
            if no_wait {
                eprintln!(
                    "{pipeline}/{transform}: not waiting for its probation (`sluice status {pipeline}` shows it)"
                );
                return Ok(ExitCode::SUCCESS);
            }
            wait_for_probation(
                &remote,
                &pipeline,
                &transform,
                &digest,
                std::time::Duration::from_secs(wait_timeout),
            )
        }
        Command::Rollback {
            remote,
            pipeline,
            transform,
        } => {
            let report = remote_call(
                &remote,
                "POST",
                &format!(
                    "/api/pipelines/{}/transforms/{}/rollback",
                    segment(&pipeline),
                    segment(&transform)
                ),
                Vec::new(),
            )?;
            eprintln!(
                "{pipeline}/{transform}: rolled back to {}",
                report["digest"].as_str().unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            remote,
            pipeline,
            json: as_json,
        } => {
            let path = match &pipeline {
                Some(p) => format!("/api/pipelines/{}", segment(p)),
                None => "/api/pipelines".to_string(),
            };
            let json = remote_call(&remote, "GET", &path, Vec::new())?;
            if as_json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json).unwrap_or_default()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let one = [json.clone()];
            let pipelines = match pipeline {
                Some(_) => &one[..],
                None => json["pipelines"].as_array().map_or(&[][..], Vec::as_slice),
            };
            for p in pipelines {
                print_status(p);
            }
            print_refused(&json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Pipelines {
            remote,
            json: as_json,
        } => {
            let json = remote_call(&remote, "GET", "/api/pipelines", Vec::new())?;
            if as_json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json).unwrap_or_default()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = json["pipelines"]
                .as_array()
                .into_iter()
                .flatten()
                .map(pipeline_row)
                .collect();
            print_table(&PIPELINE_HEADER, &rows);
            print_refused(&json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Versions {
            remote,
            pipeline,
            transform,
            json: as_json,
        } => {
            let json = remote_call(
                &remote,
                "GET",
                &format!(
                    "/api/pipelines/{}/transforms/{}/versions",
                    segment(&pipeline),
                    segment(&transform)
                ),
                Vec::new(),
            )?;
            if as_json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json).unwrap_or_default()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let active = json["active"].as_str().unwrap_or_default();
            let list = |key: &str| -> Vec<String> {
                json[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            };
            let mut rows: Vec<Vec<String>> = list("versions")
                .into_iter()
                .map(|v| {
                    let mark = if v == active { "active" } else { "" };
                    vec![v, mark.to_string()]
                })
                .collect();
            rows.extend(
                list("stored")
                    .into_iter()
                    .map(|v| vec![v, "stored (never activated)".to_string()]),
            );
            print_table(&["DIGEST", ""], &rows);
            Ok(ExitCode::SUCCESS)
        }
        Command::Pause { remote, pipeline } => pause_or_resume(&remote, &pipeline, "pause"),
        Command::Resume { remote, pipeline } => pause_or_resume(&remote, &pipeline, "resume"),
        Command::Apply { remote, file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read `{}`", file.display()))?;
            let name = toml::from_str::<toml::Table>(&text)
                .with_context(|| format!("`{}` is not TOML", file.display()))?
                .get("name")
                .and_then(|n| n.as_str().map(str::to_string))
                .ok_or_else(|| {
                    anyhow::anyhow!("`{}` has no `name`: the host needs one", file.display())
                })?;
            let json = remote_call(
                &remote,
                "PUT",
                &format!("/api/pipelines/{}", segment(&name)),
                text.into_bytes(),
            )?;
            eprintln!(
                "pipeline `{name}`: {}",
                if json["replaced"].as_bool() == Some(true) {
                    "replaced"
                } else {
                    "created"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete { remote, pipeline } => {
            remote_call(
                &remote,
                "DELETE",
                &format!("/api/pipelines/{}", segment(&pipeline)),
                Vec::new(),
            )?;
            eprintln!("pipeline `{pipeline}`: deleted");
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema { of } => {
            let schema = match of {
                SchemaOf::Pipeline => crate::config::PipelineConfig::json_schema(),
                SchemaOf::Host => crate::host::HostConfig::json_schema(),
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).context("schema as JSON")?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(shell, &mut Cli::command(), "sluice", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { pipeline, connect } => {
            let (config, base) = crate::config::PipelineConfig::load(&pipeline)?;
            crate::source::validate(&config.source, &base)?;
            let engine = Engine::with_options(crate::engine::EngineOptions::for_limits(
                config.transforms.iter().map(|t| &t.limits),
            ))?;
            let prepared =
                pipeline::prepare_transforms(&config, &base, &engine, &RunOptions::default())?;
            // What each module imports and how it is served, so that an
            // admin sees every refused import at once, not just the first.
            for t in &prepared {
                eprintln!(
                    "transform `{}`: {} ({}); granted: {}",
                    t.spec.name,
                    t.module.path().display(),
                    t.module.digest(),
                    t.spec.grants.summary()
                );
                for import in t.module.imports() {
                    let how = match t.spec.grants.check_import(import) {
                        Ok(linked) => linked.describe().to_string(),
                        Err(refusal) => format!("REFUSED: {}", refusal.explain(import)),
                    };
                    eprintln!("  import {import}: {how}");
                }
            }
            let runners = pipeline::instantiate(&prepared)?;
            for r in &runners {
                eprintln!("ok: transform `{}` initialised", r.name());
            }
            // Outputs a transform's fixtures show it using that this
            // pipeline does not declare: at run time those records would
            // go to the dead-letter queue (stage `route`).
            let mut undeclared = 0;
            for t in &config.transforms {
                let module = base.join(&t.module);
                for (output, fixture) in crate::fixture::fixture_outputs(&module) {
                    if !config.outputs.contains_key(&output) {
                        undeclared += 1;
                        eprintln!(
                            "WARNING: transform `{}` sends records to output `{output}` (fixture `{}`), which this pipeline does not declare: they would go to the dead-letter queue; add `[outputs.{output}]`",
                            t.name,
                            fixture.display()
                        );
                    }
                }
            }
            let mut unreachable = 0;
            if connect {
                match config.source.plugin().probe(&base) {
                    Ok(what) => eprintln!("ok: source: {what}"),
                    Err(e) => {
                        unreachable += 1;
                        eprintln!("error: source: {e}");
                    }
                }
                let sinks = config
                    .outputs
                    .iter()
                    .map(|(name, sink)| (format!("output `{name}`"), sink))
                    .chain(std::iter::once((
                        "dead-letter queue".to_string(),
                        &config.dead_letter,
                    )));
                for (what, sink) in sinks {
                    match sink.plugin().probe(&config.sink_scope(&base)) {
                        Ok(found) => eprintln!("ok: {what}: {found}"),
                        Err(e) => {
                            unreachable += 1;
                            eprintln!("error: {what}: {e}");
                        }
                    }
                }
            }
            if unreachable > 0 {
                anyhow::bail!(
                    "pipeline `{}` is valid, but {unreachable} of its connections failed (see above)",
                    config.name
                );
            }
            eprintln!(
                "pipeline `{}` is valid{}{}",
                config.name,
                if connect { " and connects" } else { "" },
                if undeclared > 0 {
                    format!(" ({undeclared} warnings)")
                } else {
                    String::new()
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { action } => dlq(action),
        Command::New { name, lang } => {
            let made = crate::project::new::scaffold(&name, lang)?;
            eprintln!(
                "created the {lang} transform project `{}` ({} files); next:\n  sluice build {}\n  sluice test {}",
                name.display(),
                made.len(),
                name.display(),
                name.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Build { dir } => {
            let project = crate::project::Project::detect(&dir)?
                .ok_or_else(|| crate::project::BuildError::NotAModule(dir.clone()))?;
            let started = std::time::Instant::now();
            let path = project.build(false)?;
            let built = started.elapsed();
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let engine = Engine::new()?;
            let module = engine.load_file(&path)?;
            let wasi: Vec<&String> = module
                .imports()
                .iter()
                .filter(|i| i.starts_with("wasi:"))
                .collect();
            eprintln!(
                "built {} ({} transform): {} ({:.1} MiB, {}) in {:.1} s; it implements {}",
                dir.display(),
                project.language,
                path.display(),
                size as f64 / (1024.0 * 1024.0),
                module.digest(),
                built.as_secs_f64(),
                crate::engine::WIT_PACKAGE,
            );
            if wasi.is_empty() {
                eprintln!("imports: the host interface only (no WASI)");
            } else {
                for i in wasi {
                    let how = match crate::engine::Grants::default().check_import(i) {
                        Ok(linked) => linked.describe().to_string(),
                        Err(refusal) => format!("needs a grant: {}", refusal.explain(i)),
                    };
                    eprintln!("imports {i}: {how}");
                }
            }
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Test { paths, bless } => {
            let paths = if paths.is_empty() {
                vec![PathBuf::from(".")]
            } else {
                paths
            };
            let mut runner = crate::fixture::FixtureRunner::new(
                // Fixtures may set `fuel_per_call`: count fuel.
                Engine::with_options(crate::engine::EngineOptions {
                    fuel: true,
                    ..Default::default()
                })?,
                false,
            );
            let (mut passed, mut failed, mut broken) = (0usize, 0usize, 0usize);
            for path in &paths {
                // A path or a fixture file that cannot be read or run is
                // reported and counted; the others still run.
                let target = match crate::fixture::discover(path) {
                    Ok(t) => t,
                    Err(e) => {
                        broken += 1;
                        println!("ERROR {}: {e}", path.display());
                        continue;
                    }
                };
                for file in &target.files {
                    let report = match runner.run_file(file, target.module.as_deref(), bless) {
                        Ok(r) => r,
                        Err(e) => {
                            broken += 1;
                            println!("ERROR {}: {e}", file.display());
                            continue;
                        }
                    };
                    if report.passed() {
                        passed += 1;
                        let note = if report.blessed { " (blessed)" } else { "" };
                        println!(
                            "ok    {} ({} records){note}",
                            file.display(),
                            report.records
                        );
                    } else {
                        failed += 1;
                        println!("FAIL  {} ({} records)", file.display(), report.records);
                        for m in &report.mismatches {
                            println!("{m}");
                        }
                    }
                }
            }
            let failed = failed + broken;
            if broken > 0 {
                println!("{passed} passed, {failed} failed ({broken} could not run)");
                return Ok(ExitCode::FAILURE);
            }
            println!("{passed} passed, {failed} failed");
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
