//! End-to-end: Kafka in and out, against a real Kafka-protocol broker
//! (tansu on 127.0.0.1:9092 from `scripts/services start`, or any Kafka at
//! `SLUICE_KAFKA_BOOTSTRAP`). The `sluice` command runs as a real process so
//! that it can be killed with SIGKILL at random points.
//!
//! Exactly-once needs Kafka transactions, which tansu lacks; those tests are
//! in `kafka_eos.rs` and run against librdkafka's mock cluster (or a real
//! Kafka at `SLUICE_KAFKA_TXN_BOOTSTRAP`).

use sluice_e2e::broker;
use sluice_e2e::process::Sluice;
use sluice_e2e::scenario::{
    Cluster, Rng, Topics, distinct, kafka_pipeline, number, numbered, tally, until_count,
    until_distinct, wait_for_log,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// These tests start processes and load the broker: one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn topics(bootstrap: &str, name: &str, partitions: i32) -> Topics {
    let t = Topics::new(name);
    broker::create_topic(bootstrap, &t.input, partitions);
    broker::create_topic(bootstrap, &t.output, partitions);
    broker::create_topic(bootstrap, &t.dlq, 1);
    t
}

const SLOW_BATCHES: &str =
    "[batch]\nmax_records = 500\nmax_wait_ms = 200\n[delivery]\nmax_in_flight_records = 2000";

#[test]
fn at_least_once_survives_kill_9_at_random_points_without_losing_a_record() {
    let _one = heavy();
    let b = broker::bootstrap();
    broker::require(&b);
    const N: usize = 100_000;
    let t = topics(&b, "alo", 4);
    eprintln!("topics: in {} out {} group {}", t.input, t.output, t.group);
    broker::produce(&b, &t.input, numbered(N, 1000));
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = format!("[outputs.default.kafka]\ntopic = \"{}\"", t.output);
    let pipeline = kafka_pipeline(dir.path(), &b, &t, &sink, SLOW_BATCHES);
    let log = dir.path().join("sluice.log");
    let mut rng = Rng::new();
    let mut kills = 0;
    for round in 0..5 {
        let mut s = Sluice::start(&sluice_e2e::sluice_bin!(), &pipeline, &log, &[], false);
        assert!(
            wait_for_log(&s, "partitions assigned", Duration::from_secs(60)),
            "round {round}: no partitions assigned:\n{}",
            s.log_tail(30)
        );
        // The previous incarnation's partitions come free once its session
        // times out (6 s); kill somewhere in the processing after that.
        let after = Duration::from_millis(500 + rng.below(3_000));
        std::thread::sleep(after);
        assert!(
            s.running(),
            "round {round}: sluice exited early:\n{}",
            s.log_tail(30)
        );
        s.kill9();
        kills += 1;
        std::fs::write(&log, format!("--- killed with SIGKILL after {after:?}\n")).expect("log");
    }
    let mut s = Sluice::start(&sluice_e2e::sluice_bin!(), &pipeline, &log, &[], false);
    let mut got = broker::consume(
        &b,
        &t.output,
        false,
        Duration::from_secs(150),
        until_distinct(N),
    );
    let mut restarts = 0;
    while distinct(&got) < N && restarts < 2 && last_assignment_empty(&log) {
        // The killed incarnations' sessions have long expired, yet the
        // broker never handed their partitions to the live member.
        eprintln!(
            "at-least-once on {b}: the last process has held an empty assignment for minutes. tansu 0.6.0's group coordinator does not rebalance when dead members' sessions expire, so their partitions stay orphaned. Restarting the process (SIGTERM, then start), as a supervisor would, to check that nothing was lost."
        );
        let _ = s.terminate(Duration::from_secs(60));
        restarts += 1;
        s = Sluice::start(&sluice_e2e::sluice_bin!(), &pipeline, &log, &[], false);
        got = broker::consume(
            &b,
            &t.output,
            false,
            Duration::from_secs(150),
            until_distinct(N),
        );
    }
    let status = s.terminate(Duration::from_secs(60));
    let (missing, duplicates) = tally(&got, N);
    eprintln!(
        "at-least-once: {N} records, {kills} kills with SIGKILL, {} outputs, {} missing, {duplicates} duplicates",
        got.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} records lost, e.g. {:?}; log:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        s.log_tail(40)
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM must end the run cleanly: {status:?}\n{}",
        s.log_tail(30)
    );
    // A graceful stop commits everything handled: the group is at the end.
    let committed: i64 = broker::committed(&b, &t.group, &t.input)
        .iter()
        .map(|(_, o)| o)
        .sum();
    assert_eq!(committed, N as i64, "committed offsets after SIGTERM");
}

