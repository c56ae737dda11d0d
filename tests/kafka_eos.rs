//! End-to-end: exactly-once, Kafka to Kafka.
//!
//! Exactly-once needs a broker with transactions: tansu 0.6.0 has none (no
//! `EndTxn`). These tests run against **librdkafka's mock cluster**
//! (`rdkafka::mocking::MockCluster`, in the test process), or against a real
//! Kafka when `SLUICE_KAFKA_TXN_BOOTSTRAP=host:port` is set, unchanged.
//!
//! The mock cluster of librdkafka 2.12.1 has a transaction coordinator
//! (producer ids, epochs, fencing, `EndTxn`) but **accepts consumer offsets
//! sent in a transaction without storing them, writes no commit or abort
//! markers and returns no aborted-transaction list**, so a `read_committed`
//! reader sees aborted records and a restarted consumer starts over; and it
//! **gives every `init_transactions` a new producer id**, so a newer instance
//! does not fence an older one with the same transactional id. The
//! canary test [`the_mock_cluster_gaps_that_limit_these_tests`] pins those
//! gaps (and fails, asking for stricter assertions, the day they close).
//! Against the mock, the tests below assert what it can show: one clean
//! transactional run writes every record exactly once, a producer the
//! coordinator fences stops (the fencing answer is injected), a timed-out transaction is aborted and the session rebuilt,
//! and no record is ever lost. Against a real Kafka they also assert that
//! every record is committed exactly once, in order per key, across
//! `kill -9`, fencing and aborts.

use sluice_e2e::broker;
use sluice_e2e::process::Sluice;
use sluice_e2e::scenario::{
    Cluster, Rng, Topics, distinct, first_occurrences_out_of_order, kafka_pipeline, numbered,
    out_of_order_keys, tally, until_distinct, wait_for_log,
};
use std::sync::Mutex;
use std::time::Duration;

static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn cluster() -> Cluster {
    let c = Cluster::transactional();
    eprintln!(
        "exactly-once test against {} (tansu has no transactions; set SLUICE_KAFKA_TXN_BOOTSTRAP for a real Kafka)",
        c.describe()
    );
    c
}

fn eos(id: &str, timeout_ms: u64) -> String {
    format!(
        "[batch]\nmax_records = 200\nmax_wait_ms = 200\n[delivery]\nguarantee = \"exactly-once\"\ntransactional_id = \"{id}\"\ntransaction_timeout_ms = {timeout_ms}\nmax_in_flight_records = 1000"
    )
}

/// Reads the whole output with read_committed. Always: nothing lost.
/// `exactly_once`: also no duplicate and every key in input order.
/// Reads the output back (read_committed) and checks it: nothing lost and,
/// per key, records first written in input order, always; with
/// `exactly_once` (a real Kafka, or a scenario without aborts and restarts
/// on the mock), no record twice and every key strictly in order. What the
/// mock cannot show is a printed, counted skip.
fn verify(cluster: &Cluster, t: &Topics, n: usize, exactly_once: bool, what: &str) {
    let got = broker::consume_all(
        &cluster.bootstrap(),
        &t.output,
        true,
        Duration::from_secs(5),
        Duration::from_secs(180),
    );
    let (missing, duplicates) = tally(&got, n);
    let disorder = out_of_order_keys(&got);
    let first_disorder = first_occurrences_out_of_order(&got);
    eprintln!(
        "{what} on {}: {n} records in, {} committed outputs, {} missing, {duplicates} duplicates, {} keys out of order ({} counting first occurrences)",
        cluster.describe(),
        got.len(),
        missing.len(),
        disorder.len(),
        first_disorder.len()
    );
    assert!(
        missing.is_empty(),
        "lost: {:?}",
        &missing[..missing.len().min(10)]
    );
    assert!(
        first_disorder.is_empty(),
        "keys whose records were first written out of order: {first_disorder:?}"
    );
    if exactly_once {
        assert_eq!(duplicates, 0, "exactly once: no record twice");
        assert!(disorder.is_empty(), "keys out of order: {disorder:?}");
    } else {
        sluice_e2e::skip(
            what,
            &format!("no duplicate and strict per-key order ({duplicates} duplicates seen)"),
            "the mock cluster shows aborted records to read_committed readers and drops offsets sent in transactions, so a restart reads from the start; set SLUICE_KAFKA_TXN_BOOTSTRAP for a real Kafka",
        );
    }
}

