//! Engine throughput: identity and json-map through wasmtime at batch sizes
//! 1 / 100 / 1000, against the same json-map logic compiled natively.
//!
//! `cargo bench -p sluice-host --bench engine` runs criterion, then prints a
//! summary table (records/s and the wasm/native ratio per batch size),
//! measured in this same process.

use criterion::{BenchmarkId, Criterion, Throughput};
use sluice::engine::{Engine, EngineOptions, InstanceSpec, Limits, RefTables, Runner};
use sluice::record::{Partition, Position, Record};
use sluice_guest::Transform;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIZES: [usize; 3] = [1, 100, 1000];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

const MAPPING: &str = r#"{"mapping": {"transaction": "$.txn_id", "customer": "$.customer_id", "booth": "$.booth_id", "amount": "$.amount", "event_time": ["$.ts", "$.timestamp"]}}"#;

fn sample(n: usize) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(root().join("examples/toll-road/data/transactions.jsonl"))
        .expect("sample data");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok() && l.len() > 2)
        .collect();
    (0..n)
        .map(|i| lines[i % lines.len()].as_bytes().to_vec())
        .collect()
}

/// A transform project's module (built if needed) and an instance spec.
fn module_and_spec(
    engine: &Engine,
    project: &str,
    config: &str,
) -> (Arc<sluice::engine::Module>, InstanceSpec) {
    let path = sluice::project::resolve_module(&root().join(project), true).expect("build guest");
    let module = engine.load_file(&path).expect("load guest");
    let spec = InstanceSpec {
        name: Arc::from(project),
        config: config.into(),
        tables: RefTables::empty(),
        limits: Limits::default(),
        grants: Default::default(),
    };
    (module, spec)
}

fn runner(engine: &Engine, project: &str, config: &str) -> Runner {
    let (module, spec) = module_and_spec(engine, project, config);
    Runner::new(module, spec).expect("init")
}

struct Input {
    records: Vec<Record>,
    positions: Vec<Position>,
}

impl Input {
    fn new(values: &[Vec<u8>]) -> Self {
        let part = Partition {
            stream: Arc::from("bench"),
            partition: 0,
        };
        Input {
            records: values
                .iter()
                .map(|v| Record::from_value(v.clone()))
                .collect(),
            positions: (0..values.len())
                .map(|i| Position {
                    partition: part.clone(),
                    offset: i as i64,
                })
                .collect(),
        }
    }
    fn pairs(&self) -> Vec<(&Record, &Position)> {
        self.records.iter().zip(&self.positions).collect()
    }
}

fn bench(c: &mut Criterion, engine: &Engine) {
    let mut identity = runner(engine, "transforms/identity", "{}");
    let mut json_map = runner(engine, "transforms/json-map", MAPPING);
    let mut native =
        sluice_json_map::JsonMap::init(sluice_guest::Config::from_json(MAPPING).expect("cfg"))
            .expect("native init");
    let mut group = c.benchmark_group("engine");
    for size in SIZES {
        let values = sample(size);
        let input = Input::new(&values);
        let pairs = input.pairs();
        let wire = sluice_guest::__rt::batch_of_values(&values);
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::new("identity-wasm", size), &size, |b, _| {
            b.iter(|| black_box(identity.process(&pairs).expect("identity")))
        });
        group.bench_with_input(BenchmarkId::new("json-map-wasm", size), &size, |b, _| {
            b.iter(|| black_box(json_map.process(&pairs).expect("json-map")))
        });
        group.bench_with_input(BenchmarkId::new("json-map-native", size), &size, |b, _| {
            b.iter(|| black_box(sluice_guest::__rt::process(&mut native, &wire).expect("native")))
        });
    }
    group.finish();
}

/// Median of `rounds` timings of `f` over `iters` calls, per call.
fn time_per_call(rounds: usize, iters: usize, mut f: impl FnMut()) -> Duration {
    let mut samples: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed() / iters as u32
        })
        .collect();
    samples.sort();
    samples[samples.len() / 2]
}

