//! Where a record goes in the lake: the partition path rendered from the
//! template (record fields, event time, source metadata — never the wall
//! clock), and object keys derived from source positions.

use super::config::{EventTimeConfig, TimeUnit};
use crate::record::{Partition, Record};
use chrono::format::{Item, StrftimeItems};
use std::fmt::Write as _;

/// One piece of a partition template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Stream,
    Partition,
    EventTime(String),
    Field(Vec<String>),
}

/// A parsed partition template.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `topic={stream}/dt={event_time:%Y-%m-%d}`; the error says what
    /// is wrong and where.
    pub fn parse(text: &str) -> Result<Template, String> {
        let text = text.trim_matches('/');
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("`{{` at `{}` is never closed", &rest[open..]))?;
            let inner = &after[..close];
            let (name, arg) = match inner.split_once(':') {
                Some((n, a)) => (n.trim(), Some(a)),
                None => (inner.trim(), None),
            };
            pieces.push(match (name, arg) {
                ("stream", None) => Piece::Stream,
                ("partition", None) => Piece::Partition,
                ("event_time", Some(fmt)) => {
                    if fmt.is_empty()
                        || StrftimeItems::new(fmt).any(|i| matches!(i, Item::Error))
                    {
                        return Err(format!("`{{{inner}}}`: `{fmt}` is not a strftime format"));
                    }
                    Piece::EventTime(fmt.to_string())
                }
                ("event_time", None) => {
                    return Err("`{event_time}` needs a format, e.g. `{event_time:%Y-%m-%d}`".into());
                }
                ("field", Some(path)) if !path.is_empty() && !path.split('.').any(str::is_empty) => {
                    Piece::Field(path.split('.').map(str::to_string).collect())
                }
                _ => {
                    return Err(format!(
                        "unknown placeholder `{{{inner}}}` (use {{stream}}, {{partition}}, {{event_time:FORMAT}} or {{field:a.b}})"
                    ));
                }
            });
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("`}}` without `{{` in `{rest}`"));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        for p in &pieces {
            if let Piece::Text(t) = p
                && (t.contains("..")
                    || t.contains("//")
                    || t.chars().any(|c| {
                        !(c.is_ascii_alphanumeric() || matches!(c, '=' | '/' | '-' | '_' | '.'))
                    }))
            {
                return Err(format!(
                    "`{t}`: text between placeholders may hold letters, digits, `=`, `/`, `-`, `_` and `.` (no `..` or `//`)"
                ));
            }
        }
        Ok(Template { pieces })
    }

    /// Whether rendering reads the record's JSON value.
    pub fn reads_value(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Field(_)))
    }

    /// Whether rendering needs the event time.
    pub fn reads_event_time(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::EventTime(_)))
    }

    /// The partition path of a record (no leading or trailing `/`);
    /// placeholders without a value render as `default`.
    pub fn render(
        &self,
        source: &Partition,
        event_time: Option<i64>,
        value: Option<&serde_json::Value>,
        default: &str,
    ) -> String {
        let mut out = String::new();
        let time = event_time.and_then(chrono::DateTime::from_timestamp_millis);
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Stream => out.push_str(&escape_or(&source.stream, default)),
                Piece::Partition => {
                    let _ = write!(out, "{}", source.partition);
                }
                Piece::EventTime(fmt) => match time {
                    Some(t) => out.push_str(&escape_or(&t.format(fmt).to_string(), default)),
                    None => out.push_str(default),
                },
                Piece::Field(path) => {
                    let v = value.and_then(|v| pick(v, path));
                    let text = match v {
                        Some(serde_json::Value::String(s)) => Some(s.clone()),
                        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                        Some(serde_json::Value::Bool(b)) => Some(b.to_string()),
                        _ => None,
                    };
                    match text {
                        Some(t) => out.push_str(&escape_or(&t, default)),
                        None => out.push_str(default),
                    }
                }
            }
        }
        out
    }
}

/// A field of a JSON value by path.
pub fn pick<'a>(v: &'a serde_json::Value, path: &[String]) -> Option<&'a serde_json::Value> {
    path.iter().try_fold(v, |v, name| v.get(name.as_str()))
}