/// Whether the newest "partitions assigned" line of a log names no partition.
fn last_assignment_empty(log: &std::path::Path) -> bool {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let plain = strip_ansi(&text);
    plain
        .lines()
        .rev()
        .find(|l| l.contains("partitions assigned"))
        .is_some_and(|l| l.trim_end().ends_with("partitions="))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Two members of one group; one is killed with SIGKILL mid-run. Returns
/// whether the survivor took over the dead member's partitions by itself.
fn scale_out(cluster: &Cluster, strict: bool) -> bool {
    let b = cluster.bootstrap();
    const N: usize = 60_000;
    let t = cluster.topics("scale", 6);
    broker::produce(&b, &t.input, numbered(N, 500));
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = format!("[outputs.default.kafka]\ntopic = \"{}\"", t.output);
    let pipeline = kafka_pipeline(dir.path(), &b, &t, &sink, SLOW_BATCHES);
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut a = Sluice::start(
        &sluice_e2e::sluice_bin!(),
        &pipeline,
        &log_a,
        &[("SLUICE_INSTANCE", "a")],
        false,
    );
    let mut survivor = Sluice::start(
        &sluice_e2e::sluice_bin!(),
        &pipeline,
        &log_b,
        &[("SLUICE_INSTANCE", "b")],
        false,
    );
    assert!(
        wait_for_log(&a, "partitions assigned", Duration::from_secs(60)),
        "{}",
        a.log_tail(30)
    );
    assert!(
        wait_for_log(&survivor, "partitions assigned", Duration::from_secs(60)),
        "{}",
        survivor.log_tail(30)
    );
    std::thread::sleep(Duration::from_millis(1500));
    a.kill9();
    // The survivor must take the dead member's partitions over once its
    // session times out; then every record comes through.
    let mut got = broker::consume(
        &b,
        &t.output,
        false,
        Duration::from_secs(90),
        until_distinct(N),
    );
    let took_over = distinct(&got) >= N;
    let mut replacement = None;
    if !took_over {
        assert!(
            !strict,
            "the survivor did not take over:\n{}",
            survivor.log_tail(40)
        );
        eprintln!(
            "scale-out on {}: the survivor got no new assignment within 90 s. tansu 0.6.0's group coordinator evicts a member that is rejoining (only heartbeats count as contact while the group re-forms), so it sometimes never hands a dead member's partitions over. Starting a replacement process, as a supervisor would, to check that nothing was lost.",
            cluster.describe()
        );
        replacement = Some(Sluice::start(
            &sluice_e2e::sluice_bin!(),
            &pipeline,
            &dir.path().join("c.log"),
            &[("SLUICE_INSTANCE", "c")],
            false,
        ));
        got = broker::consume(
            &b,
            &t.output,
            false,
            Duration::from_secs(180),
            until_distinct(N),
        );
    }
    let status = survivor.terminate(Duration::from_secs(60));
    if let Some(mut r) = replacement {
        let _ = r.terminate(Duration::from_secs(60));
    }
    let (missing, duplicates) = tally(&got, N);
    eprintln!(
        "scale-out on {}: {N} records, 2 members, one killed; {} outputs, {} missing, {duplicates} duplicates; survivor took over: {took_over}",
        cluster.describe(),
        got.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} records lost, e.g. {:?}\nsurvivor:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        survivor.log_tail(40)
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        survivor.log_tail(30)
    );
    if took_over {
        let text = std::fs::read_to_string(&log_b).unwrap_or_default();
        assert!(
            text.matches("partitions assigned").count() >= 2,
            "the survivor took over the dead member's partitions:\n{text}"
        );
    }
    took_over
}

#[test]
fn two_processes_share_the_partitions_and_one_dying_loses_nothing() {
    let _one = heavy();
    scale_out(&Cluster::broker(), false);
}

#[test]
fn the_survivor_takes_over_a_dead_members_partitions_on_a_conforming_coordinator() {
    let _one = heavy();
    // librdkafka's mock cluster implements Kafka's group coordinator rules.
    assert!(scale_out(&Cluster::mock(), true));
}