fn summary(engine: &Engine) {
    let mut identity = runner(engine, "transforms/identity", "{}");
    let mut json_map = runner(engine, "transforms/json-map", MAPPING);
    let mut native =
        sluice_json_map::JsonMap::init(sluice_guest::Config::from_json(MAPPING).expect("cfg"))
            .expect("native init");
    println!();
    println!("summary (median of 15 interleaved rounds, same process)");
    println!(
        "{:>6}  {:>16}  {:>14}  {:>16}  {:>18}  {:>10}",
        "batch",
        "identity µs/rec",
        "json-map rec/s",
        "native rec/s",
        "json-map µs/rec",
        "wasm/native"
    );
    for size in SIZES {
        let values = sample(size);
        let input = Input::new(&values);
        let pairs = input.pairs();
        let wire = sluice_guest::__rt::batch_of_values(&values);
        let iters = (20_000 / size).max(20);
        // Rounds interleaved (identity, wasm, native, identity, ...), so that
        // the machine's drift during the run falls on all three alike.
        let (mut id, mut wasm, mut nat) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..15 {
            id.push(time_per_call(1, iters, || {
                black_box(identity.process(&pairs).expect("identity"));
            }));
            wasm.push(time_per_call(1, iters, || {
                black_box(json_map.process(&pairs).expect("json-map"));
            }));
            nat.push(time_per_call(1, iters, || {
                black_box(sluice_guest::__rt::process(&mut native, &wire).expect("native"));
            }));
        }
        let median = |mut v: Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let (id, wasm, nat) = (median(id), median(wasm), median(nat));
        let per = |d: Duration| d.as_secs_f64() * 1e6 / size as f64;
        let rate = |d: Duration| size as f64 / d.as_secs_f64();
        println!(
            "{size:>6}  {:>16.3}  {:>14.0}  {:>16.0}  {:>18.3}  {:>9.2}x",
            per(id),
            rate(wasm),
            rate(nat),
            per(wasm),
            wasm.as_secs_f64() / nat.as_secs_f64()
        );
    }
}

/// Tenant instantiation: a fresh instance from the pool plus its `init`
/// (what a new partition, a restart after a trap or a hot swap costs), and
/// the instance handed back to the pool; on `engine` and, as the baseline in
/// the same process, on an engine whose pool gives every touched page back to
/// the kernel (wasmtime's default reset, `SLUICE_POOL_RESIDENT=0`).
fn summary_instantiate(engine: &Engine, decommit: &Engine) {
    println!();
    println!(
        "instantiation (median of 15 rounds of 50, pooling allocator, same process; reset: {:?})",
        engine.resident()
    );
    println!(
        "{:<22} {:>12} {:>16} {:>8}",
        "", "this engine", "pages given back", "ratio"
    );
    for (project, config) in [
        ("transforms/identity", "{}"),
        ("transforms/json-map", MAPPING),
    ] {
        let per = |engine: &Engine| {
            let (module, spec) = module_and_spec(engine, project, config);
            time_per_call(15, 50, || {
                black_box(Runner::new(module.clone(), spec.clone()).expect("instantiate"));
            })
            .as_secs_f64()
                * 1e6
        };
        let (this, given_back) = (per(engine), per(decommit));
        println!(
            "{project:<22} {this:>9.1} µs {given_back:>13.1} µs {:>7.2}x",
            given_back / this
        );
    }
}

/// A batch of 1,000 where record 500 traps the guest, and the same batch clean.
fn bisection_inputs() -> (Input, Input) {
    let clean: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("{{\"n\":{i}}}").into_bytes())
        .collect();
    let mut poisoned = clean.clone();
    poisoned[500] = br#"{"n":500,"poison":"boom"}"#.to_vec();
    (Input::new(&clean), Input::new(&poisoned))
}

/// `SLUICE_BENCH_COMPARE=a.wasm,b.wasm`: json-map builds compared in one
/// process, rounds interleaved (instantiation + init, and a batch of 1,000).
fn compare_builds(engine: &Engine, paths: &str) {
    let builds: Vec<(String, Arc<sluice::engine::Module>)> = paths
        .split(',')
        .map(|p| (p.to_string(), engine.load_file(Path::new(p)).expect("load")))
        .collect();
    let spec = module_and_spec(engine, "transforms/json-map", MAPPING).1;
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); builds.len()];
    for _ in 0..15 {
        for (i, (_, module)) in builds.iter().enumerate() {
            times[i].push(time_per_call(1, 50, || {
                black_box(Runner::new(module.clone(), spec.clone()).expect("instantiate"));
            }));
        }
    }
    // Throughput: batches of 1,000, rounds interleaved across the builds.
    let values = sample(1000);
    let input = Input::new(&values);
    let pairs = input.pairs();
    let mut runners: Vec<Runner> = builds
        .iter()
        .map(|(_, m)| Runner::new(m.clone(), spec.clone()).expect("init"))
        .collect();
    let mut per_record: Vec<Vec<Duration>> = vec![Vec::new(); builds.len()];
    for _ in 0..15 {
        for (i, r) in runners.iter_mut().enumerate() {
            per_record[i].push(
                time_per_call(1, 20, || {
                    black_box(r.process(&pairs).expect("process"));
                }) / 1000,
            );
        }
    }
    println!();
    println!(
        "builds compared (median of 15 interleaved rounds: instantiation + init, 50 per round; json-map batch of 1,000, 20 per round)"
    );
    for (((path, _), mut t), mut p) in builds.iter().zip(times).zip(per_record) {
        t.sort();
        p.sort();
        println!(
            "{path:<60} {:>8.1} µs per instance {:>8.3} µs per record",
            t[t.len() / 2].as_secs_f64() * 1e6,
            p[p.len() / 2].as_secs_f64() * 1e6
        );
    }
}