/// A value as one path segment: letters, digits, `.`, `_`, `-` kept, every
/// other byte percent-encoded (Hive's escaping), so a value can never add a
/// directory or climb out of the prefix.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    if out == "." || out == ".." {
        out = out.replace('.', "%2E");
    }
    out
}

fn escape_or(s: &str, default: &str) -> String {
    if s.is_empty() {
        default.to_string()
    } else {
        escape(s)
    }
}

/// A record's event time, ms since the epoch: its timestamp, or the
/// configured field (epoch ms or s, or an RFC 3339 string).
pub fn event_time(
    cfg: &EventTimeConfig,
    path: &[String],
    record: &Record,
    value: Option<&serde_json::Value>,
) -> Option<i64> {
    if cfg.field.is_none() {
        return record.timestamp;
    }
    match value.and_then(|v| pick(v, path))? {
        serde_json::Value::Number(n) => {
            let n = n.as_f64()?;
            if !n.is_finite() {
                return None;
            }
            let ms = match cfg.unit {
                TimeUnit::Ms => n,
                TimeUnit::S => n * 1000.0,
            };
            // Outside what chrono can render: no event time.
            if ms.abs() > 8.0e15 {
                return None;
            }
            Some(ms as i64)
        }
        serde_json::Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis()),
        _ => None,
    }
}

/// The name of a source partition in object keys: `{stream}+{partition}`,
/// plain and visible to every lake reader. A Kafka topic is its name. A file
/// is its file name followed, when the path has a folder, by 8 hex digits of
/// a hash of the whole path, so that two files of one name in different
/// folders (`2026-12-01/events.jsonl`, `2026-12-02/events.jsonl`) never share
/// objects: `./data/events.jsonl` → `events.jsonl-1f0c9a3b+0`.
///
/// Only `A-Z a-z 0-9 . _ -` are used, never a leading `.` or `_` (pyarrow,
/// Spark and Hive skip such names as hidden) and never `%`: the object
/// store escapes a `%` again in remote keys but decodes it on local disk,
/// so an escaped name would read differently in every lake. A name that
/// had to change to fit (other characters, a hidden first character) also
/// gets the hash, so distinct streams keep distinct names.
pub fn source_name(p: &Partition) -> String {
    format!("{}+{}", stream_name(&p.stream), p.partition)
}

/// The readable name of a stream (see [`source_name`]).
pub fn stream_name(stream: &str) -> String {
    let parts: Vec<&str> = stream
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let file = parts.last().copied().unwrap_or_default();
    let mut name: String = file
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let visible = name.trim_start_matches(['.', '_']).len();
    name.replace_range(..name.len() - visible, "");
    let whole = parts.join("/");
    if parts.len() > 1 || name != whole || name.is_empty() {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(if whole.is_empty() { stream } else { &whole });
        if !name.is_empty() {
            name.push('-');
        }
        name.push_str(&hex::encode(digest)[..8]);
    }
    name
}