fn real(cluster: &Cluster) -> bool {
    matches!(cluster, Cluster::Real(_))
}

/// Checks the checker: documents, with evidence, what the mock cluster
/// lacks. On a real Kafka it asserts the behaviour the other tests rely on.
#[test]
fn the_mock_cluster_gaps_that_limit_these_tests() {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let _one = heavy();
    let cluster = cluster();
    let b = cluster.bootstrap();
    let topic = broker::unique("aborted");
    let group = broker::unique("txn-offsets");
    cluster.topic(&topic, 1);
    // A group member, so that offsets can be sent in a transaction.
    let member: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    member.subscribe(&[topic.as_str()]).expect("subscribe");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while member.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        assert!(std::time::Instant::now() < deadline, "no assignment");
        let _ = member.poll(Duration::from_millis(100));
    }
    let producer_id = broker::unique("checker");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("transactional.id", producer_id.as_str())
        .create()
        .expect("producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init");
    for (commit, base) in [(false, 0), (true, 100)] {
        producer.begin_transaction().expect("begin");
        for i in 0..10 {
            let v = format!("{{\"n\":{}}}", base + i);
            producer
                .send(BaseRecord::<str, str>::to(&topic).payload(&v))
                .expect("send");
        }
        producer.flush(Duration::from_secs(30)).expect("flush");
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&topic, 0, Offset::Offset(base as i64 + 7))
            .expect("offset");
        producer
            .send_offsets_to_transaction(
                &offsets,
                &member.group_metadata().expect("group metadata"),
                Duration::from_secs(30),
            )
            .expect("offsets in transaction");
        if commit {
            producer
                .commit_transaction(Duration::from_secs(30))
                .expect("commit");
        } else {
            producer
                .abort_transaction(Duration::from_secs(30))
                .expect("abort");
        }
    }
    // A newer producer with the same transactional id fences the older one.
    let newer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("transactional.id", producer_id.as_str())
        .create()
        .expect("newer producer");
    newer
        .init_transactions(Duration::from_secs(30))
        .expect("init newer");
    producer.begin_transaction().expect("begin");
    producer
        .send(BaseRecord::<str, str>::to(&topic).payload("{\"n\":999}"))
        .expect("send");
    let _ = producer.flush(Duration::from_secs(30));
    let zombie = producer.commit_transaction(Duration::from_secs(30));
    eprintln!(
        "{}: the older producer's commit after a newer init: {zombie:?}",
        cluster.describe()
    );
    let got = broker::consume_all(
        &b,
        &topic,
        true,
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    let seen: Vec<usize> = got
        .iter()
        .filter_map(sluice_e2e::scenario::number)
        .collect();
    let committed = broker::committed(&b, &group, &topic);
    eprintln!(
        "{}: read_committed sees {:?}; the group's committed offsets: {committed:?}",
        cluster.describe(),
        seen
    );
    let committed_only: Vec<usize> = (100..110).collect();
    if real(&cluster) {
        assert!(zombie.is_err(), "a newer instance fences the older one");
        assert_eq!(seen, committed_only, "aborted records are hidden");
        assert_eq!(
            committed,
            vec![(0, 107)],
            "offsets committed with the transaction"
        );
    } else {
        assert!(
            zombie.is_ok(),
            "the mock cluster gives a newer instance a new producer id and does not fence the older one; if it fences now, test fencing without injected errors"
        );
        assert_eq!(
            seen.len(),
            21,
            "the mock cluster shows aborted records to read_committed readers; if it stops doing so, make the exactly-once tests strict on it"
        );
        assert!(
            committed.iter().all(|(_, o)| *o < 0),
            "the mock cluster drops offsets sent in a transaction ({committed:?}); if it stores them now, make the exactly-once tests strict on it"
        );
    }
}

#[test]
fn a_clean_transactional_run_writes_every_record_exactly_once() {
    let _one = heavy();
    let cluster = cluster();
    let b = cluster.bootstrap();
    const N: usize = 30_000;
    let t = cluster.topics("eos-clean", 4);
    broker::produce(&b, &t.input, numbered(N, 300));
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = format!("[outputs.default.kafka]\ntopic = \"{}\"", t.output);
    let pipeline = kafka_pipeline(
        dir.path(),
        &b,
        &t,
        &sink,
        &eos(&broker::unique("clean"), 60_000),
    );
    let log = dir.path().join("sluice.log");
    let mut s = Sluice::start(&sluice_e2e::sluice_bin!(), &pipeline, &log, &[], false);
    let done = broker::consume(
        &b,
        &t.output,
        true,
        Duration::from_secs(240),
        until_distinct(N),
    );
    let status = s.terminate(Duration::from_secs(60));
    assert!(
        distinct(&done) >= N,
        "not all records came through:\n{}",
        s.log_tail(40)
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        s.log_tail(30)
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("initialising transactions"),
        "{}",
        s.log_tail(30)
    );
    // Without faults the mock shows nothing aborted: the output must hold
    // every record exactly once here too.
    verify(&cluster, &t, N, true, "clean transactional run");
}

