//! `sluice serve`: a host, with its progress while pipelines are prepared.

use crate::pipeline;
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

pub(super) fn serve(
    host_file: &std::path::Path,
    watch: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
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
pub(super) fn start_progress(
    host: std::sync::Arc<crate::host::Host>,
) -> tokio::task::JoinHandle<()> {
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
