//! The consumer's context: what it shares with the pipeline (the events
//! channel, records held back, partitions paused), records converted, and
//! librdkafka's logs, errors and statistics.

use super::*;

pub(super) enum Command {
    Close {
        offsets: TopicPartitionList,
        done: oneshot::Sender<Result<(), SourceError>>,
    },
}

/// A record read while the budget was spent, waiting for room.
pub(super) struct Held {
    pub(super) item: SourceItem,
    pub(super) bytes: usize,
}

/// State shared by the polling thread and librdkafka's callbacks (which run
/// on the polling thread, inside `poll`).
pub(super) struct SourceContext {
    pub(super) events: mpsc::UnboundedSender<Result<SourceEvent, SourceError>>,
    pub(super) budget: Arc<Budget>,
    pub(super) pending: Mutex<VecDeque<Held>>,
    pub(super) stopping: AtomicBool,
    pub(super) assignment_changed: AtomicBool,
    pub(super) drain_timeout: Duration,
    pub(super) start: StartPosition,
    pub(super) format: ValueFormat,
    pub(super) topics: Mutex<HashMap<String, Arc<str>>>,
    pub(super) redactor: crate::kafka::Redactor,
    /// Consumer lag over the assigned partitions, from librdkafka's
    /// statistics; -1 until known.
    pub(super) lag: Arc<std::sync::atomic::AtomicI64>,
    /// The same per partition (those whose lag is known).
    pub(super) partition_lags: Arc<Mutex<Vec<(Partition, i64)>>>,
    /// Whether the brokers answer.
    pub(super) reach: Arc<Reachability>,
    /// Lost partitions whose in-flight work the pipeline kept: where to
    /// read on if they are assigned to this member again.
    pub(super) lost_resume: Mutex<HashMap<Partition, i64>>,
}

/// Every how many ms librdkafka reports statistics (the lag), unless the
/// pipeline sets `statistics.interval.ms` itself.
pub(super) const STATS_INTERVAL_MS: &str = "5000";

impl SourceContext {
    pub(super) fn pending(&self) -> std::sync::MutexGuard<'_, VecDeque<Held>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn stream(&self, topic: &str) -> Arc<str> {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        topics
            .entry(topic.to_string())
            .or_insert_with(|| Arc::from(topic))
            .clone()
    }

    pub(super) fn convert(&self, msg: &BorrowedMessage<'_>) -> SourceItem {
        let position = Position {
            partition: Partition {
                stream: self.stream(&crate::kafka::raw::topic(msg)),
                partition: msg.partition(),
            },
            offset: msg.offset(),
        };
        let headers: Vec<Header> = crate::kafka::raw::headers(msg)
            .into_iter()
            .map(|(name, value)| Header { name, value })
            .collect();
        let record = Record {
            key: msg.key().map(Bytes::copy_from_slice),
            value: msg.payload().map(Bytes::copy_from_slice),
            headers,
            timestamp: msg.timestamp().to_millis(),
        };
        if let Some(i) = record
            .headers
            .iter()
            .position(|h| std::str::from_utf8(&h.name).is_err())
        {
            return SourceItem::Invalid {
                reason: format!(
                    "record {position} has a header (number {}) whose name is not UTF-8: header names must be text",
                    i + 1
                ),
                record,
                position,
            };
        }
        if self.format == ValueFormat::Json {
            let check = match record.value.as_deref() {
                None => Err("the record has no value".to_string()),
                Some(v) => crate::record::check_json(v),
            };
            if let Err(e) = check {
                return SourceItem::Invalid {
                    reason: format!("record {position} is not valid JSON: {e}"),
                    record,
                    position,
                };
            }
        }
        SourceItem::Record(SourceRecord { record, position })
    }

    /// Hands an item to the pipeline if the budget allows, else holds it.
    pub(super) fn offer(&self, item: SourceItem) {
        let bytes = item.byte_size();
        let mut pending = self.pending();
        if pending.is_empty()
            && self
                .budget
                .try_acquire_in(&item.position().partition, bytes)
        {
            drop(pending);
            let _ = self.events.send(Ok(SourceEvent::Item(item)));
        } else {
            pending.push_back(Held { item, bytes });
        }
    }

    /// Hands held items over while the budget allows; true when none is left.
    pub(super) fn flush_pending(&self) -> bool {
        let mut pending = self.pending();
        while let Some(held) = pending.front() {
            if !self
                .budget
                .try_acquire_in(&held.item.position().partition, held.bytes)
            {
                return false;
            }
            if let Some(held) = pending.pop_front() {
                let _ = self.events.send(Ok(SourceEvent::Item(held.item)));
            }
        }
        true
    }

    /// Forgets held items of partitions that are going away.
    pub(super) fn drop_pending(&self, partitions: &[Partition]) {
        self.pending()
            .retain(|h| !partitions.contains(&h.item.position().partition));
    }
}

pub(super) fn partitions_of(ctx: &SourceContext, tpl: &TopicPartitionList) -> Vec<Partition> {
    tpl.elements()
        .iter()
        .map(|el| Partition {
            stream: ctx.stream(el.topic()),
            partition: el.partition(),
        })
        .collect()
}

pub(super) fn offsets_list(offsets: &[(Partition, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        if let Err(e) = tpl.add_partition_offset(&p.stream, p.partition, Offset::Offset(*o)) {
            tracing::warn!(%e, partition = %p, "cannot add an offset to commit");
        }
    }
    tpl
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        crate::kafka::forward_log("source", &self.redactor, level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if crate::kafka::is_unreachable(&error) {
            self.reach.lost(&self.redactor.redact(reason));
        }
        crate::kafka::forward_error("source", &self.redactor, &error, reason);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        // A broker's statistics are outside input: a document that does not
        // parse is ignored (the lag stays as it was).
        match serde_json::from_slice::<rdkafka::Statistics>(statistics) {
            Ok(stats) => {
                let mut lags: Vec<(Partition, i64)> = stats
                    .topics
                    .iter()
                    .flat_map(|(topic, t)| t.partitions.iter().map(move |p| (topic, p)))
                    .filter(|(_, (id, p))| **id >= 0 && p.consumer_lag >= 0)
                    .map(|(topic, (id, p))| {
                        let partition = Partition {
                            stream: self.stream(topic),
                            partition: *id,
                        };
                        (partition, p.consumer_lag)
                    })
                    .collect();
                lags.sort();
                let lag = if lags.is_empty() {
                    -1
                } else {
                    lags.iter().map(|(_, l)| l).sum()
                };
                self.lag.store(lag, Ordering::Relaxed);
                *self
                    .partition_lags
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = lags;
            }
            Err(e) => tracing::debug!(error = %e, "cannot read librdkafka's statistics"),
        }
        // Statistics come from a client that talks to its brokers: count a
        // broker in state UP as an answer.
        if std::str::from_utf8(statistics).is_ok_and(|t| t.contains("\"state\":\"UP\"")) {
            self.reach.answered();
        }
    }
}
