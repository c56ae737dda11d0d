//! A test guest that reports what it can reach, so the host's grants can be
//! checked from the outside. Each input record's value is a command; the
//! output is a JSON object describing what the guest saw:
//!
//! - `clock`: `{"wall_secs": .., "monotonic_advances": bool}`;
//! - `random`: `{"random": "<32 hex digits>"}` from `getentropy`
//!   (`wasi:random/random`);
//! - `env`: `{"env": n, "args": n}`;
//! - `read:<path>`: `{"read": "<content>"}` or `{"error": ".."}`;
//! - `write:<path>`: `{"written": true}` or `{"error": ".."}`;
//! - `list:<path>`: `{"entries": [..]}` or `{"error": ".."}`.
//!
//! It imports `wasi:filesystem/*`, both clocks and `wasi:random/random`, so
//! a host that grants none of these refuses it before it runs.

use serde_json::json;
use sluice_guest::{Config, Emit, Error, Output, Record, Transform, export_transform};

/// The probing transform.
pub struct Ambient;

impl Transform for Ambient {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Ambient)
    }

    fn process(&mut self, record: &Record<'_>, out: &mut Emit<'_>) -> Result<(), Error> {
        let command = std::str::from_utf8(record.value().unwrap_or_default())
            .map_err(|e| Error::new("invalid-input", e.to_string()))?;
        let seen = match command.split_once(':') {
            Some(("read", path)) => match std::fs::read_to_string(path) {
                Ok(text) => json!({ "read": text }),
                Err(e) => json!({ "error": e.to_string() }),
            },
            Some(("write", path)) => match std::fs::write(path, b"tampered") {
                Ok(()) => json!({ "written": true }),
                Err(e) => json!({ "error": e.to_string() }),
            },
            Some(("list", path)) => match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut names: Vec<String> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    names.sort();
                    json!({ "entries": names })
                }
                Err(e) => json!({ "error": e.to_string() }),
            },
            _ => match command {
                "clock" => {
                    let wall = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let start = std::time::Instant::now();
                    let mut n = 0u64;
                    while start.elapsed().is_zero() && n < 100_000 {
                        n = std::hint::black_box(n + 1);
                    }
                    json!({ "wall_secs": wall, "monotonic_advances": !start.elapsed().is_zero() })
                }
                "random" => {
                    let mut buf = [0u8; 16];
                    let ok = entropy(&mut buf);
                    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
                    json!({ "random": hex, "ok": ok })
                }
                "env" => {
                    json!({ "env": std::env::vars().count(), "args": std::env::args().count() })
                }
                other => {
                    return Err(Error::new(
                        "invalid-input",
                        format!("unknown command `{other}`"),
                    ));
                }
            },
        };
        out.emit(&Output::new(seen.to_string().as_bytes()));
        Ok(())
    }
}

/// `getentropy` from wasi-libc, which reads `wasi:random/random`.
#[allow(unsafe_code)]
fn entropy(buf: &mut [u8; 16]) -> bool {
    unsafe extern "C" {
        fn getentropy(buf: *mut u8, len: usize) -> i32;
    }
    // SAFETY: `buf` is valid for writes of its length, at most 256 bytes.
    unsafe { getentropy(buf.as_mut_ptr(), buf.len()) == 0 }
}

export_transform!(Ambient);
