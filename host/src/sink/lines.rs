//! Records as lines (JSON Lines): the value, or an envelope with key,
//! headers and timestamp; what is not JSON is refused to the dead-letter
//! queue.

use super::{Lineage, Reject};
use crate::record::{Record, envelope};

/// How an output record is written as one line.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RecordFormat {
    /// The record value, which must be JSON (written compactly on one line);
    /// a value that is not JSON is rejected to the dead-letter queue.
    #[default]
    Value,
    /// A JSON envelope with key, value, headers and timestamp.
    Envelope,
}

/// Appends one record as one line to `out`, or says why it cannot be.
pub fn encode_line(record: &Record, format: RecordFormat, out: &mut Vec<u8>) -> Result<(), String> {
    encode_line_checked(record, format, false, out)
}

/// [`encode_line`] for a record whose value is known to be one JSON
/// document when `json_checked` (see [`Lineage::json_checked`]).
pub fn encode_line_checked(
    record: &Record,
    format: RecordFormat,
    json_checked: bool,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    match format {
        RecordFormat::Value => {
            let Some(value) = record.value.as_deref() else {
                return Err(
                    "record has no value, and the sink writes values (format = \"value\")".into(),
                );
            };
            if memchr::memchr2(b'\n', b'\r', value).is_none() {
                if !json_checked && let Err(e) = crate::record::check_json(value) {
                    return Err(format!(
                        "record value is not JSON, and the sink writes JSON lines: {e}"
                    ));
                }
                out.extend_from_slice(value);
            } else {
                let parsed: serde_json::Value = serde_json::from_slice(value).map_err(|e| {
                    format!("record value is not JSON, and the sink writes JSON lines: {e}")
                })?;
                serde_json::to_writer(&mut *out, &parsed).map_err(|e| e.to_string())?;
            }
        }
        RecordFormat::Envelope => {
            serde_json::to_writer(&mut *out, &envelope(record)).map_err(|e| e.to_string())?;
        }
    }
    out.push(b'\n');
    Ok(())
}

/// Encodes records as lines; returns the buffer, the number of lines and the rejects.
pub fn encode_lines(records: &[Record], format: RecordFormat) -> (Vec<u8>, usize, Vec<Reject>) {
    encode_lines_of(records, &Lineage::default(), format)
}

/// [`encode_lines`], not parsing again the values `lineage` knows are JSON.
pub fn encode_lines_of(
    records: &[Record],
    lineage: &Lineage,
    format: RecordFormat,
) -> (Vec<u8>, usize, Vec<Reject>) {
    let mut buf = Vec::with_capacity(records.iter().map(|r| r.size() + 1).sum());
    let mut rejects = Vec::new();
    let mut lines = 0;
    for (index, record) in records.iter().enumerate() {
        let mark = buf.len();
        match encode_line_checked(record, format, lineage.is_json_checked(index), &mut buf) {
            Ok(()) => lines += 1,
            Err(reason) => {
                buf.truncate(mark);
                rejects.push(Reject { index, reason });
            }
        }
    }
    (buf, lines, rejects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Header;

    #[test]
    fn a_value_known_to_be_json_is_not_parsed_again() {
        let records = vec![
            Record::from_value(&b"{\"a\": 1}"[..]),
            Record::from_value(&b"{\"b\": 2}"[..]),
        ];
        // The second is marked as checked by the host; the marker is what
        // skips the parse (a value is marked only when it is byte for byte
        // one the source validated), shown here with a first record that
        // is parsed and one that is copied.
        let lineage = Lineage {
            json_checked: vec![false, true],
            ..Default::default()
        };
        let (buf, lines, rejects) = encode_lines_of(&records, &lineage, RecordFormat::Value);
        assert_eq!((lines, rejects.len()), (2, 0));
        assert_eq!(buf, b"{\"a\": 1}\n{\"b\": 2}\n");
        let bad = vec![Record::from_value(&b"not json"[..])];
        let (_, lines, rejects) = encode_lines_of(&bad, &Lineage::default(), RecordFormat::Value);
        assert_eq!(
            (lines, rejects.len()),
            (0, 1),
            "unmarked values are checked"
        );
        let (_, lines, _) = encode_lines_of(&bad, &lineage.subset(&[1]), RecordFormat::Value);
        assert_eq!(lines, 1, "the marker carries over to a retried subset");
    }

    #[test]
    fn value_lines_are_compact_json_and_non_json_is_rejected() {
        let records = vec![
            Record::from_value(&b"{\"a\": 1}"[..]),
            Record::from_value(&b"{\n  \"b\": 2\n}"[..]),
            Record::from_value(&b"plain text"[..]),
            Record::default(),
        ];
        let (buf, lines, rejects) = encode_lines(&records, RecordFormat::Value);
        assert_eq!(
            String::from_utf8(buf).expect("utf8"),
            "{\"a\": 1}\n{\"b\":2}\n"
        );
        assert_eq!(lines, 2);
        assert_eq!(
            rejects.iter().map(|r| r.index).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(rejects[0].reason.contains("not JSON"));
    }

    #[test]
    fn envelope_keeps_binary_safely() {
        let r = Record {
            key: Some(bytes::Bytes::from_static(&[0xff, 0x00])),
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: vec![Header::new("h", &b"x"[..])],
            timestamp: Some(5),
        };
        let e = envelope(&r);
        assert_eq!(e["key"]["base64"], "/wA=");
        assert_eq!(e["value"], "v");
        assert_eq!(e["headers"][0]["name"], "h");
        assert_eq!(e["timestamp"], 5);
    }
}
