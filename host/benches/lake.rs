//! Lake sink throughput: JSON Lines and Parquet, local disk and an S3 server
//! (moto on 127.0.0.1:5055, from `scripts/services start`; skipped when it
//! does not answer), each against writing the same bytes with `object_store`
//! alone, in the same run.
//!
//! `cargo bench -p sluice-host --bench lake [-- RECORDS]` (default 200,000
//! records of about 185 bytes, batches of 1,000, objects of 64 MiB). Each
//! case runs three times; the table shows medians.

use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use sluice::record::{Partition, Position, Record};
use sluice::sink::lake::LakeSinkConfig;
use sluice::sink::{LakeSink, Lineage, Sink, SinkBatch};
use std::sync::Arc;
use std::time::{Duration, Instant};

const S3: &str = "127.0.0.1:5055";
const BATCH: usize = 1000;

fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            Record::from_value(format!(
                "{{\"txn_id\":\"T{i:09}\",\"customer_id\":\"C-{:04}\",\"booth_id\":\"B-{:02}\",\"plate\":\"ABC-{:04}\",\"vehicle_class\":{},\"amount\":{}.25,\"ts\":\"2026-11-18T14:00:07Z\"}}",
                i % 9973,
                i % 17,
                i % 7919,
                i % 5,
                1 + i % 30
            ).into_bytes())
        })
        .collect()
}

fn s3_up() -> bool {
    std::net::TcpStream::connect_timeout(&S3.parse().expect("address"), Duration::from_millis(300))
        .is_ok()
}

/// moto takes an unsigned bucket creation.
fn create_bucket(name: &str) {
    use std::io::{Read as _, Write as _};
    if let Ok(mut s) = std::net::TcpStream::connect(S3) {
        let _ = write!(
            s,
            "PUT /{name} HTTP/1.1\r\nHost: {S3}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
    }
}

struct Case {
    label: String,
    url: String,
    options: &'static str,
    format: &'static str,
}

const S3_OPTIONS: &str = "options = { endpoint = \"http://127.0.0.1:5055\", allow_http = \"true\", access_key_id = \"bench\", secret_access_key = \"bench\", region = \"us-east-1\" }";

fn config(case: &Case, run: usize) -> LakeSinkConfig {
    let url = format!("{}/{}-{run}", case.url, case.format);
    toml::from_str(&format!(
        "url = {url:?}\n{}\nformat = \"{}\"\n[roll]\nbytes = 67108864\nage_ms = 3600000",
        case.options, case.format
    ))
    .expect("config")
}

/// Writes every record through the sink; the elapsed time.
async fn through_sink(cfg: &LakeSinkConfig, all: &[Record]) -> Duration {
    let sink = LakeSink::open(cfg, std::path::Path::new("."), "default", None).expect("sink");
    let p = Partition {
        stream: Arc::from("bench"),
        partition: 0,
    };
    let start = Instant::now();
    let mut held = Vec::new();
    for (b, chunk) in all.chunks(BATCH).enumerate() {
        let base = (b * BATCH) as i64;
        let batch = SinkBatch {
            records: chunk.to_vec(),
            lineage: Lineage {
                positions: (0..chunk.len())
                    .map(|i| Position {
                        partition: p.clone(),
                        offset: base + i as i64,
                    })
                    .collect(),
                modules: vec![None; chunk.len()],
                ..Default::default()
            },
        };
        let accepted = sink
            .submit(batch)
            .await
            .expect("submit")
            .await
            .expect("taken");
        assert!(
            accepted.rejects.is_empty(),
            "{:?}",
            accepted.rejects.first()
        );
        held.extend(accepted.held);
    }
    sink.flush().await.expect("flush");
    for h in held {
        h.await.expect("durable");
    }
    start.elapsed()
}

/// The data objects a run wrote, and the store.
async fn written(cfg: &LakeSinkConfig) -> (Arc<dyn ObjectStore>, Vec<(String, bytes::Bytes)>) {
    use futures::TryStreamExt as _;
    let (store, prefix): (Arc<dyn ObjectStore>, String) = if cfg.url.starts_with("s3://") {
        let url = url::Url::parse(&cfg.url).expect("url");
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint("http://127.0.0.1:5055")
            .with_allow_http(true)
            .with_bucket_name(url.host_str().unwrap_or_default())
            .with_access_key_id("bench")
            .with_secret_access_key("bench")
            .with_region("us-east-1")
            .build()
            .expect("s3");
        (
            Arc::new(store),
            url.path().trim_start_matches('/').to_string(),
        )
    } else {
        let store = object_store::local::LocalFileSystem::new_with_prefix(&cfg.url).expect("local");
        (Arc::new(store), String::new())
    };
    let p = object_store::path::Path::from(prefix.as_str());
    let metas: Vec<_> = store.list(Some(&p)).try_collect().await.expect("list");
    let mut out = Vec::new();
    for m in metas {
        if m.location.as_ref().contains("_sluice/") {
            continue;
        }
        let bytes = store
            .get(&m.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        out.push((m.location.to_string(), bytes));
    }
    (store, out)
}

/// Writes the same objects again with `object_store` alone (plain puts).
async fn baseline(store: &Arc<dyn ObjectStore>, objects: &[(String, bytes::Bytes)]) -> Duration {
    let start = Instant::now();
    for (key, bytes) in objects {
        let to = object_store::path::Path::from(format!("baseline/{key}"));
        store
            .put(&to, PutPayload::from(bytes.clone()))
            .await
            .expect("put");
    }
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let all = records(n);
    let input_bytes: usize = all.iter().map(|r| r.size() + 1).sum();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cases = Vec::new();
    for format in ["jsonl", "parquet"] {
        cases.push(Case {
            label: format!("{format}, local disk"),
            url: dir.path().display().to_string(),
            options: "",
            format,
        });
    }
    let s3 = s3_up();
    if s3 {
        create_bucket("sluice-bench");
        for format in ["jsonl", "parquet"] {
            cases.push(Case {
                label: format!("{format}, S3 (moto)"),
                url: "s3://sluice-bench/run".into(),
                options: S3_OPTIONS,
                format,
            });
        }
    } else {
        eprintln!("no S3 server on {S3}: the S3 rows are skipped (scripts/services start)");
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "lake sink, {n} records of {} bytes on average ({:.1} MB), batches of {BATCH}, objects of 64 MiB; medians of 3",
        input_bytes / n.max(1),
        input_bytes as f64 / 1e6
    );
    println!();
    println!(
        "| case | sink records/s | sink MB/s (input) | objects | bytes written | object_store alone, same bytes | sink / alone |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let stamp = std::process::id();
    for case in &cases {
        let mut sink_times = Vec::new();
        let mut base_times = Vec::new();
        let mut objects = 0;
        let mut bytes = 0;
        for run in 0..3 {
            let mut cfg = config(case, run);
            cfg.url = format!("{}-{stamp}", cfg.url);
            let t = rt.block_on(through_sink(&cfg, &all));
            let (store, written) = rt.block_on(written(&cfg));
            objects = written.len();
            bytes = written.iter().map(|(_, b)| b.len()).sum::<usize>();
            let b = rt.block_on(baseline(&store, &written));
            sink_times.push(t);
            base_times.push(b);
        }
        let t = median(sink_times).as_secs_f64();
        let b = median(base_times).as_secs_f64();
        println!(
            "| {} | {:.0} | {:.1} | {objects} | {:.1} MB | {:.1} MB/s ({:.3} s) | {:.2}× the time |",
            case.label,
            n as f64 / t,
            input_bytes as f64 / 1e6 / t,
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / b,
            b,
            t / b
        );
    }
}
