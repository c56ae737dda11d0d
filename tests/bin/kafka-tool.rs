//! A small Kafka client for scripts (`scripts/bench-kafka`): fills topics
//! with numbered records, reads them back, and measures the raw broker.
//!
//! ```text
//! kafka-tool produce <topic> <records> [partitions] [value-bytes]
//! kafka-tool count <topic> <records> [timeout-s]       # reads until <records> are seen
//! kafka-tool raw <records> [partitions] [value-bytes]  # produce + consume, records/s and MB/s
//! kafka-tool copy <records> [partitions] [value-bytes] # consume one topic into another, no Sluice
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
        _ => {
            eprintln!("usage: kafka-tool produce|count|raw|copy ... (see the source)");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