#[test]
fn a_slow_sink_pauses_the_source_and_memory_stays_bounded() {
    use std::io::Read;
    let _one = heavy();
    let b = broker::bootstrap();
    broker::require(&b);
    const N: usize = 2_000_000;
    const BOUND_MIB: u64 = 256;
    let t = topics(&b, "backpressure", 4);
    let produced = broker::produce(&b, &t.input, numbered(N, 10_000));
    assert_eq!(produced, N);
    let dir = tempfile::tempdir().expect("tempdir");
    // The sink is standard output, read slowly by this test: a real slow
    // consumer on the other end of a pipe.
    let pipeline = kafka_pipeline(dir.path(), &b, &t, "[outputs.default.stdout]", "");
    let log = dir.path().join("sluice.log");
    let mut s = Sluice::start(
        &sluice_e2e::sluice_bin!(),
        &pipeline,
        &log,
        &[("SLUICE_LOG", "info,sluice::source::kafka=debug")],
        true,
    );
    let mut out = s.child.stdout.take().expect("stdout");
    // A thread reads the pipe (about 200 KB/s: far slower than the broker
    // delivers), so that a pipeline that writes nothing fails the test
    // instead of blocking it in a read; once the test is done sampling it
    // drains fast, so that the pipeline can finish writing and stop.
    let lines = Arc::new(AtomicUsize::new(0));
    let fast = Arc::new(AtomicBool::new(false));
    let reader = {
        let (lines, fast) = (lines.clone(), fast.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 2 << 10];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let seen = buf[..n].iter().filter(|&&c| c == b'\n').count();
                lines.fetch_add(seen, Ordering::Relaxed);
                if !fast.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        })
    };
    let mut peak = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(25) && s.running() {
        std::thread::sleep(Duration::from_millis(10));
        if let Some(rss) = s.rss_kib() {
            peak = peak.max(rss);
        }
    }
    let lines_seen = lines.load(Ordering::Relaxed);
    fast.store(true, Ordering::Relaxed);
    let status = s.terminate(Duration::from_secs(60));
    if status.is_none() {
        // It did not stop: kill it, so that the reader sees the pipe close.
        s.kill9();
    }
    let _ = reader.join();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!(
        "back-pressure: {N} records waiting, about {lines_seen} written in 25 s through a slow pipe; peak resident memory {} MiB (bound {BOUND_MIB} MiB)",
        peak / 1024
    );
    assert!(peak > 0, "memory was sampled");
    assert!(
        peak / 1024 < BOUND_MIB,
        "resident memory {} MiB over the bound of {BOUND_MIB} MiB",
        peak / 1024
    );
    // All at once (the budget spent) or one by one (each at its share).
    assert!(
        log_text.contains("partitions paused")
            || log_text.contains("over its share of the budget: paused"),
        "the source paused its partitions:\n{}",
        s.log_tail(30)
    );
    assert!(
        lines_seen > 1000 && lines_seen < N / 2,
        "the slow sink set the pace: {lines_seen} lines"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        s.log_tail(30)
    );
}