#[test]
fn kill_9_at_random_points_loses_nothing_and_is_exactly_once_on_real_kafka() {
    let _one = heavy();
    let cluster = cluster();
    let b = cluster.bootstrap();
    const N: usize = 100_000;
    let t = cluster.topics("eos", 4);
    broker::produce(&b, &t.input, numbered(N, 1000));
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = format!("[outputs.default.kafka]\ntopic = \"{}\"", t.output);
    let id = broker::unique("eos-txn");
    let pipeline = kafka_pipeline(dir.path(), &b, &t, &sink, &eos(&id, 60_000));
    let log = dir.path().join("sluice.log");
    let mut rng = Rng::new();
    for round in 0..5 {
        let mut s = Sluice::start(&sluice_e2e::sluice_bin!(), &pipeline, &log, &[], false);
        assert!(
            wait_for_log(&s, "partitions assigned", Duration::from_secs(60)),
            "round {round}: no partitions assigned:\n{}",
            s.log_tail(30)
        );
        let after = Duration::from_millis(500 + rng.below(3_000));
        std::thread::sleep(after);
        assert!(
            s.running(),
            "round {round}: sluice exited early:\n{}",
            s.log_tail(30)
        );
        s.kill9();
        std::fs::write(&log, format!("--- killed with SIGKILL after {after:?}\n")).expect("log");
    }
    let mut s = Sluice::start(&sluice_e2e::sluice_bin!(), &pipeline, &log, &[], false);
    let done = broker::consume(
        &b,
        &t.output,
        true,
        Duration::from_secs(300),
        until_distinct(N),
    );
    let status = s.terminate(Duration::from_secs(60));
    assert!(
        distinct(&done) >= N,
        "not all records came through:\n{}",
        s.log_tail(40)
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        s.log_tail(30)
    );
    verify(
        &cluster,
        &t,
        N,
        real(&cluster),
        "5 kills with SIGKILL, transactions on",
    );
}

/// A zombie (an instance that lost its transactional id to a newer one but
/// still runs) must stop at its next transactional call, never write again.
/// On a real Kafka the newer instance fences it by calling
/// `init_transactions` with the same id. The mock cluster gives each
/// `init_transactions` a new producer id instead of bumping the epoch (see
/// the canary test), so there the coordinator's fencing answer
/// (`PRODUCER_FENCED` on `EndTxn`) is injected, and the newer instance starts
/// once the zombie is gone.
#[test]
fn a_fenced_instance_stops_and_a_newer_one_finishes_the_work() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let _one = heavy();
    let cluster = cluster();
    let b = cluster.bootstrap();
    const N: usize = 30_000;
    let t = cluster.topics("fence", 4);
    broker::produce(&b, &t.input, numbered(N, 300));
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = format!("[outputs.default.kafka]\ntopic = \"{}\"", t.output);
    // Both processes claim the same transactional id: the second is the
    // restarted incarnation of the first.
    let id = broker::unique("fence-txn");
    let pipeline = kafka_pipeline(dir.path(), &b, &t, &sink, &eos(&id, 60_000));
    let (log_old, log_new) = (dir.path().join("old.log"), dir.path().join("new.log"));
    let mut old = Sluice::start(&sluice_e2e::sluice_bin!(), &pipeline, &log_old, &[], false);
    assert!(
        wait_for_log(&old, "partitions assigned", Duration::from_secs(60)),
        "{}",
        old.log_tail(30)
    );
    std::thread::sleep(Duration::from_millis(1000));
    let mut new = match &cluster {
        Cluster::Mock(mock) => {
            eprintln!(
                "mock cluster: fencing simulated by the coordinator answering PRODUCER_FENCED to EndTxn"
            );
            mock.request_errors(
                RDKafkaApiKey::EndTxn,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
            );
            None
        }
        _ => Some(Sluice::start(
            &sluice_e2e::sluice_bin!(),
            &pipeline,
            &log_new,
            &[],
            false,
        )),
    };
    let old_status = old.wait(Duration::from_secs(120));
    let old_log = std::fs::read_to_string(&log_old).unwrap_or_default();
    eprintln!("zombie exited with {old_status:?}");
    assert!(
        old_status.is_some_and(|s| !s.success()),
        "the fenced instance must stop with an error: {old_status:?}\n{}",
        old.log_tail(30)
    );
    assert!(
        old_log.contains("fenced"),
        "the fenced instance says why:\n{}",
        old.log_tail(30)
    );
    let mut new = new.take().unwrap_or_else(|| {
        Sluice::start(&sluice_e2e::sluice_bin!(), &pipeline, &log_new, &[], false)
    });
    let done = broker::consume(
        &b,
        &t.output,
        true,
        Duration::from_secs(240),
        until_distinct(N),
    );
    let new_status = new.terminate(Duration::from_secs(60));
    assert!(
        distinct(&done) >= N,
        "not all records came through:\n{}",
        new.log_tail(40)
    );
    assert!(
        new_status.is_some_and(|s| s.success()),
        "{new_status:?}\n{}",
        new.log_tail(30)
    );
    verify(&cluster, &t, N, real(&cluster), "fenced zombie");
}

