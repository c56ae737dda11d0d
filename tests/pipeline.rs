//! End-to-end: real guests built from `transforms/`, real files in, a real
//! local lake out, the dead-letter queue checked record by record.

use serde_json::Value;
use sluice::engine::{Engine, Limits, LoadError, Runner, TransformError};
use sluice::pipeline::{RunOptions, run_file};
use sluice::record::{Partition, Position, Record};
use sluice_e2e::{module, read_lake, root, spec, toml_path};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

fn example_pipeline(dir: &Path, batch: usize) -> std::path::PathBuf {
    let ex = root().join("examples/toll-road");
    let text = format!(
        r#"
name = "toll-road"
tenant = "test"
[source.file]
path = {data}
[batch]
max_records = {batch}
[[transforms]]
name = "map"
module = {map}
config = {{ mapping = {{ transaction = "$.txn_id", customer = "$.customer_id", booth = "$.booth_id", amount = "$.amount", event_time = "$.ts" }} }}
[[transforms]]
name = "paid-only"
module = {filter}
config = {{ field = "$.amount", op = "gt", value = 0 }}
[[transforms]]
name = "enrich"
module = {enrich}
config = {{ table = "booths", key = "$.booth", fields = ["region", "road"], alert = {{ field = "$.amount", above = 20 }} }}
tables = {{ booths = {{ path = {booths}, key = "booth_id" }} }}
[outputs.default.local]
path = "lake/transactions"
[outputs.alerts.local]
path = "lake/alerts"
[dead_letter.local]
path = "lake/errors"
"#,
        data = toml_path(&ex.join("data/transactions.jsonl")),
        map = toml_path(&module("transforms/json-map")),
        filter = toml_path(&module("transforms/filter")),
        enrich = toml_path(&module("transforms/enrich")),
        booths = toml_path(&ex.join("booths.csv")),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).expect("write pipeline");
    path
}

