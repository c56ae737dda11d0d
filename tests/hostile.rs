//! The hostile-guest suite: each attack ends with a specific error naming the
//! limit, the tenant and the module; the host stays up; and a neighbour
//! tenant keeps processing batches on another thread the whole time (checked
//! after every attack). The neighbour's p99 batch latency is measured alone
//! and under attack and printed (not asserted: timings belong to benches,
//! not tests).
//!
//! Attackers are Rust guests (`tests/guests/poison`, `tests/guests/ambient`)
//! and hand-written components (`sluice_e2e::wat_guest`) for what no
//! toolchain would emit: a lying `cabi_realloc`, wrong outcome counts, list
//! lengths and result pointers outside memory, imports of anything.

use sluice::engine::{
    Engine, EngineOptions, Grants, InstanceSpec, Limits, LoadError, Outcome, Runner,
    TransformError, Ungranted,
};
use sluice::record::{Partition, Position, Record};
use sluice_e2e::wat_guest::{self, Process, Realloc};
use sluice_e2e::{module, spec};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
/// to stop; counts its batches in `done` and returns their latencies.
fn neighbour(
    engine: &Engine,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Vec<Duration>> {
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
            done.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies
    })
}

/// Watches the neighbour: after each attack, its batch count must have
/// moved on (it gets up to 10 s, far more than a batch needs).
struct Watch {
    done: Arc<AtomicU64>,
    seen: u64,
}

