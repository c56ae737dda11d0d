use super::*;
use crate::record::Position;

const GOLDEN_WORKERS: [usize; 8] = [0, 3, 3, 2, 0, 1, 0, 0];

#[test]
fn a_partition_always_maps_to_the_same_worker() {
    let p = |n| Partition {
        stream: Arc::from("t"),
        partition: n,
    };
    // Equal partitions from separate allocations (a topic name arrives
    // anew with each record) map to the same worker: the mapping hashes
    // the name, not where it is stored.
    let first: Vec<usize> = (0..50).map(|n| worker_of(&p(n), 4)).collect();
    let again: Vec<usize> = (0..50)
        .map(|n| {
            let fresh = Partition {
                stream: Arc::from(String::from("t").as_str()),
                partition: n,
            };
            worker_of(&fresh, 4)
        })
        .collect();
    assert_eq!(first, again);
    assert!(first.iter().all(|&w| w < 4));
    // Fixed hash keys, not a per-process random seed: the same mapping
    // in every run (these values were computed once), so a run can be
    // reproduced worker by worker.
    let golden: Vec<usize> = (0..8).map(|n| worker_of(&p(n), 4)).collect();
    assert_eq!(golden, GOLDEN_WORKERS.to_vec());
    let used: BTreeSet<usize> = (0..50).map(|n| worker_of(&p(n), 4)).collect();
    assert_eq!(used.len(), 4, "partitions spread over the workers");
}

/// The parts of a session over `events`: one output, `default`, to
/// `sink`, a dead-letter sink that holds, no transforms, one worker, the
/// watermark guarantee, commits at once.
fn holding_parts(
    events: mpsc::UnboundedReceiver<Result<SourceEvent, crate::source::SourceError>>,
    control: Arc<dyn SourceControl>,
    sink: Arc<HoldingSink>,
    budget: Arc<Budget>,
    max_records: usize,
) -> (SessionParts, Arc<Live>) {
    let metrics = PipelineMetrics::new(Arc::new(crate::metrics::Metrics::new()), "p", "t");
    let live = Live::new("p", "t", "test".into(), Vec::new(), metrics.clone());
    let holding: Arc<dyn crate::sink::Sink> = sink;
    let delivery = Delivery {
        sinks: [("default".to_string(), holding)].into_iter().collect(),
        dlq: Arc::new(crate::dlq::DeadLetter::new(
            Arc::new(HoldingSink::default()),
            "p",
            "t",
        )),
        transforms: Arc::new(Vec::new()),
        retries: Default::default(),
        dlq_retry: crate::retry::Retry::default(),
        turns: Default::default(),
        metrics,
        module_header: false,
        source_json: false,
    };
    let parts = SessionParts {
        source: RunningSource { events, control },
        delivery,
        committer: Arc::new(crate::pipeline::commit::watermark::Watermark),
        workers: vec![Arc::new(Mutex::new(Vec::new()))],
        pin_partitions: false,
        outputs: Arc::new(["default".to_string()].into_iter().collect()),
        budget,
        policy: BatchPolicy {
            max_records,
            max_bytes: 1 << 20,
            max_wait_ms: 10,
        },
        drain_timeout: Duration::from_secs(30),
        commit_interval: Duration::ZERO,
        pipeline: "p".into(),
        breaker: Arc::new(Breaker::new(Default::default())),
        live: live.clone(),
    };
    (parts, live)
}

/// A sink that holds every record until it is flushed (a file that
/// closes only at shutdown), and says which records are durable.
#[derive(Default)]
struct HoldingSink {
    held: Mutex<Vec<(Vec<String>, tokio::sync::oneshot::Sender<()>)>>,
    durable: Arc<Mutex<BTreeSet<String>>>,
    flushes: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl crate::sink::Sink for HoldingSink {
    async fn submit(
        &self,
        batch: crate::sink::SinkBatch,
    ) -> Result<crate::sink::Pending, crate::sink::SinkError> {
        let values: Vec<String> = batch
            .records
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into())
            .collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.held.lock().expect("lock").push((values, tx));
        let held: crate::sink::Durable = Box::pin(async move {
            rx.await.map_err(|_| crate::sink::SinkError::Config {
                sink: "holding".into(),
                message: "dropped".into(),
            })
        });
        Ok(Box::pin(std::future::ready(Ok(crate::sink::Accepted {
            rejects: Vec::new(),
            held: Some(held),
        }))))
    }

    fn describe(&self) -> String {
        "holding".into()
    }

    async fn flush(&self) -> Result<(), crate::sink::SinkError> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let held: Vec<_> = self.held.lock().expect("lock").drain(..).collect();
        for (values, tx) in held {
            self.durable.lock().expect("lock").extend(values);
            let _ = tx.send(());
        }
        Ok(())
    }
}