#[test]
fn a_transaction_that_times_out_is_aborted_and_the_session_rebuilt() {
    let _one = heavy();
    let cluster = cluster();
    let Cluster::Mock(mock) = &cluster else {
        sluice_e2e::skip(
            "a_transaction_that_times_out_is_aborted_and_the_session_rebuilt",
            "the whole test",
            "slowing the brokers down needs librdkafka's mock cluster, not a real Kafka",
        );
        return;
    };
    let b = cluster.bootstrap();
    const N: usize = 20_000;
    let t = cluster.topics("txn-timeout", 2);
    broker::produce(&b, &t.input, numbered(N, 100));
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = format!("[outputs.default.kafka]\ntopic = \"{}\"", t.output);
    // Transactions may stay open 2 s; the brokers are then made to answer
    // in 3 s, so the open transaction times out.
    let pipeline = kafka_pipeline(
        dir.path(),
        &b,
        &t,
        &sink,
        &eos(&broker::unique("timeout"), 2_000),
    );
    let log = dir.path().join("sluice.log");
    let mut s = Sluice::start(&sluice_e2e::sluice_bin!(), &pipeline, &log, &[], false);
    assert!(
        wait_for_log(&s, "partitions assigned", Duration::from_secs(60)),
        "{}",
        s.log_tail(30)
    );
    std::thread::sleep(Duration::from_millis(800));
    for broker_id in 1..=3 {
        mock.broker_round_trip_time(broker_id, Duration::from_secs(3))
            .expect("slow broker");
    }
    let aborted = wait_for_log(&s, "transaction failed: aborting", Duration::from_secs(60));
    for broker_id in 1..=3 {
        mock.broker_round_trip_time(broker_id, Duration::ZERO)
            .expect("fast broker");
    }
    let done = broker::consume(
        &b,
        &t.output,
        true,
        Duration::from_secs(240),
        until_distinct(N),
    );
    let status = s.terminate(Duration::from_secs(60));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        aborted,
        "a transaction timed out and was aborted:\n{}",
        s.log_tail(40)
    );
    assert!(
        text.contains("starting again from the committed offsets"),
        "the session restarted with a new producer:\n{}",
        s.log_tail(40)
    );
    assert!(
        distinct(&done) >= N,
        "not all records came through:\n{}",
        s.log_tail(40)
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        s.log_tail(30)
    );
    verify(&cluster, &t, N, false, "transaction timeout");
}

