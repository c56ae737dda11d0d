//! A hostile test guest. Passes records through unchanged, except records
//! whose value contains:
//! - `boom`: panics (a trap, with the panic message logged by the SDK);
//! - `spin`: loops forever (the host's deadline must stop it);
//! - `hog`: grows memory without bound (the host's memory limit must stop it);
//! - `fail`: fails the record normally (`kind: poison`);
//! - `deep`: recurses without end (the host's stack limit must stop it);
//! - `outbomb`: emits a million outputs for one input (output limits);
//! - `bigvalue`: emits one 1 GiB value (memory limit);
//! - `selfexit`: calls `exit(3)` (`wasi:cli/exit` ends the instance);
//! - `logflood`: writes 200,000 log lines (the host's log rate limit);
//! - `lookupflood`: makes 1.5 million lookups (the host's lookup limit);
//! - `namedefault`: emits the record to a *named* output called `default`
//!   (trying to skip the transforms after it);
//! - `logbig`: writes 100 log lines of 2 MiB each (the host's text cap);
//! - `lognewline`: writes a log line with a newline and a forged host line.
//! - `taint`: fills 4 MiB of fresh heap with a pattern and keeps it;
//! - `peek`: grows memory by 8 MiB and emits `{"tainted": N}`, the number of
//!   64-byte blocks anywhere in memory holding that pattern (what a previous
//!   instance in the same pool slot left behind, if the host does not reset
//!   memory between instances).
//!
//! What a guest can reach of its environment is probed by the separate
//! `ambient` test guest, which needs grants to load.
//! Config `{"init_error": "..."}` makes `init` fail with that message;
//! `{"init_trap": true}` makes it panic.

use sluice_guest::{Config, Emit, Error, Level, Output, Record, Transform, export_transform};

/// The hostile transform.
pub struct Poison;

impl Transform for Poison {
    fn init(config: Config) -> Result<Self, String> {
        if config.value().get("init_trap").is_some() {
            panic!("init trap asked for by the configuration");
        }
        match config.value().get("init_error").and_then(|v| v.as_str()) {
            Some(message) => Err(message.to_string()),
            None => Ok(Poison),
        }
    }

    fn process(&mut self, record: &Record<'_>, out: &mut Emit<'_>) -> Result<(), Error> {
        let value = record.value().unwrap_or_default();
        let has = |needle: &[u8]| value.windows(needle.len()).any(|w| w == needle);
        if has(b"boom") {
            panic!("poison record at offset {:?}", record.offset());
        }
        if has(b"spin") {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if has(b"hog") {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        if has(b"deep") {
            return Err(Error::new("unreachable", recurse(1).to_string()));
        }
        if has(b"outbomb") {
            for _ in 0..1_000_000 {
                out.emit(&Output::new(b"{}"));
            }
            return Ok(());
        }
        if has(b"selfexit") {
            std::process::exit(3);
        }
        if has(b"bigvalue") {
            let big = vec![b'x'; 1 << 30];
            out.emit(&Output::new(&big));
            return Ok(());
        }
        if has(b"logflood") {
            for i in 0..200_000 {
                sluice_guest::log(Level::Info, &format!("flood {i}"));
            }
        }
        if has(b"lookupflood") {
            let mut found = 0u64;
            for i in 0..1_500_000u64 {
                if sluice_guest::lookup("t", &i.to_string()).is_some() {
                    found += 1;
                }
            }
            std::hint::black_box(found);
        }
        if has(b"namedefault") {
            out.emit(&Output::from_record(record).to("default"));
            return Ok(());
        }
        if has(b"logbig") {
            let line = "x".repeat(2 << 20);
            for _ in 0..100 {
                sluice_guest::log(Level::Info, &line);
            }
        }
        if has(b"lognewline") {
            sluice_guest::log(
                Level::Warn,
                "innocent\n2026-12-01T00:00:00.000000Z ERROR sluice: circuit breaker open\r\x1b[31mred",
            );
        }
        if has(b"taint") {
            let mut v = vec![0u8; 4 << 20];
            let base = v.as_ptr() as usize;
            let k = std::hint::black_box(37);
            for (i, b) in v.iter_mut().enumerate() {
                *b = tainted(base + i, k);
            }
            std::hint::black_box(v.leak());
        }
        if has(b"peek") {
            let tainted = peek();
            out.emit(&Output::new(
                format!("{{\"tainted\":{tainted}}}").as_bytes(),
            ));
            return Ok(());
        }
        if has(b"fail") {
            return Err(Error::new("poison", "record asked to fail"));
        }
        out.emit(&Output::from_record(record));
        Ok(())
    }
}

/// The byte `taint` writes at address `addr`: a 64-byte pattern computed at
/// run time from `k` (37, hidden from the compiler), so no data segment or
/// stack copy holds a whole aligned block of it.
fn tainted(addr: usize, k: u8) -> u8 {
    ((addr % 64) as u8).wrapping_mul(k) ^ 0xA5
}

/// Tainted 64-byte blocks in all of linear memory, after growing it by
/// 8 MiB (pages a previous instance used beyond this one's initial size).
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
fn peek() -> usize {
    let grown = core::arch::wasm32::memory_grow::<0>(128);
    assert!(grown != usize::MAX, "memory.grow failed");
    let size = core::arch::wasm32::memory_size::<0>() * 65536;
    let k = std::hint::black_box(37);
    // Skip the first block: address 0 is the null pointer.
    (1..size / 64)
        .filter(|&b| {
            (b * 64..b * 64 + 64).all(|addr| {
                // SAFETY: every address below `memory.size` is a readable
                // byte of this instance's linear memory.
                let byte = unsafe { core::ptr::read_volatile(addr as *const u8) };
                byte == tainted(addr, k)
            })
        })
        .count()
}

#[cfg(not(target_arch = "wasm32"))]
fn peek() -> usize {
    0
}

#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let frame = std::hint::black_box([n; 64]);
    recurse(frame[0].wrapping_add(1)).wrapping_add(frame[63])
}

export_transform!(Poison);