/// A source taking per-item acknowledgements: it checks that each
/// acknowledged item is durable in the sink, and counts acknowledgements
/// per item.
struct AckingControl {
    durable: Arc<Mutex<BTreeSet<String>>>,
    acks: Mutex<std::collections::BTreeMap<i64, usize>>,
    /// Items acknowledged before durable; commits (negated) past an
    /// item not durable.
    early: Mutex<Vec<i64>>,
    commits: Mutex<Vec<(Partition, i64)>>,
}

#[async_trait::async_trait]
impl SourceControl for AckingControl {
    async fn commit(&self, offsets: &[(Partition, i64)]) -> Result<(), crate::source::SourceError> {
        let durable = self.durable.lock().expect("lock").clone();
        for (_, next) in offsets {
            if (0..*next).any(|o| !durable.contains(&o.to_string())) {
                self.early.lock().expect("lock").push(-*next);
            }
        }
        self.commits
            .lock()
            .expect("lock")
            .extend_from_slice(offsets);
        Ok(())
    }
    async fn close(&self, offsets: &[(Partition, i64)]) -> Result<(), crate::source::SourceError> {
        self.commit(offsets).await
    }
    fn acknowledgement(&self) -> Acknowledgement {
        Acknowledgement::PerItem
    }
    async fn acknowledge(&self, positions: &[Position]) -> Result<(), crate::source::SourceError> {
        let durable = self.durable.lock().expect("lock").clone();
        for p in positions {
            *self.acks.lock().expect("lock").entry(p.offset).or_default() += 1;
            if !durable.contains(&p.offset.to_string()) {
                self.early.lock().expect("lock").push(p.offset);
            }
        }
        Ok(())
    }
    fn describe(&self) -> String {
        "acking".into()
    }
}

