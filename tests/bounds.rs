//! What a guest can make the host copy or keep: strings it hands back are
//! cut before they are copied, aliased buffers are not multiplied, output
//! names are checked, overlapping spans count toward the output limit, and
//! log lines are released after each batch.
//!
//! Attackers are hand-written components (`sluice_e2e::wat_guest::Raw`,
//! which return exactly the memory layout a test describes) and the Rust
//! poison guest. Each test prints the host's resident memory before and
//! after; the tests run one at a time (a lock), so that the figures are the
//! attack's own.

use sluice::engine::{Engine, Limits, Module, Outcome, Runner, TransformError};
use sluice::record::{Partition, Position, Record};
use sluice_e2e::wat_guest::{Raw, Span};
use sluice_e2e::{module, spec};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

const ABSENT: u32 = u32::MAX;

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resident memory of this process, in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn inputs(n: usize, value: &str) -> (Vec<Record>, Vec<Position>) {
    let part = Partition {
        stream: Arc::from("bounds"),
        partition: 0,
    };
    (
        (0..n)
            .map(|_| Record::from_value(value.as_bytes().to_vec()))
            .collect(),
        (0..n)
            .map(|i| Position {
                partition: part.clone(),
                offset: i as i64,
            })
            .collect(),
    )
}

fn load(engine: &Engine, name: &str, bytes: &[u8]) -> Arc<Module> {
    engine
        .load_bytes(Path::new(name), bytes)
        .unwrap_or_else(|e| panic!("{name} loads: {e}"))
}

/// The ten lists of `ok(outcomes)` for inputs that all emit: `ends` are
/// the running totals of outputs per input; every output's value is the
/// whole `arena` (so spans overlap when there are several), with no key,
/// headers or timestamp, sent to output `slot` of `names`.
fn emitting(raw: &mut Raw, ends: &[u32], names: Span, arena: Span, slot: u32) -> [Span; 10] {
    let outs = ends.last().copied().unwrap_or(0) as usize;
    let kinds = raw.bytes(&vec![0u8; ends.len()]); // emit
    let ends = raw.u32s(ends);
    let spans = raw.u32s(&[0, ABSENT, 0, arena.1].repeat(outs));
    let timestamps = raw.i64s(&vec![i64::MIN; outs]);
    let header_ends = raw.u32s(&vec![0; outs]);
    let index = raw.u32s(&vec![slot; outs]);
    [
        kinds,
        ends,
        (0, 0),
        names,
        arena,
        spans,
        timestamps,
        header_ends,
        (0, 0),
        index,
    ]
}

fn limits(memory_mb: u32) -> Limits {
    Limits {
        memory_mb,
        ..Limits::default()
    }
}

/// One batch of `n` records, each failing with a message that aliases one
/// 16 MiB buffer (1,000 × 16 MiB if copied each time).
#[test]
fn failures_aliasing_one_huge_buffer_are_cut_before_they_are_copied() {
    let _one = one_at_a_time();
    let n = 1000usize;
    let mut raw = Raw::new(32);
    let kinds = raw.bytes(&vec![2u8; n]); // fail
    let ends = raw.u32s(&vec![0; n]);
    let kind = raw.bytes(b"poison");
    let big = raw.filled(8 << 20, b'm', 16 << 20);
    let failures = raw.failures(&vec![(kind, big); n]);
    let empty = raw.bytes(b"");
    let names = raw.spans(&[(empty.0, 0)]);
    let bytes = raw.ok([
        kinds,
        ends,
        failures,
        names,
        (0, 0),
        (0, 0),
        (0, 0),
        (0, 0),
        (0, 0),
        (0, 0),
    ]);
    let engine = Engine::new().expect("engine");
    let m = load(&engine, "alias-failures.wasm", &bytes);
    let mut r = Runner::new(m, spec("tenant-alias", "{}", limits(32))).expect("init");
    let (recs, pos) = inputs(n, "{}");
    let batch: Vec<_> = recs.iter().zip(&pos).collect();
    let before = rss_mib();
    let out = r.process(&batch).expect("a valid batch of failures");
    let after = rss_mib();
    println!("1,000 failures aliasing a 16 MiB message: host RSS {before:.0} → {after:.0} MiB");
    assert_eq!(out.outcomes.len(), n);
    for o in &out.outcomes {
        let Outcome::Fail(f) = o else {
            panic!("every record failed: {o:?}")
        };
        assert_eq!(f.kind, "poison");
        assert!(
            f.message.len() < 4096 + 64 && f.message.contains("cut: 16777216 bytes in all"),
            "cut to the text cap and says so: {} bytes",
            f.message.len()
        );
    }
    assert!(
        after - before < 200.0,
        "the host copied about 4 MiB, not 16 GiB: RSS grew {:.0} MiB",
        after - before
    );
}

