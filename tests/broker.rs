//! Talking to the Kafka broker the end-to-end tests run against: a real
//! Kafka-protocol broker on 127.0.0.1:9092 (tansu, started by
//! `scripts/services start`), or any Kafka given by `SLUICE_KAFKA_BOOTSTRAP`.

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// The broker's bootstrap address.
pub fn bootstrap() -> String {
    std::env::var("SLUICE_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

/// Panics with instructions unless a broker answers at `bootstrap`.
pub fn require(bootstrap: &str) {
    let reachable = bootstrap.split(',').any(|hp| {
        use std::net::ToSocketAddrs;
        hp.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .is_some_and(|a| {
                std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok()
            })
    });
    assert!(
        reachable,
        "no Kafka broker answers at {bootstrap}: run `scripts/services start` (tansu on 127.0.0.1:9092), or set SLUICE_KAFKA_BOOTSTRAP to a running Kafka"
    );
}

/// A name no earlier run used.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// Creates a topic and waits until its partitions are visible.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let result = futures::executor::block_on(admin.create_topics(
        [&new],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))
    .expect("create topics");
    for r in result {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => panic!("cannot create topic {name}: {code}"),
        }
    }
    let consumer = plain_consumer(bootstrap, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
            .unwrap_or(0);
        if seen >= partitions as usize {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "topic {topic} has {seen} of {partitions} partitions after 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes records (key, value) and waits until all are acknowledged.
pub fn produce(
    bootstrap: &str,
    topic: &str,
    records: impl IntoIterator<Item = (Option<String>, Vec<u8>)>,
) -> usize {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("partitioner", "murmur2_random")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let mut n = 0;
    for (key, value) in records {
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).payload(&value[..]);
        if let Some(k) = key.as_deref() {
            record = record.key(k);
        }
        send(&producer, record);
        n += 1;
        if n % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    n
}

/// Produces one record with one header whose name is any bytes — also bytes
/// that are not UTF-8, which Kafka allows and a hostile producer sends.
#[allow(unsafe_code)]
pub fn produce_with_header(bootstrap: &str, topic: &str, value: &[u8], name: &[u8], hvalue: &[u8]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    // SAFETY: rdkafka only copies the name's bytes into a C string for
    // librdkafka; nothing reads it as Rust text. This is the one way to
    // send such a name through rdkafka's API.
    let name = unsafe { std::str::from_utf8_unchecked(name) };
    let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
        key: name,
        value: Some(hvalue),
    });
    let record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).payload(value).headers(headers);
    send(&producer, record);
    producer.flush(Duration::from_secs(60)).expect("flush");
}

/// Enqueues one record, waiting while the producer's queue is full.
fn send<K: rdkafka::message::ToBytes + ?Sized, V: rdkafka::message::ToBytes + ?Sized>(
    producer: &BaseProducer,
    mut record: BaseRecord<'_, K, V>,
) {
    while let Err((e, back)) = producer.send(record) {
        assert!(
            e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
            "produce failed: {e}"
        );
        record = back;
        producer.poll(Duration::from_millis(20));
    }
}

/// Copies `n` records from `from` to `to` with a plain consumer and producer
/// (the raw broker limit a pipeline is compared with).
pub fn copy(bootstrap: &str, from: &str, to: &str, n: usize) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("copy"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[from]).expect("subscribe");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");
    let mut copied = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while copied < n && Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(to).payload(m.payload().unwrap_or_default());
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        send(&producer, record);
        copied += 1;
        if copied % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    /// Key as text.
    pub key: Option<String>,
    /// Value bytes.
    pub value: Vec<u8>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Headers (name, value).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record's timestamp (ms since the epoch), if it has one.
    pub timestamp: Option<i64>,
}

impl Got {
    fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Got {
        Got {
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            value: m.payload().unwrap_or_default().to_vec(),
            partition: m.partition(),
            offset: m.offset(),
            headers: m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
            timestamp: m.timestamp().to_millis(),
        }
    }

    /// The value as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }

    /// The value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Prints librdkafka's logs (with `SLUICE_E2E_DEBUG=fetch,...`).
#[derive(Debug, Clone, Copy)]
pub struct Stderr;

impl rdkafka::client::ClientContext for Stderr {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        eprintln!("librdkafka {fac}: {message}");
    }
}

impl rdkafka::consumer::ConsumerContext for Stderr {}

