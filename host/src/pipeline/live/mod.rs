//! A running pipeline seen from outside: its state, live counters, recent
//! errors, and the handle that stops, pauses and resumes it.
//!
//! The coordinator publishes its [`Summary`] here (at most every
//! [`PUBLISH_EVERY`] and when a session ends); the handle's
//! [`PipelineHandle::snapshot`] reads it without touching the data path.
//! Hot swap (replacing a transform's module) will also go through the
//! handle: the workers' runners are swapped between two jobs, at a batch
//! boundary.

use super::Summary;
use crate::flow::Budget;
use crate::metrics::PipelineMetrics;
use crate::source::SourceControl;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

mod view;

pub use view::{
    ErrorNote, PartitionLag, ProbationView, Snapshot, State, TransformView, UndeclaredOutput,
};

/// How often the coordinator publishes its counters.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// Errors kept per pipeline for the status page.
const LAST_ERRORS: usize = 10;
/// Batch latencies kept per pipeline for its percentiles.
const LATENCIES: usize = 2048;

#[derive(Default)]
struct Session {
    budget: Option<Arc<Budget>>,
    control: Option<Arc<dyn SourceControl>>,
}

struct Rates {
    at: Instant,
    records_in: u64,
    records_out: u64,
    rate_in: f64,
    rate_out: f64,
}

struct Inner {
    state: State,
    reason: Option<String>,
    summary: Summary,
    errors: VecDeque<ErrorNote>,
    transforms: Vec<TransformView>,
    session: Session,
    /// Guest memory per worker and transform.
    memory: Vec<Vec<u64>>,
    held_records: usize,
    rates: Rates,
    /// Recent batch latencies, in µs.
    latencies: VecDeque<u32>,
    /// The partitions whose lag gauge is set (removed when they go away).
    lag_series: Vec<(String, String)>,
    /// A new version on probation.
    probation: Option<ProbationView>,
}

/// The live state of one pipeline, shared by its tasks and its handle.
pub struct Live {
    name: String,
    tenant: String,
    source: String,
    started: Instant,
    inner: Mutex<Inner>,
    pause: watch::Sender<bool>,
    swaps: super::swap::SwapQueue,
    metrics: PipelineMetrics,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").field("name", &self.name).finish()
    }
}

