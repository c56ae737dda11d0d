//! json-map in Rust, Python and JavaScript, on the shared fixture input:
//! component size, build time, compile time (Cranelift, no cache),
//! instantiation time (a fresh instance and `init`), linear memory after a
//! batch, and records/s, with the Rust guest and the same logic compiled
//! natively as the baselines, all in this one process.
//!
//! `cargo bench -p sluice-host --bench languages` (Python and Node.js must be
//! installed; the build tools are installed into the projects on first use).
//! Pass a batch size to change it from 1000.

use sluice::engine::{Engine, EngineOptions, InstanceSpec, Limits, RefTables, Runner};
use sluice::record::{Header, Partition, Position, Record};
use sluice_guest::Transform;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The config and the JSON inputs of the shared fixture `mapping.yaml`.
fn fixture() -> (String, Vec<Record>) {
    let path = root().join("transforms/json-map/fixtures/mapping.yaml");
    let doc: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("yaml");
    let config = doc["config"].to_string();
    let records = doc["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| {
            let value = match (r.get("input"), r.get("input_text")) {
                (_, Some(t)) => t.as_str()?.as_bytes().to_vec(),
                (Some(v), None) => v.to_string().into_bytes(),
                _ => return None,
            };
            let mut rec = Record::from_value(value);
            rec.key = r
                .get("key")
                .and_then(|k| k.as_str())
                .map(|k| k.to_string().into());
            if let Some(h) = r.get("headers").and_then(|h| h.as_object()) {
                rec.headers = h
                    .iter()
                    .map(|(n, v)| {
                        Header::new(n, v.as_str().unwrap_or_default().as_bytes().to_vec())
                    })
                    .collect();
            }
            Some(rec)
        })
        .collect();
    (config, records)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Row {
    lang: &'static str,
    size: u64,
    build: Option<Duration>,
    compile: Duration,
    instantiate: Duration,
    memory: u64,
    rate: f64,
}

fn measure(lang: &'static str, project: &str, config: &str, batch: &[(&Record, &Position)]) -> Row {
    let dir = root().join(project);
    // An uncached build: the hash of a Python/JS build is removed, a Rust
    // crate's source is touched (its dependencies stay built).
    let _ = std::fs::remove_file(dir.join(".sluice/build/transform.wasm.inputs"));
    if lang == "rust" {
        let lib = dir.join("src/lib.rs");
        if let Ok(text) = std::fs::read(&lib) {
            let _ = std::fs::write(&lib, text);
        }
    }
    let started = Instant::now();
    let path = sluice::project::resolve_module(&dir, true).expect("build");
    let build = Some(started.elapsed());
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let cache = tempfile::tempdir().expect("tempdir");
    let engine = Engine::with_options(EngineOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    })
    .expect("engine");
    eprintln!(
        "{lang}: the pool resets ended instances: {:?}",
        engine.resident()
    );
    let started = Instant::now();
    let module = engine.load_file(&path).expect("load");
    let compile = started.elapsed();
    let spec = InstanceSpec {
        name: Arc::from(lang),
        config: config.to_string(),
        tables: RefTables::empty(),
        limits: Limits::default(),
        grants: Default::default(),
    };
    let mut inst = Vec::new();
    for _ in 0..7 {
        // A fresh instance, `init`, and the instance back to the pool
        // (where its slot is reset).
        let started = Instant::now();
        drop(Runner::new(module.clone(), spec.clone()).expect("init"));
        inst.push(started.elapsed());
    }
    let mut runner = Runner::new(module, spec).expect("init");
    let processed = runner.process(batch).expect("process");
    assert_eq!(processed.outcomes.len(), batch.len());
    let rate = rate(
        || {
            black_box(runner.process(batch).expect("process"));
        },
        batch.len(),
    );
    Row {
        lang,
        size,
        build,
        compile,
        instantiate: median(inst),
        memory: runner.memory_bytes(),
        rate,
    }
}

