//! End-to-end: poison records, the dead-letter queue and replay.
//!
//! 10,000 records, 7 of them poison: 3 the guest fails, 2 that trap it, 1
//! that loops forever, 1 that is not valid JSON. Exactly the 9,993 others
//! reach the sink, once each and in order; exactly the 7 reach the DLQ with
//! the right stage, kind and source offset; the run finishes. Then `sluice
//! dlq replay` runs the 7 through a fixed pipeline into its sink. Once with
//! the file source and a local lake, once with the Kafka source and topics
//! (tansu from `scripts/services start`, or `SLUICE_KAFKA_BOOTSTRAP`).

use sluice_e2e::broker;
use sluice_e2e::process::Sluice;
use sluice_e2e::scenario::{Cluster, number, until_count, wait_for_log};
use sluice_e2e::{module, read_lake, toml_path};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const N: usize = 10_000;

/// (offset, value, expected stage, expected kind).
const POISON: [(usize, &str, &str, &str); 7] = [
    (137, r#"{"n":137,"poison":"fail"}"#, "transform", "poison"),
    (2048, r#"{"n":2048,"poison":"fail"}"#, "transform", "poison"),
    (9999, r#"{"n":9999,"poison":"fail"}"#, "transform", "poison"),
    (555, r#"{"n":555,"poison":"boom"}"#, "transform", "trap"),
    (7001, r#"{"n":7001,"poison":"boom"}"#, "transform", "trap"),
    (
        4242,
        r#"{"n":4242,"poison":"spin"}"#,
        "transform",
        "deadline",
    ),
    (3333, r#"{"n":3333,"#, "decode", "invalid-input"),
];

fn value(i: usize) -> String {
    POISON
        .iter()
        .find(|p| p.0 == i)
        .map(|p| p.1.to_string())
        .unwrap_or_else(|| format!("{{\"n\":{i}}}"))
}

fn clean() -> Vec<usize> {
    (0..N)
        .filter(|i| POISON.iter().all(|p| p.0 != *i))
        .collect()
}

/// The transform part of both pipelines: the hostile guest with a short
/// deadline (the looping record costs one deadline per bisection level).
fn poison_transform() -> String {
    format!(
        "[[transforms]]\nname = \"poison\"\nmodule = {}\n[transforms.limits]\ntimeout_ms = 300\n",
        toml_path(&module("tests/guests/poison"))
    )
}

fn identity_transform() -> String {
    format!(
        "[[transforms]]\nname = \"fixed\"\nmodule = {}\n",
        toml_path(&module("transforms/identity"))
    )
}

/// (offset, stage, kind) of dead-letter entries, sorted.
type Seen = Vec<(i64, String, String)>;

fn expected_dlq() -> Seen {
    let mut v: Seen = POISON
        .iter()
        .map(|p| (p.0 as i64, p.2.to_string(), p.3.to_string()))
        .collect();
    v.sort();
    v
}

fn sluice(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(sluice_e2e::sluice_bin!())
        .args(args)
        .output()
        .expect("start sluice");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path_arg(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn poison_records_go_to_the_dlq_and_replay_through_a_fix_with_the_file_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines: Vec<String> = (0..N).map(value).collect();
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n") + "\n").expect("write");
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"poison-file\"\n[source.file]\npath = \"in.jsonl\"\n[batch]\nmax_records = 1000\n{}[outputs.default.local]\npath = \"out\"\n[dead_letter.local]\npath = \"errors\"\n",
            poison_transform()
        ),
    )
    .expect("write");
    let (ok, _, err) = sluice(&["run", path_arg(&pipeline)]);
    assert!(ok, "the run finishes:\n{err}");
    eprintln!("{err}");
    assert!(
        err.contains("isolated"),
        "the summary reports bisection:\n{err}"
    );

    let out = read_lake(&dir.path().join("out"));
    let numbers: Vec<usize> = out
        .iter()
        .map(|v| v["n"].as_u64().expect("n") as usize)
        .collect();
    assert_eq!(numbers.len(), N - 7, "exactly the clean records, once each");
    assert_eq!(numbers, clean(), "all clean records, in order, none twice");

    let dlq = read_lake(&dir.path().join("errors"));
    let mut seen: Seen = dlq
        .iter()
        .map(|e| {
            (
                e["source"]["offset"].as_i64().expect("offset"),
                e["stage"].as_str().unwrap_or_default().to_string(),
                e["error"]["kind"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen, expected_dlq(), "exactly the 7 poison records");
    for e in &dlq {
        let offset = e["source"]["offset"].as_u64().expect("offset") as usize;
        assert_eq!(
            e["record"]["value"].as_str(),
            Some(value(offset).as_str()),
            "the original record, unchanged"
        );
        if e["stage"] == "transform" {
            assert_eq!(e["transform"], "poison");
            assert!(
                e["module"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("sha256:")),
                "{e}"
            );
        }
    }
    let trap = dlq
        .iter()
        .find(|e| e["source"]["offset"] == 555)
        .expect("trap entry");
    assert!(
        trap["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("poison record at offset Some(555)")),
        "the trap message carries the guest's panic: {trap}"
    );

    // List, filter, replay.
    let (ok, listed, err) = sluice(&["dlq", "list", path_arg(&pipeline)]);
    assert!(ok, "{err}");
    assert!(
        listed.starts_with("ENTRY "),
        "a table with a header: {listed}"
    );
    assert_eq!(listed.lines().count(), 1 + 7, "{listed}");
    let (ok, traps, err) = sluice(&[
        "dlq",
        "list",
        path_arg(&pipeline),
        "--kind",
        "trap",
        "--json",
    ]);
    assert!(ok, "{err}");
    let traps: Vec<serde_json::Value> = serde_json::from_str(&traps).expect("a JSON array");
    assert_eq!(traps.len(), 2, "{traps:?}");
    assert!(
        traps
            .iter()
            .all(|t| t["error"]["kind"] == "trap" && t["record"].is_null()),
        "{traps:?}"
    );

    // The fix: a pipeline that reads raw lines, runs a fixed module and
    // writes envelopes, so even the line that is not JSON lands.
    let fixed = dir.path().join("fixed.toml");
    std::fs::write(
        &fixed,
        format!(
            "name = \"poison-fixed\"\n[source.file]\npath = \"in.jsonl\"\nformat = \"lines\"\n{}[outputs.default.local]\npath = \"replayed\"\nformat = \"envelope\"\n[dead_letter.local]\npath = \"errors\"\n",
            identity_transform()
        ),
    )
    .expect("write");
    let (ok, _, err) = sluice(&["dlq", "replay", path_arg(&fixed)]);
    assert!(ok, "replay runs:\n{err}");
    let replayed = read_lake(&dir.path().join("replayed"));
    let mut values: Vec<String> = replayed
        .iter()
        .map(|r| r["value"].as_str().unwrap_or_default().to_string())
        .collect();
    values.sort();
    let mut want: Vec<String> = POISON.iter().map(|p| p.1.to_string()).collect();
    want.sort();
    assert_eq!(values, want, "the 7 failed records land in the sink");
    for r in &replayed {
        let headers = r["headers"].as_array().expect("headers");
        let of = headers
            .iter()
            .find(|h| h["name"] == "sluice.replay.of")
            .expect("replay header");
        assert!(
            of["value"].as_str().is_some_and(|v| v.contains(".jsonl:")),
            "{r}"
        );
        assert!(
            headers.iter().any(|h| h["name"] == "sluice.replay.source"),
            "{r}"
        );
    }
    assert_eq!(
        read_lake(&dir.path().join("errors")).len(),
        7,
        "nothing failed again"
    );
    // Replayed entries are remembered: a second replay adds nothing, the
    // list says when each was replayed; `--again` replays them once more.
    let (ok, _, err) = sluice(&["dlq", "replay", path_arg(&fixed)]);
    assert!(
        ok && err.contains("7 entries skipped: replayed before"),
        "{err}"
    );
    assert_eq!(
        read_lake(&dir.path().join("replayed")).len(),
        7,
        "no duplicates"
    );
    let (ok, listed, err) = sluice(&["dlq", "list", path_arg(&fixed)]);
    assert!(ok, "{err}");
    assert_eq!(
        listed.lines().filter(|l| l.contains("(replayed ")).count(),
        7,
        "{listed}"
    );
    let (ok, _, err) = sluice(&["dlq", "replay", "--again", path_arg(&fixed)]);
    assert!(ok, "{err}");
    assert_eq!(
        read_lake(&dir.path().join("replayed")).len(),
        14,
        "asked again"
    );
    // Purged entries (same filters) are no longer listed or replayed.
    let (ok, _, err) = sluice(&["dlq", "purge", path_arg(&fixed), "--kind", "trap"]);
    assert!(
        ok && err.contains("2 entries of pipeline `poison-fixed` purged"),
        "{err}"
    );
    let (ok, listed, err) = sluice(&["dlq", "list", path_arg(&fixed), "--json"]);
    assert!(ok, "{err}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).expect("a JSON array");
    assert_eq!(listed.len(), 5, "{listed:?}");
    assert!(
        listed.iter().all(|e| e["error"]["kind"] != "trap"),
        "{listed:?}"
    );
    assert!(
        listed.iter().all(|e| e["replayed_at"].is_string()),
        "each was replayed: {listed:?}"
    );
}

#[test]
fn poison_records_go_to_the_dlq_and_replay_through_a_fix_with_the_kafka_source() {
    let cluster = Cluster::broker();
    let b = cluster.bootstrap();
    let t = cluster.topics("poison", 1);
    let replay_topic = broker::unique("poison-replayed");
    cluster.topic(&replay_topic, 1);
    broker::produce(
        &b,
        &t.input,
        (0..N).map(|i| (Some(format!("k{}", i % 100)), value(i).into_bytes())),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let source = format!(
        "[source.kafka]\nbootstrap = \"{b}\"\ntopics = [\"{}\"]\ngroup = \"{}\"\nformat = \"json\"\nproperties = {{ \"session.timeout.ms\" = \"15000\", \"heartbeat.interval.ms\" = \"1000\" }}\n",
        t.input, t.group
    );
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"poison-kafka\"\n[batch]\nmax_records = 1000\nmax_wait_ms = 200\n{source}{}[outputs.default.kafka]\ntopic = \"{}\"\n[dead_letter.kafka]\ntopic = \"{}\"\n",
            poison_transform(),
            t.output,
            t.dlq
        ),
    )
    .expect("write");
    let log = dir.path().join("sluice.log");
    let mut s = Sluice::start(&sluice_e2e::sluice_bin!(), &pipeline, &log, &[], false);
    assert!(
        wait_for_log(&s, "partitions assigned", Duration::from_secs(60)),
        "{}",
        s.log_tail(30)
    );
    let dead = broker::consume(&b, &t.dlq, false, Duration::from_secs(180), until_count(7));
    let _ = broker::consume(
        &b,
        &t.output,
        false,
        Duration::from_secs(180),
        until_count(N - 7),
    );
    let status = s.terminate(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        s.log_tail(30)
    );
    let out = broker::consume_all(
        &b,
        &t.output,
        false,
        Duration::from_secs(3),
        Duration::from_secs(120),
    );
    let numbers: Vec<usize> = out.iter().filter_map(number).collect();
    assert_eq!(numbers.len(), N - 7, "exactly the clean records, once each");
    assert_eq!(numbers, clean(), "all clean records, in order, none twice");
    let dead_all = broker::consume_all(
        &b,
        &t.dlq,
        false,
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    assert_eq!(dead_all.len(), 7, "exactly 7 dead letters");
    let mut seen: Seen = dead
        .iter()
        .map(|g| {
            (
                g.header("sluice.dlq.source.offset")
                    .and_then(|o| o.parse().ok())
                    .expect("offset header"),
                g.header("sluice.dlq.stage").unwrap_or_default(),
                g.header("sluice.dlq.error.kind").unwrap_or_default(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen, expected_dlq(), "exactly the 7 poison records");
    for g in &dead {
        let offset: usize = g
            .header("sluice.dlq.source.offset")
            .and_then(|o| o.parse().ok())
            .expect("offset");
        assert_eq!(g.text(), value(offset), "the original value, unchanged");
        assert_eq!(g.key, Some(format!("k{}", offset % 100)), "and key");
    }

    // Replay through a fixed pipeline: raw values, the fixed module, a topic.
    let fixed = dir.path().join("fixed.toml");
    let source_raw = source.replace("format = \"json\"", "format = \"raw\"");
    std::fs::write(
        &fixed,
        format!(
            "name = \"poison-fixed\"\n{source_raw}{}[outputs.default.kafka]\ntopic = \"{replay_topic}\"\n[dead_letter.kafka]\ntopic = \"{}\"\n",
            identity_transform(),
            t.dlq
        ),
    )
    .expect("write");
    let (ok, listed, err) = sluice(&["dlq", "list", path_arg(&fixed), "--stage", "decode"]);
    assert!(ok, "{err}");
    assert_eq!(listed.lines().count(), 1 + 1, "{listed}");
    let (ok, _, err) = sluice(&["dlq", "replay", path_arg(&fixed)]);
    assert!(ok, "replay runs:\n{err}");
    let replayed = broker::consume_all(
        &b,
        &replay_topic,
        false,
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    let values: BTreeSet<String> = replayed.iter().map(|g| g.text()).collect();
    let want: BTreeSet<String> = POISON.iter().map(|p| p.1.to_string()).collect();
    assert_eq!(replayed.len(), 7, "each once");
    assert_eq!(values, want, "the 7 failed records land in the sink");
    for g in &replayed {
        let of = g
            .header("sluice.replay.of")
            .unwrap_or_else(|| panic!("replay header: {:?}", g.headers));
        assert!(of.starts_with(&format!("{}/0@", t.dlq)), "{of}");
    }
}

#[test]
fn a_dead_letter_queue_that_cannot_be_written_stops_the_pipeline_without_committing_past_the_record()
 {
    let cluster = Cluster::broker();
    let b = cluster.bootstrap();
    let t = cluster.topics("dlq-down", 1);
    broker::produce(
        &b,
        &t.input,
        (0..1000).map(|i| (None, value_clean(i).into_bytes())),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let errors = dir.path().join("errors");
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"dlq-down\"\n[batch]\nmax_records = 100\nmax_wait_ms = 100\n[delivery]\ncommit_interval_ms = 100\n[source.kafka]\nbootstrap = \"{b}\"\ntopics = [\"{}\"]\ngroup = \"{}\"\nformat = \"json\"\nproperties = {{ \"session.timeout.ms\" = \"15000\", \"heartbeat.interval.ms\" = \"1000\" }}\n{}[outputs.default.kafka]\ntopic = \"{}\"\n[dead_letter.local]\npath = {}\n",
            t.input,
            t.group,
            poison_transform(),
            t.output,
            toml_path(&errors)
        ),
    )
    .expect("write");
    let log = dir.path().join("sluice.log");
    let mut s = Sluice::start(&sluice_e2e::sluice_bin!(), &pipeline, &log, &[], false);
    let _ = broker::consume(
        &b,
        &t.output,
        false,
        Duration::from_secs(120),
        until_count(1000),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while broker::committed(&b, &t.group, &t.input) != vec![(0, 1000)] {
        assert!(
            std::time::Instant::now() < deadline,
            "the first 1,000 are committed: {:?}\n{}",
            broker::committed(&b, &t.group, &t.input),
            s.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The dead-letter "directory" becomes a file: writes under it fail.
    let _ = std::fs::remove_dir_all(&errors);
    std::fs::write(&errors, "not a directory").expect("block the DLQ");
    broker::produce(
        &b,
        &t.input,
        std::iter::once((None, br#"{"n":1000,"poison":"fail"}"#.to_vec()))
            .chain((1001..2000).map(|i| (None, value_clean(i).into_bytes()))),
    );
    let status = s.wait(Duration::from_secs(120));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the pipeline stops with an error: {status:?}\n{}",
        s.log_tail(30)
    );
    assert!(
        text.contains("dead-letter") || text.contains("dead letter"),
        "the error names the dead-letter queue:\n{}",
        s.log_tail(30)
    );
    assert_eq!(
        broker::committed(&b, &t.group, &t.input),
        vec![(0, 1000)],
        "nothing committed past the record that could not be dead-lettered"
    );
}

fn value_clean(i: usize) -> String {
    format!("{{\"n\":{i}}}")
}

#[test]
fn the_circuit_breaker_stops_a_pipeline_whose_transform_fails_most_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The first 1,000 records are fine; from then on every record fails.
    let lines: Vec<String> = (0..5000)
        .map(|i| {
            if i < 1000 {
                value_clean(i)
            } else {
                format!("{{\"n\":{i},\"poison\":\"fail\"}}")
            }
        })
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n")).expect("write");
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"breaker\"\n[source.file]\npath = \"in.jsonl\"\n[batch]\nmax_records = 100\n[circuit_breaker]\nfailure_ratio = 0.5\nwindow_records = 1000\n{}[outputs.default.local]\npath = \"out\"\n[dead_letter.local]\npath = \"errors\"\n",
            poison_transform()
        ),
    )
    .expect("write");
    let (ok, _, err) = sluice(&["run", path_arg(&pipeline)]);
    assert!(!ok, "the pipeline stops:\n{err}");
    assert!(
        err.contains("circuit breaker open: transform `poison` failed"),
        "and says why:\n{err}"
    );
    let dead = read_lake(&dir.path().join("errors")).len();
    let out = read_lake(&dir.path().join("out")).len();
    eprintln!("breaker: {out} delivered, {dead} dead-lettered before it opened");
    assert_eq!(out, 1000, "the good records were delivered");
    assert!(
        dead <= 500,
        "the breaker opened before the DLQ filled with the topic: {dead} entries"
    );
}
