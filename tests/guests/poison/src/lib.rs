//! A hostile test guest. Passes records through unchanged, except records
//! whose value contains:
//! - `boom`: panics (a trap, with the panic message logged by the SDK);
//! - `spin`: loops forever (the host's deadline must stop it);
//! - `hog`: grows memory without bound (the host's memory limit must stop it);
//! - `fail`: fails the record normally (`kind: poison`).
//!   Config `{"init_error": "..."}` makes `init` fail with that message.

use sluice_guest::{Config, Emit, Error, Output, Record, Transform, export_transform};

/// The hostile transform.
pub struct Poison;

impl Transform for Poison {
    fn init(config: Config) -> Result<Self, String> {
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
        if has(b"fail") {
            return Err(Error::new("poison", "record asked to fail"));
        }
        out.emit(&Output::from_record(record));
        Ok(())
    }
}

export_transform!(Poison);
