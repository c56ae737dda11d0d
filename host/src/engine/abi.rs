//! The columnar batch layout of the WIT contract: encoding input batches and
//! decoding (and validating) what the guest returns. Nothing the guest
//! returns is trusted: every count, span and index is checked.

use super::Limits;
use super::lift::{GuestText, RawOutcomes as WireOutcomes};
use super::sluice::transform::types::{Batch as WireBatch, OutcomeKind, Source};
use crate::record::{Header, Position, Record};
use bytes::Bytes;

const ABSENT: u32 = u32::MAX;
const NO_TIMESTAMP: i64 = i64::MIN;

/// The longest output name a guest may use, in bytes.
pub const MAX_OUTPUT_NAME: usize = 64;
/// The longest failure kind kept, in bytes (longer ones are cut).
pub const MAX_FAILURE_KIND: usize = 64;
/// Output names no guest may use: `default` is the chain's default output,
/// reached by emitting without a name (a named output called `default`
/// would skip every later transform).
pub const RESERVED_OUTPUT_NAMES: &[&str] = &["default"];

/// Whether `name` may name an output (in a pipeline file or from a guest):
/// 1 to 64 ASCII letters, digits, `_`, `-` and `.`.
pub fn valid_output_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_OUTPUT_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A short, escaped preview of guest text for an error message.
fn preview(text: &str) -> String {
    let mut p: String = text.chars().take(40).flat_map(char::escape_debug).collect();
    if text.chars().count() > 40 {
        p.push('…');
    }
    p
}

/// Checks the named outputs (index 0 is the default output; its name is
/// ignored).
fn output_names(names: Vec<GuestText>) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        if i == 0 {
            out.push(String::new());
            continue;
        }
        if name.cut || !valid_output_name(&name.text) {
            return Err(format!(
                "output name {i} (`{}`, {} bytes) is not a valid output name: 1 to {MAX_OUTPUT_NAME} ASCII letters, digits, `_`, `-` or `.`",
                preview(&name.text),
                name.guest_len
            ));
        }
        if RESERVED_OUTPUT_NAMES.contains(&name.text.as_str()) {
            return Err(format!(
                "output name {i} is `{}`, which is reserved: emit without a name to reach the default output (the next transform)",
                name.text
            ));
        }
        out.push(name.text);
    }
    Ok(out)
}

/// A failure kind: cut to [`MAX_FAILURE_KIND`] bytes.
fn failure_kind(kind: GuestText) -> String {
    let mut k = kind.text;
    if k.len() > MAX_FAILURE_KIND {
        let mut cut = MAX_FAILURE_KIND;
        while !k.is_char_boundary(cut) {
            cut -= 1;
        }
        k.truncate(cut);
    }
    k
}

/// Why one input record failed, as the guest said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Error class (e.g. `invalid-input`).
    pub kind: String,
    /// Message.
    pub message: String,
    /// Calls that failed with this record in them: 1 when the guest failed
    /// the record itself, 1 + the split depth when bisection isolated it.
    pub attempts: u32,
}

/// What happened to one input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Emitted outputs `outputs[start..end]` of the [`Processed`].
    Emit {
        /// First output index.
        start: usize,
        /// One past the last output index.
        end: usize,
    },
    /// Dropped on purpose.
    Drop,
    /// Failed.
    Fail(Failure),
}

/// One output record and the output it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Index into [`Processed::output_names`]; 0 is the default output.
    pub slot: u32,
    /// The record.
    pub record: Record,
}

/// The validated result of one `process` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    /// One outcome per input, in order.
    pub outcomes: Vec<Outcome>,
    /// All output records, in order.
    pub outputs: Vec<Output>,
    /// Output names; index 0 is the default output (name "").
    pub output_names: Vec<String>,
}

