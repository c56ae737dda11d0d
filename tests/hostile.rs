//! The hostile-guest suite: each attack ends with a specific error naming the
//! limit, the tenant and the module; the host stays up; and a neighbour
//! tenant keeps processing batches on another thread the whole time. The
//! neighbour's p99 batch latency is measured alone and under attack and
//! printed (not asserted: timings belong to benches, not tests).

use sluice::engine::{Engine, InstanceSpec, Limits, LoadError, RefTables, Runner, TransformError};
use sluice::record::{Partition, Position, Record};
use sluice_e2e::module;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn spec(name: &str, config: &str, limits: Limits) -> InstanceSpec {
    InstanceSpec {
        name: Arc::from(name),
        config: config.to_string(),
        tables: RefTables::empty(),
        limits,
    }
}

fn batch(values: &[&str]) -> (Vec<Record>, Vec<Position>) {
    let part = Partition {
        stream: Arc::from("hostile"),
        partition: 0,
    };
    (
        values
            .iter()
            .map(|v| Record::from_value(v.as_bytes().to_vec()))
            .collect(),
        (0..values.len())
            .map(|i| Position {
                partition: part.clone(),
                offset: i as i64,
            })
            .collect(),
    )
}

fn run(r: &mut Runner, value: &str) -> Result<sluice::engine::Processed, TransformError> {
    let (recs, pos) = batch(&[value]);
    let inputs: Vec<_> = recs.iter().zip(&pos).collect();
    r.process(&inputs)
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get((v.len() * 99 / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// The neighbour: an identity tenant processing batches of 100 until told
/// to stop; returns its batch latencies.
fn neighbour(engine: &Engine, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Duration>> {
    let m = engine
        .load_file(&module("transforms/identity"))
        .expect("identity");
    std::thread::spawn(move || {
        let mut r =
            Runner::new(m, spec("tenant-neighbour", "{}", Limits::default())).expect("init");
        let values: Vec<String> = (0..100).map(|i| format!("{{\"n\":{i}}}")).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let (recs, pos) = batch(&refs);
        let inputs: Vec<_> = recs.iter().zip(&pos).collect();
        let mut latencies = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let out = r.process(&inputs).expect("the neighbour is never hurt");
            latencies.push(t.elapsed());
            assert_eq!(out.outputs.len(), 100, "the neighbour's batch is whole");
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies
    })
}

#[test]
fn hostile_guests_get_specific_errors_and_the_neighbour_keeps_flowing() {
    let engine = Engine::new().expect("engine");
    let poison = engine
        .load_file(&module("tests/guests/poison"))
        .expect("poison guest");

    // The neighbour alone.
    let stop = Arc::new(AtomicBool::new(false));
    let alone = neighbour(&engine, stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let alone = alone.join().expect("neighbour alone");

    // The neighbour while the attacker runs every attack.
    let stop = Arc::new(AtomicBool::new(false));
    let attacked = neighbour(&engine, stop.clone());
    let limits = Limits {
        memory_mb: 16,
        timeout_ms: 500,
        ..Limits::default()
    };
    let mut a = Runner::new(
        poison.clone(),
        spec("tenant-attacker", "{}", limits.clone()),
    )
    .expect("init");
    let module_path = poison.path().display().to_string();

    let e = run(&mut a, "spin").expect_err("infinite loop");
    assert_eq!(
        e,
        TransformError::Deadline {
            transform: "tenant-attacker".into(),
            timeout_ms: 500
        }
    );

    let e = run(&mut a, "hog").expect_err("memory growth bomb");
    assert!(
        matches!(&e, TransformError::OutOfMemory { transform, limit_mb: 16, .. } if transform == "tenant-attacker"),
        "{e:?}"
    );

    // Rust guests keep big frames on a shadow stack in linear memory, which
    // overflows into an out-of-bounds access; small frames exhaust the wasm
    // stack (512 KiB). Either way a trap that names the guest function.
    let e = run(&mut a, "deep").expect_err("stack overflow");
    assert!(
        matches!(&e, TransformError::Trap { message, .. }
            if (message.contains("call stack exhausted") || message.contains("out of bounds memory access"))
                && message.contains("recurse")),
        "{e:?}"
    );

    let e = run(&mut a, "outbomb").expect_err("output bomb");
    assert!(
        matches!(&e, TransformError::Contract { message, .. } if message.contains("over the limit of 1000 per record"))
            || matches!(&e, TransformError::OutOfMemory { .. }),
        "{e:?}"
    );

    let e = run(&mut a, "bigvalue").expect_err("1 GiB value");
    assert!(
        matches!(&e, TransformError::OutOfMemory { limit_mb: 16, .. })
            || matches!(&e, TransformError::Trap { message, .. } if message.contains("memory allocation")),
        "{e:?}"
    );

    // Floods of host calls: a generous deadline, so that the per-batch
    // limits (not the deadline) are what stops them.
    let mut f = Runner::new(
        poison.clone(),
        spec(
            "tenant-flooder",
            "{}",
            Limits {
                timeout_ms: 30_000,
                ..limits.clone()
            },
        ),
    )
    .expect("init");
    let out = run(&mut f, "logflood").expect("a log flood is cut, not fatal");
    assert_eq!(out.outputs.len(), 1);
    let usage = f.usage();
    assert_eq!(usage.logs, 100, "the per-batch log limit holds");
    assert_eq!(
        usage.logs_dropped,
        200_000 - 100,
        "the rest is counted and dropped"
    );
    assert!(f.take_logs().len() <= 100, "no more than the limit is kept");

    let out = run(&mut f, "lookupflood").expect("a lookup flood is cut, not fatal");
    assert_eq!(out.outputs.len(), 1);
    assert_eq!(f.usage().lookups, 1_500_000, "every lookup is counted");

    // After all that, the attacker's next clean batch is served by a fresh instance.
    let out = run(&mut a, "fine").expect("the attacker's own clean records still work");
    assert_eq!(out.outputs.len(), 1);
    assert!(a.instantiations() >= 5, "each fault discarded the instance");

    let e = Runner::new(
        poison.clone(),
        spec("tenant-init-trap", r#"{"init_trap": true}"#, limits.clone()),
    )
    .expect_err("trap inside init");
    assert!(
        matches!(&e, TransformError::Init { transform, message } if transform == "tenant-init-trap" && message.contains("init trap asked for")),
        "{e:?}"
    );

    // No ambient authority: frozen clock, no entropy, no env, args or files.
    let ambient = |name: &str| -> serde_json::Value {
        let mut r = Runner::new(poison.clone(), spec(name, "{}", limits.clone())).expect("init");
        let out = run(&mut r, "ambient").expect("ambient");
        serde_json::from_slice(out.outputs[0].record.value.as_deref().unwrap_or_default())
            .expect("json")
    };
    let (one, two) = (ambient("tenant-a"), ambient("tenant-b"));
    assert_eq!(one["time"], 0, "the clock is frozen at the epoch: {one}");
    assert_eq!(one["env"], 0, "{one}");
    assert_eq!(one["args"], 0, "{one}");
    assert_eq!(one["root"], false, "no file system: {one}");
    assert_eq!(
        one["hash"], two["hash"],
        "no entropy: every instance sees the same seed"
    );

    // A 200 MiB module is refused before it is read.
    let dir = tempfile::tempdir().expect("tempdir");
    let huge = dir.path().join("huge.wasm");
    let f = std::fs::File::create(&huge).expect("create");
    f.set_len(200 << 20).expect("size");
    let e = engine.load_file(&huge).expect_err("200 MiB module");
    assert!(
        matches!(&e, LoadError::TooLarge { size, limit, .. } if *size == 200 << 20 && *limit == 128 << 20),
        "{e:?}"
    );
    assert!(e.to_string().contains("huge.wasm"), "{e}");

    stop.store(true, Ordering::Relaxed);
    let attacked = attacked.join().expect("neighbour under attack");
    eprintln!(
        "neighbour p99 batch latency (100 records): alone {:?} over {} batches; while the attacker runs {:?} over {} batches (attacker module {module_path})",
        p99(alone.clone()),
        alone.len(),
        p99(attacked.clone()),
        attacked.len()
    );
    assert!(
        !attacked.is_empty(),
        "the neighbour kept processing during the attack"
    );
}
