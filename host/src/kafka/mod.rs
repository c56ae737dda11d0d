//! What the Kafka source and the Kafka sink share: client settings with safe
//! defaults, librdkafka logs forwarded to `tracing`, and the process's
//! instance id.

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

/// Settings a pipeline file may not override, because the delivery
/// guarantees depend on them; each with the reason.
const RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set `bootstrap` instead"),
    ("group.id", "set `group` instead"),
    (
        "enable.auto.commit",
        "Sluice commits offsets itself, only after records are in a sink or the dead-letter queue",
    ),
    (
        "enable.auto.offset.store",
        "Sluice commits offsets itself, only after records are in a sink or the dead-letter queue",
    ),
    ("isolation.level", "set `isolation` instead"),
    (
        "transactional.id",
        "set `delivery.transactional_id` instead",
    ),
    (
        "enable.idempotence",
        "the producer is always idempotent, so that retries cannot reorder or duplicate records",
    ),
];

/// A client config: `defaults` first, then the user's `properties`, refusing
/// the settings Sluice owns. `what` names the config table in errors.
pub fn client_config(
    bootstrap: &str,
    defaults: &[(&str, &str)],
    properties: &Properties,
    what: &str,
) -> Result<ClientConfig, String> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (k, v) in defaults {
        config.set(*k, *v);
    }
    for (k, v) in &properties.0 {
        if let Some((_, why)) = RESERVED.iter().find(|(r, _)| r == k) {
            return Err(format!(
                "`{what}.properties`: `{k}` cannot be set here: {why}"
            ));
        }
        config.set(k, v);
    }
    Ok(config)
}

/// Hides the values of a pipeline's Kafka properties (passwords, keys,
/// tokens: any of them may be a secret) in text librdkafka wrote: its
/// configuration errors quote the value they refuse, and rdkafka appends it.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    values: std::sync::Arc<Vec<String>>,
}

impl Redactor {
    /// A redactor for the values of `properties`.
    pub fn new(properties: &Properties) -> Self {
        let mut values: Vec<String> = properties
            .0
            .values()
            .filter(|v| !v.is_empty())
            .cloned()
            .collect();
        // Longest first, so that a value containing another is hidden whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Redactor {
            values: std::sync::Arc::new(values),
        }
    }

    /// `text` with every property value replaced by `***` (values under
    /// three characters only where quoted, so that a `1` does not blank out
    /// every digit of a message).
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in self.values.iter() {
            if v.len() >= 3 {
                out = out.replace(v.as_str(), "***");
            } else {
                out = out.replace(&format!("\"{v}\""), "\"***\"");
            }
        }
        out
    }

    /// A librdkafka error as text, with no property value in it: for a
    /// configuration error, the property's name and librdkafka's reason.
    pub fn error(&self, e: &KafkaError) -> String {
        match e {
            KafkaError::ClientConfig(_, desc, key, _value) => format!(
                "librdkafka refused the setting `{key}`: {} (the value is not shown)",
                self.redact(desc)
            ),
            other => self.redact(&other.to_string()),
        }
    }
}

/// This process's instance name: `SLUICE_INSTANCE`, else the host name.
pub fn instance_id() -> String {
    if let Ok(id) = std::env::var("SLUICE_INSTANCE")
        && !id.trim().is_empty()
    {
        return id.trim().to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sluice".to_string())
}

/// A client context that forwards librdkafka's logs and errors to `tracing`.
#[derive(Debug, Clone)]
pub struct Logs {
    /// Client name used in log lines (e.g. `source` or `output default`).
    pub client: String,
    /// Hides property values in what librdkafka says.
    pub redactor: Redactor,
}

impl ClientContext for Logs {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(&self.client, &self.redactor, level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        forward_error(&self.client, &self.redactor, &error, reason);
    }
}

/// Connects to the brokers of `config` and reads their metadata, within
/// 10 s (`sluice check --connect`): how many brokers answered and the
/// partitions of each of `topics`; an error names the bootstrap address,
/// or a topic that does not exist when `must_exist`.
pub fn probe_brokers(
    config: &ClientConfig,
    bootstrap: &str,
    topics: &[&str],
    must_exist: bool,
) -> Result<String, String> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| format!("cannot create a Kafka client for `{bootstrap}`: {e}"))?;
    let metadata = consumer
        .fetch_metadata(None, std::time::Duration::from_secs(10))
        .map_err(|e| format!("cannot reach the Kafka brokers at `{bootstrap}` within 10 s: {e}"))?;
    let mut said = vec![format!(
        "reached `{bootstrap}` ({} brokers)",
        metadata.brokers().len()
    )];
    for topic in topics {
        match metadata.topics().iter().find(|t| t.name() == *topic) {
            Some(t) if t.error().is_none() => {
                said.push(format!("topic `{topic}`: {} partitions", t.partitions().len()))
            }
            _ if must_exist => {
                return Err(format!("topic `{topic}` does not exist on `{bootstrap}`"));
            }
            _ => said.push(format!(
                "topic `{topic}` does not exist yet (created on first write if the brokers allow it)"
            )),
        }
    }
    Ok(said.join("; "))
}

