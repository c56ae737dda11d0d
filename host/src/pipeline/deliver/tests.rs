use super::*;
use crate::record::{Position, SourceRecord};
use crate::sink::Reject;
use std::time::Duration;

#[test]
fn only_values_unchanged_from_the_source_are_known_json() {
    let position = Position {
        partition: Partition {
            stream: Arc::from("f"),
            partition: 0,
        },
        offset: 0,
    };
    let items = vec![
        SourceItem::Record(SourceRecord {
            record: Record::from_value(&b"{\"a\":1}"[..]),
            position: position.clone(),
        }),
        SourceItem::Invalid {
            record: Record::from_value(&b"{\"a\":1}"[..]),
            position,
            reason: "test".into(),
        },
    ];
    let same = Record::from_value(&b"{\"a\":1}"[..]);
    assert!(unchanged_value(&same, &items, 0));
    assert!(!unchanged_value(
        &Record::from_value(&b"{\"a\":2}"[..]),
        &items,
        0
    ));
    assert!(
        !unchanged_value(&same, &items, 1),
        "an invalid item was never checked"
    );
    assert!(!unchanged_value(&same, &items, 2), "no such item");
    assert!(!unchanged_value(&Record::default(), &items, 0), "no value");
}

/// A sink that accepts everything and reports a reject for a record it
/// was never given (a broken sink: no real one can be made to do it).
struct LyingSink;

#[async_trait::async_trait]
impl Sink for LyingSink {
    async fn submit(&self, _batch: SinkBatch) -> Result<Pending, SinkError> {
        Ok(crate::sink::ready(vec![Reject {
            index: 7,
            reason: "made up".into(),
        }]))
    }
    fn describe(&self) -> String {
        "lying".into()
    }
}

/// A sink that keeps what it is given.
#[derive(Default)]
struct Keep(std::sync::Mutex<Vec<Record>>);

#[async_trait::async_trait]
impl Sink for Keep {
    async fn submit(&self, batch: SinkBatch) -> Result<Pending, SinkError> {
        let records = batch.records;
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(records);
        Ok(crate::sink::ready(Vec::new()))
    }
    fn describe(&self) -> String {
        "keep".into()
    }
}

#[tokio::test]
async fn a_reject_naming_no_record_stops_the_run_without_committing() {
    let part = Partition {
        stream: Arc::from("s"),
        partition: 0,
    };
    let record = Record::from_value(&b"{}"[..]);
    let job = Job {
        partition: part.clone(),
        epoch: 0,
        items: vec![SourceItem::Record(SourceRecord {
            record: record.clone(),
            position: Position {
                partition: part,
                offset: 0,
            },
        })],
        bytes: 2,
        dispatched: std::time::Instant::now(),
        seq: 0,
    };
    let mut chain = ChainResult::default();
    chain.outputs.insert(
        "default".into(),
        vec![super::super::chain::Routed {
            record,
            origin: 0,
            from: None,
        }],
    );
    let dlq_sink = Arc::new(Keep::default());
    let delivery = Delivery {
        sinks: BTreeMap::from([("default".to_string(), Arc::new(LyingSink) as Arc<dyn Sink>)]),
        dlq: Arc::new(DeadLetter::new(dlq_sink.clone(), "p", "t")),
        transforms: Arc::new(Vec::new()),
        retries: BTreeMap::new(),
        dlq_retry: Retry::default(),
        turns: Turns::default(),
        metrics: crate::metrics::PipelineMetrics::detached("p", "t"),
        module_header: false,
        source_json: false,
    };
    let submitted = delivery
        .submit(Processed { job, chain })
        .await
        .map_err(|(_, e)| e)
        .expect("submitted");
    let (done, _) = delivery.finish(submitted, true).await;
    let err = done.outcome.expect_err("the run stops");
    assert!(
        matches!(err, PipelineError::Internal(_))
            && err
                .to_string()
                .contains("rejected record 7 of a write of 1"),
        "{err}"
    );
    assert!(
        dlq_sink
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty(),
        "nothing is written as if it were handled"
    );
}

