//! `sluice dlq`: list, show and replay dead letters.

use super::table::print_table;
use crate::pipeline::{self, RunOptions};
use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub(super) enum DlqAction {
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
pub(super) struct DlqArgs {
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

pub(super) fn dlq(action: DlqAction) -> anyhow::Result<ExitCode> {
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
