//! End-to-end: the lake sink against real object stores — moto's S3 server
//! and Azurite, started by `scripts/services start` — read back by DuckDB
//! over S3, and killed with SIGKILL between an upload and its commit.
//! GCS has no local emulator that enforces create-if-absent
//! (`if-generation-match: 0`), so it is not tested here.

use sluice_e2e::broker;
use sluice_e2e::lakes::{self, AZ_OPTIONS, S3_OPTIONS};
use sluice_e2e::process::Sluice;
use sluice_e2e::scenario::{Topics, kafka_pipeline};
use sluice_e2e::{module, toml_path};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn bucket(name: &str) -> String {
    // S3 bucket names: lower case, digits, `-`.
    broker::unique(name)
        .to_ascii_lowercase()
        .replace(['_', '.'], "-")
}

/// 2026-11-18T00:00:00Z in ms.
const BASE_MS: i64 = 1_795_392_000_000;

/// What one input line is: `None` = not JSON.
struct Line {
    text: String,
    json: bool,
    amount_positive: bool,
    ts: Option<i64>,
}

/// `n` toll-like events, 7 s apart (about 11.7 hours for 6000): every
/// 250th of 500 is not JSON (a decode failure), every 105th of 300 has no
/// event time (the default partition), amounts of 0 and below (two in ten)
/// are dropped by the filter, and every 655th of 700 has a `code` that is a
/// string where the others have integers (a Parquet misfit).
fn events(n: usize) -> Vec<Line> {
    (0..n)
        .map(|i| {
            let ts = (i % 300 != 105).then(|| BASE_MS + i as i64 * 7_000);
            let amount = (i % 10) as i64 - 1;
            let code = if i % 700 == 655 {
                "\"x\"".to_string()
            } else {
                (i % 13).to_string()
            };
            if i % 500 == 250 {
                return Line {
                    text: format!("{{\"n\": {i}, broken"),
                    json: false,
                    amount_positive: amount > 0,
                    ts,
                };
            }
            let ts_field = ts
                .and_then(chrono_like)
                .map(|t| format!(",\"ts\":\"{t}\""))
                .unwrap_or_default();
            Line {
                text: format!("{{\"n\":{i},\"amount\":{amount},\"code\":{code}{ts_field}}}"),
                json: true,
                amount_positive: amount > 0,
                ts,
            }
        })
        .collect()
}

