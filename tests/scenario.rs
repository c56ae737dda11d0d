//! Building blocks of the Kafka scenarios: numbered input, a seeded random
//! generator for kill points, pipeline files, and tallies of what came out.

use crate::broker::{self, Got};
use crate::process::Sluice;
use crate::{module, toml_path};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A small xorshift generator; the seed is printed so a run can be replayed.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `SLUICE_TEST_SEED`, else from the clock.
    pub fn new() -> Rng {
        let seed = std::env::var("SLUICE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
                    | 1
            });
        eprintln!("random seed: {seed} (set SLUICE_TEST_SEED to replay)");
        Rng(seed)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}

/// Topic and group names of one scenario.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Input topic.
    pub input: String,
    /// Output topic.
    pub output: String,
    /// Dead-letter topic.
    pub dlq: String,
    /// Consumer group.
    pub group: String,
}

impl Topics {
    /// Fresh names for a scenario called `name`.
    pub fn new(name: &str) -> Topics {
        Topics {
            input: broker::unique(&format!("{name}-in")),
            output: broker::unique(&format!("{name}-out")),
            dlq: broker::unique(&format!("{name}-dlq")),
            group: broker::unique(&format!("{name}-group")),
        }
    }
}

/// Records `{"n": i}` keyed `k<i % keys>`.
pub fn numbered(n: usize, keys: usize) -> impl Iterator<Item = (Option<String>, Vec<u8>)> {
    (0..n).map(move |i| {
        (
            Some(format!("k{}", i % keys)),
            format!("{{\"n\":{i}}}").into_bytes(),
        )
    })
}

/// The input number of an output record.
pub fn number(g: &Got) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_slice(&g.value).ok()?;
    v["n"].as_u64().map(|n| n as usize)
}

