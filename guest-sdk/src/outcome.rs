//! Write side: outcomes and output records, encoded straight into the
//! columnar form the host reads.

use crate::__bindings::sluice::transform::types::{Failure, OutcomeKind, Outcomes as WireOutcomes};
use crate::Error;
use crate::batch::{ABSENT, NO_TIMESTAMP};

/// The outcomes of one batch, built in input order.
pub struct Outcomes {
    wire: WireOutcomes,
}

impl Default for Outcomes {
    fn default() -> Self {
        Self::new()
    }
}

impl Outcomes {
    /// An empty set of outcomes.
    pub fn new() -> Self {
        Outcomes {
            wire: WireOutcomes {
                kinds: Vec::new(),
                output_ends: Vec::new(),
                failures: Vec::new(),
                output_names: vec![String::new()],
                arena: Vec::new(),
                spans: Vec::new(),
                timestamps: Vec::new(),
                header_ends: Vec::new(),
                header_spans: Vec::new(),
                output_index: Vec::new(),
            },
        }
    }

    /// An empty set of outcomes with room for `records` outcomes of one
    /// output each and `bytes` of output data (no growth on the way for a
    /// batch that emits about what it reads).
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        let mut o = Outcomes::new();
        let w = &mut o.wire;
        w.kinds.reserve(records);
        w.output_ends.reserve(records);
        w.arena.reserve(bytes);
        w.spans.reserve(records * 4);
        w.timestamps.reserve(records);
        w.header_ends.reserve(records);
        w.output_index.reserve(records);
        o
    }

    /// Starts the outcome of the next input record. Emit outputs through the
    /// returned [`Emit`], then call [`Emit::finish`] (or drop it: no outputs
    /// means the record is dropped, some outputs means they are emitted).
    pub fn record(&mut self) -> Emit<'_> {
        let first_output = self.wire.timestamps.len();
        let arena_mark = self.wire.arena.len();
        let header_mark = self.wire.header_spans.len();
        Emit {
            outcomes: self,
            first_output,
            arena_mark,
            header_mark,
            finished: false,
        }
    }

    /// Number of outcomes recorded so far.
    pub fn len(&self) -> usize {
        self.wire.kinds.len()
    }

    /// Whether no outcome was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.wire.kinds.is_empty()
    }

    /// Fails the next input record without emitting anything.
    pub fn fail(&mut self, error: Error) {
        self.record().finish(Err(error));
    }

    /// Drops the next input record.
    pub fn drop_record(&mut self) {
        self.record().finish(Ok(()));
    }

    pub(crate) fn into_wire(self) -> WireOutcomes {
        self.wire
    }

    fn output_slot(&mut self, name: Option<&str>) -> u32 {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return 0;
        };
        match self.wire.output_names.iter().position(|n| n == name) {
            Some(i) => i as u32,
            None => {
                self.wire.output_names.push(name.to_string());
                (self.wire.output_names.len() - 1) as u32
            }
        }
    }

    fn push_bytes(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            Some(b) => {
                self.wire.spans.push(self.wire.arena.len() as u32);
                self.wire.spans.push(b.len() as u32);
                self.wire.arena.extend_from_slice(b);
            }
            None => {
                self.wire.spans.push(0);
                self.wire.spans.push(ABSENT);
            }
        }
    }

    fn push_header(&mut self, name: &str, value: &[u8]) {
        self.wire.header_spans.push(self.wire.arena.len() as u32);
        self.wire.header_spans.push(name.len() as u32);
        self.wire.arena.extend_from_slice(name.as_bytes());
        self.wire.header_spans.push(self.wire.arena.len() as u32);
        self.wire.header_spans.push(value.len() as u32);
        self.wire.arena.extend_from_slice(value);
    }

    fn push_output(&mut self, output: &Output<'_>) {
        let slot = self.output_slot(output.output);
        self.push_bytes(output.key);
        self.push_bytes(output.value);
        for (name, value) in &output.headers {
            self.push_header(name, value);
        }
        self.wire
            .header_ends
            .push((self.wire.header_spans.len() / 4) as u32);
        self.wire
            .timestamps
            .push(output.timestamp.unwrap_or(NO_TIMESTAMP));
        self.wire.output_index.push(slot);
    }
}

