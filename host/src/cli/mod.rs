//! The `sluice` command line: run pipelines, test transforms against
//! fixtures, check pipeline files. `anyhow` lives here, at the edge.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod dlq;
mod local;
mod remote;
mod serve;
mod table;

use dlq::DlqAction;
use remote::Remote;

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

/// Runs the command line with the process arguments.
/// The file a schema describes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SchemaOf {
    /// A pipeline file.
    Pipeline,
    /// A host file (`sluice serve`).
    Host,
}

pub fn main() -> ExitCode {
    let spec = std::env::var("SLUICE_LOG").unwrap_or_else(|_| "warn".into());
    let spec = crate::kafka::quieted_log_filter(spec);
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
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: most of our
/// errors already say their cause in their own message (`cannot read
/// \`x\`: No such file or directory`), so a cause whose text is already
/// there is not repeated.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if text.is_empty() {
            text = c;
        } else if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { pipeline } => local::run_pipeline(pipeline),
        Command::Serve { host, watch } => serve::serve(&host, watch),
        Command::Deploy {
            remote,
            pipeline,
            transform,
            module,
            no_activate,
            no_wait,
            wait_timeout,
        } => remote::deploy(
            remote,
            pipeline,
            transform,
            module,
            no_activate,
            no_wait,
            wait_timeout,
        ),
        Command::Rollback {
            remote,
            pipeline,
            transform,
        } => remote::rollback(remote, pipeline, transform),
        Command::Status {
            remote,
            pipeline,
            json,
        } => remote::status(remote, pipeline, json),
        Command::Pipelines { remote, json } => remote::pipelines(remote, json),
        Command::Versions {
            remote,
            pipeline,
            transform,
            json,
        } => remote::versions(remote, pipeline, transform, json),
        Command::Pause { remote, pipeline } => remote::pause_or_resume(&remote, &pipeline, "pause"),
        Command::Resume { remote, pipeline } => {
            remote::pause_or_resume(&remote, &pipeline, "resume")
        }
        Command::Apply { remote, file } => remote::apply(remote, file),
        Command::Delete { remote, pipeline } => remote::delete(remote, pipeline),
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
        Command::Check { pipeline, connect } => local::check(pipeline, connect),
        Command::Dlq { action } => dlq::dlq(action),
        Command::New { name, lang } => local::new(name, lang),
        Command::Build { dir } => local::build(dir),
        Command::Test { paths, bless } => local::test(paths, bless),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::from(crate::config::ConfigError::Read {
            path: "p.toml".into(),
            source: missing,
        });
        assert_eq!(
            error_text(&e),
            "cannot read pipeline file `p.toml`: No such file"
        );
        let wrapped = anyhow::anyhow!("inner cause").context("while loading");
        assert_eq!(error_text(&wrapped), "while loading: inner cause");
    }
}