/// Hot deploy and rollback through the admin API of a `sluice serve` whose
/// pipeline is exactly-once, while records stream in: the output, read
/// committed, holds every record once (what the mock cluster can show of
/// exactly-once in a crash-free run, as above), each tagged with the
/// version that processed it.
#[test]
fn a_deploy_and_a_rollback_keep_an_exactly_once_pipeline_exactly_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let _one = heavy();
    let cluster = cluster();
    let b = cluster.bootstrap();
    let t = cluster.topics("eos-deploy", 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).expect("dir");
    let sink = format!("[outputs.default.kafka]\ntopic = \"{}\"", t.output);
    let extra = format!(
        "{}\nmodule_header = true",
        eos(&broker::unique("deploy"), 60_000)
    );
    kafka_pipeline(&pipelines, &b, &t, &sink, &extra);
    const TOKEN: &str = "eos-admin-token-0123456789";
    std::fs::write(dir.path().join("token"), TOKEN).expect("token");
    let host =
        sluice_e2e::Lab::at(dir.path()).host_file("token_file = \"token\"\ninstance_slots = 20");
    let log = dir.path().join("host.log");
    let mut s = Sluice::serve(&sluice_e2e::sluice_bin!(), &host, &log, &[]);
    let json = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let addr = loop {
        if let Some(a) = s.listen_address()
            && sluice_e2e::http_get(&a, "/api/pipelines/kafka-e2e", Some(TOKEN))
                .is_ok_and(|(c, b)| c == 200 && json(&b)["state"] == "running")
        {
            break a;
        }
        assert!(std::time::Instant::now() < deadline, "{}", s.log_tail(30));
        std::thread::sleep(Duration::from_millis(100));
    };
    let v1_bytes = std::fs::read(sluice_e2e::module("transforms/identity")).expect("v1");
    let v1 = sluice::host::registry::digest_of(&v1_bytes);
    let v2_bytes = sluice_e2e::with_custom_section(&v1_bytes, "sluice-test-version", b"2");
    let v2 = sluice::host::registry::digest_of(&v2_bytes);
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (b, input, stop, produced) =
            (b.clone(), t.input.clone(), stop.clone(), produced.clone());
        std::thread::spawn(move || {
            let mut next = 0;
            while !stop.load(Ordering::SeqCst) {
                let chunk: Vec<_> = (next..next + 500)
                    .map(|i| {
                        (
                            Some(format!("k{}", i % 60)),
                            format!("{{\"n\":{i}}}").into_bytes(),
                        )
                    })
                    .collect();
                next += broker::produce(&b, &input, chunk);
                produced.store(next, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let post = |path: &str, body: &[u8]| {
        let (code, text) =
            sluice_e2e::http_request("POST", &addr, path, Some(TOKEN), body).expect("post");
        (code, json(&text))
    };
    // Each version takes traffic before the next step: the records the
    // running version wrote, as the host counts them.
    let records_out = || {
        sluice_e2e::http_get(&addr, "/api/pipelines/kafka-e2e", Some(TOKEN))
            .ok()
            .and_then(|(_, text)| json(&text)["records_out"].as_u64())
            .unwrap_or(0)
    };
    let traffic = |who: &str| {
        let from = records_out();
        sluice_e2e::eventually(
            &format!("{who} takes traffic (1,000 records beyond {from})"),
            Duration::from_secs(120),
            || s.log_tail(30),
            || records_out() >= from + 1000,
        );
    };
    traffic("v1");
    let (code, report) = post(
        "/api/pipelines/kafka-e2e/transforms/identity/modules",
        &v2_bytes,
    );
    assert_eq!(code, 201, "{report}");
    traffic("v2");
    let (code, report) = post("/api/pipelines/kafka-e2e/transforms/identity/rollback", b"");
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["digest"], v1.as_str());
    traffic("v1 after the rollback");
    stop.store(true, Ordering::SeqCst);
    producer.join().expect("producer");
    let n = produced.load(Ordering::SeqCst);
    let done = broker::consume(
        &b,
        &t.output,
        true,
        Duration::from_secs(240),
        until_distinct(n),
    );
    assert!(
        distinct(&done) >= n,
        "not all records came through:\n{}",
        s.log_tail(40)
    );
    let status = s.terminate(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        s.log_tail(30)
    );
    verify(
        &cluster,
        &t,
        n,
        true,
        "exactly-once with a deploy and a rollback",
    );
    let got = broker::consume_all(
        &b,
        &t.output,
        true,
        Duration::from_secs(5),
        Duration::from_secs(120),
    );
    let v2_count = got
        .iter()
        .filter(|g| g.header("sluice.module").as_deref() == Some(v2.as_str()))
        .count();
    assert!(
        got.iter().all(|g| {
            let h = g.header("sluice.module");
            h.as_deref() == Some(v1.as_str()) || h.as_deref() == Some(v2.as_str())
        }),
        "every output names its version"
    );
    assert!(v2_count > 0, "v2 took traffic");
    eprintln!("exactly-once deploy: {n} records, {v2_count} by v2");
}