fn bench_bisection(c: &mut Criterion, engine: &Engine) {
    let mut poison = runner(engine, "tests/guests/poison", "{}");
    let (clean, poisoned) = bisection_inputs();
    let (clean, poisoned) = (clean.pairs(), poisoned.pairs());
    let mut group = c.benchmark_group("bisection");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("clean-1000", |b| {
        b.iter(|| black_box(poison.process_isolating(&clean).expect("clean")))
    });
    group.bench_function("one-trap-in-1000", |b| {
        b.iter(|| black_box(poison.process_isolating(&poisoned).expect("isolated")))
    });
    group.finish();
}

fn summary_bisection(engine: &Engine, label: &str) {
    let mut poison = runner(engine, "tests/guests/poison", "{}");
    let (clean, poisoned) = bisection_inputs();
    let (clean, poisoned) = (clean.pairs(), poisoned.pairs());
    let mut calls = 0;
    let ok = time_per_call(15, 20, || {
        black_box(poison.process_isolating(&clean).expect("clean"));
    });
    let bad = time_per_call(15, 5, || {
        let (p, b) = poison.process_isolating(&poisoned).expect("isolated");
        calls = b.extra_calls;
        black_box(p);
    });
    println!();
    println!(
        "bisection, batch of 1,000 (median of 15 rounds, same process; {label}, reset: {:?})",
        engine.resident()
    );
    println!(
        "  clean batch {:.3} ms; one trapping record {:.3} ms ({calls} extra calls, fresh instance after each trap) = {:.1}x",
        ok.as_secs_f64() * 1e3,
        bad.as_secs_f64() * 1e3,
        bad.as_secs_f64() / ok.as_secs_f64()
    );
}

/// What fuel metering costs: the same modules on the default engine (no
/// fuel, the baseline) and on one that counts fuel (unlimited, or limited
/// per call).
fn summary_fuel(unmetered: &Engine) {
    let metered = &Engine::with_options(EngineOptions {
        fuel: true,
        ..EngineOptions::default()
    })
    .expect("engine counting fuel");
    let values = sample(1000);
    let input = Input::new(&values);
    let pairs = input.pairs();
    println!();
    println!("fuel metering, batch of 1,000 (median of 15 rounds, same process)");
    for (project, config) in [
        ("transforms/identity", "{}"),
        ("transforms/json-map", MAPPING),
    ] {
        let mut base = runner(unmetered, project, config);
        let mut counted = runner(metered, project, config);
        let mut limited = runner(metered, project, config);
        limited
            .set_fuel_per_call(1_000_000_000)
            .expect("a metered engine");
        let t = |r: &mut Runner| {
            time_per_call(15, 40, || {
                black_box(r.process(&pairs).expect("process"));
            })
        };
        let (b, c, l) = (t(&mut base), t(&mut counted), t(&mut limited));
        let per = |d: Duration| d.as_secs_f64() * 1e6 / 1000.0;
        println!(
            "  {project:<22} no fuel {:.3} µs/rec; fuel counted {:.3} ({:.2}x); limited to 1e9 per call {:.3} ({:.2}x)",
            per(b),
            per(c),
            c.as_secs_f64() / b.as_secs_f64(),
            per(l),
            l.as_secs_f64() / b.as_secs_f64()
        );
    }
}

fn main() {
    let engine = Engine::new().expect("engine");
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &engine);
    bench_bisection(&mut c, &engine);
    c.final_summary();
    if let Ok(paths) = std::env::var("SLUICE_BENCH_COMPARE") {
        compare_builds(&engine, &paths);
        return;
    }
    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        summary(&engine);
        let decommit = Engine::with_options(EngineOptions {
            keep_resident: false,
            ..EngineOptions::default()
        })
        .expect("engine");
        summary_instantiate(&engine, &decommit);
        summary_bisection(&engine, "this engine");
        summary_bisection(&decommit, "pages given back");
        summary_fuel(&engine);
    }
}
