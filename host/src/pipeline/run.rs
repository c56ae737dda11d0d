//! Running a pipeline: the one restart loop around its sessions, and what
//! a session wires together (sinks, committer, source, delivery).
//!
//! A *session* is one consumer, one set of sinks and one coordinator,
//! started from the committed positions. When it fails in a way a new one
//! may recover from ([`PipelineError::worth_restarting`]) and the source
//! reads on from its committed positions ([`Pipeline::resumes`]), the loop
//! starts another after [`RestartPolicy::backoff`], up to
//! `max_restarts` failures in a row without a record handled in between;
//! then the pipeline is failed. `sluice run`, `sluice dlq replay` and a
//! host's pipelines all run through here.

use super::deliver::Delivery;
use super::live::{Live, State};
use super::session::{self, SessionEnd, SessionParts};
use super::{Pipeline, PipelineError, StepStats, Summary, breaker, commit};
use crate::config::Guarantee;
use crate::dlq::DeadLetter;
use crate::flow::Budget;
use crate::retry::{RestartPolicy, Retry};
use crate::sink::SinkOptions;
use crate::source::StartOptions;
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Runs `pipeline` until its bounded source is drained or `stop` turns
/// true, publishing to `live` (counting on from what it holds), and starts
/// a failed session again as `policy` says. Sets the final state:
/// finished, stopped or failed.
pub(super) async fn run_restarting(
    pipeline: &Pipeline,
    live: &Arc<Live>,
    policy: &RestartPolicy,
    stop: watch::Receiver<bool>,
) -> Result<Summary, PipelineError> {
    let started = Instant::now();
    let mut summary = pipeline.counting_on(live);
    let stopped = |stop: &watch::Receiver<bool>| *stop.borrow();
    let mut failures = 0u32;
    loop {
        let handled_before = summary.records_in;
        let mut session_stop = stop.clone();
        let until = async move {
            let _ = session_stop.wait_for(|s| *s).await;
        };
        tokio::pin!(until);
        let mut until: Pin<&mut (dyn Future<Output = ()> + Send)> = until;
        let result = pipeline.session(&mut summary, live, &mut until).await;
        live.publish(&summary);
        let e = match result {
            Ok(SessionEnd::Drained | SessionEnd::Shutdown) => break,
            Err(e) => e,
        };
        let message = e.to_string();
        live.note_error(message.clone());
        if summary.records_in > handled_before {
            failures = 0;
        }
        failures += 1;
        if stopped(&stop)
            || !e.worth_restarting()
            || !pipeline.resumes()
            || failures > policy.max_restarts
        {
            tracing::error!(error = %message, restarts_in_a_row = failures - 1, "pipeline failed");
            live.set_state(State::Failed, Some(message));
            return Err(e);
        }
        let wait = policy.backoff(failures);
        tracing::warn!(error = %message, restart = failures, wait_ms = wait.as_millis() as u64, "pipeline failed: starting again from the committed offsets");
        summary.restarts += 1;
        live.metrics().count(|m| &m.restarts, &[], 1);
        live.set_state(State::Restarting, Some(message));
        let mut wait_stop = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wait_stop.wait_for(|s| *s) => break,
        }
    }
    summary.elapsed = started.elapsed();
    live.publish(&summary);
    let state = if stopped(&stop) {
        State::Stopped
    } else {
        State::Finished
    };
    live.set_state(state, None);
    tracing::info!(
        records = summary.records_in,
        state = state.as_str(),
        "pipeline ended"
    );
    Ok(summary)
}

