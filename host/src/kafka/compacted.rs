//! A compacted, single-partition Kafka topic used as a key/value log: the
//! last record of each key is its value. The hosts' shared desired state
//! lives in one (one record per pipeline); keyed state can too. Its clients
//! — admin, producer, readers — are configured like every other Kafka
//! client of the process: through [`super::client_config`], with the
//! user's `properties` (SASL, TLS) and the redaction of their values.

use super::{Properties, Redactor, client_config};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// Where a compacted topic lives and how its clients connect.
#[derive(Debug, Clone)]
pub struct TopicSettings {
    /// Bootstrap servers.
    pub bootstrap: String,
    /// The topic.
    pub topic: String,
    /// Client properties (SASL, TLS, …), applied to every client.
    pub properties: Properties,
    /// Replication factor of the topic when it is created; `None`: the
    /// cluster's default (`default.replication.factor`).
    pub replication_factor: Option<i32>,
    /// Names the settings' table in errors (`state`).
    pub table: String,
}

impl TopicSettings {
    /// The configuration of one of the topic's clients.
    pub(crate) fn client(&self, defaults: &[(&str, &str)]) -> Result<ClientConfig, String> {
        client_config(&self.bootstrap, defaults, &self.properties, &self.table)
    }

    fn redact(&self, text: &str) -> String {
        Redactor::new(&self.properties).redact(text)
    }

    fn reader(&self) -> Result<BaseConsumer, String> {
        self.client(&[
            ("group.id", "sluice-compacted-reader"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
        ])?
        .create()
        .map_err(|e| self.redact(&format!("`{}`: {e}", self.table)))
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value (`None`: a tombstone).
    pub value: Option<Vec<u8>>,
}

/// A compacted topic, open for writing.
pub struct CompactedTopic {
    settings: TopicSettings,
    producer: FutureProducer,
}

impl std::fmt::Debug for CompactedTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactedTopic")
            .field("topic", &self.settings.topic)
            .finish_non_exhaustive()
    }
}

impl CompactedTopic {
    /// Connects, creating the topic (compacted, one partition) if missing.
    pub async fn open(settings: TopicSettings) -> Result<Self, String> {
        let topic = settings.topic.clone();
        let admin: AdminClient<DefaultClientContext> = settings
            .client(&[])?
            .create()
            .map_err(|e| settings.redact(&format!("`{}`: {e}", settings.table)))?;
        let replication = TopicReplication::Fixed(settings.replication_factor.unwrap_or(-1));
        let new = NewTopic::new(&topic, 1, replication).set("cleanup.policy", "compact");
        let created = admin
            .create_topics(
                [&new],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .map_err(|e| settings.redact(&format!("cannot create the topic `{topic}`: {e}")))?;
        for r in created {
            match r {
                Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(format!("cannot create the topic `{name}`: {code}"));
                }
            }
        }
        let producer: FutureProducer = settings
            .client(&[("linger.ms", "0")])?
            .set("enable.idempotence", "true")
            .create()
            .map_err(|e| settings.redact(&format!("`{}`: {e}", settings.table)))?;
        Ok(CompactedTopic { settings, producer })
    }

    /// The topic's settings.
    pub fn settings(&self) -> &TopicSettings {
        &self.settings
    }