/// RFC 3339 of ms since the epoch (UTC), without a date library.
fn chrono_like(ms: i64) -> Option<String> {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    Some(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The expected (dt, hour) → count of the lines that reach the lake.
fn expected(
    lines: &[Line],
    keep: impl Fn(usize, &Line) -> bool,
) -> BTreeMap<(String, String), i64> {
    let mut out = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        if !(l.json && l.amount_positive && keep(i, l)) {
            continue;
        }
        let key = match l.ts.and_then(chrono_like) {
            Some(t) => (t[..10].to_string(), t[11..13].to_string()),
            None => ("default".to_string(), "default".to_string()),
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

fn file_pipeline(dir: &Path, input: &Path, sink: &str) -> PathBuf {
    let text = format!(
        r#"
name = "lake-e2e"
[source.file]
path = {input}
[batch]
max_records = 500
max_wait_ms = 50
[[transforms]]
name = "paid-only"
module = {filter}
config = {{ field = "$.amount", op = "gt", value = 0 }}
{sink}
"#,
        input = toml_path(input),
        filter = toml_path(&module("transforms/filter")),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).expect("pipeline");
    path
}

fn run_to_end(pipeline: &Path, log: &Path) {
    let mut s = Sluice::start(&sluice_e2e::sluice_bin!(), pipeline, log, &[], false);
    let status = s.wait(Duration::from_secs(300));
    assert!(
        status.is_some_and(|st| st.success()),
        "sluice run: {status:?}\n{}",
        s.log_tail(40)
    );
}

/// DuckDB's (dt, hour) → count of a Hive-partitioned glob.
fn duckdb_partitions(reader: &str) -> BTreeMap<(String, String), i64> {
    let rows = lakes::duckdb(&format!(
        "SELECT coalesce(CAST(dt AS VARCHAR), 'default') AS dt, coalesce(CAST(hour AS VARCHAR), 'default') AS hour, count(*) AS c FROM {reader} GROUP BY ALL ORDER BY ALL"
    ));
    rows.iter()
        .map(|r| {
            let s = |k: &str| {
                let v = r[k].as_str().unwrap_or_default().to_string();
                if v == "__HIVE_DEFAULT_PARTITION__" {
                    "default".to_string()
                } else {
                    v
                }
            };
            ((s("dt"), s("hour")), r["c"].as_i64().unwrap_or(-1))
        })
        .collect()
}

#[test]
fn duckdb_reads_json_lines_and_parquet_partitions_on_s3_counting_the_input_minus_drops_and_failures()
 {
    let _one = heavy();
    const N: usize = 6_000;
    let lines = events(N);
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("events.jsonl");
    let text: String = lines.iter().map(|l| format!("{}\n", l.text)).collect();
    std::fs::write(&input, text).expect("input");
    let b = bucket("lake-e2e");
    lakes::s3_bucket(&b);
    let layout = "partition = \"dt={event_time:%Y-%m-%d}/hour={event_time:%H}\"\nevent_time = { field = \"ts\" }";
    // JSON Lines, gzip-compressed.
    let sink = format!(
        "[outputs.default.lake]\nurl = \"s3://{b}/jsonl\"\n{S3_OPTIONS}\ncompression = \"gzip\"\n{layout}\n[dead_letter.lake]\nurl = \"s3://{b}/errors-jsonl\"\n{S3_OPTIONS}"
    );
    let pipeline = file_pipeline(dir.path(), &input, &sink);
    run_to_end(&pipeline, &dir.path().join("jsonl.log"));
    let want = expected(&lines, |_, _| true);
    let got = duckdb_partitions(&format!(
        "read_json_auto('s3://{b}/jsonl/**/*.jsonl.gz', hive_partitioning = true, hive_types_autocast = false)"
    ));
    assert_eq!(got, want, "JSON Lines partitions");
    assert!(want.contains_key(&("default".into(), "default".into())));
    assert!(want.len() > 10, "{} partitions", want.len());
    let total: i64 = want.values().sum();
    let failures = lines.iter().filter(|l| !l.json).count();
    let store = lakes::s3(&b);
    let dlq: usize = lakes::objects(&store, "errors-jsonl")
        .iter()
        .filter(|(k, _)| !k.contains("_sluice/"))
        .map(|(_, v)| v.split(|&c| c == b'\n').filter(|l| !l.is_empty()).count())
        .sum();
    assert_eq!(
        dlq, failures,
        "every line that is not JSON is dead-lettered"
    );

    // Parquet, schema inferred from the first records: `code` is an integer,
    // so the records whose code is a string go to the dead-letter queue.
    let sink = format!(
        "[outputs.default.lake]\nurl = \"s3://{b}/parquet\"\n{S3_OPTIONS}\nformat = \"parquet\"\n{layout}\n[dead_letter.lake]\nurl = \"s3://{b}/errors-parquet\"\n{S3_OPTIONS}"
    );
    let pipeline = file_pipeline(dir.path(), &input, &sink);
    run_to_end(&pipeline, &dir.path().join("parquet.log"));
    let misfit = |i: usize, _: &Line| i % 700 != 655;
    let want = expected(&lines, misfit);
    let got = duckdb_partitions(&format!(
        "read_parquet('s3://{b}/parquet/**/*.parquet', hive_partitioning = true, hive_types_autocast = false)"
    ));
    assert_eq!(got, want, "Parquet partitions");
    let misfits = lines
        .iter()
        .enumerate()
        .filter(|(i, l)| l.json && l.amount_positive && i % 700 == 655)
        .count();
    assert!(misfits > 0);
    let entries: Vec<serde_json::Value> = lakes::objects(&store, "errors-parquet")
        .iter()
        .filter(|(k, _)| !k.contains("_sluice/"))
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v)
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("entry"))
                .collect::<Vec<_>>()
        })
        .collect();
    let at_sink: Vec<_> = entries.iter().filter(|e| e["stage"] == "sink").collect();
    assert_eq!(at_sink.len(), misfits, "{entries:?}");
    assert!(
        at_sink[0]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("field `code` is a string")),
        "{:?}",
        at_sink[0]
    );
    assert_eq!(entries.len(), misfits + failures);
    // Both formats hold the same rows but the misfits.
    assert_eq!(total - want.values().sum::<i64>(), misfits as i64);
}