/// Whether a client error says the brokers cannot be reached (all down, a
/// failed connection, a name that does not resolve).
pub fn is_unreachable(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(C::AllBrokersDown | C::BrokerTransportFailure | C::Resolve)
    )
}

/// Repeats of one warning within this window are counted, not logged.
const REPEAT_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

/// Logs a warning unless the same `(what, message)` was logged within the
/// last 30 s; the next line after the window says how many were left out.
/// librdkafka reports an unreachable broker several times a second, for
/// ever: without this, the log drowns.
pub fn warn_limited(what: &str, message: &str) {
    limited(false, what, message)
}

/// [`warn_limited`] at error level.
pub fn error_limited(what: &str, message: &str) {
    limited(true, what, message)
}

fn limited(error: bool, what: &str, message: &str) {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    /// Per (client, line shape): when it was last logged, and how many
    /// like it were left out since.
    type Seen = HashMap<(String, String), (std::time::Instant, u64)>;
    static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
    // Lines that differ only in numbers (`after 0ms`, `after 1ms`) are one.
    let mut shape = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !shape.ends_with('#') {
                shape.push('#');
            }
        } else {
            shape.push(c);
        }
    }
    let key = (what.to_string(), shape);
    let now = std::time::Instant::now();
    let suppressed = {
        let mut seen = SEEN
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Bounded: forget old lines once there are many distinct ones.
        if seen.len() > 1024 {
            seen.retain(|_, (at, _)| now.duration_since(*at) < REPEAT_WINDOW);
        }
        match seen.get_mut(&key) {
            Some((at, count)) if now.duration_since(*at) < REPEAT_WINDOW => {
                *count += 1;
                return;
            }
            Some((at, count)) => {
                let n = *count;
                *at = now;
                *count = 0;
                n
            }
            None => {
                seen.insert(key, (now, 0));
                0
            }
        }
    };
    let window = REPEAT_WINDOW.as_secs();
    match (error, suppressed) {
        (false, 0) => tracing::warn!(target: "librdkafka", client = what, "{message}"),
        (false, n) => {
            tracing::warn!(target: "librdkafka", client = what, suppressed = n, "{message} ({n} more like it in the last {window} s)")
        }
        (true, 0) => tracing::error!(target: "librdkafka", client = what, "{message}"),
        (true, n) => {
            tracing::error!(target: "librdkafka", client = what, suppressed = n, "{message} ({n} more like it in the last {window} s)")
        }
    }
}

/// Forwards one librdkafka log line.
pub fn forward_log(
    client: &str,
    redactor: &Redactor,
    level: RDKafkaLogLevel,
    fac: &str,
    message: &str,
) {
    let message = redactor.redact(message);
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => error_limited(client, &format!("{fac}: {message}")),
        RDKafkaLogLevel::Warning => warn_limited(client, &format!("{fac}: {message}")),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", client, facility = fac, "{message}")
        }
        RDKafkaLogLevel::Debug => {
            tracing::debug!(target: "librdkafka", client, facility = fac, "{message}")
        }
    }
}

/// Forwards one librdkafka client error. Transport errors are retried by
/// librdkafka itself, so they are warnings; anything fatal surfaces again
/// where it matters (a poll, a delivery report, a transaction call).
pub fn forward_error(client: &str, redactor: &Redactor, error: &KafkaError, reason: &str) {
    let error = redactor.error(error);
    let reason = redactor.redact(reason);
    warn_limited(client, &format!("{reason}: {error}"));
}

/// What a consumed message carries that rdkafka's safe accessors would
/// panic on: header names and the topic name are read as bytes here
/// (librdkafka allows any bytes; rdkafka's `Headers::try_get` and
/// `Message::topic` unwrap them as UTF-8, which would kill the source
/// thread on one hostile record).
pub mod compacted;

pub mod raw {
    use bytes::Bytes;
    use rdkafka::bindings as rd;
    use rdkafka::message::BorrowedMessage;
    use std::ffi::CStr;

