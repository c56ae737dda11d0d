//! A small Kafka client for scripts (`scripts/bench-kafka`): fills topics
//! with numbered records, reads them back, and measures the raw broker.
//!
//! ```text
//! kafka-tool produce <topic> <records> [partitions] [value-bytes]
//! kafka-tool count <topic> <records> [timeout-s]       # reads until <records> are seen
//! kafka-tool raw <records> [partitions] [value-bytes]  # produce + consume, records/s and MB/s
//! kafka-tool copy <records> [partitions] [value-bytes] # consume one topic into another, no Sluice
//! kafka-tool watch <group> <topic> <records> [interval-ms] [timeout-s]
//!     # a group's lag per partition over time, and how far apart the partitions drifted
//! kafka-tool paced <topic> <rate> <seconds> [partitions] [value-bytes]
//!     # produces at a fixed rate, each record stamped with its send time
//! kafka-tool latency <topic> <records> [timeout-s]
//!     # reads a topic; p50/p99 of (read time - record timestamp) per partition
//! kafka-tool repeats <input> <output> <group>
//!     # after a crash: the output records whose input is at or past the group's
//!     # committed offset, i.e. what the next owner of the partitions writes again
//! ```

use sluice_e2e::broker;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn numbered(n: usize, value_bytes: usize) -> impl Iterator<Item = (Option<String>, Vec<u8>)> {
    (0..n).map(move |i| {
        let mut v = format!("{{\"n\":{i},\"pad\":\"").into_bytes();
        while v.len() + 2 < value_bytes {
            v.push(b'x');
        }
        v.extend_from_slice(b"\"}");
        (Some(format!("k{}", i % 1000)), v)
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// "n records, p50 … ms, p99 … ms, max … ms" of latencies in ms.
fn percentiles(lat: &mut [i64]) -> String {
    if lat.is_empty() {
        return "no records".to_string();
    }
    lat.sort_unstable();
    let at = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    format!(
        "{} records, p50 {} ms, p99 {} ms, max {} ms",
        lat.len(),
        at(0.50),
        at(0.99),
        lat[lat.len() - 1]
    )
}

/// Samples a group's committed offsets until it has committed `records` (or
/// `timeout` passes): prints each partition's lag over time and, at the end,
/// the widest gap between the most and the least advanced partition (as a
/// share of each partition's records): near 0 when the partitions advance
/// side by side, near 100 % when they are drained one after another.
fn watch(
    bootstrap: &str,
    group: &str,
    topic: &str,
    records: i64,
    interval: Duration,
    timeout: Duration,
) {
    let progress = broker::Progress::new(bootstrap, group, topic);
    let start = Instant::now();
    let mut widest = (0.0f64, 0.0f64);
    let mut last_change = (0i64, Instant::now());
    loop {
        let sample = progress.sample();
        let t = start.elapsed().as_secs_f64();
        let lags: Vec<String> = sample
            .iter()
            .map(|(p, c, h)| format!("p{p}={}", (h - c).max(0)))
            .collect();
        let shares: Vec<f64> = sample
            .iter()
            .filter(|(_, _, h)| *h > 0)
            .map(|(_, c, h)| *c as f64 / *h as f64)
            .collect();
        let gap = shares.iter().cloned().fold(0.0f64, f64::max)
            - shares.iter().cloned().fold(1.0f64, f64::min);
        if gap > widest.0 {
            widest = (gap, t);
        }
        let done: i64 = sample.iter().map(|(_, c, _)| c).sum();
        println!(
            "watch t={t:5.1} s committed {done:>8}  lag {}  gap {:3.0} %",
            lags.join(" "),
            gap.max(0.0) * 100.0
        );
        if done != last_change.0 {
            last_change = (done, Instant::now());
        }
        // Stalled (the group finished short of `records`, or stopped).
        let stalled = done > 0 && last_change.1.elapsed() > Duration::from_secs(10);
        if done >= records || stalled || start.elapsed() >= timeout {
            break;
        }
        std::thread::sleep(interval);
    }
    println!(
        "fairness: the widest gap between partitions was {:.0} % of their records (at t={:.1} s)",
        widest.0 * 100.0,
        widest.1
    );
}

fn rate(what: &str, n: usize, bytes: usize, took: Duration) {
    let s = took.as_secs_f64().max(1e-9);
    println!(
        "{what}: {n} records in {s:.2} s = {:.0} records/s, {:.1} MB/s",
        n as f64 / s,
        bytes as f64 / s / 1e6
    );
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let bootstrap = broker::bootstrap();
    broker::require(&bootstrap);
    match args.get(1).map(String::as_str) {
        Some("produce") => {
            let (Some(topic), n) = (args.get(2), arg(&args, 3, 0usize)) else {
                eprintln!("usage: kafka-tool produce <topic> <records> [partitions] [value-bytes]");
                return ExitCode::from(2);
            };
            broker::create_topic(&bootstrap, topic, arg(&args, 4, 4));
            let size = arg(&args, 5, 100);
            let t = Instant::now();
            let n = broker::produce(&bootstrap, topic, numbered(n, size));
            rate("produce", n, n * size, t.elapsed());
        }
        Some("count") => {
            let (Some(topic), want) = (args.get(2), arg(&args, 3, 0usize)) else {
                eprintln!("usage: kafka-tool count <topic> <records> [timeout-s]");
                return ExitCode::from(2);
            };
            let t = Instant::now();
            let got = broker::consume(
                &bootstrap,
                topic,
                true,
                Duration::from_secs(arg(&args, 4, 600)),
                sluice_e2e::scenario::until_count(want),
            );
            let bytes: usize = got.iter().map(|g| g.value.len()).sum();
            rate("count", got.len(), bytes, t.elapsed());
            if got.len() < want {
                eprintln!("only {} of {want} records", got.len());
                return ExitCode::FAILURE;
            }
        }
        Some("from") => {
            // Diagnostics: the first records of one partition from an offset.
            let (Some(topic), partition, offset) =
                (args.get(2), arg(&args, 3, 0i32), arg(&args, 4, 0i64))
            else {
                eprintln!("usage: kafka-tool from <topic> <partition> <offset>");
                return ExitCode::from(2);
            };
            let got = broker::read_from(
                &bootstrap,
                topic,
                partition,
                offset,
                3,
                Duration::from_secs(10),
            );
            for g in got {
                println!("{}@{}: {}", g.partition, g.offset, g.text());
            }
        }
        Some("raw") => {
            let n = arg(&args, 2, 200_000usize);
            let partitions = arg(&args, 3, 4);
            let size = arg(&args, 4, 100);
            let topic = broker::unique("raw");
            broker::create_topic(&bootstrap, &topic, partitions);
            let t = Instant::now();
            broker::produce(&bootstrap, &topic, numbered(n, size));
            rate("raw produce", n, n * size, t.elapsed());
            let t = Instant::now();
            let got = broker::consume(
                &bootstrap,
                &topic,
                true,
                Duration::from_secs(600),
                sluice_e2e::scenario::until_count(n),
            );
            rate("raw consume", got.len(), got.len() * size, t.elapsed());
        }
        Some("copy") => {
            // The raw broker limit for a pipeline: a plain librdkafka loop that
            // consumes a topic and produces every record to another (same
            // producer settings as Sluice's sink: idempotent, acks=all, lz4),
            // timed until a third client has read them all back.
            let n = arg(&args, 2, 200_000usize);
            let partitions = arg(&args, 3, 4);
            let size = arg(&args, 4, 100);
            let (input, output) = (broker::unique("copy-in"), broker::unique("copy-out"));
            broker::create_topic(&bootstrap, &input, partitions);
            broker::create_topic(&bootstrap, &output, partitions);
            broker::produce(&bootstrap, &input, numbered(n, size));
            let t = Instant::now();
            let (b, o) = (bootstrap.clone(), output.clone());
            let counter = std::thread::spawn(move || {
                broker::consume(
                    &b,
                    &o,
                    true,
                    Duration::from_secs(600),
                    sluice_e2e::scenario::until_count(n),
                )
                .len()
            });
            broker::copy(&bootstrap, &input, &output, n);
            let counted = counter.join().unwrap_or(0);
            rate("raw copy", counted, counted * size, t.elapsed());
        }
        Some("watch") => {
            let (Some(group), Some(topic), records) =
                (args.get(2), args.get(3), arg(&args, 4, 0i64))
            else {
                eprintln!(
                    "usage: kafka-tool watch <group> <topic> <records> [interval-ms] [timeout-s]"
                );
                return ExitCode::from(2);
            };
            watch(
                &bootstrap,
                group,
                topic,
                records,
                Duration::from_millis(arg(&args, 5, 500)),
                Duration::from_secs(arg(&args, 6, 600)),
            );
        }
        Some("paced") => {
            let (Some(topic), per_s, seconds) =
                (args.get(2), arg(&args, 3, 0usize), arg(&args, 4, 0f64))
            else {
                eprintln!(
                    "usage: kafka-tool paced <topic> <rate> <seconds> [partitions] [value-bytes]"
                );
                return ExitCode::from(2);
            };
            broker::create_topic(&bootstrap, topic, arg(&args, 5, 4));
            let size = arg(&args, 6, 100);
            let t = Instant::now();
            let n = broker::produce_paced(&bootstrap, topic, per_s, seconds, size);
            rate("paced produce", n, n * size, t.elapsed());
        }
        Some("latency") => {
            let (Some(topic), want) = (args.get(2), arg(&args, 3, 0usize)) else {
                eprintln!("usage: kafka-tool latency <topic> <records> [timeout-s]");
                return ExitCode::from(2);
            };
            let mut by_partition: std::collections::BTreeMap<i32, Vec<i64>> = Default::default();
            let mut seen = 0usize;
            broker::consume(
                &bootstrap,
                topic,
                true,
                Duration::from_secs(arg(&args, 4, 600)),
                |g| {
                    if let Some(ts) = g.timestamp {
                        by_partition
                            .entry(g.partition)
                            .or_default()
                            .push(now_ms() - ts);
                    }
                    seen += 1;
                    seen >= want
                },
            );
            let mut all: Vec<i64> = by_partition.values().flatten().copied().collect();
            for (p, lat) in &mut by_partition {
                println!("latency partition {p}: {}", percentiles(lat));
            }
            println!("latency all partitions: {}", percentiles(&mut all));
            if seen < want {
                eprintln!("only {seen} of {want} records");
                return ExitCode::FAILURE;
            }
        }
        Some("repeats") => {
            let (Some(input), Some(output), Some(group)) = (args.get(2), args.get(3), args.get(4))
            else {
                eprintln!("usage: kafka-tool repeats <input> <output> <group>");
                return ExitCode::from(2);
            };
            let idle = Duration::from_secs(3);
            let max = Duration::from_secs(600);
            // Input number -> (partition, offset).
            let mut at = std::collections::HashMap::new();
            for g in broker::consume_all(&bootstrap, input, false, idle, max) {
                if let Some(n) = sluice_e2e::scenario::number(&g) {
                    at.insert(n, (g.partition, g.offset));
                }
            }
            let committed: std::collections::HashMap<i32, i64> =
                broker::committed(&bootstrap, group, input)
                    .into_iter()
                    .collect();
            let written = broker::consume_all(&bootstrap, output, false, idle, max);
            let repeats = written
                .iter()
                .filter_map(sluice_e2e::scenario::number)
                .filter(|n| {
                    at.get(n)
                        .is_some_and(|(p, o)| *o >= committed.get(p).copied().unwrap_or(0).max(0))
                })
                .count();
            let done: i64 = committed.values().map(|o| (*o).max(0)).sum();
            println!(
                "repeats: {} records written, {done} committed, {repeats} written past the committed offsets (the next owner writes them again)",
                written.len()
            );
        }
        _ => {
            eprintln!(
                "usage: kafka-tool produce|count|raw|copy|watch|paced|latency|repeats ... (see the source)"
            );
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