impl Pipeline {
    /// The counters to count on from: what `live` holds (a host's pipeline
    /// started again), or zeros.
    fn counting_on(&self, live: &Live) -> Summary {
        let known = live.summary();
        if known.steps.len() == self.config.transforms.len() {
            return known;
        }
        Summary {
            pipeline: self.config.name.clone(),
            steps: self
                .config
                .transforms
                .iter()
                .map(|t| StepStats {
                    name: t.name.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    pub(super) async fn session(
        &self,
        summary: &mut Summary,
        live: &Arc<Live>,
        shutdown: &mut Pin<&mut (dyn Future<Output = ()> + Send)>,
    ) -> Result<SessionEnd, PipelineError> {
        let config = &self.config;
        let d = &config.delivery;
        let exactly_once = d.guarantee == Guarantee::ExactlyOnce;
        let budget = Arc::new(Budget::new(
            d.max_in_flight_records,
            d.max_in_flight_mb.saturating_mul(1 << 20),
        ));
        let transactional_id = exactly_once.then(|| {
            d.transactional_id
                .clone()
                .unwrap_or_else(|| format!("{}-{}", config.name, crate::kafka::instance_id()))
        });
        let sinks = crate::sink::build_all(
            &config.outputs,
            &config.dead_letter,
            config.sink_scope(&self.base),
            &SinkOptions {
                transactional_id: transactional_id.clone(),
                transaction_timeout_ms: d.transaction_timeout_ms,
            },
        )?;
        for sink in sinks
            .outputs
            .values()
            .chain(std::iter::once(&sinks.dead_letter))
        {
            sink.check().await?;
        }
        let committer = commit::prepare(config, &sinks, transactional_id.as_deref()).await?;
        let start = StartOptions {
            pipeline: config.name.clone(),
            budget: budget.clone(),
            drain_timeout: Duration::from_millis(d.drain_timeout_ms),
            positions: self.positions.clone(),
        };
        let source = match &self.replay {
            Some((describe, items)) => {
                crate::source::start_items(describe.clone(), items.clone(), start)
            }
            None => crate::source::start(&config.source, &self.base, start)?,
        };
        let outputs: BTreeSet<String> = sinks.outputs.keys().cloned().collect();
        let delivery = Delivery {
            sinks: sinks.outputs,
            dlq: Arc::new(DeadLetter::new(
                sinks.dead_letter,
                &config.name,
                &config.tenant,
            )),
            transforms: self.transforms.clone(),
            retries: config
                .outputs
                .iter()
                .map(|(name, sink)| (name.clone(), Retry::from(sink.retry())))
                .collect(),
            dlq_retry: Retry::from(config.dead_letter.retry()),
            turns: Default::default(),
            metrics: live.metrics().clone(),
            module_header: d.module_header,
            source_json: config.source.plugin().json_values(),
        };
        session::run(
            SessionParts {
                source,
                delivery,
                committer,
                workers: self.workers.clone(),
                pin_partitions: d.pin_partitions,
                outputs: Arc::new(outputs),
                budget,
                policy: config.batch.clone(),
                drain_timeout: Duration::from_millis(d.drain_timeout_ms),
                commit_interval: Duration::from_millis(d.commit_interval_ms),
                pipeline: config.name.clone(),
                breaker: Arc::new(breaker::Breaker::new(config.circuit_breaker.clone())),
                live: live.clone(),
            },
            summary,
            shutdown,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PipelineConfig;
    use crate::metrics::{Metrics, PipelineMetrics};
    use std::path::Path;

    /// A pipeline over one file whose only output cannot be opened (its
    /// folder is a file): every session fails at once with a sink error.
    fn failing(dir: &Path, restart: &str) -> (Pipeline, Arc<Live>) {
        std::fs::write(dir.join("in.jsonl"), "{\"a\":1}\n").expect("input");
        std::fs::write(dir.join("blocker"), "").expect("blocker");
        let text = format!(
            "name = \"p\"\n[source.file]\npath = \"in.jsonl\"\n[[transforms]]\nname = \"t\"\nmodule = \"t.wasm\"\n\
             [outputs.default.local]\npath = \"blocker/out\"\n[dead_letter.stdout]\n[restart]\n{restart}\n"
        );
        let mut config = PipelineConfig::parse(&text, &dir.join("p.toml")).expect("config");
        config.transforms.clear();
        let pipeline = Pipeline {
            config,
            base: dir.to_path_buf(),
            transforms: Arc::new(Vec::new()),
            specs: Vec::new(),
            workers: vec![Arc::new(std::sync::Mutex::new(Vec::new()))],
            replay: None,
            positions: None,
        };
        let metrics = PipelineMetrics::new(Arc::new(Metrics::new()), "p", "t");
        let live = Live::new("p", "t", "test".into(), Vec::new(), metrics);
        (pipeline, live)
    }

    #[test]
    fn what_is_worth_a_restart() {
        use crate::sink::{SinkError, TxnError};
        let abort = PipelineError::Transaction(TxnError::Abort("timed out".into()));
        let fenced = PipelineError::Transaction(TxnError::Fatal("fenced".into()));
        let bad_sink = PipelineError::Sink(SinkError::Config {
            sink: "s".into(),
            message: "bad".into(),
        });
        let down = PipelineError::Sink(SinkError::Write {
            sink: "s".into(),
            message: "down".into(),
            transient: true,
        });
        assert!(abort.worth_restarting() && down.worth_restarting());
        assert!(
            !fenced.worth_restarting(),
            "a fenced writer must not fence its successor"
        );
        assert!(!bad_sink.worth_restarting());
        assert!(!PipelineError::Internal("bug".into()).worth_restarting());
    }

    #[tokio::test]
    async fn a_source_that_would_read_from_the_start_is_not_restarted() {
        let dir = tempfile::tempdir().expect("dir");
        let (pipeline, live) = failing(dir.path(), "max_restarts = 3\ninitial_backoff_ms = 1");
        let (_stop, stopped) = watch::channel(false);
        let policy = pipeline.config.restart.clone().unwrap_or_default();
        let e = run_restarting(&pipeline, &live, &policy, stopped)
            .await
            .expect_err("the sink cannot open");
        assert!(matches!(e, PipelineError::Sink(_)), "{e}");
        assert!(e.worth_restarting() && !pipeline.resumes());
        assert_eq!(live.summary().restarts, 0);
        assert_eq!(live.state(), State::Failed);
    }

    #[tokio::test]
    async fn a_resuming_source_is_restarted_up_to_the_policy_then_failed() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut pipeline, live) = failing(
            dir.path(),
            "max_restarts = 3\ninitial_backoff_ms = 1\nmax_backoff_ms = 4",
        );
        pipeline.keep_positions(dir.path().join("positions"));
        assert!(pipeline.resumes());
        let (_stop, stopped) = watch::channel(false);
        let policy = pipeline.config.restart.clone().unwrap_or_default();
        let e = run_restarting(&pipeline, &live, &policy, stopped)
            .await
            .expect_err("the sink never opens");
        assert!(matches!(e, PipelineError::Sink(_)), "{e}");
        assert_eq!(live.summary().restarts, 3, "three restarts, then failed");
        assert_eq!(live.state(), State::Failed);
        assert!(
            live.snapshot().last_errors.len() >= 4,
            "each failure is noted"
        );
    }

    #[tokio::test]
    async fn a_stop_during_the_backoff_ends_the_pipeline_stopped() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut pipeline, live) =
            failing(dir.path(), "max_restarts = 3\ninitial_backoff_ms = 600000");
        pipeline.keep_positions(dir.path().join("positions"));
        let (stop, stopped) = watch::channel(false);
        let policy = pipeline.config.restart.clone().unwrap_or_default();
        let l = live.clone();
        let run = tokio::spawn(async move {
            let r = run_restarting(&pipeline, &l, &policy, stopped).await;
            r.map(|s| s.restarts)
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while live.state() != State::Restarting {
            assert!(
                Instant::now() < deadline,
                "never restarting: {:?}",
                live.state()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send_replace(true);
        let restarts = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the stop cuts the ten-minute backoff short")
            .expect("task")
            .expect("a stop is not a failure");
        assert_eq!(restarts, 1);
        assert_eq!(live.state(), State::Stopped);
    }
}
