//! The host (`sluice serve`'s code, in process): what pipelines cost side by
//! side on one shared engine.
//!
//! `cargo bench -p sluice-host --bench host` (or `scripts/bench-host`):
//! 1. **Idle pipelines**: 100 Kafka pipelines with nothing to read in one
//!    host; memory (RSS) and CPU per pipeline, against the host with none.
//! 2. **Busy pipelines**: 20 file → json-map → lake pipelines started at
//!    once, against the same 20 run one at a time on the same host.
//! 3. **Fairness**: the p50/p99 batch latency (cut → delivered) of a light
//!    Kafka pipeline fed at a fixed rate, alone and beside five file
//!    pipelines that saturate their workers.
//!
//! Parts 1 and 3 need a Kafka broker (`scripts/services start`, or
//! `SLUICE_KAFKA_BOOTSTRAP`); without one they are skipped, saying so.
//! Every figure is a ratio against a baseline measured in this same run.

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice::host::{Host, HostConfig};
use sluice::pipeline::State;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn module(project: &str) -> PathBuf {
    sluice::project::resolve_module(&root().join(project), true)
        .unwrap_or_else(|e| panic!("building {project}: {e}"))
}

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Resident memory (KiB) and CPU time (user + system, s) of this process.
fn usage() -> (u64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    (rss, ticks / 100.0)
}

fn threads() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Threads:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let lab = Lab {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::create_dir_all(lab.dir.path().join("pipelines")).expect("dir");
        lab
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn clear_pipelines(&self) {
        let dir = self.path("pipelines");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
    }

    fn host(&self) -> Arc<Host> {
        let file = self.path("host.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:0\"\ninstance_slots = 300\n").expect("host");
        Host::new(HostConfig::load(&file).expect("host file")).expect("host")
    }

    fn pipeline(&self, name: &str, text: &str) {
        std::fs::write(self.path(&format!("pipelines/{name}.toml")), text).expect("pipeline");
    }

    /// `n` toll events of about 185 bytes.
    fn events(&self, name: &str, n: usize) -> PathBuf {
        let mut text = String::with_capacity(n * 190);
        for i in 0..n {
            text.push_str(&format!(
                "{{\"txn_id\":\"t-{i:09}\",\"customer_id\":\"c-{:06}\",\"booth_id\":\"B{}\",\"vehicle_class\":{},\"amount\":{}.{:02},\"ts\":\"2026-11-18T14:{:02}:{:02}Z\",\"plate\":\"AB-{:05}\"}}\n",
                i % 100_000,
                i % 12,
                i % 5,
                i % 40,
                i % 100,
                (i / 60) % 60,
                i % 60,
                i % 99_999
            ));
        }
        let p = self.path(&format!("{name}.jsonl"));
        std::fs::write(&p, text).expect("data");
        p
    }
}

const MAPPING: &str = "[transforms.config.mapping]\ntransaction = \"$.txn_id\"\ncustomer = \"$.customer_id\"\nbooth = \"$.booth_id\"\nvehicle_class = \"$.vehicle_class\"\namount = \"$.amount\"\nevent_time = \"$.ts\"\n";

fn file_pipeline(lab: &Lab, name: &str, data: &Path, json_map: &Path) {
    lab.pipeline(
        name,
        &format!(
            "name = \"{name}\"\ntenant = \"bench\"\n[source.file]\npath = {}\n[[transforms]]\nname = \"map\"\nmodule = {}\n{MAPPING}[outputs.default.local]\npath = {}\n[dead_letter.local]\npath = {}\n",
            q(data),
            q(json_map),
            q(&lab.path(&format!("lake/{name}"))),
            q(&lab.path(&format!("dlq/{name}")))
        ),
    );
}

fn kafka_pipeline(lab: &Lab, name: &str, bootstrap: &str, topic: &str, identity: &Path) {
    lab.pipeline(
        name,
        &format!(
            "name = \"{name}\"\ntenant = \"bench\"\n[source.kafka]\nbootstrap = \"{bootstrap}\"\ntopics = [\"{topic}\"]\ngroup = \"{name}-{}\"\nstart = \"latest\"\n[batch]\nmax_records = 100\nmax_wait_ms = 20\n[[transforms]]\nname = \"identity\"\nmodule = {}\n[outputs.default.local]\npath = {}\n[dead_letter.local]\npath = {}\n",
            std::process::id(),
            q(identity),
            q(&lab.path(&format!("lake/{name}"))),
            q(&lab.path(&format!("dlq/{name}")))
        ),
    );
}