impl Watch {
    fn still_flowing(&mut self, case: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.done.load(Ordering::Relaxed);
            if now > self.seen {
                self.seen = now;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the neighbour stopped processing during `{case}` ({now} batches)"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Asserts that an error's text names the tenant and the module.
fn names(e: &impl std::fmt::Display, tenant: &str, module: &str) {
    let text = e.to_string();
    assert!(
        text.contains(&format!("`{tenant}`")) && text.contains(module),
        "the error must name tenant `{tenant}` and module `{module}`: {text}"
    );
}

fn wat(
    engine: &Engine,
    name: &str,
    realloc: Realloc,
    process: Process,
    imports: &[&str],
) -> Result<Arc<sluice::engine::Module>, LoadError> {
    let bytes = wat_guest::component(realloc, process, imports);
    engine.load_bytes(Path::new(name), &bytes)
}

#[test]
fn hostile_guests_get_specific_errors_and_the_neighbour_keeps_flowing() {
    // A host whose pipelines set `fuel_per_call` counts fuel.
    let engine = Engine::with_options(EngineOptions {
        fuel: true,
        ..EngineOptions::default()
    })
    .expect("engine");
    let poison = engine
        .load_file(&module("tests/guests/poison"))
        .expect("poison guest");
    let poison_path = poison.path().display().to_string();

    // The neighbour alone.
    let stop = Arc::new(AtomicBool::new(false));
    let alone = neighbour(&engine, stop.clone(), Arc::new(AtomicU64::new(0)));
    // A 2 s measuring window (the neighbour's pace alone), not a wait for a
    // result.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let alone = alone.join().expect("neighbour alone");

    // The neighbour while the attacker runs every attack.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let attacked = neighbour(&engine, stop.clone(), done.clone());
    let mut watch = Watch { done, seen: 0 };
    watch.still_flowing("start");
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

    let e = run(&mut a, "spin").expect_err("infinite loop");
    assert_eq!(
        e,
        TransformError::Deadline {
            transform: "tenant-attacker".into(),
            module: poison_path.clone(),
            timeout_ms: 500
        }
    );
    names(&e, "tenant-attacker", &poison_path);
    watch.still_flowing("infinite loop");

    // The same loop under a fuel limit: stopped by fuel, deterministically,
    // long before its (generous) deadline; an ordinary record fits.
    let mut fueled = Runner::new(
        poison.clone(),
        spec(
            "tenant-fuel",
            "{}",
            Limits {
                fuel_per_call: 50_000_000,
                timeout_ms: 60_000,
                ..limits.clone()
            },
        ),
    )
    .expect("init within its fuel");
    run(&mut fueled, "fine").expect("an ordinary record fits its fuel");
    let started = Instant::now();
    let e = run(&mut fueled, "spin").expect_err("infinite loop, metered");
    assert_eq!(
        e,
        TransformError::OutOfFuel {
            transform: "tenant-fuel".into(),
            module: poison_path.clone(),
            fuel: 50_000_000
        }
    );
    assert_eq!(e.kind(), "out-of-fuel");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "fuel, not the deadline"
    );
    names(&e, "tenant-fuel", &poison_path);
    watch.still_flowing("infinite loop, metered");
    // A fuel limit on a host that counts no fuel is refused, not ignored.
    let unmetered = Engine::with_options(EngineOptions {
        fuel: false,
        ..EngineOptions::default()
    })
    .expect("engine");
    let e = Runner::new(
        unmetered
            .load_file(&module("tests/guests/poison"))
            .expect("load"),
        spec(
            "tenant-fuel",
            "{}",
            Limits {
                fuel_per_call: 1000,
                ..limits.clone()
            },
        ),
    )
    .expect_err("fuel without metering");
    assert!(e.to_string().contains("counts no fuel"), "{e}");

    let e = run(&mut a, "hog").expect_err("memory growth bomb");
    assert!(
        matches!(&e, TransformError::OutOfMemory { transform, limit_mb: 16, .. } if transform == "tenant-attacker"),
        "{e:?}"
    );
    names(&e, "tenant-attacker", &poison_path);
    watch.still_flowing("memory growth bomb");

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
    names(&e, "tenant-attacker", &poison_path);
    watch.still_flowing("stack overflow");

    let e = run(&mut a, "outbomb").expect_err("output bomb");
    assert!(
        matches!(&e, TransformError::Contract { message, .. } if message.contains("over the limit of 1000 per record"))
            || matches!(&e, TransformError::OutOfMemory { .. }),
        "{e:?}"
    );
    names(&e, "tenant-attacker", &poison_path);
    watch.still_flowing("output bomb");

    let e = run(&mut a, "bigvalue").expect_err("1 GiB value");
    assert!(
        matches!(&e, TransformError::OutOfMemory { limit_mb: 16, .. })
            || matches!(&e, TransformError::Trap { message, .. } if message.contains("memory allocation")),
        "{e:?}"
    );
    names(&e, "tenant-attacker", &poison_path);
    watch.still_flowing("1 GiB value");

    // The guest calls exit(3); WASI 0.2's `exit` carries only success or
    // failure, so the host sees exit(1).
    let e = run(&mut a, "selfexit").expect_err("exit from inside a call");
    assert!(
        matches!(&e, TransformError::Trap { message, .. } if message == "the guest called exit(1)"),
        "{e:?}"
    );
    names(&e, "tenant-attacker", &poison_path);
    watch.still_flowing("exit");

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
    watch.still_flowing("log flood");

    let out = run(&mut f, "lookupflood").expect("a lookup flood is cut, not fatal");
    assert_eq!(out.outputs.len(), 1);
    assert_eq!(f.usage().lookups, 1_500_000, "every lookup is counted");
    watch.still_flowing("lookup flood");

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
        matches!(&e, TransformError::Init { transform, message, .. } if transform == "tenant-init-trap" && message.contains("init trap asked for")),
        "{e:?}"
    );
    names(&e, "tenant-init-trap", &poison_path);
    watch.still_flowing("trap inside init");

    // Hand-written components that break the canonical ABI. The control: the
    // same component with an honest allocator and outcome count works.
    let honest = wat(
        &engine,
        "honest.wasm",
        Realloc::Bump,
        Process::Drops(1),
        &[],
    )
    .expect("load");
    let mut h = Runner::new(honest, spec("tenant-honest", "{}", limits.clone())).expect("init");
    let out = run(&mut h, "x").expect("the honest hand-written component works");
    assert_eq!(out.outcomes.len(), 1);
    let abi_cases: [(&str, Realloc, Process, &str); 7] = [
        (
            "realloc-out-of-bounds.wasm",
            Realloc::OutOfBounds,
            Process::Drops(1),
            "broke the canonical ABI: realloc return: beyond end of memory",
        ),
        (
            "realloc-huge.wasm",
            Realloc::Huge,
            Process::Drops(1),
            "broke the canonical ABI: realloc return: beyond end of memory",
        ),
        (
            "realloc-misaligned.wasm",
            Realloc::Misaligned,
            Process::Drops(1),
            "broke the canonical ABI: realloc return: result not aligned",
        ),
        (
            "more-outcomes.wasm",
            Realloc::Bump,
            Process::Drops(5),
            "returned 5 outcomes for 1 records",
        ),
        (
            "fewer-outcomes.wasm",
            Realloc::Bump,
            Process::Drops(0),
            "returned 0 outcomes for 1 records",
        ),
        (
            "huge-length.wasm",
            Realloc::Bump,
            Process::HugeLength,
            "broke the canonical ABI: list pointer/length out of bounds of memory",
        ),
        (
            "result-out-of-bounds.wasm",
            Realloc::Bump,
            Process::ResultOutOfBounds,
            "broke the canonical ABI: pointer out of bounds of memory",
        ),
    ];
    for (file, realloc, process, want) in abi_cases {
        let m = wat(&engine, file, realloc, process, &[]).expect("load");
        let mut r = Runner::new(m, spec("tenant-abi", "{}", limits.clone())).expect("init");
        let e = run(&mut r, "x").expect_err(file);
        assert!(
            matches!(&e, TransformError::Contract { message, .. } if message == want),
            "{file}: {e:?}"
        );
        names(&e, "tenant-abi", file);
        // The broken instance was discarded; the next batch gets a fresh one
        // (which breaks the same way: the module is at fault, not the data).
        assert!(run(&mut r, "x").is_err());
        assert_eq!(
            r.instantiations(),
            2,
            "{file}: a fresh instance per failed batch"
        );
        watch.still_flowing(file);
    }

    // Imports it was not granted: refused before it runs, naming the import.
    for (import, grant) in [
        ("wasi:filesystem/types@0.2.6", "`files`"),
        ("wasi:filesystem/preopens@0.2.6", "`files`"),
        ("wasi:clocks/wall-clock@0.2.6", "`wall_clock`"),
        ("wasi:clocks/monotonic-clock@0.2.6", "`monotonic_clock`"),
        ("wasi:random/random@0.2.6", "`random`"),
        ("wasi:sockets/tcp@0.2.6", "never granted"),
        ("wasi:sockets/ip-name-lookup@0.2.6", "never granted"),
    ] {
        let m = wat(
            &engine,
            "importer.wasm",
            Realloc::Bump,
            Process::Drops(1),
            &[import],
        )
        .expect("loads: links inert if asked");
        let e = Runner::new(m.clone(), spec("tenant-importer", "{}", limits.clone()))
            .expect_err(import);
        assert!(
            matches!(&e, TransformError::NotGranted { import: i, message, .. } if i == import && message.contains(grant)),
            "{import}: {e:?}"
        );
        assert_eq!(e.kind(), "not-granted");
        names(&e, "tenant-importer", "importer.wasm");
        // A language runtime's blanket import links when asked for, inert.
        let inert = InstanceSpec {
            grants: Grants {
                ungranted_wasi: Ungranted::Inert,
                ..Grants::default()
            },
            ..spec("tenant-runtime", "{}", limits.clone())
        };
        Runner::new(m, inert).unwrap_or_else(|e| panic!("{import} inert: {e}"));
        watch.still_flowing(import);
    }
    // What Sluice does not provide at all is refused at load, for everyone.
    for import in [
        "wasi:http/outgoing-handler@0.2.6",
        "acme:vault/secrets@1.0.0",
        "wasi:cli/environment@0.3.0",
    ] {
        let e = wat(
            &engine,
            "foreign.wasm",
            Realloc::Bump,
            Process::Drops(1),
            &[import],
        )
        .expect_err(import);
        assert!(
            matches!(&e, LoadError::WrongWorld { .. })
                && e.to_string().contains(&format!("`{import}`")),
            "{import}: {e}"
        );
        assert!(e.to_string().contains("foreign.wasm"), "{e}");
    }
    // The environment is a WASI basic: it links, and is empty (below).
    wat(
        &engine,
        "env.wasm",
        Realloc::Bump,
        Process::Drops(1),
        &["wasi:cli/environment@0.2.6"],
    )
    .map(|m| Runner::new(m, spec("tenant-env", "{}", limits.clone())))
    .expect("load")
    .expect("the environment links");
    watch.still_flowing("imports");

    // A guest that uses the file system, clocks and entropy: refused without
    // grants; with `ungranted_wasi = "inert"` it sees nothing.
    let ambient = engine
        .load_file(&module("tests/guests/ambient"))
        .expect("ambient guest");
    let e = Runner::new(ambient.clone(), spec("tenant-nosy", "{}", limits.clone()))
        .expect_err("ungranted imports");
    assert_eq!(e.kind(), "not-granted", "{e}");
    names(&e, "tenant-nosy", &ambient.path().display().to_string());
    let probe = |grants: Grants, tenant: &str, command: &str| -> serde_json::Value {
        let mut r = Runner::new(
            ambient.clone(),
            InstanceSpec {
                grants,
                ..spec(tenant, "{}", limits.clone())
            },
        )
        .unwrap_or_else(|e| panic!("{tenant}: {e}"));
        let out = run(&mut r, command).unwrap_or_else(|e| panic!("{command}: {e}"));
        serde_json::from_slice(out.outputs[0].record.value.as_deref().unwrap_or_default())
            .expect("json")
    };
    let inert = Grants {
        ungranted_wasi: Ungranted::Inert,
        ..Grants::default()
    };
    let clock = probe(inert.clone(), "tenant-inert", "clock");
    assert_eq!(
        clock["wall_secs"], 0,
        "the wall clock is frozen at the epoch: {clock}"
    );
    assert_eq!(
        clock["monotonic_advances"], false,
        "the monotonic clock is frozen: {clock}"
    );
    let env = probe(inert.clone(), "tenant-inert", "env");
    assert_eq!(
        (env["env"].as_u64(), env["args"].as_u64()),
        (Some(0), Some(0)),
        "{env}"
    );
    let (r1, r2) = (
        probe(inert.clone(), "tenant-inert-1", "random"),
        probe(inert.clone(), "tenant-inert-2", "random"),
    );
    assert_eq!(
        r1["random"], r2["random"],
        "no entropy: every instance gets the same bytes"
    );
    for command in ["list:/", "read:/etc/passwd", "list:."] {
        let seen = probe(inert.clone(), "tenant-inert", command);
        assert!(
            seen.get("error").is_some(),
            "{command} without a grant: {seen}"
        );
    }
    watch.still_flowing("ambient, inert");

    // Granted: one read-only directory, the clocks, entropy.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("ref")).expect("mkdir");
    std::fs::write(dir.path().join("ref/rates.csv"), "EUR,1.0\n").expect("write");
    std::fs::write(dir.path().join("secret.txt"), "outside the grant").expect("write");
    let granted = Grants {
        files: Some(dir.path().join("ref")),
        monotonic_clock: true,
        wall_clock: true,
        random: true,
        ..Grants::default()
    };
    let seen = probe(granted.clone(), "tenant-granted", "read:/data/rates.csv");
    assert_eq!(seen["read"], "EUR,1.0\n", "{seen}");
    let seen = probe(granted.clone(), "tenant-granted", "list:/data");
    assert_eq!(seen["entries"], serde_json::json!(["rates.csv"]), "{seen}");
    let seen = probe(granted.clone(), "tenant-granted", "write:/data/rates.csv");
    assert!(
        seen.get("error").is_some(),
        "the grant is read-only: {seen}"
    );
    let seen = probe(granted.clone(), "tenant-granted", "write:/data/new.txt");
    assert!(seen.get("error").is_some(), "no new files either: {seen}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ref/rates.csv")).expect("read"),
        "EUR,1.0\n"
    );
    assert!(!dir.path().join("ref/new.txt").exists());
    for escape in [
        "read:/data/../secret.txt",
        "read:/secret.txt",
        "read:/etc/passwd",
    ] {
        let seen = probe(granted.clone(), "tenant-granted", escape);
        assert!(
            seen.get("error").is_some(),
            "{escape} must not escape the grant: {seen}"
        );
    }
    let clock = probe(granted.clone(), "tenant-granted", "clock");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let wall = clock["wall_secs"].as_u64().unwrap_or(0);
    assert!(
        wall.abs_diff(now) < 60,
        "the granted wall clock is real: {clock}"
    );
    assert_eq!(clock["monotonic_advances"], true, "{clock}");
    let (r1, r2) = (
        probe(granted.clone(), "tenant-granted-1", "random"),
        probe(granted, "tenant-granted-2", "random"),
    );
    assert_ne!(
        r1["random"], r2["random"],
        "granted entropy differs per instance"
    );
    watch.still_flowing("ambient, granted");

    // Files that are not transforms: refused at load, naming the file.
    let other_world = wat::parse_str(
        r#"(component
  (core module $m
    (memory (export "memory") 1)
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 64))
    (func (export "init") (param i32 i32) (result i32) (i32.const 16))
    (func (export "process") (param i32) (result i32) (local.get 0)))
  (core instance $i (instantiate $m))
  (func (export "init") (param "config" string) (result (result (error string)))
    (canon lift (core func $i "init") (memory (core memory $i "memory")) (realloc (core func $i "cabi_realloc"))))
  (func (export "process") (param "n" u32) (result u32) (canon lift (core func $i "process")))
)"#,
    )
    .expect("wat");
    let not_transforms: [(&str, &[u8], &str); 4] = [
        (
            "notes.wasm",
            b"this is not wasm",
            "is not a WebAssembly file",
        ),
        (
            "core.wasm",
            b"\0asm\x01\0\0\0",
            "is a core WebAssembly module, not a component",
        ),
        (
            "empty.wasm",
            b"\0asm\x0d\0\x01\0",
            "missing exports `init`, `process`",
        ),
        (
            "other-world.wasm",
            &other_world,
            "does not implement the world `sluice:transform@0.1.0/transform`: type-checking export func `process`",
        ),
    ];
    for (file, bytes, want) in not_transforms {
        let e = engine.load_bytes(Path::new(file), bytes).expect_err(file);
        let text = e.to_string();
        assert!(text.contains(file) && text.contains(want), "{file}: {text}");
        eprintln!("refused: {text}");
        watch.still_flowing(file);
    }

    // A 200 MiB module is refused before it is read.
    let huge = dir.path().join("huge.wasm");
    let f = std::fs::File::create(&huge).expect("create");
    f.set_len(200 << 20).expect("size");
    let e = engine.load_file(&huge).expect_err("200 MiB module");
    assert!(
        matches!(&e, LoadError::TooLarge { size, limit, .. } if *size == 200 << 20 && *limit == 128 << 20),
        "{e:?}"
    );
    assert!(e.to_string().contains("huge.wasm"), "{e}");
    watch.still_flowing("200 MiB module");

    stop.store(true, Ordering::Relaxed);
    let attacked = attacked.join().expect("neighbour under attack");
    eprintln!(
        "neighbour p99 batch latency (100 records): alone {:?} over {} batches; while the attacker runs {:?} over {} batches",
        p99(alone.clone()),
        alone.len(),
        p99(attacked.clone()),
        attacked.len()
    );
}