/// A sink that writes every other record the first time and everything
/// the second: a retry must write only what failed.
#[derive(Default)]
struct HalfThenAll {
    calls: std::sync::Mutex<Vec<Vec<Record>>>,
    lineages: std::sync::Mutex<Vec<Lineage>>,
}

#[async_trait::async_trait]
impl Sink for HalfThenAll {
    async fn submit(&self, batch: SinkBatch) -> Result<Pending, SinkError> {
        let records = batch.records;
        self.lineages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(batch.lineage);
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.push(records.clone());
        if calls.len() == 1 {
            let failed: Vec<usize> = (0..records.len()).filter(|i| i % 2 == 1).collect();
            return Ok(Box::pin(std::future::ready(Err(SinkError::Partial {
                sink: "half".into(),
                message: "broker away".into(),
                transient: true,
                failed,
                rejects: vec![Reject {
                    index: 0,
                    reason: "too large".into(),
                }],
            }))));
        }
        // The second write: its record 1 is refused for itself.
        Ok(crate::sink::ready(vec![Reject {
            index: 1,
            reason: "refused".into(),
        }]))
    }
    fn describe(&self) -> String {
        "half".into()
    }
}

#[tokio::test]
async fn a_retry_writes_only_what_was_not_written() {
    let sink = Arc::new(HalfThenAll::default());
    let records: Vec<Record> = (0..6)
        .map(|i| Record::from_value(format!("{i}").into_bytes()))
        .collect();
    let delivery = Delivery {
        sinks: BTreeMap::new(),
        dlq: Arc::new(DeadLetter::new(Arc::new(Keep::default()), "p", "t")),
        transforms: Arc::new(Vec::new()),
        retries: BTreeMap::new(),
        dlq_retry: Retry::default(),
        turns: Turns::default(),
        metrics: crate::metrics::PipelineMetrics::detached("p", "t"),
        module_header: false,
        source_json: false,
    };
    let part = Partition {
        stream: Arc::from("orders"),
        partition: 3,
    };
    let lineage = Lineage {
        positions: (0..6)
            .map(|i| Position {
                partition: part.clone(),
                offset: 100 + i,
            })
            .collect(),
        modules: (0..6)
            .map(|i| (i % 2 == 0).then(|| Arc::from("sha256:even")))
            .collect(),
        ..Default::default()
    };
    assert_eq!(
        lineage.spans(),
        BTreeMap::from([(part.clone(), (100, 105))])
    );
    let mut write = Write {
        output: "default".into(),
        sink: sink.clone(),
        records: records.clone(),
        meta: (0..6).map(|i| (i, None)).collect(),
        pending: sink
            .submit(SinkBatch {
                records: records.clone(),
                lineage: lineage.clone(),
            })
            .await
            .expect("submit"),
        lineage,
        submitted: std::time::Instant::now(),
    };
    let rejects = delivery
        .await_write(&mut write, true, 0)
        .await
        .expect("written");
    let calls = sink.calls.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(calls.len(), 2);
    let values = |batch: &[Record]| -> Vec<String> {
        batch
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            .collect()
    };
    assert_eq!(
        values(&calls[1]),
        vec!["1", "3", "5"],
        "only the failed records again"
    );
    // Record 0 refused in the first write, record 3 (index 1 of the
    // retry) in the second: both in the whole write's numbering.
    let idx: Vec<usize> = rejects.rejects.iter().map(|r| r.index).collect();
    assert_eq!(idx, vec![0, 3]);
    // The retry's lineage is that of the records it carries.
    let lineages = sink.lineages.lock().unwrap_or_else(|e| e.into_inner());
    let offsets: Vec<i64> = lineages[1].positions.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![101, 103, 105]);
    assert_eq!(lineages[1].modules, vec![None, None, None]);
    assert_eq!(lineages[0].modules[0].as_deref(), Some("sha256:even"));
}

