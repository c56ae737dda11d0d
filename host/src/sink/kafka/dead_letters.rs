//! A Kafka dead-letter topic read back: the record as it was, its context
//! in `sluice.dlq.*` headers.

use crate::dlq_entry::{DeadLetterRecord, ReplayError};
use crate::record::{Header, Record};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::time::{Duration, Instant};

/// Every entry of a Kafka dead-letter topic, read from the beginning to the
/// end each partition had when reading started.
pub fn read_kafka(
    bootstrap: &str,
    topic: &str,
    properties: &crate::kafka::Properties,
    newest: Option<usize>,
) -> Result<Vec<DeadLetterRecord>, ReplayError> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let dlq = format!("kafka topic `{topic}`");
    let err = |message: String| ReplayError::Read {
        dlq: dlq.clone(),
        message,
    };
    let group = format!("sluice-dlq-reader-{}", std::process::id());
    let defaults = [
        ("group.id", group.as_str()),
        ("enable.auto.commit", "false"),
        ("enable.partition.eof", "false"),
        ("isolation.level", "read_committed"),
    ];
    let consumer: BaseConsumer =
        crate::kafka::client_config(bootstrap, &defaults, properties, &dlq)
            .map_err(&err)?
            .create()
            .map_err(|e| err(crate::kafka::Redactor::new(properties).error(&e)))?;
    let timeout = Duration::from_secs(30);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| err(format!("metadata: {e}")))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(err("no such topic".into()));
    }
    let mut ends = std::collections::BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| err(format!("watermarks of partition {p}: {e}")))?;
        // Only the newest `n` of each partition, when asked (offsets of a
        // compacted or transactional topic have gaps: at most `n` then).
        let from = match newest {
            Some(n) => high
                .saturating_sub(i64::try_from(n).unwrap_or(i64::MAX))
                .max(low),
            None => low,
        };
        if high > from {
            ends.insert(p, high);
            assignment
                .add_partition_offset(topic, p, Offset::Offset(from))
                .map_err(|e| err(e.to_string()))?;
        }
    }
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    consumer
        .assign(&assignment)
        .map_err(|e| err(format!("assign: {e}")))?;
    let mut by_partition: std::collections::BTreeMap<i32, Vec<DeadLetterRecord>> =
        Default::default();
    let mut last_progress = Instant::now();
    while !ends.is_empty() {
        if last_progress.elapsed() > timeout {
            return Err(err(format!(
                "no progress for {timeout:?}; partitions left: {:?}",
                ends.keys().collect::<Vec<_>>()
            )));
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.map_err(|e| err(e.to_string()))?;
        last_progress = Instant::now();
        let (p, offset) = (m.partition(), m.offset());
        let id = format!("{topic}/{p}@{offset}");
        let mut context = std::collections::BTreeMap::new();
        let mut headers = Vec::new();
        for (name, value) in crate::kafka::raw::headers(&m) {
            match name.strip_prefix(b"sluice.dlq.") {
                Some(k) => {
                    context.insert(
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(&value).into_owned(),
                    );
                }
                // Kept as it was, even a name that is not UTF-8: the replay
                // item is then refused at the decode stage, with the reason.
                None => headers.push(Header { name, value }),
            }
        }
        let entry = kafka_entry(
            id,
            context,
            m.key(),
            m.payload(),
            headers,
            m.timestamp().to_millis(),
        )?;
        by_partition.entry(p).or_default().push(entry);
        if ends.get(&p).is_some_and(|end| offset + 1 >= *end) {
            ends.remove(&p);
        }
    }
    Ok(by_partition.into_values().flatten().collect())
}

pub(crate) fn kafka_entry(
    id: String,
    mut c: std::collections::BTreeMap<String, String>,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: Vec<Header>,
    timestamp: Option<i64>,
) -> Result<DeadLetterRecord, ReplayError> {
    let (Some(stage), Some(kind)) = (c.remove("stage"), c.remove("error.kind")) else {
        return Err(ReplayError::Entry {
            id,
            message: "no `sluice.dlq.stage` / `sluice.dlq.error.kind` headers: not a Sluice dead-letter entry".into(),
        });
    };
    let source = (|| {
        Some((
            c.get("source.stream")?.clone(),
            c.get("source.partition")?.parse().ok()?,
            c.get("source.offset")?.parse().ok()?,
        ))
    })();
    Ok(DeadLetterRecord {
        id,
        stage,
        kind,
        message: c.remove("error.message").unwrap_or_default(),
        transform: c.remove("transform"),
        module: c.remove("module"),
        source,
        attempts: c.get("attempts").and_then(|a| a.parse().ok()),
        last_failure_at: c
            .get("last_failure_at")
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)),
        record: Record {
            key: key.map(Bytes::copy_from_slice),
            value: value.map(Bytes::copy_from_slice),
            headers,
            timestamp,
        },
    })
}