/// A backlog on four partitions, drained through a sink this test paces
/// (standard output, read slowly): the group's committed offsets must
/// advance on all partitions side by side. Before partitions had fair
/// shares of the budget, the first partition in a fetch took all of it,
/// again and again, and the partitions were drained one after another (the
/// widest gap between them reached 100 % of their records).
#[test]
fn the_partitions_of_a_backlog_advance_side_by_side() {
    use std::io::Read;
    let _one = heavy();
    let b = broker::bootstrap();
    broker::require(&b);
    const N: usize = 60_000;
    let t = topics(&b, "fairness", 4);
    assert_eq!(broker::produce(&b, &t.input, numbered(N, 1_000)), N);
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline = kafka_pipeline(
        dir.path(),
        &b,
        &t,
        "[outputs.default.stdout]",
        "[batch]\nmax_records = 200\nmax_wait_ms = 50\n[delivery]\nmax_in_flight_records = 2000\ncommit_interval_ms = 200",
    );
    let log = dir.path().join("sluice.log");
    let mut s = Sluice::start(&sluice_e2e::sluice_bin!(), &pipeline, &log, &[], true);
    let mut out = s.child.stdout.take().expect("stdout");
    let watcher = {
        let (b, group, topic) = (b.clone(), t.group.clone(), t.input.clone());
        std::thread::spawn(move || {
            let progress = broker::Progress::new(&b, &group, &topic);
            let deadline = Instant::now() + Duration::from_secs(180);
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                let sample = progress.sample();
                let done: i64 = sample.iter().map(|(_, c, _)| c).sum();
                samples.push(sample);
                if done >= N as i64 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            samples
        })
    };
    // About 100 KB/s (~7,000 records/s): the pace is this reader's, not the broker's.
    let mut lines = 0usize;
    let mut buf = vec![0u8; 1 << 10];
    let started = Instant::now();
    while lines < N && started.elapsed() < Duration::from_secs(180) {
        let n = out.read(&mut buf).expect("read stdout");
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&c| c == b'\n').count();
        std::thread::sleep(Duration::from_millis(10));
    }
    let samples = watcher.join().expect("watcher");
    let drain = std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = out.read_to_end(&mut rest);
    });
    let status = s.terminate(Duration::from_secs(60));
    let _ = drain.join();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        s.log_tail(30)
    );
    assert_eq!(lines, N, "every record written once");
    let table: Vec<String> = samples
        .iter()
        .map(|s| format!("{:?}", s.iter().map(|(_, c, _)| c).collect::<Vec<_>>()))
        .collect();
    // Each sample: the most and the least advanced partition, as shares of
    // their own records.
    let gaps: Vec<f64> = samples
        .iter()
        .map(|s| {
            let shares: Vec<f64> = s
                .iter()
                .filter(|(_, _, h)| *h > 0)
                .map(|(_, c, h)| *c as f64 / *h as f64)
                .collect();
            shares.iter().cloned().fold(0.0, f64::max) - shares.iter().cloned().fold(1.0, f64::min)
        })
        .collect();
    let midway = samples
        .iter()
        .filter(|s| {
            let done: i64 = s.iter().map(|(_, c, _)| c).sum();
            done > 0 && done < N as i64
        })
        .count();
    eprintln!("fairness: committed offsets per partition over time: {table:?}; gaps {gaps:.2?}");
    assert!(
        midway >= 3,
        "the run was sampled at least 3 times midway ({midway}): {table:?}"
    );
    let widest = gaps.iter().cloned().fold(0.0, f64::max);
    assert!(
        widest < 0.5,
        "the partitions advanced side by side: the widest gap between them was {:.0} % of their records; committed offsets over time: {table:?}",
        widest * 100.0
    );
}

#[test]
fn records_keep_key_headers_and_per_partition_order_and_bad_json_goes_to_the_dlq() {
    let _one = heavy();
    let b = broker::bootstrap();
    broker::require(&b);
    let t = topics(&b, "order", 3);
    let mut records: Vec<(Option<String>, Vec<u8>)> = numbered(3_000, 30).collect();
    records.insert(1_234, (Some("k-bad".into()), b"{not json".to_vec()));
    broker::produce(&b, &t.input, records);
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = format!(
        "[outputs.default.kafka]\ntopic = \"{}\"\ncompression = \"zstd\"",
        t.output
    );
    let text = std::fs::read_to_string(kafka_pipeline(
        dir.path(),
        &b,
        &t,
        &sink,
        "[delivery]\nworkers = 2",
    ))
    .expect("pipeline")
    .replace("[source.kafka]\n", "[source.kafka]\nformat = \"json\"\n");
    let pipeline = dir.path().join("json.toml");
    std::fs::write(&pipeline, text).expect("write");
    let log = dir.path().join("sluice.log");
    let mut s = Sluice::start(&sluice_e2e::sluice_bin!(), &pipeline, &log, &[], false);
    let got = broker::consume(
        &b,
        &t.output,
        false,
        Duration::from_secs(120),
        until_count(3_000),
    );
    let dead = broker::consume(&b, &t.dlq, false, Duration::from_secs(30), until_count(1));
    let status = s.terminate(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        s.log_tail(30)
    );
    assert_eq!(got.len(), 3_000, "every valid record once");
    // Per key, the output keeps the input order (and a key stays in one partition).
    let mut by_key: BTreeMap<String, Vec<(i32, usize)>> = BTreeMap::new();
    for g in &got {
        by_key
            .entry(g.key.clone().unwrap_or_default())
            .or_default()
            .push((g.partition, number(g).expect("number")));
    }
    assert_eq!(by_key.len(), 30);
    for (key, seen) in &by_key {
        assert!(
            seen.iter().all(|(p, _)| *p == seen[0].0),
            "key {key} in one partition"
        );
        let ns: Vec<usize> = seen.iter().map(|(_, n)| *n).collect();
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "key {key} in order: {ns:?}"
        );
    }
    assert_eq!(
        dead.len(),
        1,
        "the record that is not JSON is dead-lettered"
    );
    let d = &dead[0];
    assert_eq!(d.text(), "{not json", "the original value, unchanged");
    assert_eq!(d.key.as_deref(), Some("k-bad"));
    assert_eq!(d.header("sluice.dlq.stage").as_deref(), Some("decode"));
    assert_eq!(
        d.header("sluice.dlq.error.kind").as_deref(),
        Some("invalid-input")
    );
    assert_eq!(
        d.header("sluice.dlq.source.stream").as_deref(),
        Some(t.input.as_str())
    );
    assert!(d.header("sluice.dlq.source.offset").is_some());
}