/// What a sink is given says where each record came from and which
/// module made it.
#[tokio::test]
async fn sinks_see_the_lineage_of_what_they_write() {
    let part = Partition {
        stream: Arc::from("s"),
        partition: 1,
    };
    let items: Vec<SourceItem> = (0..3)
        .map(|i| {
            SourceItem::Record(SourceRecord {
                record: Record::from_value(&b"{}"[..]),
                position: Position {
                    partition: part.clone(),
                    offset: 40 + i,
                },
            })
        })
        .collect();
    let job = Job {
        partition: part.clone(),
        epoch: 0,
        items,
        bytes: 6,
        dispatched: std::time::Instant::now(),
        seq: 0,
    };
    let routed = |origin: usize, from: Option<usize>| super::super::chain::Routed {
        record: Record::from_value(&b"{\"out\":1}"[..]),
        origin,
        from,
    };
    let chain = ChainResult {
        outputs: BTreeMap::from([(
            "default".to_string(),
            vec![routed(2, Some(1)), routed(0, Some(0)), routed(0, None)],
        )]),
        dead: Vec::new(),
        steps: Vec::new(),
        digests: vec![Arc::from("sha256:aaa"), Arc::from("sha256:bbb")],
    };
    let sink = Arc::new(HalfThenAll::default());
    let delivery = Delivery {
        sinks: BTreeMap::from([("default".to_string(), sink.clone() as Arc<dyn Sink>)]),
        dlq: Arc::new(DeadLetter::new(Arc::new(Keep::default()), "p", "t")),
        transforms: Arc::new(vec![
            TransformInfo {
                name: "a".into(),
                digest: "sha256:aaa".into(),
            },
            TransformInfo {
                name: "b".into(),
                digest: "sha256:bbb".into(),
            },
        ]),
        retries: BTreeMap::new(),
        dlq_retry: Retry::default(),
        turns: Turns::default(),
        metrics: crate::metrics::PipelineMetrics::detached("p", "t"),
        module_header: false,
        source_json: false,
    };
    let _ = delivery
        .submit(Processed { job, chain })
        .await
        .map_err(|(_, e)| e)
        .expect("submitted");
    let lineages = sink.lineages.lock().unwrap_or_else(|e| e.into_inner());
    let l = &lineages[0];
    let offsets: Vec<i64> = l.positions.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![42, 40, 40]);
    let modules: Vec<Option<&str>> = l.modules.iter().map(|m| m.as_deref()).collect();
    assert_eq!(modules, vec![Some("sha256:bbb"), Some("sha256:aaa"), None]);
    assert_eq!(l.spans(), BTreeMap::from([(part, (40, 42))]));
}

#[tokio::test]
async fn a_retry_waits_until_every_earlier_batch_is_finished() {
    let turns = Arc::new(Turns::default());
    let (a, b, c) = (turns.take(), turns.take(), turns.take());
    assert_eq!((a, b, c), (0, 1, 2));
    let waiting = {
        let turns = turns.clone();
        tokio::spawn(async move { turns.wait_for(c).await })
    };
    // The batch before it finishes first, the first one still retries.
    turns.finish(b);
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "batch 0 is not finished yet");
    turns.finish(a);
    tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("its turn came")
        .expect("task");
    // The first batch never waits.
    tokio::time::timeout(std::time::Duration::from_secs(10), turns.wait_for(0))
        .await
        .expect("no wait");
}

#[test]
fn backoff_grows_is_capped_and_jittered() {
    let r = Retry {
        attempts: 10,
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
        max_elapsed: Duration::from_secs(60),
    };
    for attempt in 2..12 {
        let d = r.backoff(attempt);
        let full = Duration::from_millis(100)
            .saturating_mul(1 << (attempt - 2))
            .min(Duration::from_secs(1));
        assert!(
            d >= full / 2 && d <= full,
            "attempt {attempt}: {d:?} vs {full:?}"
        );
    }
}