/// The sample data, read independently of Sluice: the model the lake is checked against.
fn sample() -> Vec<Result<Value, String>> {
    let text = std::fs::read_to_string(root().join("examples/toll-road/data/transactions.jsonl"))
        .expect("sample");
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(|_| l.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn toll_road_lands_in_the_lake_and_bad_records_in_the_dlq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline = example_pipeline(dir.path(), 128);
    let summary = run_file(&pipeline, &RunOptions { quiet_build: true })
        .await
        .expect("pipeline runs");

    // Model from the raw sample.
    let booths: BTreeSet<String> = (1..=12).map(|i| format!("B-{i:02}")).collect();
    let mut want_lake = BTreeSet::new();
    let mut want_alerts = BTreeSet::new();
    let mut want_dlq = BTreeMap::new(); // offset -> (stage, transform, kind)
    for (offset, rec) in sample().into_iter().enumerate() {
        let Ok(rec) = rec else {
            want_dlq.insert(
                offset as i64,
                ("decode".to_string(), None, "invalid-input".to_string()),
            );
            continue;
        };
        if rec.as_object().is_some_and(|m| m.is_empty()) {
            continue; // skipped by json-map
        }
        let Some(amount) = rec["amount"].as_f64() else {
            want_dlq.insert(
                offset as i64,
                (
                    "transform".into(),
                    Some("paid-only".to_string()),
                    "invalid-input".into(),
                ),
            );
            continue;
        };
        if amount <= 0.0 {
            continue; // dropped by the filter
        }
        let txn = rec["txn_id"].as_str().expect("txn").to_string();
        if !booths.contains(rec["booth_id"].as_str().expect("booth")) {
            want_dlq.insert(
                offset as i64,
                (
                    "transform".into(),
                    Some("enrich".to_string()),
                    "lookup-failed".into(),
                ),
            );
            continue;
        }
        if amount > 20.0 {
            want_alerts.insert(txn.clone());
        }
        want_lake.insert(txn);
    }
    assert_eq!(want_dlq.len(), 3, "the sample holds three bad records");
    assert!(!want_alerts.is_empty());

    let lake = read_lake(&dir.path().join("lake/transactions"));
    let got_lake: BTreeSet<String> = lake
        .iter()
        .map(|r| r["transaction"].as_str().expect("transaction").to_string())
        .collect();
    assert_eq!(lake.len(), got_lake.len(), "no duplicates in the lake");
    assert_eq!(got_lake, want_lake);
    for r in &lake {
        assert!(
            r.get("plate").is_none(),
            "the plate (PII) must be mapped away: {r}"
        );
        assert!(
            r["region"].is_string() && r["road"].is_string(),
            "enriched: {r}"
        );
    }
    let alerts = read_lake(&dir.path().join("lake/alerts"));
    let got_alerts: BTreeSet<String> = alerts
        .iter()
        .map(|r| r["transaction"].as_str().expect("t").to_string())
        .collect();
    assert_eq!(got_alerts, want_alerts);
    assert!(alerts.iter().all(|a| {
        a["alert"]
            .as_str()
            .is_some_and(|s| s.contains("is above 20"))
    }));

    let dlq = read_lake(&dir.path().join("lake/errors"));
    let got_dlq: BTreeMap<i64, (String, Option<String>, String)> = dlq
        .iter()
        .map(|e| {
            (
                e["source"]["offset"].as_i64().expect("offset"),
                (
                    e["stage"].as_str().expect("stage").to_string(),
                    e["transform"].as_str().map(str::to_string),
                    e["error"]["kind"].as_str().expect("kind").to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(got_dlq, want_dlq);
    let raw = sample();
    for e in &dlq {
        let offset = e["source"]["offset"].as_u64().expect("offset") as usize;
        let original = match &raw[offset] {
            Ok(v) => v.to_string(),
            Err(line) => line.clone(),
        };
        let stored = e["record"]["value"].as_str().expect("original value kept");
        assert_eq!(
            serde_json::from_str::<Value>(stored)
                .ok()
                .map(|v| v.to_string())
                .unwrap_or(stored.to_string()),
            original,
            "DLQ keeps the original record unchanged"
        );
        assert_eq!(e["pipeline"], "toll-road");
        assert_eq!(e["tenant"], "test");
        assert!(
            e["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        if e["stage"] == "transform" {
            assert!(
                e["module"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("sha256:"))
            );
        }
    }

    assert_eq!(summary.records_in, 1000);
    assert_eq!(
        summary.outputs.get("default").copied(),
        Some(want_lake.len() as u64)
    );
    assert_eq!(
        summary.outputs.get("alerts").copied(),
        Some(want_alerts.len() as u64)
    );
    assert_eq!(summary.dead_letter_total(), 3);
    assert_eq!(summary.dropped_total(), 2);
    assert_eq!(summary.batches, 8, "1000 records in batches of 128");
    assert_eq!(
        summary.records_in,
        summary.outputs["default"] + summary.dead_letter_total() + summary.dropped_total(),
        "every record is accounted for"
    );
}

fn records(values: &[&str]) -> (Vec<Record>, Vec<Position>) {
    let recs = values
        .iter()
        .map(|v| Record::from_value(v.as_bytes().to_vec()))
        .collect();
    let pos = (0..values.len())
        .map(|i| Position {
            partition: Partition {
                stream: Arc::from("t"),
                partition: 0,
            },
            offset: i as i64,
        })
        .collect();
    (recs, pos)
}

fn run(runner: &mut Runner, values: &[&str]) -> Result<sluice::engine::Processed, TransformError> {
    let (recs, pos) = records(values);
    let inputs: Vec<_> = recs.iter().zip(&pos).collect();
    runner.process(&inputs)
}

#[test]
fn a_trap_fails_the_batch_and_a_fresh_instance_takes_the_next() {
    let engine = Engine::new().expect("engine");
    let m = engine
        .load_file(&module("tests/guests/poison"))
        .expect("load");
    let module_path = m.path().display().to_string();
    let mut runner = Runner::new(m, spec("poison", "{}", Limits::default())).expect("init");
    let ok = run(&mut runner, &["a", "b"]).expect("clean batch");
    assert_eq!(ok.outputs.len(), 2);

    let err = run(&mut runner, &["a", "boom"]).expect_err("panics");
    let TransformError::Trap {
        transform,
        module,
        message,
    } = &err
    else {
        panic!("want a trap, got {err:?}")
    };
    assert_eq!(transform, "poison");
    assert_eq!(module, &module_path);
    assert!(
        message.contains("poison record at offset Some(1)"),
        "panic message reaches the host: {message}"
    );

    let after = run(&mut runner, &["c"]).expect("a fresh instance serves the next batch");
    assert_eq!(after.outputs[0].record.value.as_deref(), Some(&b"c"[..]));
    assert_eq!(runner.instantiations(), 2);

    let failed = run(&mut runner, &["fail"]).expect("record-level failure is not a trap");
    assert!(matches!(&failed.outcomes[0], sluice::engine::Outcome::Fail(f) if f.kind == "poison"));
}

#[test]
fn an_endless_loop_hits_the_deadline_and_a_memory_bomb_hits_the_limit() {
    let engine = Engine::new().expect("engine");
    let m = engine
        .load_file(&module("tests/guests/poison"))
        .expect("load");
    let limits = Limits {
        timeout_ms: 200,
        memory_mb: 16,
        ..Limits::default()
    };
    let module_path = m.path().display().to_string();
    let mut runner = Runner::new(m, spec("hostile", "{}", limits)).expect("init");

    let started = std::time::Instant::now();
    let err = run(&mut runner, &["spin"]).expect_err("loops");
    assert_eq!(
        err,
        TransformError::Deadline {
            transform: "hostile".into(),
            module: module_path,
            timeout_ms: 200
        }
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the deadline interrupts the guest"
    );

    let err = run(&mut runner, &["hog"]).expect_err("eats memory");
    assert!(
        matches!(&err, TransformError::OutOfMemory { limit_mb: 16, .. }),
        "want out-of-memory, got {err:?}"
    );
    assert!(
        err.to_string().contains("hostile") && err.to_string().contains("16 MiB"),
        "{err}"
    );

    assert_eq!(
        run(&mut runner, &["fine"])
            .expect("still serving")
            .outputs
            .len(),
        1
    );
}

#[test]
fn init_errors_keep_the_transform_from_deploying() {
    let engine = Engine::new().expect("engine");
    let m = engine
        .load_file(&module("tests/guests/poison"))
        .expect("load");
    let module_path = m.path().display().to_string();
    let err = Runner::new(
        m,
        spec(
            "p",
            r#"{"init_error": "no table named `x`"}"#,
            Limits::default(),
        ),
    )
    .expect_err("refused");
    assert_eq!(
        err,
        TransformError::Init {
            transform: "p".into(),
            module: module_path,
            message: "no table named `x`".into()
        }
    );
}

#[test]
fn a_missing_module_file_is_refused_by_name() {
    // Files that are not transforms (not wasm, a core module, an empty
    // component, another world) are in the hostile suite (tests/hostile.rs).
    let engine = Engine::new().expect("engine");
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = engine
        .load_file(&dir.path().join("nope.wasm"))
        .expect_err("missing file");
    assert!(matches!(missing, LoadError::Read { .. }));
    assert!(missing.to_string().contains("nope.wasm"), "{missing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trapping_record_is_isolated_by_bisection_and_the_run_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    let lines: Vec<String> = (0..40)
        .map(|i| {
            if i == 13 {
                "\"boom\"".to_string()
            } else {
                format!("{{\"n\":{i}}}")
            }
        })
        .collect();
    std::fs::write(&input, lines.join("\n")).expect("write");
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"poison\"\n[source.file]\npath = {}\n[batch]\nmax_records = 10\n[[transforms]]\nname = \"poison\"\nmodule = {}\n[outputs.default.local]\npath = \"out\"\n[dead_letter.local]\npath = \"dlq\"\n",
            toml_path(&input),
            toml_path(&module("tests/guests/poison"))
        ),
    )
    .expect("write");
    let summary = run_file(&pipeline, &RunOptions { quiet_build: true })
        .await
        .expect("the run finishes");
    let out = read_lake(&dir.path().join("out"));
    let dlq = read_lake(&dir.path().join("dlq"));
    assert_eq!(out.len(), 39, "every record but the poison one passes");
    let offsets: Vec<i64> = dlq
        .iter()
        .map(|e| e["source"]["offset"].as_i64().expect("offset"))
        .collect();
    assert_eq!(offsets, vec![13], "bisection isolates the poison record");
    assert!(
        dlq.iter()
            .all(|e| e["error"]["kind"] == "trap" && e["transform"] == "poison"),
        "{dlq:?}"
    );
    // Record 13 was in 5 failing calls: its batch (10..20), 10..15, 12..15,
    // 13..15 and itself.
    assert_eq!(dlq[0]["attempts"], 5, "{dlq:?}");
    let numbers: Vec<i64> = out.iter().filter_map(|v| v["n"].as_i64()).collect();
    let expected: Vec<i64> = (0..40).filter(|i| *i != 13).collect();
    assert_eq!(numbers, expected, "the others keep their order");
    assert_eq!(summary.steps[0].batch_failures, 1);
    assert_eq!(summary.steps[0].isolated, 1);
    // A batch of 10 splits into 5+5, then 2+3, then 1+2 or 1+1: at most
    // 2 calls per level, ceil(log2 10) = 4 levels.
    assert!(
        summary.steps[0].bisection_calls <= 8,
        "{:?}",
        summary.steps[0]
    );
    assert_eq!(summary.dead_lettered.get("transform").copied(), Some(1));
}

/// A file source that fails part-way (here: the second file cannot be read,
/// an I/O error like a failing disk) stops the run with an error naming the
/// file, but only after every record it read before is in the sink: the
/// last records of the first file, still waiting in their batch when the
/// error came, are delivered too.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_error_delivers_everything_read_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let n = 4_050;
    let lines: String = (0..n).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    std::fs::write(data.join("a.jsonl"), lines).expect("write");
    // Reading /proc/self/mem at offset 0 fails with EIO: a file that opens
    // and then cannot be read.
    std::os::unix::fs::symlink("/proc/self/mem", data.join("b.jsonl")).expect("symlink");
    let text = format!(
        r#"
name = "source-error"
[source.file]
path = {data}
[batch]
max_records = 1000
max_wait_ms = 60000
[delivery]
drain_timeout_ms = 60000
[[transforms]]
name = "id"
module = {id}
[outputs.default.local]
path = "lake/out"
[dead_letter.local]
path = "lake/errors"
"#,
        data = toml_path(&data.join("*.jsonl")),
        id = toml_path(&module("transforms/identity")),
    );
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, text).expect("write pipeline");
    let err = run_file(&path, &RunOptions { quiet_build: true })
        .await
        .expect_err("the source fails");
    assert!(err.to_string().contains("b.jsonl"), "{err}");
    let got: BTreeSet<i64> = read_lake(&dir.path().join("lake/out"))
        .iter()
        .filter_map(|v| v["n"].as_i64())
        .collect();
    assert_eq!(
        got.len(),
        n,
        "every record read before the error is delivered"
    );
    assert_eq!(got, (0..n as i64).collect::<BTreeSet<_>>());
}

/// A transform that sends records to a *named* output called `default`
/// does not skip the transforms after it: the name is reserved, the records
/// go to the dead-letter queue (a broken contract), and the redacting step
/// after it is the only way to the default sink.
#[tokio::test(flavor = "multi_thread")]
async fn a_named_output_called_default_cannot_skip_later_transforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines: String = (0..20)
        .map(|i| format!("{{\"v\":\"namedefault\",\"n\":{i}}}\n"))
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), lines).expect("write");
    let text = format!(
        r#"
name = "bypass"
[source.file]
path = "in.jsonl"
[[transforms]]
name = "tenant"
module = {poison}
[[transforms]]
name = "redact"
module = {filter}
config = {{ field = "$.n", op = "gt", value = 1000000 }}
[outputs.default.local]
path = "lake/out"
[dead_letter.local]
path = "lake/errors"
"#,
        poison = toml_path(&module("tests/guests/poison")),
        filter = toml_path(&module("transforms/filter")),
    );
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, text).expect("write pipeline");
    let summary = run_file(&path, &RunOptions { quiet_build: true })
        .await
        .expect("runs");
    assert!(
        read_lake(&dir.path().join("lake/out")).is_empty(),
        "nothing reaches the sink without passing `redact`"
    );
    let dead = read_lake(&dir.path().join("lake/errors"));
    assert_eq!(dead.len(), 20, "every record is in the DLQ: {summary}");
    for d in &dead {
        let text = d.to_string();
        assert!(
            text.contains("contract") && text.contains("reserved"),
            "{text}"
        );
    }
}