#[test]
fn kill_9_between_an_upload_and_its_commit_leaves_byte_identical_objects_and_no_lost_or_duplicated_rows()
 {
    let _one = heavy();
    let kafka = broker::bootstrap();
    broker::require(&kafka);
    const N: usize = 40_000;
    let t = Topics::new("lake-kill");
    broker::create_topic(&kafka, &t.input, 2);
    broker::create_topic(&kafka, &t.dlq, 1);
    assert_eq!(
        broker::produce(&kafka, &t.input, sluice_e2e::scenario::numbered(N, 100)),
        N
    );
    let b = bucket("lake-kill");
    lakes::s3_bucket(&b);
    let store = lakes::s3(&b);
    let dir = tempfile::tempdir().expect("tempdir");
    // Segments roll at 2,500 records or 300 ms, whichever first: many
    // boundaries are decided by the clock, and a replay must find them.
    let sink = format!(
        "[outputs.default.lake]\nurl = \"s3://{b}/copy\"\n{S3_OPTIONS}\nformat = \"parquet\"\npartition = \"topic={{stream}}/p={{partition}}\"\n[outputs.default.lake.roll]\nrecords = 2500\nage_ms = 300"
    );
    let pipeline = kafka_pipeline(
        dir.path(),
        &kafka,
        &t,
        &sink,
        "[batch]\nmax_records = 200\nmax_wait_ms = 20",
    );
    let log = dir.path().join("sluice.log");
    let data = |all: &BTreeMap<String, Vec<u8>>| -> BTreeMap<String, Vec<u8>> {
        all.iter()
            .filter(|(k, _)| k.ends_with(".parquet"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let mut seen: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut between = 0;
    let mut kills = 0;
    let uploaded = || {
        lakes::keys(&store, "copy")
            .iter()
            .filter(|k| k.ends_with(".parquet"))
            .count()
    };
    for round in 0..6 {
        let before = uploaded();
        let mut s = Sluice::start(&sluice_e2e::sluice_bin!(), &pipeline, &log, &[], false);
        // Kill the moment a new object lands: before its offsets are
        // committed (commits run every second).
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut landed = false;
        while Instant::now() < deadline && s.running() {
            if uploaded() > before {
                landed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !landed {
            // Everything is in the lake.
            s.terminate(Duration::from_secs(60));
            eprintln!("round {round}: nothing new to upload");
            break;
        }
        s.kill9();
        kills += 1;
        let all = lakes::objects(&store, "copy");
        // Is some uploaded segment beyond its partition's committed offset?
        let committed: BTreeMap<i32, i64> = broker::committed(&kafka, &t.group, &t.input)
            .into_iter()
            .collect();
        for (key, body) in &all {
            if let Some(m) = key.strip_prefix("copy/_sluice/segments/")
                && let Ok(marker) = serde_json::from_slice::<sluice::sink::lake::Marker>(body)
            {
                let partition: i32 = m
                    .split('/')
                    .next()
                    .and_then(|s| s.rsplit('+').next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(-1);
                let uploaded = marker.objects.iter().all(|o| all.contains_key(&o.key));
                if uploaded && committed.get(&partition).copied().unwrap_or(-1) <= marker.last {
                    between += 1;
                    break;
                }
            }
        }
        for (k, v) in data(&all) {
            if let Some(old) = seen.get(&k) {
                assert!(old == &v, "{k} changed after a kill -9");
            }
            seen.insert(k, v);
        }
    }
    assert!(kills >= 2, "only {kills} kills");
    assert!(
        between >= 1,
        "no kill landed between an upload and its commit ({kills} kills)"
    );
    // Run to the end: every offset committed.
    let mut s = Sluice::start(&sluice_e2e::sluice_bin!(), &pipeline, &log, &[], false);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let committed: i64 = broker::committed(&kafka, &t.group, &t.input)
            .iter()
            .map(|(_, o)| (*o).max(0))
            .sum();
        if committed as usize >= N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "committed {committed} of {N}\n{}",
            s.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = s.terminate(Duration::from_secs(60));
    assert!(status.is_some_and(|st| st.success()), "{}", s.log_tail(40));
    let all = data(&lakes::objects(&store, "copy"));
    for (k, v) in &seen {
        assert!(
            all.get(k) == Some(v),
            "{k} is not byte-identical after the restarts"
        );
    }
    let rows = lakes::duckdb(&format!(
        "SELECT count(*) AS c, count(DISTINCT n) AS d, min(n) AS lo, max(n) AS hi FROM read_parquet('s3://{b}/copy/**/*.parquet', hive_partitioning = true)"
    ));
    assert_eq!(
        (rows[0]["c"].as_i64(), rows[0]["d"].as_i64()),
        (Some(N as i64), Some(N as i64)),
        "rows and distinct rows in the lake after {kills} kills: {rows:?}"
    );
    eprintln!(
        "{kills} kills, {between} between an upload and its commit, {} objects",
        all.len()
    );
}

#[test]
fn a_million_records_roll_into_objects_of_about_the_roll_size_not_one_per_batch() {
    let _one = heavy();
    const N: usize = 1_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("big.jsonl");
    {
        use std::io::Write as _;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).expect("input"));
        for i in 0..N {
            // About 145 bytes, toll events like those of the performance issue.
            writeln!(
                f,
                "{{\"txn_id\":\"T{i:09}\",\"customer_id\":\"C-{:04}\",\"booth_id\":\"B-{:02}\",\"plate\":\"ABC-{:04}\",\"vehicle_class\":{},\"amount\":{}.25,\"ts\":\"2026-11-18T14:00:07Z\"}}",
                i % 9973,
                i % 17,
                i % 7919,
                i % 5,
                1 + i % 30
            )
            .expect("write");
        }
    }
    let lake = dir.path().join("lake");
    let text = format!(
        "name = \"big\"\n[source.file]\npath = {}\n[batch]\nmax_records = 1000\n[[transforms]]\nname = \"identity\"\nmodule = {}\n[outputs.default.lake]\nurl = {}\n[outputs.default.lake.roll]\nbytes = 67108864\nage_ms = 60000\n[dead_letter.local]\npath = {}",
        toml_path(&input),
        toml_path(&module("transforms/identity")),
        toml_path(&lake),
        toml_path(&dir.path().join("dlq")),
    );
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(&pipeline, text).expect("pipeline");
    run_to_end(&pipeline, &dir.path().join("big.log"));
    let mut sizes: Vec<u64> = std::fs::read_dir(&lake)
        .expect("lake")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .map(|e| e.metadata().expect("meta").len())
        .collect();
    sizes.sort();
    let total: u64 = sizes.iter().sum();
    let input_bytes = std::fs::metadata(&input).expect("input").len();
    assert_eq!(total, input_bytes, "every line once");
    let roll = 64 << 20;
    let full = sizes.iter().filter(|&&s| s >= roll).count();
    assert_eq!(
        sizes.len() as u64,
        total.div_ceil(roll),
        "objects of 64 MiB, not one per batch of 1,000: {sizes:?}"
    );
    assert_eq!(
        full,
        sizes.len() - 1,
        "all but the last reach 64 MiB: {sizes:?}"
    );
    // None much over: it closes at the batch that crosses the size.
    assert!(sizes.iter().all(|&s| s < roll + (1 << 20)), "{sizes:?}");
}

#[test]
fn azure_blob_objects_are_written_once_and_a_full_replay_finds_them_identical() {
    let _one = heavy();
    let container = bucket("lake-az");
    lakes::az_container(&container);
    let dir = tempfile::tempdir().expect("tempdir");
    let lines = events(3_000);
    let input = dir.path().join("events.jsonl");
    let text: String = lines.iter().map(|l| format!("{}\n", l.text)).collect();
    std::fs::write(&input, text).expect("input");
    let sink = format!(
        "[outputs.default.lake]\nurl = \"az://{container}/events\"\n{AZ_OPTIONS}\nformat = \"jsonl\"\ncompression = \"zstd\"\npartition = \"dt={{event_time:%Y-%m-%d}}\"\nevent_time = {{ field = \"ts\" }}\n[outputs.default.lake.roll]\nrecords = 400\n[dead_letter.lake]\nurl = \"az://{container}/errors\"\n{AZ_OPTIONS}"
    );
    let pipeline = file_pipeline(dir.path(), &input, &sink);
    run_to_end(&pipeline, &dir.path().join("first.log"));
    let store = lakes::azure(&container);
    let first = lakes::objects(&store, "events");
    let rows = |objs: &BTreeMap<String, Vec<u8>>| -> usize {
        objs.iter()
            .filter(|(k, _)| k.ends_with(".jsonl.zst"))
            .map(|(_, v)| {
                let plain = zstd::decode_all(&v[..]).expect("zstd");
                plain
                    .split(|&c| c == b'\n')
                    .filter(|l| !l.is_empty())
                    .count()
            })
            .sum()
    };
    let want: i64 = expected(&lines, |_, _| true).values().sum();
    assert_eq!(rows(&first) as i64, want);
    // The file source has no stored position: a second run replays every
    // line. Same keys, same bytes: nothing written twice.
    run_to_end(&pipeline, &dir.path().join("second.log"));
    let second = lakes::objects(&store, "events");
    assert_eq!(first, second, "a replay changed the lake");
}

#[test]
fn the_copy_every_stream_example_is_a_valid_pipeline() {
    let path = sluice_e2e::root().join("examples/lake-copy/pipeline.toml");
    let (cfg, _) = sluice::config::PipelineConfig::load(&path).expect("the example loads");
    let Some(sluice::sink::SinkConfig::Lake(lake)) = cfg.outputs.get("default") else {
        panic!("the example writes to a lake: {:?}", cfg.outputs);
    };
    assert_eq!(lake.format, sluice::sink::lake::LakeFormat::Raw);
    assert!(lake.partition.contains("topic={stream}") && lake.partition.contains("%H"));
}

/// The visible files under `dir` (names not starting with `.` or `_`, at any
/// depth), relative to it: what `ls`, `head dir/*.jsonl` and lake readers see.
fn visible_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(['.', '_']) {
                continue;
            }
            if e.path().is_dir() {
                todo.push(e.path());
            } else {
                let rel = e
                    .path()
                    .strip_prefix(dir)
                    .expect("under")
                    .display()
                    .to_string();
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// A file source with a relative path into a local Parquet lake, as the
/// README's first pipeline does: the objects are plain, visible names
/// (`events.jsonl-<hash>+0+…`, no leading dot, no `%`), so pyarrow's dataset
/// reader and DuckDB both read every row; amounts that are whole in the first
/// batch and decimal later all reach the lake (the inferred column is a
/// double); the dead-letter files are visible to `head lake/dlq/*.jsonl`.
#[test]
fn a_local_parquet_lake_from_a_file_is_read_whole_by_pyarrow_and_duckdb() {
    const N: usize = 3_000;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("data")).expect("data");
    let mut text = String::new();
    let mut broken = 0;
    for i in 0..N {
        if i % 400 == 399 {
            text.push_str("{\"truncated\n");
            broken += 1;
        } else if i < 1_000 {
            // The whole first batch has whole amounts.
            text.push_str(&format!("{{\"id\":{i},\"amount\":{}}}\n", i % 40));
        } else {
            text.push_str(&format!("{{\"id\":{i},\"amount\":{}.5}}\n", i % 40));
        }
    }
    std::fs::write(dir.path().join("data/events.jsonl"), text).expect("input");
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"visible\"\n[source.file]\npath = \"data/events.jsonl\"\nformat = \"jsonl\"\n[batch]\nmax_records = 1000\n[[transforms]]\nname = \"identity\"\nmodule = {}\n[outputs.default.lake]\nurl = \"lake/events\"\nformat = \"parquet\"\n[dead_letter.lake]\nurl = \"lake/dlq\"\n",
            toml_path(&module("transforms/identity")),
        ),
    )
    .expect("pipeline");
    run_to_end(&pipeline, &dir.path().join("run.log"));
    let lake = dir.path().join("lake/events");
    let files = visible_files(&lake);
    assert!(!files.is_empty(), "no visible object in {}", lake.display());
    for f in &files {
        assert!(
            f.starts_with("events.jsonl-") && f.ends_with(".parquet") && !f.contains('%'),
            "a plain, readable object name: {f} (all: {files:?})"
        );
    }
    let good = (N - broken) as u64;
    let arrow = lakes::pyarrow(&lake);
    assert_eq!(arrow["rows"].as_u64(), Some(good), "pyarrow: {arrow}");
    assert_eq!(arrow["columns"]["amount"], "double", "{arrow}");
    let duck = lakes::duckdb(&format!(
        "SELECT count(*) AS c, sum(amount) AS s FROM read_parquet('{}/*.parquet')",
        lake.display()
    ));
    assert_eq!(duck[0]["c"].as_u64(), Some(good), "duckdb: {duck:?}");
    // The dead-letter queue holds the broken lines and nothing else: no
    // decimal amount was turned away by an `int64` column.
    let dlq = dir.path().join("lake/dlq");
    let entries: Vec<serde_json::Value> = visible_files(&dlq)
        .iter()
        .filter(|f| f.ends_with(".jsonl"))
        .flat_map(|f| {
            std::fs::read_to_string(dlq.join(f))
                .expect("dlq file")
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("entry"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(entries.len(), broken, "visible dead letters: {entries:?}");
    assert!(
        entries.iter().all(|e| e["stage"] == "decode"),
        "{entries:?}"
    );
}