/// Records/s: the median of 9 rounds of at least 300 ms each.
fn rate(mut f: impl FnMut(), per_call: usize) -> f64 {
    let mut rounds = Vec::new();
    for _ in 0..9 {
        let started = Instant::now();
        let mut calls = 0u64;
        while started.elapsed() < Duration::from_millis(300) {
            f();
            calls += 1;
        }
        rounds.push(calls as f64 * per_call as f64 / started.elapsed().as_secs_f64());
    }
    rounds.sort_by(f64::total_cmp);
    rounds[rounds.len() / 2]
}

fn main() {
    let batch_size: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let (config, sample) = fixture();
    let records: Vec<Record> = (0..batch_size)
        .map(|i| sample[i % sample.len()].clone())
        .collect();
    let part = Partition {
        stream: Arc::from("bench"),
        partition: 0,
    };
    let positions: Vec<Position> = (0..batch_size)
        .map(|i| Position {
            partition: part.clone(),
            offset: i as i64,
        })
        .collect();
    let batch: Vec<(&Record, &Position)> = records.iter().zip(&positions).collect();

    let mut rows = vec![
        measure("rust", "transforms/json-map", &config, &batch),
        measure("python", "transforms/json-map/python", &config, &batch),
        measure("js", "transforms/json-map/js", &config, &batch),
    ];
    // The SDKs' floor: identity (decode the batch, emit every record as
    // it is, encode the outcomes) in each language.
    let floors = [
        measure("rust", "transforms/identity", "{}", &batch),
        measure("python", "transforms/identity/python", "{}", &batch),
        measure("js", "transforms/identity/js", "{}", &batch),
    ];
    // Native: the Rust json-map's logic called directly, on the same wire batch.
    let values: Vec<Vec<u8>> = records
        .iter()
        .map(|r| r.value.as_deref().unwrap_or_default().to_vec())
        .collect();
    let mut wire = sluice_guest::__rt::batch_of_values(&values);
    // Unknown offsets: json-map logs skipped records with a known offset,
    // and the host's log import does not exist outside a component.
    wire.offsets.iter_mut().for_each(|o| *o = -1);
    let mut native =
        sluice_json_map::JsonMap::init(sluice_guest::Config::from_json(&config).expect("config"))
            .expect("native init");
    let native_rate = rate(
        || {
            black_box(sluice_guest::__rt::process(&mut native, &wire).expect("native"));
        },
        batch_size,
    );
    rows.push(Row {
        lang: "native",
        size: 0,
        build: None,
        compile: Duration::ZERO,
        instantiate: Duration::ZERO,
        memory: 0,
        rate: native_rate,
    });
    let rust_rate = rows[0].rate;
    println!(
        "json-map on the shared fixture input ({} distinct records), batches of {batch_size}, same process",
        sample.len()
    );
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>12} {:>10} {:>12} {:>9} {:>9}",
        "language",
        "size MiB",
        "build s",
        "compile s",
        "instantiate",
        "memory MiB",
        "records/s",
        "vs rust",
        "vs native"
    );
    let print = |r: &Row, rust_rate: f64| {
        println!(
            "{:<8} {:>10.1} {:>10} {:>10.2} {:>10.0}µs {:>10.1} {:>12.0} {:>9.3} {:>9.3}",
            r.lang,
            r.size as f64 / (1 << 20) as f64,
            r.build
                .map(|b| format!("{:.1}", b.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            r.compile.as_secs_f64(),
            r.instantiate.as_secs_f64() * 1e6,
            r.memory as f64 / (1 << 20) as f64,
            r.rate,
            r.rate / rust_rate,
            r.rate / native_rate,
        );
    };
    rows.iter().for_each(|r| print(r, rust_rate));
    println!("identity (the SDK and contract floor; vs rust = vs the Rust identity guest):");
    floors.iter().for_each(|r| print(r, floors[0].rate));
}