fn values(n: usize, value: &str) -> Vec<String> {
    (0..n).map(|i| format!("{value}-{i}")).collect()
}

/// A batch in which every record loops: isolating it costs at most the
/// isolation budget (plus one deadline per group still pending), not one
/// deadline per record per split level; the few-poison case stays exact.
#[test]
fn isolating_a_batch_of_loops_is_bounded_by_the_budget_and_stays_exact_for_a_few() {
    let engine = Engine::new().expect("engine");
    let poison = engine
        .load_file(&module("tests/guests/poison"))
        .expect("poison guest");
    let limits = Limits {
        timeout_ms: 50,
        isolation_budget_ms: 1_000,
        ..Limits::default()
    };
    let mut r =
        Runner::new(poison.clone(), spec("tenant-loops", "{}", limits.clone())).expect("init");
    let all = values(200, "spin");
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let (recs, pos) = batch(&refs);
    let inputs: Vec<_> = recs.iter().zip(&pos).collect();
    let started = Instant::now();
    let (out, b) = r.process_isolating(&inputs).expect("isolated");
    let took = started.elapsed();
    println!(
        "200 looping records, 50 ms deadline, 1 s budget: {} calls in {took:?} ({} isolated, {} not)",
        b.extra_calls + 1,
        b.isolated,
        b.not_isolated
    );
    assert_eq!(out.outcomes.len(), 200);
    assert!(out.outcomes.iter().all(|o| matches!(o, Outcome::Fail(_))));
    assert_eq!(b.isolated + b.not_isolated, 200);
    assert!(b.not_isolated > 0, "the budget cut isolation short");
    // Without a budget: 399 calls. With it: what fits in the budget (about
    // 20 deadlines) plus at most one call per pending group (⌈log2 200⌉).
    assert!(b.extra_calls < 60, "{} calls", b.extra_calls + 1);
    let note = out
        .outcomes
        .iter()
        .find_map(|o| match o {
            Outcome::Fail(f) if f.message.contains("not isolated") => Some(f.message.clone()),
            _ => None,
        })
        .expect("a record that says it was not isolated");
    assert!(
        note.contains("exceeded its deadline of 50 ms")
            && note.contains("isolation budget of 1000 ms was spent"),
        "{note}"
    );

    // Two loops in 100: exact.
    let mut few = values(100, "fine");
    few[17] = "spin-a".into();
    few[80] = "spin-b".into();
    let refs: Vec<&str> = few.iter().map(String::as_str).collect();
    let (recs, pos) = batch(&refs);
    let inputs: Vec<_> = recs.iter().zip(&pos).collect();
    let (out, b) = r.process_isolating(&inputs).expect("isolated");
    assert_eq!((b.isolated, b.not_isolated), (2, 0));
    for (i, o) in out.outcomes.iter().enumerate() {
        assert_eq!(
            matches!(o, Outcome::Fail(_)),
            i == 17 || i == 80,
            "record {i}"
        );
    }

    // The caller (the pipeline's circuit breaker) stops isolating at once.
    let all = values(64, "boom");
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let (recs, pos) = batch(&refs);
    let inputs: Vec<_> = recs.iter().zip(&pos).collect();
    let (out, b) = r
        .process_isolating_with(&inputs, &mut |failed| failed >= 3)
        .expect("isolated");
    assert_eq!(out.outcomes.len(), 64);
    // Stopped after the third failure: the groups still pending are tried
    // once each (a group of one that fails is isolated all the same).
    assert!((3..=3 + 6).contains(&b.isolated), "{b:?}");
    assert_eq!(b.isolated + b.not_isolated, 64, "{b:?}");
    assert!(b.extra_calls < 20, "{} calls", b.extra_calls + 1);
    assert!(
        out.outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Fail(f) if f.message.contains("circuit breaker opened")))
    );
}