/// Distinct input numbers among outputs.
pub fn distinct(got: &[Got]) -> usize {
    got.iter()
        .filter_map(number)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// A stop condition for [`broker::consume`]: true once `n` distinct input
/// numbers were seen (incremental: each record is parsed once).
pub fn until_distinct(n: usize) -> impl FnMut(&Got) -> bool {
    let mut seen = std::collections::HashSet::new();
    move |g| {
        if let Some(i) = number(g) {
            seen.insert(i);
        }
        seen.len() >= n
    }
}

/// A stop condition: true once `n` records were read.
pub fn until_count(n: usize) -> impl FnMut(&Got) -> bool {
    let mut count = 0;
    move |_| {
        count += 1;
        count >= n
    }
}

/// Which of `0..n` are missing, and how many outputs are repeats.
pub fn tally(got: &[Got], n: usize) -> (Vec<usize>, usize) {
    let mut counts = vec![0u32; n];
    for g in got {
        if let Some(i) = number(g).filter(|&i| i < n) {
            counts[i] += 1;
        }
    }
    let missing: Vec<usize> = (0..n).filter(|&i| counts[i] == 0).collect();
    let duplicates: usize = counts.iter().map(|&c| c.saturating_sub(1) as usize).sum();
    (missing, duplicates)
}

/// Keys whose records, counting each record's first occurrence only, do not
/// come out in increasing order (first few). At-least-once may repeat
/// records after a rewind, but what a key's records are first written as
/// must still be in input order.
pub fn first_occurrences_out_of_order(got: &[Got]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let first: Vec<Got> = got
        .iter()
        .filter(|g| number(g).is_some_and(|n| seen.insert(n)))
        .cloned()
        .collect();
    out_of_order_keys(&first)
}

/// Keys whose numbers do not come out in increasing order (first few).
pub fn out_of_order_keys(got: &[Got]) -> Vec<String> {
    let mut last: std::collections::BTreeMap<String, usize> = Default::default();
    let mut bad = std::collections::BTreeSet::new();
    for g in got {
        let (Some(k), Some(n)) = (g.key.clone(), number(g)) else {
            continue;
        };
        if let Some(&prev) = last.get(&k)
            && n <= prev
        {
            bad.insert(k.clone());
        }
        last.insert(k, n);
    }
    bad.into_iter().take(10).collect()
}

/// Writes a Kafka → identity → `sink` pipeline file; `extra` goes before
/// the source table (e.g. `[batch]` or `[delivery]` tables).
///
/// A killed member is noticed after the 6 s session timeout. tansu 0.6.0
/// removes it from the group only once the rebalance timeout
/// (`max.poll.interval.ms`, 5 min by default) has passed, so the test
/// pipelines set that to 10 s (safe for Sluice: its polling thread never
/// waits longer than a drain).
pub fn kafka_pipeline(dir: &Path, bootstrap: &str, t: &Topics, sink: &str, extra: &str) -> PathBuf {
    let text = format!(
        r#"
name = "kafka-e2e"
{extra}
[source.kafka]
bootstrap = "{bootstrap}"
topics = ["{input}"]
group = "{group}"
properties = {{ "session.timeout.ms" = "15000", "heartbeat.interval.ms" = "1000", "max.poll.interval.ms" = "15000" }}
[[transforms]]
name = "identity"
module = {module}
{sink}
[dead_letter.kafka]
topic = "{dlq}"
"#,
        input = t.input,
        group = t.group,
        dlq = t.dlq,
        module = toml_path(&module("transforms/identity")),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).expect("write pipeline");
    path
}

/// Waits until the process's log holds `needle`.
pub fn wait_for_log(s: &Sluice, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read_to_string(&s.log).is_ok_and(|l| l.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The Kafka cluster a scenario runs against.
pub enum Cluster {
    /// The broker of `scripts/services` (tansu), or `SLUICE_KAFKA_BOOTSTRAP`.
    Broker(String),
    /// librdkafka's mock cluster, inside the test process: a coordinator
    /// that follows Kafka's group and transaction rules.
    Mock(MockCluster<'static, DefaultProducerContext>),
    /// A real Kafka given by `SLUICE_KAFKA_TXN_BOOTSTRAP`.
    Real(String),
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Cluster {
    /// The shared broker (checked to answer).
    pub fn broker() -> Cluster {
        let b = broker::bootstrap();
        broker::require(&b);
        Cluster::Broker(b)
    }

    /// A cluster with transactions: a real Kafka when
    /// `SLUICE_KAFKA_TXN_BOOTSTRAP` is set, else the mock cluster.
    pub fn transactional() -> Cluster {
        match std::env::var("SLUICE_KAFKA_TXN_BOOTSTRAP") {
            Ok(b) if !b.trim().is_empty() => {
                broker::require(&b);
                Cluster::Real(b)
            }
            _ => Cluster::mock(),
        }
    }

    /// librdkafka's mock cluster with three brokers.
    pub fn mock() -> Cluster {
        Cluster::Mock(MockCluster::new(3).expect("mock cluster"))
    }

    /// What it is, for the test output.
    pub fn describe(&self) -> String {
        match self {
            Cluster::Broker(b) => {
                format!("the broker at {b} (tansu unless SLUICE_KAFKA_BOOTSTRAP says otherwise)")
            }
            Cluster::Mock(m) => format!("librdkafka's mock cluster at {}", m.bootstrap_servers()),
            Cluster::Real(b) => format!("the Kafka at {b} (SLUICE_KAFKA_TXN_BOOTSTRAP)"),
        }
    }

    /// Bootstrap servers.
    pub fn bootstrap(&self) -> String {
        match self {
            Cluster::Broker(b) | Cluster::Real(b) => b.clone(),
            Cluster::Mock(m) => m.bootstrap_servers(),
        }
    }

    /// Creates a topic.
    pub fn topic(&self, name: &str, partitions: i32) {
        match self {
            Cluster::Mock(m) => m.create_topic(name, partitions, 1).expect("create topic"),
            Cluster::Broker(b) | Cluster::Real(b) => broker::create_topic(b, name, partitions),
        }
    }

    /// Fresh input, output and dead-letter topics and a group.
    pub fn topics(&self, name: &str, partitions: i32) -> Topics {
        let t = Topics::new(name);
        self.topic(&t.input, partitions);
        self.topic(&t.output, partitions);
        self.topic(&t.dlq, 1);
        t
    }
}