impl Live {
    /// The live state of a pipeline about to start.
    pub fn new(
        name: &str,
        tenant: &str,
        source: String,
        transforms: Vec<TransformView>,
        metrics: PipelineMetrics,
    ) -> Arc<Self> {
        let live = Arc::new(Live {
            name: name.to_string(),
            tenant: tenant.to_string(),
            source,
            started: Instant::now(),
            inner: Mutex::new(Inner {
                state: State::Starting,
                reason: None,
                summary: Summary::default(),
                errors: VecDeque::new(),
                transforms,
                session: Session::default(),
                memory: Vec::new(),
                held_records: 0,
                latencies: VecDeque::with_capacity(LATENCIES),
                lag_series: Vec::new(),
                probation: None,
                rates: Rates {
                    at: Instant::now(),
                    records_in: 0,
                    records_out: 0,
                    rate_in: 0.0,
                    rate_out: 0.0,
                },
            }),
            pause: watch::channel(false).0,
            swaps: Default::default(),
            metrics,
        });
        live.set_state(State::Starting, None);
        live.publish_module_info();
        live
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Its metrics.
    pub fn metrics(&self) -> &PipelineMetrics {
        &self.metrics
    }

    /// Its state.
    pub fn state(&self) -> State {
        self.inner().state
    }

    /// Moves to `state` (with a reason for failed and restarting states).
    pub fn set_state(&self, state: State, reason: Option<String>) {
        {
            let mut i = self.inner();
            i.state = state;
            i.reason = reason;
        }
        for s in State::ALL {
            self.metrics.set(
                |m| &m.state,
                &[("state", s.as_str())],
                i64::from(s == state),
            );
        }
    }

    /// Keeps an error for the status page (the last few).
    pub fn note_error(&self, message: impl Into<String>) {
        let mut i = self.inner();
        if i.errors.len() == LAST_ERRORS {
            i.errors.pop_front();
        }
        i.errors.push_back(ErrorNote {
            at: chrono::DateTime::<chrono::Utc>::from(SystemTime::now()).to_rfc3339(),
            message: message.into(),
        });
    }

    /// The counters so far (a copy).
    pub fn summary(&self) -> Summary {
        self.inner().summary.clone()
    }

    /// Publishes the coordinator's counters.
    pub(crate) fn publish(&self, summary: &Summary) {
        self.inner().summary.clone_from(summary);
    }

    /// A batch was handled `latency` after it was cut.
    pub(crate) fn batch_latency(&self, latency: Duration) {
        let mut i = self.inner();
        if i.latencies.len() == LATENCIES {
            i.latencies.pop_front();
        }
        i.latencies
            .push_back(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    /// Percentiles (0–100) of the recent batch latencies, in ms.
    pub fn latency_percentiles(&self, ps: &[f64]) -> Vec<Option<f64>> {
        let mut v: Vec<u32> = self.inner().latencies.iter().copied().collect();
        v.sort_unstable();
        ps.iter()
            .map(|p| {
                if v.is_empty() {
                    return None;
                }
                let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
                v.get(rank.min(v.len() - 1))
                    .map(|us| f64::from(*us) / 1000.0)
            })
            .collect()
    }

    /// A session started: what to read in-flight counts and lag from.
    pub(crate) fn attach(&self, budget: Arc<Budget>, control: Arc<dyn SourceControl>) {
        self.inner().session = Session {
            budget: Some(budget),
            control: Some(control),
        };
    }

    /// The session ended.
    pub(crate) fn detach(&self) {
        self.inner().session = Session::default();
    }

    /// Worker `worker`'s guest memory per transform.
    /// Records sinks hold, not yet durable.
    /// The new version on probation, or none.
    pub(crate) fn set_probation(&self, probation: Option<ProbationView>) {
        self.inner().probation = probation;
    }

    pub(crate) fn set_held(&self, records: usize) {
        self.inner().held_records = records;
        self.metrics.set(
            |m| &m.held_records,
            &[],
            i64::try_from(records).unwrap_or(i64::MAX),
        );
    }

    pub(crate) fn set_memory(&self, worker: usize, per_transform: Vec<u64>) {
        let mut i = self.inner();
        if i.memory.len() <= worker {
            i.memory.resize(worker + 1, Vec::new());
        }
        if let Some(slot) = i.memory.get_mut(worker) {
            *slot = per_transform;
        }
    }

    /// Swaps waiting for the coordinator.
    pub(crate) fn swaps(&self) -> &super::swap::SwapQueue {
        &self.swaps
    }

    /// Transform `index` now runs the module `digest`.
    pub(crate) fn set_digest(&self, index: usize, digest: &str) {
        let old = {
            let mut i = self.inner();
            let Some(t) = i.transforms.get_mut(index) else {
                return;
            };
            let old = std::mem::replace(&mut t.digest, digest.to_string());
            (t.name.clone(), old)
        };
        self.metrics.set(
            |m| &m.module_info,
            &[("transform", &old.0), ("digest", &old.1)],
            0,
        );
        self.publish_module_info();
    }

    /// The transforms and their active digests.
    pub fn transforms(&self) -> Vec<TransformView> {
        self.inner().transforms.clone()
    }

    fn publish_module_info(&self) {
        for t in self.inner().transforms.clone() {
            self.metrics.set(
                |m| &m.module_info,
                &[("transform", &t.name), ("digest", &t.digest)],
                1,
            );
        }
    }

    /// Receives pause requests (the coordinator).
    pub(crate) fn pause_requests(&self) -> watch::Receiver<bool> {
        self.pause.subscribe()
    }

    /// Asks the pipeline to stop reading (or to read again).
    pub fn request_pause(&self, paused: bool) {
        self.pause.send_replace(paused);
        let state = self.state();
        if paused && state == State::Running {
            self.set_state(State::Paused, None);
        } else if !paused && state == State::Paused {
            self.set_state(State::Running, None);
        }
    }

    /// Whether a pause is requested.
    pub fn pause_requested(&self) -> bool {
        *self.pause.borrow()
    }

    /// What the pipeline did and is doing now. Also sets the gauges that
    /// are read at scrape time (in flight, lag, guest memory).
    pub fn snapshot(&self) -> Snapshot {
        let now = Instant::now();
        let (snapshot, lag_source) = {
            let mut i = self.inner();
            let records_out: u64 = i.summary.outputs.values().sum();
            let records_in = i.summary.records_in;
            let dt = now.duration_since(i.rates.at).as_secs_f64();
            if dt >= 1.0 {
                i.rates.rate_in = records_in.saturating_sub(i.rates.records_in) as f64 / dt;
                i.rates.rate_out = records_out.saturating_sub(i.rates.records_out) as f64 / dt;
                i.rates.at = now;
                i.rates.records_in = records_in;
                i.rates.records_out = records_out;
            }
            let (in_flight_records, in_flight_bytes) = i
                .session
                .budget
                .as_ref()
                .map(|b| b.in_flight())
                .unwrap_or((0, 0));
            let mut memory: Vec<u64> = vec![0; i.transforms.len()];
            for w in &i.memory {
                for (total, m) in memory.iter_mut().zip(w) {
                    *total += m;
                }
            }
            for (t, m) in i.transforms.iter().zip(&memory) {
                self.metrics.set(
                    |m| &m.guest_memory,
                    &[("transform", &t.name)],
                    i64::try_from(*m).unwrap_or(i64::MAX),
                );
            }
            (
                Snapshot {
                    name: self.name.clone(),
                    tenant: self.tenant.clone(),
                    state: i.state,
                    reason: i.reason.clone(),
                    source: self.source.clone(),
                    transforms: i.transforms.clone(),
                    records_in,
                    records_out,
                    outputs: i.summary.outputs.clone(),
                    dead_letter: i.summary.dead_letter_total(),
                    undeclared_outputs: i
                        .summary
                        .steps
                        .iter()
                        .flat_map(|s| {
                            s.unrouted.iter().map(|(output, n)| UndeclaredOutput {
                                transform: s.name.clone(),
                                output: output.clone(),
                                records: *n,
                            })
                        })
                        .collect(),
                    dropped: i.summary.dropped_total(),
                    probation: i.probation.clone(),
                    rate_in: i.rates.rate_in,
                    rate_out: i.rates.rate_out,
                    lag: None,
                    source_health: None,
                    source_progress: None,
                    partition_lags: Vec::new(),
                    in_flight_records,
                    in_flight_bytes,
                    held_records: i.held_records,
                    restarts: i.summary.restarts,
                    last_errors: i.errors.iter().cloned().collect(),
                    batch_latency_p50_ms: None,
                    batch_latency_p99_ms: None,
                    uptime_seconds: self.started.elapsed().as_secs_f64(),
                },
                i.session.control.clone(),
            )
        };
        let mut snapshot = snapshot;
        snapshot.lag = lag_source.as_ref().and_then(|c| c.lag());
        snapshot.source_health = lag_source.as_ref().and_then(|c| c.health());
        snapshot.source_progress = lag_source.as_ref().and_then(|c| c.progress());
        snapshot.partition_lags = lag_source
            .map(|c| c.partition_lags())
            .unwrap_or_default()
            .into_iter()
            .map(|(p, lag)| PartitionLag {
                stream: p.stream.to_string(),
                partition: p.partition,
                lag,
            })
            .collect();
        self.set_partition_lags(&snapshot.partition_lags);
        if let [p50, p99] = self.latency_percentiles(&[50.0, 99.0])[..] {
            snapshot.batch_latency_p50_ms = p50;
            snapshot.batch_latency_p99_ms = p99;
        }
        self.metrics.set(
            |m| &m.in_flight_records,
            &[],
            snapshot.in_flight_records as i64,
        );
        self.metrics
            .set(|m| &m.in_flight_bytes, &[], snapshot.in_flight_bytes as i64);
        if let Some(lag) = snapshot.lag {
            self.metrics.set(|m| &m.consumer_lag, &[], lag);
        }
        self.metrics.set(
            |m| &m.source_unreachable,
            &[],
            i64::from(snapshot.source_health.is_some()),
        );
        snapshot
    }

    /// Sets the per-partition lag gauges, and removes those of partitions
    /// no longer read.
    fn set_partition_lags(&self, lags: &[PartitionLag]) {
        let now: Vec<(String, String)> = lags
            .iter()
            .map(|l| (l.stream.clone(), l.partition.to_string()))
            .collect();
        let gone: Vec<(String, String)> = {
            let mut i = self.inner();
            let old = std::mem::replace(&mut i.lag_series, now.clone());
            old.into_iter().filter(|s| !now.contains(s)).collect()
        };
        for (stream, partition) in &gone {
            self.metrics.unset(
                |m| &m.partition_lag,
                &[("stream", stream), ("partition", partition)],
            );
        }
        for ((stream, partition), l) in now.iter().zip(lags) {
            self.metrics.set(
                |m| &m.partition_lag,
                &[("stream", stream), ("partition", partition)],
                l.lag,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_live() -> Arc<Live> {
        Live::new(
            "p",
            "t",
            "file".into(),
            Vec::new(),
            PipelineMetrics::detached("p", "t"),
        )
    }

    #[test]
    fn state_gauge_has_exactly_one_state_set() {
        let m = PipelineMetrics::detached("p", "t");
        let live = Live::new("p", "t", "file".into(), Vec::new(), m.clone());
        live.set_state(State::Running, None);
        live.request_pause(true);
        assert_eq!(live.state(), State::Paused);
        let text = m.host().encode();
        assert!(
            text.contains(r#"sluice_pipeline_state{pipeline="p",tenant="t",state="paused"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_pipeline_state{pipeline="p",tenant="t",state="running"} 0"#),
            "{text}"
        );
        live.request_pause(false);
        assert_eq!(live.state(), State::Running);
    }

    #[test]
    fn latency_percentiles_over_the_recent_batches() {
        let live = test_live();
        assert_eq!(live.latency_percentiles(&[99.0]), vec![None]);
        for ms in 1..=100u64 {
            live.batch_latency(Duration::from_millis(ms));
        }
        assert_eq!(
            live.latency_percentiles(&[50.0, 99.0, 100.0]),
            vec![Some(51.0), Some(99.0), Some(100.0)]
        );
        for _ in 0..LATENCIES {
            live.batch_latency(Duration::from_millis(7));
        }
        assert_eq!(
            live.latency_percentiles(&[99.0]),
            vec![Some(7.0)],
            "old samples roll off"
        );
    }

    #[test]
    fn only_the_last_errors_are_kept() {
        let live = test_live();
        for i in 0..25 {
            live.note_error(format!("e{i}"));
        }
        let s = live.snapshot();
        assert_eq!(s.last_errors.len(), LAST_ERRORS);
        assert_eq!(
            s.last_errors.last().map(|e| e.message.as_str()),
            Some("e24")
        );
    }
}