/// What a metric adds for a runner: instantiations and failed calls since it
/// last asked, so that a runner outliving a session is never counted twice.
#[test]
fn a_runner_hands_over_its_failures_and_instantiations_once() {
    let engine = Engine::new().expect("engine");
    let m = engine
        .load_file(&module("tests/guests/poison"))
        .expect("poison");
    let mut r = Runner::new(m, spec("counted", "{}", Limits::default())).expect("init");
    assert!(run(&mut r, "boom").is_err());
    assert!(run(&mut r, "boom").is_err());
    assert!(run(&mut r, "{\"ok\":1}").is_ok());
    let (instantiations, errors) = r.take_unreported();
    // The first instance, and one after each trap.
    assert_eq!(instantiations, 3);
    assert_eq!(errors.get("trap"), Some(&2), "{errors:?}");
    assert_eq!(
        r.take_unreported(),
        (0, Default::default()),
        "handed over once"
    );
    assert_eq!(r.errors().get("trap"), Some(&2), "the totals stay");
}

/// Tainted 64-byte blocks the poison guest's `peek` reports.
fn peek(r: &mut Runner) -> u64 {
    let out = run(r, "peek").expect("peek");
    let value: serde_json::Value =
        serde_json::from_slice(out.outputs[0].record.value.as_deref().expect("peek output"))
            .expect("peek json");
    value["tainted"].as_u64().expect("tainted count")
}