fn push_span(spans: &mut Vec<u32>, arena: &mut Vec<u8>, bytes: Option<&Bytes>) {
    match bytes {
        Some(b) => {
            spans.push(arena.len() as u32);
            spans.push(b.len() as u32);
            arena.extend_from_slice(b);
        }
        None => {
            spans.push(0);
            spans.push(ABSENT);
        }
    }
}

/// Encodes records into `wire`, reusing its buffers.
pub(crate) fn encode(records: &[(&Record, &Position)], wire: &mut WireBatch) {
    wire.arena.clear();
    wire.spans.clear();
    wire.timestamps.clear();
    wire.header_ends.clear();
    wire.header_spans.clear();
    wire.sources.clear();
    wire.source_index.clear();
    wire.offsets.clear();
    let bytes: usize = records.iter().map(|(r, _)| r.size()).sum();
    wire.arena.reserve(bytes);
    wire.spans.reserve(records.len() * 4);
    for (record, position) in records {
        push_span(&mut wire.spans, &mut wire.arena, record.key.as_ref());
        push_span(&mut wire.spans, &mut wire.arena, record.value.as_ref());
        for h in &record.headers {
            push_span(&mut wire.header_spans, &mut wire.arena, Some(&h.name));
            push_span(&mut wire.header_spans, &mut wire.arena, Some(&h.value));
        }
        wire.header_ends.push((wire.header_spans.len() / 4) as u32);
        wire.timestamps
            .push(record.timestamp.unwrap_or(NO_TIMESTAMP));
        let p = &position.partition;
        let index = match wire
            .sources
            .iter()
            .rposition(|s| *s.stream == *p.stream && s.partition == p.partition)
        {
            Some(i) => i,
            None => {
                wire.sources.push(Source {
                    stream: p.stream.to_string(),
                    partition: p.partition,
                });
                wire.sources.len() - 1
            }
        };
        wire.source_index.push(index as u32);
        wire.offsets.push(position.offset);
    }
}

fn slice(arena: &Bytes, spans: &[u32], i: usize, what: &str) -> Result<Option<Bytes>, String> {
    let start = spans[i] as usize;
    let len = spans[i + 1];
    if len == ABSENT {
        return Ok(None);
    }
    let end = start
        .checked_add(len as usize)
        .filter(|&e| e <= arena.len())
        .ok_or_else(|| {
            format!(
                "{what} span {start}+{len} is outside the {}-byte arena",
                arena.len()
            )
        })?;
    Ok(Some(arena.slice(start..end)))
}

fn check_ends(ends: &[u32], total: usize, what: &str) -> Result<(), String> {
    let mut prev = 0u32;
    for (i, &e) in ends.iter().enumerate() {
        if e < prev {
            return Err(format!(
                "{what}[{i}] = {e} is smaller than the previous entry {prev}"
            ));
        }
        prev = e;
    }
    if prev as usize != total {
        return Err(format!(
            "{what} ends at {prev} but there are {total} entries"
        ));
    }
    Ok(())
}

