//! What the status page, the API and the CLI see of a pipeline: its state
//! and a snapshot of its counters, errors, probation and lags.

use serde::Serialize;
use std::collections::BTreeMap;

/// Where a pipeline is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Loading, or opening its source and sinks.
    Starting,
    /// Reading and delivering.
    Running,
    /// Not reading (in-flight batches are delivered); resumes on request.
    Paused,
    /// Failed and waiting to start again (its restart policy).
    Restarting,
    /// Stop requested: finishing in-flight batches.
    Stopping,
    /// Stopped on request, everything handled committed.
    Stopped,
    /// Its bounded source is drained and everything is delivered.
    Finished,
    /// Stopped by an error its restart policy does not cover (its breaker
    /// opened, its module was refused, its sink stayed down): the reason
    /// says why. The others keep running.
    Failed,
}

impl State {
    /// Every state, for the state metric.
    pub const ALL: [State; 8] = [
        State::Starting,
        State::Running,
        State::Paused,
        State::Restarting,
        State::Stopping,
        State::Stopped,
        State::Finished,
        State::Failed,
    ];

    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Paused => "paused",
            State::Restarting => "restarting",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Finished => "finished",
            State::Failed => "failed",
        }
    }

    /// Whether the pipeline will do nothing more.
    pub fn is_final(self) -> bool {
        matches!(self, State::Stopped | State::Finished | State::Failed)
    }
}

/// An error a pipeline met, for the status page.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorNote {
    /// When (RFC 3339).
    pub at: String,
    /// The message.
    pub message: String,
}

/// One transform of the chain as it runs now.
#[derive(Debug, Clone, Serialize)]
pub struct TransformView {
    /// Its name in the pipeline.
    pub name: String,
    /// The active module's digest.
    pub digest: String,
}

/// What a pipeline did and is doing, at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Pipeline name.
    pub name: String,
    /// Owning tenant.
    pub tenant: String,
    /// Its state.
    pub state: State,
    /// Why it failed or is restarting.
    pub reason: Option<String>,
    /// The source, described.
    pub source: String,
    /// The transforms and their active module digests.
    pub transforms: Vec<TransformView>,
    /// Records read and handled.
    pub records_in: u64,
    /// Records written, all outputs.
    pub records_out: u64,
    /// Records written per output.
    pub outputs: BTreeMap<String, u64>,
    /// Dead-letter entries.
    pub dead_letter: u64,
    /// Records transforms sent to outputs the pipeline does not declare
    /// (they are in the dead-letter queue, stage `route`).
    pub undeclared_outputs: Vec<UndeclaredOutput>,
    /// A new version on probation, if one is.
    pub probation: Option<ProbationView>,
    /// Records dropped by transforms.
    pub dropped: u64,
    /// Records per second in, over the last few seconds.
    pub rate_in: f64,
    /// Records per second out.
    pub rate_out: f64,
    /// Consumer lag in records, where the source knows it.
    pub lag: Option<i64>,
    /// What keeps the source from reading, while it lasts (`source
    /// unreachable since …`).
    pub source_health: Option<String>,
    /// A bounded source's progress: `[bytes read, bytes in all]`.
    pub source_progress: Option<(u64, u64)>,
    /// The same per source partition (Kafka: from the consumer's statistics,
    /// every few seconds).
    pub partition_lags: Vec<PartitionLag>,
    /// Records in flight.
    pub in_flight_records: usize,
    /// Bytes in flight.
    pub in_flight_bytes: usize,
    /// Records sinks have taken but hold, not yet durable (a file not yet
    /// closed): their budget is free, their positions not yet committed.
    pub held_records: usize,
    /// Restarts so far.
    pub restarts: u64,
    /// The last errors, newest last.
    pub last_errors: Vec<ErrorNote>,
    /// Median time from cutting a batch to having it all delivered, over
    /// the last batches, in ms.
    pub batch_latency_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub batch_latency_p99_ms: Option<f64>,
    /// Seconds since it started.
    pub uptime_seconds: f64,
}

/// A new version on probation: batches go one at a time, measured by a
/// breaker of its own; it is rolled back automatically if that opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbationView {
    /// The transform.
    pub transform: String,
    /// The new version.
    pub digest: String,
    /// Records it still has to process.
    pub remaining: u64,
}

/// An output a transform sends records to that the pipeline does not
/// declare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UndeclaredOutput {
    /// The transform.
    pub transform: String,
    /// The output's name.
    pub output: String,
    /// Records sent there (all in the dead-letter queue).
    pub records: u64,
}

/// One source partition's lag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionLag {
    /// Topic (stream) name.
    pub stream: String,
    /// Partition number.
    pub partition: i32,
    /// Records between the committed position and the end.
    pub lag: i64,
}