/// One output record to emit: borrows its bytes, which are copied when emitted.
#[derive(Debug, Clone, Default)]
pub struct Output<'a> {
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: Vec<(&'a str, &'a [u8])>,
    timestamp: Option<i64>,
    output: Option<&'a str>,
}

impl<'a> Output<'a> {
    /// An output record with this value, no key, no headers, the input's timestamp.
    pub fn new(value: &'a [u8]) -> Self {
        Output {
            value: Some(value),
            ..Default::default()
        }
    }

    /// A copy of an input record (key, value, headers, timestamp).
    pub fn from_record(record: &crate::Record<'a>) -> Self {
        Output {
            key: record.key(),
            value: record.value(),
            headers: record.headers().map(|h| (h.name, h.value)).collect(),
            timestamp: record.timestamp(),
            output: None,
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: &'a [u8]) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets the value.
    pub fn value(mut self, value: &'a [u8]) -> Self {
        self.value = Some(value);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &'a str, value: &'a [u8]) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Sets the event time (ms since the epoch); by default the output keeps
    /// the timestamp of its input.
    pub fn timestamp(mut self, millis: i64) -> Self {
        self.timestamp = Some(millis);
        self
    }

    /// Sends the record to a named output (e.g. `alerts`) instead of the
    /// default output. A name is 1 to 64 ASCII letters, digits, `_`, `-` or
    /// `.`; `default` is reserved (the default output, which feeds the next
    /// transform, is reached by not naming one): the host fails the batch's
    /// records that use any other name as a broken contract.
    pub fn to(mut self, output: &'a str) -> Self {
        self.output = Some(output);
        self
    }
}

/// Emits the outputs of one input record.
pub struct Emit<'o> {
    outcomes: &'o mut Outcomes,
    first_output: usize,
    arena_mark: usize,
    header_mark: usize,
    finished: bool,
}

impl<'o> Emit<'o> {
    /// Emits a record with this value to the default output.
    pub fn value(&mut self, value: &[u8]) {
        self.emit(&Output::new(value));
    }

    /// Serializes `value` as JSON and emits it to the default output.
    pub fn json<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.json_to(None, value)
    }

    /// Serializes `value` as JSON and emits it to the named output.
    pub fn json_to<T: serde::Serialize + ?Sized>(
        &mut self,
        output: Option<&str>,
        value: &T,
    ) -> Result<(), Error> {
        let o = &mut *self.outcomes;
        let slot = o.output_slot(output);
        let start = o.wire.arena.len();
        if let Err(e) = serde_json::to_writer(&mut o.wire.arena, value) {
            o.wire.arena.truncate(start);
            return Err(Error::internal(format!(
                "cannot serialize output as JSON: {e}"
            )));
        }
        let len = o.wire.arena.len() - start;
        o.wire
            .spans
            .extend_from_slice(&[0, ABSENT, start as u32, len as u32]);
        o.wire
            .header_ends
            .push((o.wire.header_spans.len() / 4) as u32);
        o.wire.timestamps.push(NO_TIMESTAMP);
        o.wire.output_index.push(slot);
        Ok(())
    }

    /// Serializes `value` as JSON and emits it to the default output with
    /// the key, headers and timestamp of `record` (usually the input): the
    /// one call for "the same record, new JSON value".
    pub fn json_from<T: serde::Serialize + ?Sized>(
        &mut self,
        record: &crate::Record<'_>,
        value: &T,
    ) -> Result<(), Error> {
        self.write_from(record, |buf| {
            serde_json::to_writer(buf, value)
                .map(|()| true)
                .map_err(|e| Error::internal(format!("cannot serialize output as JSON: {e}")))
        })
        .map(|_| ())
    }

