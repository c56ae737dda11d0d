//! Prometheus metrics of a host: one registry, families labelled by
//! pipeline and tenant (and transform, output, stage, kind where it
//! matters). Labels have low cardinality by construction: names from the
//! pipeline files and host-defined words; the only guest-chosen label, a
//! failure's `kind`, is capped per pipeline (past [`MAX_KINDS`] distinct
//! kinds, the rest count as `other`). No key or record value is ever a label.
//!
//! Counters are updated where the work is done (the coordinator when a batch
//! is handled, delivery when a sink or the dead-letter queue is written);
//! gauges (in flight, lag, guest memory, state) are set from the pipelines'
//! live state when `/metrics` is scraped.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A label set: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

type Hist = Family<Labels, Histogram, fn() -> Histogram>;

/// Distinct guest-chosen failure kinds counted per pipeline before the rest
/// are counted as `other`.
pub const MAX_KINDS: usize = 32;

fn seconds_histogram() -> Histogram {
    // 50 µs to ~100 s.
    Histogram::new(exponential_buckets(0.000_05, 4.0, 11))
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~100 s, doubling: fine enough for a p99.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 21))
}

fn records_histogram() -> Histogram {
    // 1 to 16,384 records.
    Histogram::new(exponential_buckets(1.0, 4.0, 8))
}

