//! The lake sink against an in-memory store: keys, rolling, replays.

use super::*;
use crate::record::Position;
use crate::sink::Lineage;
use futures::TryStreamExt as _;
use object_store::memory::InMemory;

fn config(extra: &str) -> LakeSinkConfig {
    toml::from_str(&format!("url = \"memory://\"\n{extra}")).expect("config")
}

fn sink(store: &Arc<InMemory>, extra: &str) -> LakeSink {
    let cfg = config(extra);
    cfg.check("outputs.lake.lake").expect("valid");
    LakeSink::open(&cfg, Path::new("."), "default", Some(store.clone() as _)).expect("sink")
}

/// Records `{"n": o}` at offsets `range` of `topic[0]`, with `module`.
fn batch(range: std::ops::Range<i64>, module: &str) -> SinkBatch {
    let p = Partition {
        stream: Arc::from("topic"),
        partition: 0,
    };
    SinkBatch {
        records: range
            .clone()
            .map(|o| Record {
                value: Some(
                    format!("{{\"n\":{o},\"hour\":{}}}", o / 10)
                        .into_bytes()
                        .into(),
                ),
                timestamp: Some(o * 1000),
                ..Default::default()
            })
            .collect(),
        lineage: Lineage {
            positions: range
                .clone()
                .map(|o| Position {
                    partition: p.clone(),
                    offset: o,
                })
                .collect(),
            modules: range.map(|_| Some(Arc::from(module))).collect(),
            ..Default::default()
        },
    }
}

/// A submit, taken within 30 s (a sink that never takes it fails the test
/// instead of hanging it).
async fn submit(sink: &LakeSink, b: SinkBatch) -> Accepted {
    let pending = sink.submit(b).await.expect("submit");
    tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .expect("taken within 30 s")
        .expect("taken")
}

async fn objects(store: &InMemory) -> BTreeMap<String, String> {
    let metas: Vec<_> = store.list(None).try_collect().await.expect("list");
    let mut out = BTreeMap::new();
    for m in metas {
        let bytes = store
            .get(&m.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        out.insert(
            m.location.to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        );
    }
    out
}

fn data(all: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    all.iter()
        .filter(|(k, _)| !k.contains("_sluice/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn lines(all: &BTreeMap<String, String>) -> Vec<i64> {
    let mut n: Vec<i64> = data(all)
        .values()
        .flat_map(|v| {
            v.lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).expect("json")["n"]
                        .as_i64()
                        .expect("n")
                })
                .collect::<Vec<_>>()
        })
        .collect();
    n.sort();
    n
}

use std::collections::BTreeMap;

#[test]
fn store_options_never_show_their_values() {
    let cfg = config("options = { secret_access_key = \"hunter2\" }");
    let shown = format!("{cfg:?}");
    assert!(
        shown.contains("secret_access_key") && !shown.contains("hunter2"),
        "{shown}"
    );
}