/// An object's key under `prefix/path`: `{stream}+{partition}+{first:020}`
/// (the Kafka Connect convention, offsets padded so keys sort).
pub fn object_key(prefix: &str, path: &str, source: &str, first: i64, ext: &str) -> String {
    let mut key = String::new();
    for part in [prefix, path] {
        if !part.is_empty() {
            key.push_str(part);
            key.push('/');
        }
    }
    let _ = write!(key, "{source}+{first:020}.{ext}");
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn topic() -> Partition {
        Partition {
            stream: Arc::from("orders"),
            partition: 3,
        }
    }

    #[test]
    fn a_template_renders_hive_partitions_from_event_time_fields_and_the_source() {
        let t = Template::parse(
            "topic={stream}/dt={event_time:%Y-%m-%d}/hour={event_time:%H}/c={field:user.country}",
        )
        .expect("template");
        let v = serde_json::json!({"user": {"country": "N Z/1"}});
        // 2026-12-02T05:07:08Z
        let ms = 1_796_188_028_000;
        assert_eq!(
            t.render(&topic(), Some(ms), Some(&v), "__HIVE_DEFAULT_PARTITION__"),
            "topic=orders/dt=2026-12-02/hour=05/c=N%20Z%2F1"
        );
        assert_eq!(
            t.render(&topic(), None, None, "none"),
            "topic=orders/dt=none/hour=none/c=none"
        );
        assert!(t.reads_value() && t.reads_event_time());
        assert_eq!(
            Template::parse("")
                .expect("empty")
                .render(&topic(), None, None, "x"),
            ""
        );
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        for (t, want) in [
            ("dt={event_time}", "needs a format"),
            ("dt={event_time:%Q}", "not a strftime"),
            ("x={nope}", "unknown placeholder"),
            ("x={stream", "never closed"),
            ("../x={stream}", "no `..`"),
            ("x y={stream}", "may hold"),
        ] {
            let e = Template::parse(t).expect_err(t);
            assert!(e.contains(want), "{t}: {e}");
        }
    }

    fn name(stream: &str) -> String {
        source_name(&Partition {
            stream: Arc::from(stream),
            partition: 0,
        })
    }

    #[test]
    fn source_names_are_plain_visible_and_distinct() {
        assert_eq!(name("orders"), "orders+0");
        assert_eq!(name("events.jsonl"), "events.jsonl+0");
        assert_eq!(name("./events.jsonl"), "events.jsonl+0");
        // A file in a folder: its file name first, then a hash.
        let a = name("./data/events.jsonl");
        assert!(a.starts_with("events.jsonl-") && a.ends_with("+0"), "{a}");
        assert_eq!(a.len(), "events.jsonl-12345678+0".len(), "{a}");
        assert_eq!(a, name("data/events.jsonl"), "`./` changes nothing");
        let all = [
            a,
            name("data/2026-12-01/events.jsonl"),
            name("/srv/data/events.jsonl"),
            name("_schemas"),
            name("schemas"),
            name(".secret.jsonl"),
            name("a b/c%d.jsonl"),
            name("a b/c d.jsonl"),
            name("/"),
            name(""),
            name("-"),
        ];
        for (i, n) in all.iter().enumerate() {
            let stream = &n[..n.len() - 2];
            assert!(
                !stream.is_empty()
                    && !stream.starts_with(['.', '_'])
                    && stream
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
                "{n}"
            );
            assert!(!all[..i].contains(n), "{n} twice");
            // The object store keeps it as it is: no escaping anywhere.
            let key = object_key("", "p", n, 0, "parquet");
            assert_eq!(object_store::path::Path::from(key.as_str()).as_ref(), key);
        }
        assert!(name("_schemas").starts_with("schemas-"));
    }

    #[test]
    fn escaping_never_leaves_one_segment() {
        assert_eq!(escape("a/b"), "a%2Fb");
        assert_eq!(escape(".."), "%2E%2E");
        assert_eq!(escape("é"), "%C3%A9");
        let n = source_name(&Partition {
            stream: Arc::from("/data/in.jsonl"),
            partition: 0,
        });
        assert!(n.starts_with("in.jsonl-") && !n.contains('%'), "{n}");
        assert_eq!(
            object_key("raw", "dt=x", "orders+3", 42, "parquet"),
            "raw/dt=x/orders+3+00000000000000000042.parquet"
        );
        assert_eq!(
            object_key("", "", "s+0", 0, "jsonl"),
            "s+0+00000000000000000000.jsonl"
        );
    }

    #[test]
    fn event_time_comes_from_the_timestamp_or_a_field() {
        let r = Record {
            timestamp: Some(7),
            ..Default::default()
        };
        assert_eq!(
            event_time(&EventTimeConfig::default(), &[], &r, None),
            Some(7)
        );
        let cfg = EventTimeConfig {
            field: Some("ts".into()),
            unit: TimeUnit::S,
        };
        let path = vec!["ts".to_string()];
        let v = serde_json::json!({"ts": 2});
        assert_eq!(event_time(&cfg, &path, &r, Some(&v)), Some(2000));
        let v = serde_json::json!({"ts": "1970-01-01T00:00:01Z"});
        assert_eq!(event_time(&cfg, &path, &r, Some(&v)), Some(1000));
        let v = serde_json::json!({"ts": [1]});
        assert_eq!(event_time(&cfg, &path, &r, Some(&v)), None);
        let v = serde_json::json!({"ts": 1e300});
        assert_eq!(event_time(&cfg, &path, &r, Some(&v)), None);
    }
}