    /// Writes `value` under `key` and waits until the broker has it.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
        self.producer
            .send(
                FutureRecord::to(&self.settings.topic)
                    .key(key)
                    .payload(value),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| {
                self.settings.redact(&format!(
                    "cannot write to the topic `{}`: {e}",
                    self.settings.topic
                ))
            })
    }

    /// Reads the topic from its start to the end it has now: every record,
    /// in order, and the offset to follow from. Blocks (up to 60 s).
    pub fn read_to_end(&self) -> Result<(Vec<Entry>, i64), String> {
        let topic = &self.settings.topic;
        let c = self.settings.reader()?;
        let (_, high) = c
            .fetch_watermarks(topic, 0, Duration::from_secs(30))
            .map_err(|e| self.settings.redact(&format!("topic `{topic}`: {e}")))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(|e| e.to_string())?;
        c.assign(&tpl).map_err(|e| e.to_string())?;
        let mut entries = Vec::new();
        let mut next = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while next < high {
            if Instant::now() > deadline {
                return Err(format!(
                    "topic `{topic}`: could not read to its end ({next} of {high}) within 60 s"
                ));
            }
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    next = m.offset() + 1;
                    entries.push(entry(&m));
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(e)) => {
                    tracing::warn!(topic = %topic, error = %self.settings.redact(&e.to_string()), "reading a compacted topic")
                }
            }
        }
        Ok((entries, high))
    }

    /// Follows the topic from `from`, calling `each` with every record as
    /// it comes, until `each` returns false. Blocks: run it on a thread of
    /// its own. `each` is also called with `None` about twice a second
    /// when nothing comes, so that it can say stop.
    pub fn follow(&self, from: i64, mut each: impl FnMut(Option<Entry>) -> bool) {
        let topic = &self.settings.topic;
        let c = match self.settings.reader() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(topic = %topic, error = %e, "cannot follow a compacted topic");
                return;
            }
        };
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(topic, 0, Offset::Offset(from))
            .and_then(|_| c.assign(&tpl))
            .is_err()
        {
            tracing::error!(topic = %topic, "cannot follow a compacted topic");
            return;
        }
        loop {
            let go_on = match c.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => each(Some(entry(&m))),
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => each(None),
                Some(Err(e)) => {
                    tracing::warn!(topic = %topic, error = %self.settings.redact(&e.to_string()), "reading a compacted topic");
                    each(None)
                }
            };
            if !go_on {
                return;
            }
        }
    }
}

fn entry(m: &rdkafka::message::BorrowedMessage<'_>) -> Entry {
    Entry {
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(properties: &[(&str, &str)]) -> TopicSettings {
        TopicSettings {
            bootstrap: "127.0.0.1:1".into(),
            topic: "state".into(),
            properties: Properties(
                properties
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            replication_factor: None,
            table: "state".into(),
        }
    }

    /// The shared-state topic's clients get the configured properties (a
    /// secured cluster: SASL over TLS) — before, they were built bare.
    #[test]
    fn every_client_of_the_topic_gets_the_configured_properties() {
        let s = settings(&[
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", "sluice"),
        ]);
        for defaults in [
            &[][..],
            &[("linger.ms", "0")][..],
            &[("group.id", "r"), ("enable.auto.commit", "false")][..],
        ] {
            let c = s.client(defaults).expect("config");
            assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
            assert_eq!(c.get("sasl.mechanism"), Some("PLAIN"));
            assert_eq!(c.get("sasl.username"), Some("sluice"));
            assert_eq!(c.get("bootstrap.servers"), Some("127.0.0.1:1"));
        }
        // The reader is created through the same path (no broker needed to
        // create a client; this librdkafka build may lack SASL, so a plain
        // property here).
        let plain = settings(&[("client.id", "sluice-state-test")]);
        if let Err(e) = plain.reader() {
            panic!("{e}");
        }
    }

    /// Settings Sluice owns are refused by name, and a refused value never
    /// shows a secret.
    #[test]
    fn reserved_settings_are_refused_and_secrets_stay_hidden() {
        let refused = settings(&[("enable.idempotence", "false")])
            .client(&[])
            .expect_err("reserved");
        assert!(
            refused.contains("`state.properties`: `enable.idempotence`"),
            "{refused}"
        );
        let bad = settings(&[
            ("sasl.password", "hunter2-secret"),
            ("no.such.setting", "hunter2-secret"),
        ]);
        let Err(err) = bad.reader() else {
            panic!("an unknown setting must be refused");
        };
        assert!(!err.contains("hunter2-secret"), "{err}");
    }
}