fn broker() -> Option<String> {
    let b = std::env::var("SLUICE_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let addr = b.split(',').next().unwrap_or("").to_string();
    std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    Some(b)
}

fn create_topic(bootstrap: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    let result = futures::executor::block_on(admin.create_topics(
        [&new],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))
    .expect("create topics");
    for r in result {
        if let Err((name, code)) = r {
            assert!(
                code == rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                "cannot create topic {name}: {code}"
            );
        }
    }
}

async fn wait_running(host: &Host, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while host
        .handles()
        .iter()
        .filter(|h| h.live().state() == State::Running)
        .count()
        < n
    {
        assert!(
            Instant::now() < deadline,
            "pipelines did not start: {:?}",
            host.states()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn idle(lab: &Lab, bootstrap: &str, identity: &Path) {
    const N: usize = 100;
    let topic = format!("bench-idle-{}", std::process::id());
    create_topic(bootstrap, &topic);
    lab.clear_pipelines();
    let host = lab.host();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss0, cpu0) = usage();
    let threads0 = threads();
    let t0 = Instant::now();
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let (_, cpu_base) = usage();
    let base_cpu = (cpu_base - cpu0) / t0.elapsed().as_secs_f64();
    for i in 0..N {
        kafka_pipeline(lab, &format!("idle{i:03}"), bootstrap, &topic, identity);
    }
    host.start_all().await.expect("start");
    wait_running(&host, N, Duration::from_secs(120)).await;
    // Let the consumers join their groups and settle.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (rss1, cpu1) = usage();
    let threads1 = threads();
    let t1 = Instant::now();
    tokio::time::sleep(window).await;
    let (_, cpu2) = usage();
    let busy_cpu = (cpu2 - cpu1) / t1.elapsed().as_secs_f64();
    println!("## 1. Idle pipelines: {N} Kafka pipelines (identity, nothing to read) in one host");
    println!("| | host alone | with {N} idle pipelines | per pipeline |");
    println!("|---|---:|---:|---:|");
    println!(
        "| RSS | {:.1} MiB | {:.1} MiB | {:.0} KiB |",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        (rss1.saturating_sub(rss0)) as f64 / N as f64
    );
    println!(
        "| CPU (cores, over {}s) | {:.4} | {:.4} | {:.5} ({:.3} % of a core) |",
        window.as_secs(),
        base_cpu,
        busy_cpu,
        (busy_cpu - base_cpu) / N as f64,
        100.0 * (busy_cpu - base_cpu) / N as f64
    );
    println!(
        "| threads | {threads0} | {threads1} | {:.1} |",
        (threads1.saturating_sub(threads0)) as f64 / N as f64
    );
    let left = host.shutdown(Duration::from_secs(60)).await;
    assert!(left.is_empty(), "not drained: {left:?}");
    println!();
}

async fn run_all(host: &Arc<Host>) -> Duration {
    let t = Instant::now();
    host.start_all().await.expect("start");
    host.wait_all().await;
    t.elapsed()
}

async fn busy(lab: &Lab, json_map: &Path) {
    const PIPELINES: usize = 20;
    const RECORDS: usize = 25_000;
    let data: Vec<PathBuf> = (0..PIPELINES)
        .map(|i| lab.events(&format!("busy{i}"), RECORDS))
        .collect();
    let total = (PIPELINES * RECORDS) as f64;
    // One at a time, on one host (its engine and compiled module warm).
    lab.clear_pipelines();
    let host = lab.host();
    let mut serial = Duration::ZERO;
    for (i, d) in data.iter().enumerate() {
        lab.clear_pipelines();
        file_pipeline(lab, &format!("serial{i}"), d, json_map);
        serial += run_all(&host).await;
    }
    let _ = host.shutdown(Duration::from_secs(10)).await;
    // All at once, on a fresh host.
    lab.clear_pipelines();
    for (i, d) in data.iter().enumerate() {
        file_pipeline(lab, &format!("together{i}"), d, json_map);
    }
    let host = lab.host();
    let (_, cpu0) = usage();
    let together = run_all(&host).await;
    let (_, cpu1) = usage();
    let finished = host
        .handles()
        .iter()
        .filter(|h| h.live().state() == State::Finished)
        .count();
    assert_eq!(finished, PIPELINES, "{:?}", host.states());
    println!(
        "## 2. Busy pipelines: {PIPELINES} × {RECORDS} toll events, file → json-map → local lake"
    );
    println!("| | wall | records/s | vs one at a time |");
    println!("|---|---:|---:|---:|");
    println!(
        "| one at a time (same host) | {:.2} s | {:.0} | 1.00× |",
        serial.as_secs_f64(),
        total / serial.as_secs_f64()
    );
    println!(
        "| all {PIPELINES} at once | {:.2} s | {:.0} | {:.2}× |",
        together.as_secs_f64(),
        total / together.as_secs_f64(),
        serial.as_secs_f64() / together.as_secs_f64()
    );
    println!(
        "CPU while all ran at once: {:.2} cores (loading included).",
        (cpu1 - cpu0) / together.as_secs_f64()
    );
    println!();
}

/// Produces `rate` records/s to `topic` for `for_how_long`.
fn feed(bootstrap: &str, topic: &str, rate: u64, for_how_long: Duration) -> u64 {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < for_how_long {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let v = format!("{{\"n\":{sent}}}");
            if p.send(BaseRecord::<(), str>::to(topic).payload(&v))
                .is_err()
            {
                break;
            }
            sent += 1;
            p.poll(Duration::ZERO);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = p.flush(Duration::from_secs(10));
    sent
}

async fn light_latency(
    lab: &Lab,
    bootstrap: &str,
    identity: &Path,
    heavy: &[PathBuf],
    json_map: &Path,
) -> (Option<f64>, Option<f64>, u64, f64) {
    let topic = format!("bench-light-{}-{}", std::process::id(), heavy.len());
    create_topic(bootstrap, &topic);
    lab.clear_pipelines();
    kafka_pipeline(lab, "light", bootstrap, &topic, identity);
    let host = lab.host();
    host.start_all().await.expect("start");
    let light = host.pipeline("light").expect("light");
    let deadline = Instant::now() + Duration::from_secs(60);
    while light.live().state() != State::Running {
        assert!(Instant::now() < deadline, "light pipeline did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The consumer (start = latest) must hold its partition before feeding.
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Then the heavy pipelines, so that they run while the light one is fed.
    for (i, d) in heavy.iter().enumerate() {
        let name = format!("heavy{i}");
        file_pipeline(lab, &name, d, json_map);
        host.start_file(&lab.path(&format!("pipelines/{name}.toml")))
            .await
            .expect("heavy pipeline");
    }
    let b = bootstrap.to_string();
    let t = topic.clone();
    let (_, cpu0) = usage();
    let started = Instant::now();
    let sent = tokio::task::spawn_blocking(move || feed(&b, &t, 500, Duration::from_secs(6)))
        .await
        .expect("feed");
    let heavy_busy = heavy.iter().enumerate().all(|(i, _)| {
        host.pipeline(&format!("heavy{i}"))
            .is_some_and(|h| h.live().state() == State::Running)
    });
    if !heavy_busy {
        for h in host.handles() {
            let s = h.snapshot();
            eprintln!(
                "{}: {:?} {:?} in {}",
                s.name, s.state, s.reason, s.records_in
            );
        }
    }
    let (_, cpu1) = usage();
    let cores = (cpu1 - cpu0) / started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let p = light.live().latency_percentiles(&[50.0, 99.0]);
    if !heavy.is_empty() {
        assert!(
            heavy_busy,
            "the heavy pipelines finished before the light one was measured: make them larger"
        );
    }
    let _ = host.shutdown(Duration::from_secs(60)).await;
    (p[0], p[1], sent, cores)
}

async fn fairness(lab: &Lab, bootstrap: &str, identity: &Path, json_map: &Path) {
    let heavy: Vec<PathBuf> = (0..5)
        .map(|i| lab.events(&format!("heavy{i}"), 800_000))
        .collect();
    let (a50, a99, sent_a, cores_a) = light_latency(lab, bootstrap, identity, &[], json_map).await;
    let (b50, b99, sent_b, cores_b) =
        light_latency(lab, bootstrap, identity, &heavy, json_map).await;
    let ms = |v: Option<f64>| {
        v.map(|v| format!("{v:.1} ms"))
            .unwrap_or_else(|| "–".into())
    };
    println!(
        "## 3. Fairness: a light Kafka pipeline (500 records/s, batches of ≤ 100 or 20 ms) beside five saturating file → json-map pipelines"
    );
    println!("| light pipeline | p50 batch latency | p99 batch latency | host CPU |");
    println!("|---|---:|---:|---:|");
    println!(
        "| alone ({sent_a} records) | {} | {} | {cores_a:.2} cores |",
        ms(a50),
        ms(a99)
    );
    println!(
        "| beside 5 saturating pipelines ({sent_b} records) | {} | {} | {cores_b:.2} cores |",
        ms(b50),
        ms(b99)
    );
    if let (Some(a), Some(b)) = (a99, b99) {
        println!("p99 beside / alone: {:.2}×", b / a);
    }
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; a filter selects parts: idle, busy, fair.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |part: &str| args.is_empty() || args.iter().any(|a| a == part);
    let identity = module("transforms/identity");
    let json_map = module("transforms/json-map");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let lab = Lab::new();
    println!(
        "# Host benchmark ({} cores)\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let kafka = broker();
    rt.block_on(async {
        if want("idle") {
            match &kafka {
                Some(b) => idle(&lab, b, &identity).await,
                None => println!(
                    "## 1. Idle pipelines: skipped (no Kafka broker; `scripts/services start`)\n"
                ),
            }
        }
        if want("busy") {
            busy(&lab, &json_map).await;
        }
        if want("fair") {
            match &kafka {
                Some(b) => fairness(&lab, b, &identity, &json_map).await,
                None => println!("## 3. Fairness: skipped (no Kafka broker)\n"),
            }
        }
    });
}
