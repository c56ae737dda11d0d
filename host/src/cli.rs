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
    /// Checks a pipeline file: parses it, builds and loads its transforms,
    /// runs their `init` with the configured settings; processes nothing.
    Check {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&spec)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
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
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let summary = rt.block_on(pipeline::run_file(&pipeline, &RunOptions::default()))?;
            eprintln!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { pipeline } => {
            let (config, base) = crate::config::PipelineConfig::load(&pipeline)?;
            crate::source::validate(&config.source, &base)?;
            let engine = Engine::new()?;
            let prepared =
                pipeline::prepare_transforms(&config, &base, &engine, &RunOptions::default())?;
            let runners = pipeline::instantiate(&prepared)?;
            for r in &runners {
                eprintln!(
                    "ok: transform `{}` ({}, {})",
                    r.name(),
                    r.module().path().display(),
                    r.module().digest()
                );
            }
            eprintln!("pipeline `{}` is valid", config.name);
            Ok(ExitCode::SUCCESS)
        }
        Command::Test { paths, bless } => {
            let paths = if paths.is_empty() {
                vec![PathBuf::from(".")]
            } else {
                paths
            };
            let mut runner = crate::fixture::FixtureRunner::new(Engine::new()?, false);
            let (mut passed, mut failed) = (0usize, 0usize);
            for path in &paths {
                for file in crate::fixture::discover(path)? {
                    let report = runner.run_file(&file, bless)?;
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
            println!("{passed} passed, {failed} failed");
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