/// Re-keying (issue 35, routing by another key): input keyed by booth, the
/// output keyed by `$.vehicle.plate` through `key`, so that a second
/// pipeline sees each plate's records in one partition, in input order. A
/// record without a plate is dead-lettered with the field named.
#[test]
fn an_output_keyed_by_a_field_puts_each_plate_in_one_partition_in_order() {
    let _one = heavy();
    let b = broker::bootstrap();
    broker::require(&b);
    let t = topics(&b, "rekey", 3);
    const N: usize = 2_000;
    let mut records: Vec<(Option<String>, Vec<u8>)> = (0..N)
        .map(|n| {
            (
                Some(format!("booth-{}", n % 7)),
                format!("{{\"n\":{n},\"vehicle\":{{\"plate\":\"P-{}\"}}}}", n % 40).into_bytes(),
            )
        })
        .collect();
    records.insert(
        777,
        (
            Some("booth-0".into()),
            b"{\"n\":-1,\"vehicle\":{}}".to_vec(),
        ),
    );
    broker::produce(&b, &t.input, records);
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = format!(
        "[outputs.default.kafka]\ntopic = \"{}\"\nkey = \"$.vehicle.plate\"",
        t.output
    );
    let pipeline = kafka_pipeline(dir.path(), &b, &t, &sink, "[delivery]\nworkers = 2");
    let log = dir.path().join("sluice.log");
    let mut s = Sluice::start(&sluice_e2e::sluice_bin!(), &pipeline, &log, &[], false);
    let got = broker::consume(
        &b,
        &t.output,
        false,
        Duration::from_secs(120),
        until_count(N),
    );
    let dead = broker::consume(&b, &t.dlq, false, Duration::from_secs(30), until_count(1));
    let status = s.terminate(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        s.log_tail(30)
    );
    assert_eq!(got.len(), N, "every record with a plate, once");
    let mut by_plate: BTreeMap<String, Vec<(i32, usize)>> = BTreeMap::new();
    for g in &got {
        let n = number(g).expect("number");
        let plate = g.key.clone().unwrap_or_default();
        assert_eq!(
            plate,
            format!("P-{}", n % 40),
            "record {n} keyed by its plate"
        );
        by_plate.entry(plate).or_default().push((g.partition, n));
    }
    assert_eq!(by_plate.len(), 40);
    let partitions: std::collections::BTreeSet<i32> =
        by_plate.values().map(|seen| seen[0].0).collect();
    assert!(
        partitions.len() > 1,
        "plates spread over the partitions: {partitions:?}"
    );
    for (plate, seen) in &by_plate {
        assert!(
            seen.iter().all(|(p, _)| *p == seen[0].0),
            "plate {plate} in one partition"
        );
        // Records of one plate come from several input partitions (booths):
        // within each booth they keep their order.
        for booth in 0..7 {
            let ns: Vec<usize> = seen
                .iter()
                .map(|(_, n)| *n)
                .filter(|n| n % 7 == booth)
                .collect();
            assert!(
                ns.windows(2).all(|w| w[0] < w[1]),
                "plate {plate}, booth {booth} in order: {ns:?}"
            );
        }
    }
    assert_eq!(dead.len(), 1, "the record without a plate is dead-lettered");
    let d = &dead[0];
    assert_eq!(d.key.as_deref(), Some("booth-0"), "with its own key");
    assert_eq!(d.header("sluice.dlq.stage").as_deref(), Some("sink"));
    let error = d.header("sluice.dlq.error.message").unwrap_or_default();
    assert!(
        error.contains("no `vehicle.plate`"),
        "the error names the field: {error}"
    );
}