/// The two seams together: a source that wants every item acknowledged
/// on its own, and a sink that acknowledges later than submit (it holds
/// everything until it is flushed). The in-flight budget (10 records)
/// is far smaller than what the sink holds (all 200): the source is not
/// stalled by it, because the budget is freed when the sink takes a
/// batch; yet no item is acknowledged, nor its position committed,
/// before the sink has made it durable — which it does when the drained
/// session flushes it.
#[tokio::test]
async fn a_sink_that_holds_records_frees_the_budget_and_items_are_acknowledged_once_durable() {
    let sink = Arc::new(HoldingSink::default());
    let control = Arc::new(AckingControl {
        durable: sink.durable.clone(),
        acks: Mutex::default(),
        early: Mutex::default(),
        commits: Mutex::default(),
    });
    let budget = Arc::new(Budget::new(10, 1 << 20));
    let (tx, events) = mpsc::unbounded_channel();
    let part = Partition {
        stream: Arc::from("s"),
        partition: 0,
    };
    let feeder = {
        let budget = budget.clone();
        let part = part.clone();
        tokio::spawn(async move {
            for offset in 0..200i64 {
                let record = crate::record::Record::from_value(offset.to_string());
                budget.acquire(record.size()).await;
                let item = SourceItem::Record(crate::record::SourceRecord {
                    record,
                    position: Position {
                        partition: part.clone(),
                        offset,
                    },
                });
                if tx.send(Ok(SourceEvent::Item(item))).is_err() {
                    return;
                }
            }
        })
    };
    let (parts, live) = holding_parts(events, control.clone(), sink.clone(), budget.clone(), 5);
    let mut summary = Summary::default();
    let never = std::future::pending::<()>();
    tokio::pin!(never);
    let mut shutdown: Pin<&mut (dyn Future<Output = ()> + Send)> = never;
    // A liveness guard, not a measurement: before the seam, this run
    // never ended (the held batches kept the budget spent).
    let end = tokio::time::timeout(
        Duration::from_secs(60),
        run(parts, &mut summary, &mut shutdown),
    )
    .await
    .expect("the session ends: the held batches did not stall the source")
    .expect("the session succeeds");
    assert_eq!(end, SessionEnd::Drained);
    feeder.await.expect("feeder");
    assert_eq!(summary.records_in, 200);
    assert_eq!(summary.outputs.get("default"), Some(&200));
    assert_eq!(sink.durable.lock().expect("lock").len(), 200);
    assert!(sink.flushes.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let acks = control.acks.lock().expect("lock").clone();
    assert_eq!(acks.len(), 200, "every item acknowledged");
    assert!(
        acks.values().all(|&n| n == 1),
        "each exactly once: {acks:?}"
    );
    assert!(
        control.early.lock().expect("lock").is_empty(),
        "acknowledged before durable: {:?}",
        control.early.lock().expect("lock")
    );
    // The watermark is committed too, to the end, and never past a
    // record that was only held (checked by the control at each commit:
    // `early` holds such commits as negative numbers).
    let commits = control.commits.lock().expect("lock").clone();
    assert_eq!(commits.last(), Some(&(part.clone(), 200)), "{commits:?}");
    assert_eq!(budget.in_flight(), (0, 0));
    assert_eq!(live.snapshot().held_records, 0);
}

/// A Kafka-like source's control: commits are logged.
#[derive(Default)]
struct CommitLog {
    commits: Mutex<Vec<(Partition, i64)>>,
}

#[async_trait::async_trait]
impl SourceControl for CommitLog {
    async fn commit(&self, offsets: &[(Partition, i64)]) -> Result<(), crate::source::SourceError> {
        self.commits
            .lock()
            .expect("lock")
            .extend_from_slice(offsets);
        Ok(())
    }
    async fn close(&self, offsets: &[(Partition, i64)]) -> Result<(), crate::source::SourceError> {
        self.commit(offsets).await
    }
    fn describe(&self) -> String {
        "commit log".into()
    }
}

/// A partition lost in a broker outage (the member's session lapsed)
/// keeps its records in flight: they are still delivered, nothing is
/// committed for the partition while it is lost, the pipeline answers
/// with where to read on, and once the partition is ours again the
/// records read after that point follow — each record written once
/// (before, the in-flight work was dropped and the whole of it read and
/// written again from the committed offset).
#[tokio::test]
async fn a_lost_partition_given_back_reads_on_after_its_records_in_flight() {
    let sink = Arc::new(HoldingSink::default());
    let control = Arc::new(CommitLog::default());
    let budget = Arc::new(Budget::new(1000, 1 << 20));
    let (tx, events) = mpsc::unbounded_channel();
    let part = Partition {
        stream: Arc::from("s"),
        partition: 0,
    };
    let item = |offset: i64| {
        let record = crate::record::Record::from_value(offset.to_string());
        budget.try_acquire(record.size());
        SourceItem::Record(crate::record::SourceRecord {
            record,
            position: Position {
                partition: part.clone(),
                offset,
            },
        })
    };
    for offset in 0..100 {
        tx.send(Ok(SourceEvent::Item(item(offset)))).expect("send");
    }
    let (done, answer) = tokio::sync::oneshot::channel();
    tx.send(Ok(SourceEvent::Revoke(Revocation {
        partitions: vec![part.clone()],
        lost: true,
        done,
    })))
    .expect("send");
    let (parts, _live) = holding_parts(events, control.clone(), sink.clone(), budget.clone(), 10);
    let session = tokio::spawn(async move {
        let mut summary = Summary::default();
        let never = std::future::pending::<()>();
        tokio::pin!(never);
        let mut shutdown: Pin<&mut (dyn Future<Output = ()> + Send)> = never;
        let end = run(parts, &mut summary, &mut shutdown).await;
        (end.map_err(|e| e.to_string()), summary)
    });
    let resume = tokio::time::timeout(Duration::from_secs(30), answer)
        .await
        .expect("the lost revocation is answered at once")
        .expect("answered");
    assert_eq!(resume, vec![(part.clone(), 100)], "read on after offset 99");
    // The held records become durable while the partition is lost:
    // nothing is committed for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.held.lock().expect("lock").len() < 10 {
        assert!(
            Instant::now() < deadline,
            "the in-flight batches reach the sink"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    crate::sink::Sink::flush(sink.as_ref())
        .await
        .expect("flush");
    assert!(
        control.commits.lock().expect("lock").is_empty(),
        "committed while lost: {:?}",
        control.commits.lock().expect("lock")
    );
    // Ours again: records from 100 on follow, and commits resume.
    tx.send(Ok(SourceEvent::Regained(vec![part.clone()])))
        .expect("send");
    for offset in 100..150 {
        tx.send(Ok(SourceEvent::Item(item(offset)))).expect("send");
    }
    drop(tx);
    let (end, summary) = tokio::time::timeout(Duration::from_secs(60), session)
        .await
        .expect("the session ends")
        .expect("joined");
    assert_eq!(end, Ok(SessionEnd::Drained));
    assert_eq!(summary.records_in, 150);
    assert_eq!(
        summary.outputs.get("default"),
        Some(&150),
        "none sent twice"
    );
    let durable = sink.durable.lock().expect("lock").clone();
    assert_eq!(durable.len(), 150, "each record written, once");
    let commits = control.commits.lock().expect("lock").clone();
    assert_eq!(commits.last(), Some(&(part.clone(), 150)), "{commits:?}");
}