    /// The message's headers, in order: (name bytes, value bytes).
    #[allow(unsafe_code)]
    pub fn headers(msg: &BorrowedMessage<'_>) -> Vec<(Bytes, Bytes)> {
        let mut hdrs: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
        // SAFETY: `msg.ptr()` is a live message for as long as `msg` is
        // borrowed; the headers it hands back belong to the message.
        let err = unsafe { rd::rd_kafka_message_headers(msg.ptr(), &mut hdrs) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || hdrs.is_null() {
            return Vec::new();
        }
        // SAFETY: `hdrs` is non-null and owned by the live message.
        let count = unsafe { rd::rd_kafka_header_cnt(hdrs) };
        let mut out = Vec::with_capacity(count);
        for idx in 0..count {
            let mut name: *const std::ffi::c_char = std::ptr::null();
            let mut value: *const std::ffi::c_void = std::ptr::null();
            let mut size: usize = 0;
            // SAFETY: `idx` is below the count; the out-pointers are valid.
            let err =
                unsafe { rd::rd_kafka_header_get_all(hdrs, idx, &mut name, &mut value, &mut size) };
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                continue;
            }
            // SAFETY: librdkafka stores header names NUL-terminated.
            let name = unsafe { CStr::from_ptr(name) }.to_bytes();
            let value = if value.is_null() {
                &[][..]
            } else {
                // SAFETY: `value` points at `size` bytes owned by the message.
                unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }
            };
            out.push((Bytes::copy_from_slice(name), Bytes::copy_from_slice(value)));
        }
        out
    }

    /// The message's topic name (lossy, should a broker send one that is
    /// not UTF-8).
    #[allow(unsafe_code)]
    pub fn topic(msg: &BorrowedMessage<'_>) -> String {
        // SAFETY: `msg.ptr()` is live; its topic handle outlives it.
        let rkt = unsafe { (*msg.ptr()).rkt };
        if rkt.is_null() {
            return String::new();
        }
        // SAFETY: librdkafka returns a NUL-terminated name for a live handle.
        let name = unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(rkt)) };
        name.to_string_lossy().into_owned()
    }
}

/// `spec` (a `SLUICE_LOG` filter) with the Kafka client's spurious noise
/// turned off: rust-rdkafka logs an error when a consumer that already left
/// its group is dropped. A filter that names the client's modules itself is
/// kept as it is.
pub fn quieted_log_filter(spec: String) -> String {
    if spec.contains("rdkafka") {
        spec
    } else {
        format!("{spec},rdkafka::consumer::base_consumer=off")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_values_never_appear_in_librdkafka_errors() {
        let mut p = Properties::default();
        p.0.insert("sasl.pasword".into(), "hunter2-very-secret".into());
        let config = client_config("127.0.0.1:9", &[], &p, "source.kafka").expect("built");
        let err = config
            .create::<rdkafka::consumer::BaseConsumer>()
            .err()
            .expect("a property librdkafka does not know");
        assert!(
            err.to_string().contains("hunter2-very-secret"),
            "rdkafka itself prints the value: {err}"
        );
        let text = Redactor::new(&p).error(&err);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("sasl.pasword"), "{text}");

        let mut p = Properties::default();
        p.0.insert("linger.ms".into(), "s3cr3t-not-a-number".into());
        let config = client_config("127.0.0.1:9", &[], &p, "source.kafka").expect("built");
        let err = config
            .create::<rdkafka::consumer::BaseConsumer>()
            .err()
            .expect("a value librdkafka refuses");
        let text = Redactor::new(&p).error(&err);
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("linger.ms"), "{text}");
        assert_eq!(
            Redactor::new(&p).redact("x s3cr3t-not-a-number y"),
            "x *** y"
        );
    }

    #[test]
    fn reserved_settings_are_refused_with_the_reason() {
        let mut p = Properties::default();
        p.0.insert("linger.ms".into(), "20".into());
        let c =
            client_config("b:9092", &[("linger.ms", "5")], &p, "outputs.x.kafka").expect("allowed");
        assert_eq!(c.get("linger.ms"), Some("20"), "the user's value wins");
        p.0.insert("enable.auto.commit".into(), "true".into());
        let err = client_config("b:9092", &[], &p, "source.kafka").expect_err("refused");
        assert!(
            err.contains("source.kafka.properties") && err.contains("enable.auto.commit"),
            "{err}"
        );
    }
}

/// Extra client settings passed to librdkafka as they are. `Debug` redacts
/// the values, which may hold credentials.
#[derive(Clone, Default, serde::Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Properties(pub std::collections::BTreeMap<String, String>);

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}