fn plain_consumer(bootstrap: &str, read_committed: bool) -> BaseConsumer<Stderr> {
    let mut config = ClientConfig::new();
    if let Ok(debug) = std::env::var("SLUICE_E2E_DEBUG") {
        config.set("debug", debug);
    }
    // librdkafka's consumer needs a group id even to assign partitions; this
    // one never commits.
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("sluice-e2e-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create_with_context(Stderr)
        .expect("consumer")
}

/// Reads a topic from the beginning of every partition (no consumer group)
/// until `done` (called with each record read) says so or `timeout` passes;
/// returns what was read.
pub fn consume(
    bootstrap: &str,
    topic: &str,
    read_committed: bool,
    timeout: Duration,
    mut done: impl FnMut(&Got) -> bool,
) -> Vec<Got> {
    let consumer = plain_consumer(bootstrap, read_committed);
    let meta = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in meta.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut finished = false;
    while Instant::now() < deadline && !finished {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => got.push(Got::of(&m)),
            Some(Err(e)) => eprintln!("consume {topic}: {e}"),
            None => continue,
        }
        if let Some(last) = got.last() {
            finished = done(last);
        }
    }
    got
}

/// Up to `max` records of one partition from `offset` (diagnostics).
pub fn read_from(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    max: usize,
    timeout: Duration,
) -> Vec<Got> {
    let consumer = plain_consumer(bootstrap, false);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while Instant::now() < deadline && got.len() < max {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            got.push(Got::of(&m));
        }
    }
    got
}

/// Reads a whole topic: until no record has arrived for `idle` (or `max`
/// passes).
pub fn consume_all(
    bootstrap: &str,
    topic: &str,
    read_committed: bool,
    idle: Duration,
    max: Duration,
) -> Vec<Got> {
    let consumer = plain_consumer(bootstrap, read_committed);
    let meta = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in meta.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + max;
    let mut last = Instant::now();
    let mut got = Vec::new();
    while Instant::now() < deadline && last.elapsed() < idle {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            last = Instant::now();
            got.push(Got::of(&m));
        }
    }
    got
}

/// The offsets a consumer group has committed for a topic, per partition.
pub fn committed(bootstrap: &str, group: &str, topic: &str) -> Vec<(i32, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let meta = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in meta.topics() {
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    let mut out: Vec<(i32, i64)> = got
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1)))
        .collect();
    out.sort();
    out
}

/// Committed offset and high watermark of each partition of `topic` for
/// consumer group `group` (one sample of [`Progress`]).
pub struct Progress {
    consumer: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
}

impl Progress {
    /// Watches `group`'s progress through `topic`.
    pub fn new(bootstrap: &str, group: &str, topic: &str) -> Progress {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let meta = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let mut partitions: Vec<i32> = meta
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        partitions.sort();
        Progress {
            consumer,
            topic: topic.to_string(),
            partitions,
        }
    }

    /// Per partition: (partition, committed offset or 0, high watermark).
    pub fn sample(&self) -> Vec<(i32, i64, i64)> {
        let mut tpl = TopicPartitionList::new();
        for p in &self.partitions {
            tpl.add_partition(&self.topic, *p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        self.partitions
            .iter()
            .map(|&p| {
                let c = committed
                    .find_partition(&self.topic, p)
                    .and_then(|e| e.offset().to_raw())
                    .unwrap_or(0)
                    .max(0);
                let high = self
                    .consumer
                    .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                    .map(|(_, h)| h)
                    .unwrap_or(0);
                (p, c, high)
            })
            .collect()
    }
}

/// Produces numbered records to `topic` at `rate` records/s for `seconds`
/// (paced every 10 ms), each stamped with its send time; returns how many.
pub fn produce_paced(
    bootstrap: &str,
    topic: &str,
    rate: usize,
    seconds: f64,
    value_bytes: usize,
) -> usize {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");
    let total = (rate as f64 * seconds) as usize;
    let start = Instant::now();
    let mut sent = 0usize;
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as usize).min(total);
        while sent < due {
            let mut v = format!("{{\"n\":{sent},\"pad\":\"").into_bytes();
            while v.len() + 2 < value_bytes {
                v.push(b'x');
            }
            v.extend_from_slice(b"\"}");
            let key = format!("k{}", sent % 1000);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or_default();
            let record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic)
                .payload(&v[..])
                .key(&key[..])
                .timestamp(now);
            send(&producer, record);
            sent += 1;
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(10));
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    sent
}