/// A whole-batch error of 16 MiB, for a batch of 40 records: bisection
/// fails every record on its own, each with the error's message.
#[test]
fn a_huge_batch_error_is_cut_before_it_is_copied_and_not_multiplied() {
    let _one = one_at_a_time();
    let mut raw = Raw::new(32);
    let message = raw.filled(8 << 20, b'e', 16 << 20);
    let bytes = raw.err(message);
    let engine = Engine::new().expect("engine");
    let m = load(&engine, "batch-error.wasm", &bytes);
    let mut r = Runner::new(m, spec("tenant-batch-error", "{}", limits(32))).expect("init");
    let (recs, pos) = inputs(40, "{}");
    let batch: Vec<_> = recs.iter().zip(&pos).collect();
    let before = rss_mib();
    let (out, bisection) = r.process_isolating(&batch).expect("isolated");
    let after = rss_mib();
    let kept: usize = out
        .outcomes
        .iter()
        .map(|o| match o {
            Outcome::Fail(f) => f.message.len(),
            _ => 0,
        })
        .sum();
    println!(
        "a 16 MiB batch error over 40 records: {} calls, {kept} bytes of messages kept, host RSS {before:.0} → {after:.0} MiB",
        bisection.extra_calls + 1
    );
    assert_eq!(bisection.isolated, 40);
    for o in &out.outcomes {
        let Outcome::Fail(f) = o else {
            panic!("every record failed: {o:?}")
        };
        assert!(
            f.message.len() < 4096 + 256 && f.message.contains("cut: 16777216 bytes in all"),
            "{} bytes",
            f.message.len()
        );
    }
    assert!(kept < 40 * (4096 + 256), "{kept} bytes kept");
}

/// One output name of 256 KiB used by every output: refused as a broken
/// contract (it is no name), not copied into every dead-letter entry.
#[test]
fn an_output_name_that_is_no_name_is_refused_at_the_boundary() {
    let _one = one_at_a_time();
    let n = 10usize;
    let mut raw = Raw::new(8);
    let long = raw.filled(1 << 20, b'a', 256 << 10);
    let empty = raw.bytes(b"");
    let names = raw.spans(&[(empty.0, 0), long]);
    let arena = raw.bytes(b"{}");
    let ends: Vec<u32> = (1..=n as u32).collect();
    let lists = emitting(&mut raw, &ends, names, arena, 1);
    let bytes = raw.ok(lists);
    let engine = Engine::new().expect("engine");
    let m = load(&engine, "long-name.wasm", &bytes);
    let mut r = Runner::new(m, spec("tenant-long-name", "{}", limits(8))).expect("init");
    let (recs, pos) = inputs(n, "{}");
    let batch: Vec<_> = recs.iter().zip(&pos).collect();
    let e = r.process(&batch).expect_err("refused");
    let TransformError::Contract { message, .. } = &e else {
        panic!("a contract error: {e}")
    };
    assert!(
        message.contains("output name 1")
            && message.contains("262144 bytes")
            && message.len() < 512,
        "{message}"
    );
}

/// 100 outputs whose spans all point at one 4 MiB slice of the arena: 400
/// MiB to write, over an 8 MiB output limit.
#[test]
fn overlapping_spans_count_toward_the_output_limit() {
    let _one = one_at_a_time();
    let outs = 100usize;
    let mut raw = Raw::new(16);
    let empty = raw.bytes(b"");
    let names = raw.spans(&[(empty.0, 0)]);
    let arena = raw.filled(1 << 20, b'7', 4 << 20);
    let lists = emitting(&mut raw, &[outs as u32], names, arena, 0);
    let bytes = raw.ok(lists);
    let engine = Engine::new().expect("engine");
    let m = load(&engine, "overlap.wasm", &bytes);
    let l = Limits {
        max_output_mb: 8,
        ..limits(16)
    };
    let mut r = Runner::new(m, spec("tenant-overlap", "{}", l)).expect("init");
    let (recs, pos) = inputs(1, "{}");
    let batch: Vec<_> = recs.iter().zip(&pos).collect();
    let e = r.process(&batch).expect_err("over the output limit");
    assert!(
        e.to_string()
            .contains("over the limit of 8 MiB of output per batch"),
        "{e}"
    );
}

/// 100 log lines of 2 MiB per batch, 8 batches: each line is cut to the
/// text cap before it is copied, and nothing is kept after a batch.
#[test]
fn big_log_lines_are_cut_and_released_after_each_batch() {
    let _one = one_at_a_time();
    let engine = Engine::new().expect("engine");
    let poison = engine
        .load_file(&module("tests/guests/poison"))
        .expect("poison guest");
    let mut r = Runner::new(poison, spec("tenant-logs", "{}", limits(64))).expect("init");
    let (recs, pos) = inputs(1, "logbig");
    let batch: Vec<_> = recs.iter().zip(&pos).collect();
    r.process(&batch).expect("first batch");
    let before = rss_mib();
    let mut figures = vec![format!("{before:.0}")];
    for i in 1..=8 {
        r.process(&batch).expect("batch");
        if i % 2 == 0 {
            figures.push(format!("{:.0}", rss_mib()));
        }
        assert_eq!(r.usage().logs, 100, "the lines were written");
    }
    let after = rss_mib();
    println!(
        "8 batches of 100 log lines of 2 MiB: host RSS after 0, 2, 4, 6, 8 batches: {} MiB",
        figures.join(" → ")
    );
    assert!(r.take_logs().is_empty(), "a pipeline keeps no lines");
    assert!(
        after - before < 64.0,
        "resident memory grew {:.0} MiB",
        after - before
    );

    // The fixture runner captures them: at most the batch's lines, each cut.
    r.capture_logs(true);
    r.process(&batch).expect("batch");
    let lines = r.take_logs();
    assert_eq!(lines.len(), 100);
    assert!(
        lines
            .iter()
            .all(|l| l.message.len() < 4096 + 64 && l.message.contains("cut: 2097152 bytes")),
        "each line is cut to the text cap"
    );
    let (quiet, quiet_pos) = inputs(1, "{}");
    let quiet: Vec<_> = quiet.iter().zip(&quiet_pos).collect();
    r.process(&quiet).expect("quiet batch");
    assert!(
        r.take_logs().is_empty(),
        "lines of an earlier batch are gone"
    );
}