/// Every metric of a host.
pub struct Metrics {
    registry: Registry,
    pub(crate) records_received: Family<Labels, Counter>,
    pub(crate) bytes_received: Family<Labels, Counter>,
    pub(crate) records_sent: Family<Labels, Counter>,
    pub(crate) bytes_sent: Family<Labels, Counter>,
    pub(crate) records_dropped: Family<Labels, Counter>,
    pub(crate) records_failed: Family<Labels, Counter>,
    pub(crate) dlq_writes: Family<Labels, Counter>,
    pub(crate) dlq_write_failures: Family<Labels, Counter>,
    pub(crate) batches: Family<Labels, Counter>,
    pub(crate) batch_records: Hist,
    pub(crate) transform_call_seconds: Hist,
    pub(crate) sink_write_seconds: Hist,
    pub(crate) batch_latency_seconds: Hist,
    pub(crate) commits: Family<Labels, Counter>,
    pub(crate) commit_failures: Family<Labels, Counter>,
    pub(crate) restarts: Family<Labels, Counter>,
    pub(crate) transform_errors: Family<Labels, Counter>,
    pub(crate) instantiations: Family<Labels, Counter>,
    pub(crate) consumer_lag: Family<Labels, Gauge>,
    pub(crate) partition_lag: Family<Labels, Gauge>,
    pub(crate) in_flight_records: Family<Labels, Gauge>,
    pub(crate) in_flight_bytes: Family<Labels, Gauge>,
    pub(crate) held_records: Family<Labels, Gauge>,
    pub(crate) source_unreachable: Family<Labels, Gauge>,
    pub(crate) guest_memory: Family<Labels, Gauge>,
    pub(crate) state: Family<Labels, Gauge>,
    pub(crate) module_info: Family<Labels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every family registered (prefix `sluice_`).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let mut counter = |name: &str, help: &str, unit: Option<Unit>| {
            let f = Family::<Labels, Counter>::default();
            match unit {
                Some(u) => registry.register_with_unit(name, help, u, f.clone()),
                None => registry.register(name, help, f.clone()),
            }
            f
        };
        let records_received = counter(
            "records_received",
            "Records read from the source and handled (in a sink or the dead-letter queue)",
            None,
        );
        let bytes_received = counter(
            "received",
            "Bytes of the records received",
            Some(Unit::Bytes),
        );
        let records_sent = counter("records_sent", "Records written per output", None);
        let bytes_sent = counter("sent", "Bytes written per output", Some(Unit::Bytes));
        let records_dropped = counter("records_dropped", "Records a transform dropped", None);
        let records_failed = counter(
            "records_failed",
            "Records sent to the dead-letter queue, by stage, transform and error kind",
            None,
        );
        let dlq_writes = counter("dlq_writes", "Dead-letter entries written", None);
        let dlq_write_failures = counter(
            "dlq_write_failures",
            "Failed attempts to write the dead-letter queue",
            None,
        );
        let batches = counter("batches", "Micro-batches handled", None);
        let commits = counter("commits", "Source commits", None);
        let commit_failures = counter("commit_failures", "Source commits that failed", None);
        let restarts = counter(
            "pipeline_restarts",
            "Times a pipeline (or one of its sessions) was started again after a failure",
            None,
        );
        let transform_errors = counter(
            "transform_errors",
            "Failed transform calls (traps, deadlines, out of memory or fuel, contract breaks), by kind",
            None,
        );
        let instantiations = counter(
            "instantiations",
            "Transform instances created (the first one and every re-creation after a failure)",
            None,
        );
        let mut gauge = |name: &str, help: &str, unit: Option<Unit>| {
            let f = Family::<Labels, Gauge>::default();
            match unit {
                Some(u) => registry.register_with_unit(name, help, u, f.clone()),
                None => registry.register(name, help, f.clone()),
            }
            f
        };
        let consumer_lag = gauge(
            "consumer_lag_records",
            "Records between the committed position and the end of the source, where the source knows it",
            None,
        );
        let partition_lag = gauge(
            "partition_lag_records",
            "Records between the committed position and the end of one source partition (labels stream, partition), where the source knows it",
            None,
        );
        let in_flight_records = gauge(
            "in_flight_records",
            "Records read and not yet handled",
            None,
        );
        let in_flight_bytes = gauge(
            "in_flight",
            "Bytes of the records in flight",
            Some(Unit::Bytes),
        );
        let held_records = gauge(
            "held_records",
            "Records sinks have taken but hold (a file not yet closed): not yet durable, not committed",
            None,
        );
        let source_unreachable = gauge(
            "source_unreachable",
            "1 while the pipeline's source cannot reach its servers (Kafka brokers), else 0",
            None,
        );
        let guest_memory = gauge(
            "guest_memory",
            "Linear memory of a transform's instances",
            Some(Unit::Bytes),
        );
        let state = gauge(
            "pipeline_state",
            "1 for the state the pipeline is in, 0 for the others",
            None,
        );
        let module_info = gauge(
            "transform_module_info",
            "1 for each transform's active module digest",
            None,
        );
        let mut hist = |name: &str, help: &str, unit: Option<Unit>, make: fn() -> Histogram| {
            let f: Hist = Family::new_with_constructor(make);
            match unit {
                Some(u) => registry.register_with_unit(name, help, u, f.clone()),
                None => registry.register(name, help, f.clone()),
            }
            f
        };
        let batch_records = hist(
            "batch_records",
            "Records per micro-batch",
            None,
            records_histogram,
        );
        let transform_call_seconds = hist(
            "transform_call",
            "Time one batch spends in one transform (bisection included)",
            Some(Unit::Seconds),
            seconds_histogram,
        );
        let sink_write_seconds = hist(
            "sink_write",
            "Time from submitting a batch's records to a sink until they are durable (retries included)",
            Some(Unit::Seconds),
            seconds_histogram,
        );
        let batch_latency_seconds = hist(
            "batch_latency",
            "Time from cutting a micro-batch until every record of it is in a sink or the dead-letter queue",
            Some(Unit::Seconds),
            latency_histogram,
        );
        Metrics {
            registry,
            batch_latency_seconds,
            records_received,
            bytes_received,
            records_sent,
            bytes_sent,
            records_dropped,
            records_failed,
            dlq_writes,
            dlq_write_failures,
            batches,
            batch_records,
            transform_call_seconds,
            sink_write_seconds,
            commits,
            commit_failures,
            restarts,
            transform_errors,
            instantiations,
            consumer_lag,
            partition_lag,
            in_flight_records,
            in_flight_bytes,
            held_records,
            source_unreachable,
            guest_memory,
            state,
            module_info,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// The metrics of one pipeline: the host's families with its `pipeline`
/// and `tenant` labels. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PipelineMetrics {
    metrics: Arc<Metrics>,
    base: Arc<Labels>,
    kinds: Arc<Mutex<HashSet<String>>>,
}

impl PipelineMetrics {
    /// `pipeline`'s view of `metrics`.
    pub fn new(metrics: Arc<Metrics>, pipeline: &str, tenant: &str) -> Self {
        PipelineMetrics {
            metrics,
            base: Arc::new(vec![
                ("pipeline", pipeline.to_string()),
                ("tenant", tenant.to_string()),
            ]),
            kinds: Arc::default(),
        }
    }

