//! Commands on local files: run, check, new, build, test.

use crate::engine::Engine;
use crate::pipeline::{self, RunOptions};
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

/// `sluice run`: a pipeline file until its source is drained (or Ctrl-C).
pub(super) fn run_pipeline(pipeline: PathBuf) -> anyhow::Result<ExitCode> {
    if let Ok((config, _)) = crate::config::PipelineConfig::load(&pipeline)
        && let Some(note) = config.source.plugin().run_note()
    {
        eprintln!("note: {note}");
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

/// `sluice check`: the file parses, modules load and initialise, imports are
/// served; with `connect`, the source and sinks answer.
pub(super) fn check(pipeline: PathBuf, connect: bool) -> anyhow::Result<ExitCode> {
    let (config, base) = crate::config::PipelineConfig::load(&pipeline)?;
    crate::source::validate(&config.source, &base)?;
    let engine = Engine::with_options(crate::engine::EngineOptions::for_limits(
        config.transforms.iter().map(|t| &t.limits),
    ))?;
    let prepared = pipeline::prepare_transforms(&config, &base, &engine, &RunOptions::default())?;
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

/// `sluice new`: a transform project to start from.
pub(super) fn new(name: PathBuf, lang: crate::project::Language) -> anyhow::Result<ExitCode> {
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

/// `sluice build`: a transform project into its component.
pub(super) fn build(dir: PathBuf) -> anyhow::Result<ExitCode> {
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

/// `sluice test`: runs fixtures; the exit code says whether all passed.
pub(super) fn test(paths: Vec<PathBuf>, bless: bool) -> anyhow::Result<ExitCode> {
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