#[test]
fn an_empty_assignment_is_recognised_in_a_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("l.log");
    std::fs::write(
        &log,
        "x \u{1b}[32m INFO\u{1b}[0m partitions assigned \u{1b}[3mpartitions\u{1b}[0m\u{1b}[2m=\u{1b}[0mt[0] t[1]\n\
         y \u{1b}[32m INFO\u{1b}[0m partitions assigned \u{1b}[3mpartitions\u{1b}[0m\u{1b}[2m=\u{1b}[0m\n",
    )
    .expect("write");
    assert!(last_assignment_empty(&log));
    std::fs::write(
        &log,
        "y partitions assigned partitions=\nx partitions assigned partitions=t[0]\n",
    )
    .expect("write");
    assert!(!last_assignment_empty(&log));
}

/// A record whose header name is not UTF-8 (Kafka allows any bytes) goes
/// to the dead-letter queue at the decode stage; the source thread goes on
/// with the records after it and the pipeline ends normally.
#[test]
fn a_header_name_that_is_not_utf8_is_dead_lettered_and_the_source_goes_on() {
    let _one = heavy();
    let b = broker::bootstrap();
    broker::require(&b);
    let t = topics(&b, "hdr", 1);
    broker::produce(&b, &t.input, [(None, b"{\"n\":1}".to_vec())]);
    broker::produce_with_header(&b, &t.input, b"{\"n\":2}", b"bad\xff\xfename", b"v");
    broker::produce(&b, &t.input, [(None, b"{\"n\":3}".to_vec())]);
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = format!("[outputs.default.kafka]\ntopic = \"{}\"", t.output);
    let pipeline = kafka_pipeline(dir.path(), &b, &t, &sink, "");
    let log = dir.path().join("sluice.log");
    let mut s = Sluice::start(&sluice_e2e::sluice_bin!(), &pipeline, &log, &[], false);
    let got = broker::consume(
        &b,
        &t.output,
        false,
        Duration::from_secs(120),
        until_count(2),
    );
    let dead = broker::consume(&b, &t.dlq, false, Duration::from_secs(60), until_count(1));
    let status = s.terminate(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        s.log_tail(30)
    );
    let values: Vec<String> = got.iter().map(|g| g.text()).collect();
    assert_eq!(
        values,
        vec!["{\"n\":1}", "{\"n\":3}"],
        "the records around it flow"
    );
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].text(), "{\"n\":2}");
    assert_eq!(
        dead[0].header("sluice.dlq.stage").as_deref(),
        Some("decode")
    );
    let message = dead[0]
        .header("sluice.dlq.error.message")
        .unwrap_or_default();
    assert!(message.contains("not UTF-8"), "{message}");
}

/// Lines and closed objects (`*.jsonl`, not a write in progress) under `dir`.
fn closed_objects(dir: &std::path::Path) -> (usize, Vec<String>) {
    let mut objects = 0;
    let mut lines = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "jsonl") {
                objects += 1;
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                lines.extend(text.lines().map(str::to_string));
            }
        }
    }
    (objects, lines)
}