/// Tenants share the instance pool's slots: whatever the pool does to make
/// a slot ready again (pages reset in place with `PAGEMAP_SCAN`, or given
/// back to the kernel), an instance never reads what the previous one in its
/// slot wrote — after a trap or after its runner ends. One slot, so the next
/// instance is in the same slot; the same instance reading its own writes is
/// the control that the probe sees what is there.
#[test]
fn an_instance_never_reads_what_the_last_one_in_its_slot_wrote() {
    for keep_resident in [true, false] {
        let engine = Engine::with_options(EngineOptions {
            slots: 1,
            keep_resident,
            ..EngineOptions::default()
        })
        .expect("engine");
        assert!(engine.pooled(), "the test needs the pool");
        println!("reset: {:?}", engine.resident());
        let m = engine
            .load_file(&module("tests/guests/poison"))
            .expect("poison");
        let mut r = Runner::new(m.clone(), spec("tainter", "{}", Limits::default())).expect("init");
        let before = peek(&mut r);
        run(&mut r, "taint").expect("taint");
        let own = peek(&mut r);
        // 4 MiB of taint: 65,536 blocks (one may straddle the vector's ends).
        assert!(
            own >= before + (4 << 20) / 64 - 1,
            "the probe must see the instance's own taint: {before} -> {own}"
        );
        run(&mut r, "taint").expect("taint");
        assert!(run(&mut r, "boom").is_err(), "the trap ends the instance");
        assert_eq!(peek(&mut r), 0, "after a trap ({:?})", engine.resident());
        assert_eq!(r.instantiations(), 2);
        run(&mut r, "taint").expect("taint");
        drop(r);
        let mut next = Runner::new(m, spec("reader", "{}", Limits::default())).expect("init");
        assert_eq!(
            peek(&mut next),
            0,
            "after the runner ended ({:?})",
            engine.resident()
        );
    }
}
