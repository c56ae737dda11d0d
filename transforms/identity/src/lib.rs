//! `identity`: emits every record unchanged. The baseline of the benches and
//! the smallest possible transform.

use sluice_guest::{Config, Emit, Error, Output, Record, Transform, export_transform};

/// Emits each input as is.
pub struct Identity;

impl Transform for Identity {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Identity)
    }

    fn process(&mut self, record: &Record<'_>, out: &mut Emit<'_>) -> Result<(), Error> {
        out.emit(&Output::from_record(record));
        Ok(())
    }
}

export_transform!(Identity);