/// Decodes and validates the guest's outcomes for `inputs`.
pub(crate) fn decode(
    out: WireOutcomes,
    inputs: &[(&Record, &Position)],
    limits: &Limits,
) -> Result<Processed, String> {
    let n = inputs.len();
    if out.kinds.len() != n {
        return Err(format!(
            "returned {} outcomes for {} records",
            out.kinds.len(),
            n
        ));
    }
    if out.output_ends.len() != n {
        return Err(format!(
            "returned {} output-ends for {} records",
            out.output_ends.len(),
            n
        ));
    }
    let outs = out.timestamps.len();
    if out.spans.len() != outs * 4
        || out.header_ends.len() != outs
        || out.output_index.len() != outs
    {
        return Err(format!(
            "output columns disagree: {} timestamps, {} spans (want 4 each), {} header-ends, {} output-index",
            outs,
            out.spans.len(),
            out.header_ends.len(),
            out.output_index.len()
        ));
    }
    if !out.header_spans.len().is_multiple_of(4) {
        return Err(format!(
            "header-spans has {} entries, not a multiple of 4",
            out.header_spans.len()
        ));
    }
    check_ends(&out.output_ends, outs, "output-ends")?;
    check_ends(&out.header_ends, out.header_spans.len() / 4, "header-ends")?;
    let max_bytes = (limits.max_output_mb as usize) << 20;
    if out.arena.len() > max_bytes {
        return Err(format!(
            "produced {} output bytes in one batch, over the limit of {} MiB",
            out.arena.len(),
            limits.max_output_mb
        ));
    }
    if out.output_names.is_empty() {
        return Err("output-names is empty (index 0 must be the default output)".into());
    }
    if out.output_names.len() > outs + 1 {
        return Err(format!(
            "returned {} output names for {outs} outputs",
            out.output_names.len()
        ));
    }
    let names = output_names(out.output_names)?;
    let failures_wanted = out
        .kinds
        .iter()
        .filter(|k| matches!(k, OutcomeKind::Fail))
        .count();
    if out.failures.len() != failures_wanted {
        return Err(format!(
            "returned {} failures for {} fail outcomes",
            out.failures.len(),
            failures_wanted
        ));
    }

    let mut failures = out.failures.into_iter();
    let mut outcomes = Vec::with_capacity(n);
    let mut prev_end = 0usize;
    let mut producer = vec![0usize; outs];
    for (i, kind) in out.kinds.iter().enumerate() {
        let end = out.output_ends[i] as usize;
        let count = end - prev_end;
        if count > limits.max_outputs_per_record as usize {
            return Err(format!(
                "record {i} produced {count} outputs, over the limit of {} per record",
                limits.max_outputs_per_record
            ));
        }
        let outcome = match kind {
            OutcomeKind::Emit => Outcome::Emit {
                start: prev_end,
                end,
            },
            OutcomeKind::Drop | OutcomeKind::Fail if count != 0 => {
                return Err(format!(
                    "record {i} was dropped or failed but has {count} outputs"
                ));
            }
            OutcomeKind::Drop => Outcome::Drop,
            OutcomeKind::Fail => match failures.next() {
                Some(f) => Outcome::Fail(Failure {
                    kind: failure_kind(f.kind),
                    message: f.message.into_message(),
                    attempts: 1,
                }),
                None => return Err("fewer failures than fail outcomes".into()),
            },
        };
        for p in producer.iter_mut().take(end).skip(prev_end) {
            *p = i;
        }
        outcomes.push(outcome);
        prev_end = end;
    }

    let arena = Bytes::from(out.arena);
    let mut outputs = Vec::with_capacity(outs);
    let mut header_start = 0usize;
    // What the host will write: spans may overlap, so the arena's size
    // says nothing of it.
    let mut materialised = 0usize;
    for i in 0..outs {
        let slot = out.output_index[i];
        if slot as usize >= names.len() {
            return Err(format!(
                "output {i} names output slot {slot}, but only {} exist",
                names.len()
            ));
        }
        let key = slice(&arena, &out.spans, i * 4, "key")?;
        let value = slice(&arena, &out.spans, i * 4 + 2, "value")?;
        let header_end = out.header_ends[i] as usize;
        let mut headers = Vec::with_capacity(header_end - header_start);
        for h in header_start..header_end {
            let name = slice(&arena, &out.header_spans, h * 4, "header name")?.unwrap_or_default();
            if std::str::from_utf8(&name).is_err() {
                return Err(format!(
                    "header {h} of output {i} has a name that is not UTF-8"
                ));
            }
            let value =
                slice(&arena, &out.header_spans, h * 4 + 2, "header value")?.unwrap_or_default();
            headers.push(Header { name, value });
        }
        header_start = header_end;
        let size = key.as_ref().map_or(0, |k| k.len())
            + value.as_ref().map_or(0, |v| v.len())
            + headers
                .iter()
                .map(|h| h.name.len() + h.value.len())
                .sum::<usize>();
        if size > (limits.max_record_output_kb as usize) << 10 {
            return Err(format!(
                "output {i} (of record {}) is {size} bytes, over the limit of {} KiB per output record",
                producer[i], limits.max_record_output_kb
            ));
        }
        materialised += size;
        if materialised > max_bytes {
            return Err(format!(
                "outputs 0 to {i} hold {materialised} bytes (spans may overlap in the arena), over the limit of {} MiB of output per batch",
                limits.max_output_mb
            ));
        }
        let timestamp = match out.timestamps[i] {
            NO_TIMESTAMP => inputs[producer[i]].0.timestamp,
            t => Some(t),
        };
        outputs.push(Output {
            slot,
            record: Record {
                key,
                value,
                headers,
                timestamp,
            },
        });
    }
    Ok(Processed {
        outcomes,
        outputs,
        output_names: names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Partition;
    use std::sync::Arc;

    fn pos(offset: i64) -> Position {
        Position {
            partition: Partition {
                stream: Arc::from("s"),
                partition: 0,
            },
            offset,
        }
    }

    fn wire_out() -> WireOutcomes {
        WireOutcomes {
            kinds: vec![OutcomeKind::Emit, OutcomeKind::Drop, OutcomeKind::Fail],
            output_ends: vec![2, 2, 2],
            failures: vec![super::super::lift::RawFailure {
                kind: "k".into(),
                message: "m".into(),
            }],
            output_names: vec!["".into(), "alerts".into()],
            arena: b"k1v1v2hn".to_vec(),
            spans: vec![0, 2, 2, 2, 0, ABSENT, 4, 2],
            timestamps: vec![NO_TIMESTAMP, 7],
            header_ends: vec![0, 1],
            header_spans: vec![6, 1, 7, 1],
            output_index: vec![0, 1],
        }
    }

    #[test]
    fn round_trip_and_inherited_timestamp() {
        let r = Record {
            timestamp: Some(42),
            ..Record::from_value(&b"x"[..])
        };
        let p = pos(1);
        let inputs = vec![(&r, &p); 3];
        let got = decode(wire_out(), &inputs, &Limits::default()).expect("valid");
        assert_eq!(got.outcomes[0], Outcome::Emit { start: 0, end: 2 });
        assert_eq!(got.outcomes[1], Outcome::Drop);
        assert_eq!(
            got.outcomes[2],
            Outcome::Fail(Failure {
                kind: "k".into(),
                message: "m".into(),
                attempts: 1,
            })
        );
        assert_eq!(got.outputs[0].record.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(got.outputs[0].record.timestamp, Some(42));
        assert_eq!(got.outputs[1].record.key, None);
        assert_eq!(got.outputs[1].record.timestamp, Some(7));
        assert_eq!(
            got.outputs[1].record.headers,
            vec![Header::new("h", &b"n"[..])]
        );
        assert_eq!(got.outputs[1].slot, 1);
    }

    #[test]
    fn hostile_outcomes_are_refused_with_a_reason() {
        let r = Record::from_value(&b"x"[..]);
        let p = pos(1);
        let inputs = vec![(&r, &p); 3];
        let limits = Limits::default();
        type Mutation = Box<dyn Fn(&mut WireOutcomes)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|o| {
                    o.kinds.pop();
                }),
                "returned 2 outcomes for 3 records",
            ),
            (Box::new(|o| o.spans[2] = 1000), "outside the"),
            (Box::new(|o| o.spans[3] = u32::MAX - 1), "outside the"),
            (Box::new(|o| o.output_index[1] = 9), "slot 9"),
            (
                Box::new(|o| o.output_ends = vec![2, 1, 2]),
                "smaller than the previous",
            ),
            (Box::new(|o| o.output_ends = vec![2, 2, 3]), "ends at 3"),
            (Box::new(|o| o.failures.clear()), "0 failures for 1 fail"),
            (Box::new(|o| o.header_spans.push(1)), "multiple of 4"),
            (
                Box::new(|o| o.output_names.clear()),
                "output-names is empty",
            ),
            (
                Box::new(|o| o.output_names[1] = "default".into()),
                "`default`, which is reserved",
            ),
            (
                Box::new(|o| o.output_names[1] = "al\nerts".into()),
                "(`al\\nerts`, 7 bytes) is not a valid output name",
            ),
            (
                Box::new(|o| o.kinds[1] = OutcomeKind::Emit),
                "dropped or failed",
            ),
        ];
        for (mutate, want) in cases {
            let mut o = wire_out();
            mutate(&mut o);
            if want == "dropped or failed" {
                // Turning the drop into an emit is valid (0 outputs); make the fail carry outputs instead.
                o.kinds[1] = OutcomeKind::Drop;
                o.output_ends = vec![1, 1, 2];
            }
            let err = decode(o, &inputs, &limits).expect_err(want);
            assert!(err.contains(want), "want {want:?}, got {err:?}");
        }
        let tight = Limits {
            max_outputs_per_record: 1,
            ..Limits::default()
        };
        let err = decode(wire_out(), &inputs, &tight).expect_err("too many outputs");
        assert!(err.contains("record 0 produced 2 outputs"), "{err}");
    }

    #[test]
    fn an_output_record_over_its_size_limit_breaks_the_contract() {
        let r = Record::from_value(&b"x"[..]);
        let p = pos(0);
        let inputs = vec![(&r, &p)];
        // One output: a 2,000-byte value and a 100-byte header value.
        let big = |value: u32| WireOutcomes {
            kinds: vec![OutcomeKind::Emit],
            output_ends: vec![1],
            failures: vec![],
            output_names: vec!["".into()],
            arena: vec![b'v'; 2101],
            spans: vec![0, ABSENT, 0, value],
            timestamps: vec![NO_TIMESTAMP],
            header_ends: vec![1],
            header_spans: vec![2000, 1, 2001, 100],
            output_index: vec![0],
        };
        let limits = Limits {
            max_record_output_kb: 2,
            ..Limits::default()
        };
        // 1,948 + 1 + 100 = 2,049 bytes: over 2 KiB by one.
        let err = decode(big(1948), &inputs, &limits).expect_err("over the limit");
        assert!(
            err.contains("output 0 (of record 0) is 2049 bytes, over the limit of 2 KiB"),
            "{err}"
        );
        // 2,048 bytes exactly: within.
        decode(big(1947), &inputs, &limits).expect("at the limit");
    }

    #[test]
    fn encode_shares_sources_and_marks_absence() {
        let a = Record {
            key: Some(Bytes::from_static(b"k")),
            headers: vec![Header::new("h", &b"v"[..])],
            ..Default::default()
        };
        let b = Record::from_value(&b"val"[..]);
        let (pa, pb) = (pos(5), pos(6));
        let mut wire = WireBatch {
            arena: vec![9],
            spans: vec![],
            timestamps: vec![],
            header_ends: vec![],
            header_spans: vec![],
            sources: vec![],
            source_index: vec![],
            offsets: vec![],
        };
        encode(&[(&a, &pa), (&b, &pb)], &mut wire);
        assert_eq!(wire.arena, b"khvval");
        assert_eq!(wire.spans, vec![0, 1, 0, ABSENT, 0, ABSENT, 3, 3]);
        assert_eq!(wire.header_ends, vec![1, 1]);
        assert_eq!(wire.header_spans, vec![1, 1, 2, 1]);
        assert_eq!(wire.sources.len(), 1);
        assert_eq!(wire.offsets, vec![5, 6]);
        assert_eq!(wire.timestamps, vec![NO_TIMESTAMP; 2]);
    }
}