    /// Emits a value that `write` appends to the buffer it is given, to the
    /// default output, with the key, headers and timestamp of `record`
    /// (usually the input). The bytes are written straight into the batch's
    /// outcomes (no buffer of their own); `Ok(false)` emits nothing, an error
    /// emits nothing and is returned.
    pub fn write_from<E>(
        &mut self,
        record: &crate::Record<'_>,
        write: impl FnOnce(&mut Vec<u8>) -> Result<bool, E>,
    ) -> Result<bool, E> {
        let o = &mut *self.outcomes;
        let start = o.wire.arena.len();
        match write(&mut o.wire.arena) {
            Ok(true) => {}
            other => {
                o.wire.arena.truncate(start);
                return other;
            }
        }
        let len = o.wire.arena.len() - start;
        o.push_bytes(record.key());
        o.wire.spans.extend_from_slice(&[start as u32, len as u32]);
        for h in record.headers() {
            o.push_header(h.name, h.value);
        }
        o.wire
            .header_ends
            .push((o.wire.header_spans.len() / 4) as u32);
        o.wire
            .timestamps
            .push(record.timestamp().unwrap_or(NO_TIMESTAMP));
        o.wire.output_index.push(0);
        Ok(true)
    }

    /// Emits a fully described output record.
    pub fn emit(&mut self, output: &Output<'_>) {
        self.outcomes.push_output(output);
    }

    /// Starts an output record for the named output: `out.to("alerts").json(&v)`.
    pub fn to<'n>(&'n mut self, output: &'n str) -> Named<'n, 'o> {
        Named { emit: self, output }
    }

    /// Number of outputs emitted for this record so far.
    pub fn count(&self) -> usize {
        self.outcomes.wire.timestamps.len() - self.first_output
    }

    /// Records the outcome: `Err` fails the record (discarding anything
    /// emitted for it), `Ok` emits what was emitted, or drops the record when
    /// nothing was.
    pub fn finish(mut self, result: Result<(), Error>) {
        self.finish_inner(result);
    }

    fn finish_inner(&mut self, result: Result<(), Error>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let w = &mut self.outcomes.wire;
        let kind = match result {
            Ok(()) if w.timestamps.len() > self.first_output => OutcomeKind::Emit,
            Ok(()) => OutcomeKind::Drop,
            Err(error) => {
                // Roll back partial outputs of a failed record.
                w.arena.truncate(self.arena_mark);
                w.header_spans.truncate(self.header_mark);
                w.spans.truncate(self.first_output * 4);
                w.timestamps.truncate(self.first_output);
                w.header_ends.truncate(self.first_output);
                w.output_index.truncate(self.first_output);
                w.failures.push(Failure {
                    kind: error.kind().to_string(),
                    message: error.message().to_string(),
                });
                OutcomeKind::Fail
            }
        };
        w.kinds.push(kind);
        w.output_ends.push(w.timestamps.len() as u32);
    }
}

impl Drop for Emit<'_> {
    fn drop(&mut self) {
        self.finish_inner(Ok(()));
    }
}

/// An output record on its way to a named output.
pub struct Named<'n, 'o> {
    emit: &'n mut Emit<'o>,
    output: &'n str,
}

impl Named<'_, '_> {
    /// Emits a record with this value.
    pub fn value(self, value: &[u8]) {
        self.emit.emit(&Output::new(value).to(self.output));
    }

    /// Serializes `value` as JSON and emits it.
    pub fn json<T: serde::Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        self.emit.json_to(Some(self.output), value)
    }

    /// Serializes `value` as JSON and emits it with the key, headers and
    /// timestamp of `record`.
    pub fn json_from<T: serde::Serialize + ?Sized>(
        self,
        record: &crate::Record<'_>,
        value: &T,
    ) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| Error::internal(format!("cannot serialize output as JSON: {e}")))?;
        self.emit
            .emit(&Output::from_record(record).value(&bytes).to(self.output));
        Ok(())
    }
}