#[tokio::test]
async fn segments_roll_by_count_into_partitioned_objects_named_by_their_first_offset() {
    let store = Arc::new(InMemory::new());
    let s = sink(
        &store,
        "partition = \"h={field:hour}\"\n[roll]\nrecords = 15\nage_ms = 3600000",
    );
    let a = submit(&s, batch(0..10, "m1")).await;
    let mut held = a.held.expect("held");
    assert!(
        futures::poll!(&mut held).is_pending(),
        "durable before its segment closed"
    );
    assert!(data(&objects(&store).await).is_empty());
    let b = submit(&s, batch(10..20, "m1")).await;
    held.await
        .expect("durable once 15 records closed the segment");
    let all = objects(&store).await;
    let keys: Vec<_> = data(&all).keys().cloned().collect();
    assert_eq!(
        keys,
        vec![
            "h=0/topic+0+00000000000000000000.jsonl",
            "h=1/topic+0+00000000000000000000.jsonl"
        ]
    );
    assert_eq!(lines(&all), (0..15).collect::<Vec<_>>());
    let marker = all
        .get("_sluice/segments/topic+0/00000000000000000014-00000000000000000000.json")
        .expect("marker");
    let m: Marker = serde_json::from_str(marker).expect("marker json");
    assert_eq!((m.first, m.last, m.records), (0, 14, 15));
    assert_eq!(m.modules.iter().collect::<Vec<_>>(), vec!["m1"]);
    s.flush().await.expect("flush");
    b.held.expect("held").await.expect("durable after flush");
    assert_eq!(lines(&objects(&store).await), (0..20).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_replay_rebuilds_recorded_segments_with_their_boundaries_and_bytes() {
    let store = Arc::new(InMemory::new());
    // First run: segments closed by flush (as a clock would): 0..=6, 7..=19.
    let first = sink(&store, "[roll]\nrecords = 1000");
    let _ = submit(&first, batch(0..7, "m1")).await;
    first.flush().await.expect("flush");
    let _ = submit(&first, batch(7..20, "m1")).await;
    first.flush().await.expect("flush");
    let before = objects(&store).await;
    assert_eq!(data(&before).len(), 2);
    drop(first);
    // The restart replays from offset 3 (the commit fell inside the first
    // segment) with other batch sizes and a count roll that would cut
    // elsewhere: nothing new is written, nothing twice.
    let second = sink(&store, "[roll]\nrecords = 5");
    for r in [3..9, 9..16, 16..24] {
        let _ = submit(&second, batch(r, "m1")).await;
    }
    second.flush().await.expect("flush");
    let after = objects(&store).await;
    assert_eq!(
        lines(&after),
        (0..24).collect::<Vec<_>>(),
        "no loss, no duplicate"
    );
    for (k, v) in data(&before) {
        assert_eq!(after.get(&k), Some(&v), "{k} unchanged");
    }
    // 20..24 is new, cut by the count roll.
    assert!(data(&after).contains_key("topic+0+00000000000000000020.jsonl"));
}

#[tokio::test]
async fn a_replay_with_different_bytes_stops_and_names_the_object() {
    let store = Arc::new(InMemory::new());
    let first = sink(&store, "[roll]\nrecords = 5");
    let a = submit(&first, batch(0..5, "m1")).await;
    a.held.expect("held").await.expect("durable");
    drop(first);
    let second = sink(&store, "[roll]\nrecords = 5");
    let mut b = batch(0..5, "m1");
    b.records[2].value = Some(b"{\"n\":2,\"other\":true}".to_vec().into());
    let err = submit(&second, b)
        .await
        .held
        .expect("held")
        .await
        .expect_err("different bytes");
    let msg = err.to_string();
    assert!(!err.is_transient(), "{msg}");
    assert!(
        msg.contains("topic+0+00000000000000000000.jsonl") && msg.contains("different bytes"),
        "{msg}"
    );
    // Under another module (a deploy since), the lake keeps what it has.
    let third = sink(&store, "[roll]\nrecords = 5");
    let mut c = batch(0..5, "m2");
    c.records[2].value = Some(b"{\"n\":2,\"other\":true}".to_vec().into());
    submit(&third, c)
        .await
        .held
        .expect("held")
        .await
        .expect("kept");
    assert_eq!(lines(&objects(&store).await), (0..5).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_marker_without_its_objects_is_rebuilt_before_anything_is_acknowledged() {
    let store = Arc::new(InMemory::new());
    let first = sink(&store, "[roll]\nrecords = 4");
    let a = submit(&first, batch(0..4, "m1")).await;
    a.held.expect("held").await.expect("durable");
    drop(first);
    // A crash between the marker and the object.
    let key = object_store::path::Path::from("topic+0+00000000000000000000.jsonl");
    let original = objects(&store).await.remove(key.as_ref()).expect("object");
    store.delete(&key).await.expect("delete");
    let second = sink(&store, "[roll]\nrecords = 100");
    let b = submit(&second, batch(0..6, "m1")).await;
    second.flush().await.expect("flush");
    b.held.expect("held").await.expect("durable");
    let after = objects(&store).await;
    assert_eq!(
        after.get(key.as_ref()),
        Some(&original),
        "rebuilt as recorded"
    );
    assert_eq!(lines(&after), (0..6).collect::<Vec<_>>());
}

#[tokio::test]
async fn parquet_keeps_its_inferred_schema_and_refuses_records_that_do_not_fit() {
    let store = Arc::new(InMemory::new());
    let s = sink(&store, "format = \"parquet\"\n[roll]\nrecords = 4");
    // The schema comes from the first records: `n` is a number.
    let first = submit(&s, batch(0..3, "m1")).await;
    assert!(first.rejects.is_empty());
    let mut b = batch(3..5, "m1");
    b.records[1].value = Some(b"{\"n\":\"four\"}".to_vec().into());
    let a = submit(&s, b).await;
    assert_eq!(a.rejects.len(), 1);
    assert_eq!(a.rejects[0].index, 1);
    assert!(
        a.rejects[0].reason.contains("field `n` is a string"),
        "{:?}",
        a.rejects
    );
    s.flush().await.expect("flush");
    first.held.expect("held").await.expect("durable");
    a.held.expect("held").await.expect("durable");
    let all = objects(&store).await;
    assert!(all.contains_key("_sluice/schema.json"), "{:?}", all.keys());
    let bytes = store
        .get(&object_store::path::Path::from(
            "topic+0+00000000000000000000.parquet",
        ))
        .await
        .expect("parquet")
        .bytes()
        .await
        .expect("bytes");
    let rows: usize = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .expect("reader")
        .build()
        .expect("build")
        .map(|b| b.expect("batch").num_rows())
        .sum();
    assert_eq!(rows, 4);
    // A new sink (a restart, another host) reads the kept schema.
    let again = sink(&store, "format = \"parquet\"");
    let mut c = batch(10..11, "m1");
    c.records[0].value = Some(b"{\"other\":1}".to_vec().into());
    assert!(submit(&again, c).await.rejects.is_empty(), "n is nullable");
    let mut d = batch(11..12, "m1");
    d.records[0].value = Some(b"{\"n\":\"1.5\"}".to_vec().into());
    assert_eq!(
        submit(&again, d).await.rejects.len(),
        1,
        "the kept schema says a number"
    );
    let mut e = batch(12..13, "m1");
    e.records[0].value = Some(b"{\"n\":1.5}".to_vec().into());
    assert!(
        submit(&again, e).await.rejects.is_empty(),
        "a decimal after whole numbers fits the inferred column"
    );
}

#[tokio::test]
async fn too_much_open_data_closes_the_largest_segment_early() {
    let store = Arc::new(InMemory::new());
    let s = sink(&store, "max_open_bytes = 1048576\n[roll]\nage_ms = 3600000");
    let big = "x".repeat(100_000);
    let mut b = batch(0..12, "m1");
    for r in &mut b.records {
        r.value = Some(format!("{{\"n\":0,\"pad\":\"{big}\"}}").into_bytes().into());
    }
    let a = submit(&s, b).await;
    // Segments roll after an hour: only the memory bound can close it.
    tokio::time::timeout(Duration::from_secs(30), a.held.expect("held"))
        .await
        .expect("closed within 30 s, by the memory bound (not by age, not a flush)")
        .expect("closed by the memory bound, not a flush");
}

#[tokio::test]
async fn the_same_sink_finds_its_own_segments_when_the_source_goes_back() {
    // A rebalance gives the partition back, or a session restarts: the
    // source replays from its committed offset into the same sink.
    let store = Arc::new(InMemory::new());
    let s = sink(&store, "[roll]\nrecords = 1000");
    let _ = submit(&s, batch(0..8, "m1")).await;
    s.flush().await.expect("flush");
    let _ = submit(&s, batch(8..12, "m1")).await;
    // Replayed from 5 while 8..12 was open (never written).
    for r in [5..10, 10..14] {
        let _ = submit(&s, batch(r, "m1")).await;
    }
    s.flush().await.expect("flush");
    let all = objects(&store).await;
    assert_eq!(
        lines(&all),
        (0..14).collect::<Vec<_>>(),
        "no loss, no duplicate"
    );
}

#[test]
fn the_documented_lake_example_is_valid() {
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/delivery-and-lake.md"
    ))
    .expect("docs/delivery-and-lake.md");
    let start = readme
        .find("[outputs.default.lake]\nurl = \"s3://acme-lake")
        .expect("docs/delivery-and-lake.md shows a lake");
    let block = &readme[start..];
    let block = &block[..block.find("```").expect("end of the block")];
    let v: toml::Value = toml::from_str(block).expect("the README's block is TOML");
    let lake: LakeSinkConfig = v["outputs"]["default"]["lake"]
        .clone()
        .try_into()
        .expect("a lake config");
    lake.check("outputs.default.lake").expect("valid");
    assert_eq!(lake.format, LakeFormat::Parquet);
    assert_eq!(lake.schema.as_ref().map(Vec::len), Some(2));
    let dlq: LakeSinkConfig = v["dead_letter"]["lake"].clone().try_into().expect("dlq");
    dlq.check("dead_letter.lake").expect("valid");
}