    /// Metrics nobody reads (tests, tools).
    pub fn detached(pipeline: &str, tenant: &str) -> Self {
        Self::new(Arc::new(Metrics::new()), pipeline, tenant)
    }

    /// The host's metrics.
    pub fn host(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The base labels plus `extra`.
    pub fn labels(&self, extra: &[(&'static str, &str)]) -> Labels {
        let mut l = (*self.base).clone();
        l.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        l
    }

    /// A guest-chosen failure kind, or `other` once the pipeline has seen
    /// [`MAX_KINDS`] distinct ones.
    pub fn kind_label<'a>(&self, kind: &'a str) -> &'a str {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        if kinds.contains(kind) {
            return kind;
        }
        if kinds.len() < MAX_KINDS {
            kinds.insert(kind.to_string());
            return kind;
        }
        "other"
    }

    /// Adds `n` to counter `family` with the base labels plus `extra`.
    pub(crate) fn count(
        &self,
        family: impl Fn(&Metrics) -> &Family<Labels, Counter>,
        extra: &[(&'static str, &str)],
        n: u64,
    ) {
        if n > 0 {
            family(&self.metrics)
                .get_or_create(&self.labels(extra))
                .inc_by(n);
        }
    }

    /// Sets gauge `family` with the base labels plus `extra`.
    pub(crate) fn set(
        &self,
        family: impl Fn(&Metrics) -> &Family<Labels, Gauge>,
        extra: &[(&'static str, &str)],
        value: i64,
    ) {
        family(&self.metrics)
            .get_or_create(&self.labels(extra))
            .set(value);
    }

    /// Removes gauge `family`'s series with the base labels plus `extra`.
    pub(crate) fn unset(
        &self,
        family: impl Fn(&Metrics) -> &Family<Labels, Gauge>,
        extra: &[(&'static str, &str)],
    ) {
        family(&self.metrics).remove(&self.labels(extra));
    }

    /// Observes `value` in histogram `family`.
    pub(crate) fn observe(
        &self,
        family: impl Fn(&Metrics) -> &Hist,
        extra: &[(&'static str, &str)],
        value: f64,
    ) {
        family(&self.metrics)
            .get_or_create(&self.labels(extra))
            .observe(value);
    }

    /// Observes a duration in seconds.
    pub(crate) fn observe_time(
        &self,
        family: impl Fn(&Metrics) -> &Hist,
        extra: &[(&'static str, &str)],
        d: Duration,
    ) {
        self.observe(family, extra, d.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_carry_the_pipeline_and_end_in_total() {
        let m = PipelineMetrics::detached("orders", "team-a");
        m.count(|m| &m.records_sent, &[("output", "default")], 3);
        m.count(|m| &m.records_sent, &[("output", "default")], 2);
        m.observe_time(
            |m| &m.sink_write_seconds,
            &[("output", "default")],
            Duration::from_millis(3),
        );
        let text = m.host().encode();
        assert!(
            text.contains(
                r#"sluice_records_sent_total{pipeline="orders",tenant="team-a",output="default"} 5"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_sink_write_seconds_count{pipeline="orders",tenant="team-a",output="default"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn guest_chosen_kinds_are_capped() {
        let m = PipelineMetrics::detached("p", "t");
        for i in 0..MAX_KINDS {
            let k = format!("k{i}");
            assert_eq!(m.kind_label(&k), k);
        }
        assert_eq!(m.kind_label("one-too-many"), "other");
        assert_eq!(m.kind_label("k0"), "k0", "a known kind stays itself");
    }
}