/// A sink that acknowledges later than submit: a local lake whose objects
/// close once they hold 3,000 records (or after an hour). The in-flight budget is
/// 500 records, so the source would stall inside the first object if held
/// records kept their budget; they do not. Offsets are committed only for
/// records in closed objects (checked while it runs), and SIGTERM closes
/// the open object, commits everything and exits 0: every record once.
#[test]
fn a_rolling_lake_frees_the_budget_commits_only_closed_objects_and_closes_the_rest_on_shutdown() {
    let _one = heavy();
    let b = broker::bootstrap();
    broker::require(&b);
    const N: usize = 10_000;
    let t = topics(&b, "roll", 2);
    assert_eq!(broker::produce(&b, &t.input, numbered(N, 50)), N);
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let sink = format!(
        "[outputs.default.local]\npath = {}\n[outputs.default.local.roll]\nrecords = 3000\nage_ms = 3600000",
        sluice_e2e::toml_path(&lake)
    );
    // Run by a host, whose API says how many records the sink holds.
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).expect("dir");
    let pipeline = kafka_pipeline(
        &pipelines,
        &b,
        &t,
        &sink,
        "[batch]\nmax_records = 100\nmax_wait_ms = 50\n[delivery]\nmax_in_flight_records = 500",
    );
    let host = sluice_e2e::Lab::at(dir.path()).host_file("instance_slots = 10");
    let log = dir.path().join("sluice.log");
    let mut s = Sluice::serve(&sluice_e2e::sluice_bin!(), &host, &log, &[]);
    let held = |s: &Sluice| -> u64 {
        s.listen_address()
            .and_then(|a| sluice_e2e::http_get(&a, "/api/pipelines/kafka-e2e", None).ok())
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| v["held_records"].as_u64())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut checks = 0;
    loop {
        // Committed first, the lake after: the lake only grows, so a commit
        // past what is closed shows as committed > lines.
        let committed: i64 = broker::committed(&b, &t.group, &t.input)
            .iter()
            .map(|(_, o)| (*o).max(0))
            .sum();
        let (objects, lines) = closed_objects(&lake);
        assert!(
            committed as usize <= lines.len(),
            "committed {committed} offsets with only {} records in closed objects",
            lines.len()
        );
        checks += 1;
        if objects >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "three objects of 3,000 did not close: {objects} closed\n{}",
            s.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (objects, lines) = closed_objects(&lake);
    assert_eq!(
        objects, 3,
        "the fourth object holds the rest (under 1,000) and is open"
    );
    // An object closes once it holds 3,000 records; a batch (at most 100
    // here) is never split between objects.
    assert!(
        (9_000..=9_000 + 3 * 99).contains(&lines.len()),
        "three objects of 3,000 to 3,099 records: {} lines",
        lines.len()
    );
    // The fourth object is open with records in it (the API says so).
    while held(&s) == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing held\n{}",
            s.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = s.terminate(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        s.log_tail(30)
    );
    // Shutdown closed the open object (whatever was read by then), and
    // committed exactly what the lake holds.
    let (objects, lines) = closed_objects(&lake);
    assert_eq!(
        objects,
        4,
        "shutdown closed the open object ({} lines)\n{}",
        lines.len(),
        s.log_tail(40)
    );
    let committed: i64 = broker::committed(&b, &t.group, &t.input)
        .iter()
        .map(|(_, o)| (*o).max(0))
        .sum();
    assert_eq!(
        committed as usize,
        lines.len(),
        "committed at shutdown = records in the lake"
    );
    // A second run takes up from there, its objects closing by age (half a
    // second) too: the lake ends with every record once, all committed.
    let text = std::fs::read_to_string(&pipeline).expect("pipeline");
    std::fs::write(&pipeline, text.replace("age_ms = 3600000", "age_ms = 500")).expect("write");
    let mut s = Sluice::serve(&sluice_e2e::sluice_bin!(), &host, &log, &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let committed: i64 = broker::committed(&b, &t.group, &t.input)
            .iter()
            .map(|(_, o)| (*o).max(0))
            .sum();
        let (_, lines) = closed_objects(&lake);
        assert!(
            committed as usize <= lines.len(),
            "committed {committed} offsets with only {} records in closed objects",
            lines.len()
        );
        if committed as usize >= N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second run did not commit everything: {committed} of {N}\n{}",
            s.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = s.terminate(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        s.log_tail(30)
    );
    let (_, lines) = closed_objects(&lake);
    let mut seen = vec![0u32; N];
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).expect("json line");
        let n = v["n"].as_u64().expect("n") as usize;
        seen[n] += 1;
    }
    let missing = seen.iter().filter(|&&c| c == 0).count();
    let repeated = seen.iter().filter(|&&c| c > 1).count();
    assert!(
        missing == 0 && repeated == 0,
        "every record exactly once: {missing} missing, {repeated} repeated, {} lines",
        lines.len()
    );
    let committed: i64 = broker::committed(&b, &t.group, &t.input)
        .iter()
        .map(|(_, o)| *o)
        .sum();
    assert_eq!(committed as usize, N, "everything committed at shutdown");
    assert!(checks > 0);
}
