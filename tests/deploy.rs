//! End-to-end: hot deploy and rollback through the admin API of a running
//! `sluice serve`, while a Kafka → Kafka pipeline streams (at-least-once on
//! the local broker): every input record once in the output, each tagged
//! with the module version that processed it; tokens (401, 403, nothing
//! changes); refused modules (the running version keeps serving); the
//! audit log; and the active version surviving a host restart.

use sluice_e2e::http;
use sluice_e2e::process::Sluice;
use sluice_e2e::scenario::{number, tally, until_distinct};
use sluice_e2e::wat_guest::{Process, Realloc, component};
use sluice_e2e::{Lab, Token};
use sluice_e2e::{
    broker, http_get, http_request, module, post_chunked, post_declaring, toml_path,
    with_custom_section,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const ADMIN: &str = "ops-token-0123456789abcdef";
const TENANT_A: &str = "team-a-token-0123456789ab";
const TENANT_B: &str = "team-b-token-0123456789ab";

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A host directory: host file with tokens, one Kafka pipeline of tenant
/// `team-a` whose outputs carry the `sluice.module` header.
/// The tokens the tests' hosts know: an admin and two tenants'.
const OPS: Token = Token {
    name: "ops",
    token: ADMIN,
    tenant: None,
};
const TEAM_A_CI: Token = Token {
    name: "team-a-ci",
    token: TENANT_A,
    tenant: Some("team-a"),
};
const TEAM_B_CI: Token = Token {
    name: "team-b-ci",
    token: TENANT_B,
    tenant: Some("team-b"),
};

fn lab(dir: &Path, bootstrap: &str, input: &str, output: &str, dlq: &str, group: &str) -> PathBuf {
    lab_with(dir, bootstrap, input, output, dlq, group, "")
}

fn lab_with(
    dir: &Path,
    bootstrap: &str,
    input: &str,
    output: &str,
    dlq: &str,
    group: &str,
    extra: &str,
) -> PathBuf {
    let lab = Lab::at(dir);
    lab.tokens(&[OPS, TEAM_A_CI, TEAM_B_CI]);
    lab.write_pipeline(
        "stream",
        &format!(
            r#"name = "stream"
tenant = "team-a"
[batch]
max_records = 50
max_wait_ms = 20
[delivery]
module_header = true
commit_interval_ms = 200
{extra}
[source.kafka]
bootstrap = "{bootstrap}"
topics = ["{input}"]
group = "{group}"
[[transforms]]
name = "identity"
module = {module}
[outputs.default.kafka]
topic = "{output}"
[dead_letter.kafka]
topic = "{dlq}"
"#,
            module = toml_path(&module("transforms/identity")),
        ),
    );
    lab.host_file("tokens_file = \"tokens.toml\"\ninstance_slots = 50\nshutdown_timeout_ms = 30000")
}

fn start(host: &Path, log: &Path) -> (Sluice, String) {
    let s = Sluice::serve(&sluice_e2e::sluice_bin!(), host, log, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(addr) = s.listen_address() {
            let running = http_get(&addr, "/api/pipelines/stream", Some(ADMIN))
                .ok()
                .filter(|(c, _)| *c == 200)
                .is_some_and(|(_, b)| json(&b)["state"] == "running");
            if running {
                return (s, addr);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the host did not start the pipeline:\n{}",
            s.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn versions(addr: &str, token: &str) -> Vec<String> {
    let (code, text) = http_get(
        addr,
        "/api/pipelines/stream/transforms/identity/versions",
        Some(token),
    )
    .expect("versions");
    assert_eq!(code, 200, "{text}");
    json(&text)["versions"]
        .as_array()
        .expect("list")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Records the `stream` pipeline has written to its outputs so far.
fn records_out(addr: &str) -> u64 {
    http_get(addr, "/api/pipelines/stream", Some(ADMIN))
        .ok()
        .and_then(|(_, text)| json(&text)["records_out"].as_u64())
        .unwrap_or(0)
}

/// Waits until the `stream` pipeline has written `more` records beyond
/// what it had written when called (the version running now took traffic).
fn wait_for_traffic(addr: &str, s: &Sluice, more: u64) {
    let from = records_out(addr);
    wait_until(&format!("{more} more records out (from {from})"), s, || {
        records_out(addr) >= from + more
    });
}

fn active_digest(addr: &str) -> String {
    let (_, text) = http_get(addr, "/api/pipelines/stream", Some(ADMIN)).expect("snapshot");
    json(&text)["transforms"][0]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn deploy_and_rollback_while_streaming_lose_and_double_nothing_and_tag_every_record() {
    let b = broker::bootstrap();
    broker::require(&b);
    let input = broker::unique("deploy-in");
    let output = broker::unique("deploy-out");
    let dlq = broker::unique("deploy-dlq");
    let group = broker::unique("deploy-group");
    broker::create_topic(&b, &input, 3);
    broker::create_topic(&b, &output, 3);
    broker::create_topic(&b, &dlq, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let host = lab(dir.path(), &b, &input, &output, &dlq, &group);
    let log = dir.path().join("host.log");
    let (mut s, addr) = start(&host, &log);

    let v1_bytes = std::fs::read(module("transforms/identity")).expect("v1");
    let v1 = sluice::host::registry::digest_of(&v1_bytes);
    let v2_bytes = with_custom_section(&v1_bytes, "sluice-test-version", b"2");
    let v2 = sluice::host::registry::digest_of(&v2_bytes);
    assert_ne!(v1, v2);
    assert_eq!(active_digest(&addr), v1);

    // A producer streams numbered records until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (b, input, stop, produced) = (b.clone(), input.clone(), stop.clone(), produced.clone());
        std::thread::spawn(move || {
            let mut next = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let chunk: Vec<_> = (next..next + 200)
                    .map(|i| {
                        (
                            Some(format!("k{}", i % 30)),
                            format!("{{\"n\":{i}}}").into_bytes(),
                        )
                    })
                    .collect();
                next += broker::produce(&b, &input, chunk);
                produced.store(next, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // v1 takes traffic first (each chunk's 30 keys cover every partition).
    wait_for_traffic(&addr, &s, 600);

    // Tokens: none or a wrong one is 401, another tenant's is 403, and
    // nothing changes.
    let upload = "/api/pipelines/stream/transforms/identity/modules";
    assert_eq!(http::post_json(&addr, upload, None, &v2_bytes).0, 401);
    assert_eq!(
        http::post_json(&addr, upload, Some("not-a-token-at-all-000"), &v2_bytes).0,
        401
    );
    let (code, body) = http::post_json(&addr, upload, Some(TENANT_B), &v2_bytes);
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        http::post_json(&addr, "/api/pipelines/stream/pause", Some(TENANT_B), b"").0,
        403
    );
    assert_eq!(
        http_get(&addr, "/api/pipelines/stream/dead-letters", Some(TENANT_B))
            .expect("dlq")
            .0,
        403
    );
    assert_eq!(
        http_get(&addr, "/api/pipelines/stream", Some(TENANT_B))
            .expect("get")
            .0,
        403
    );
    let (_, listing) = http_get(&addr, "/api/pipelines", Some(TENANT_B)).expect("list");
    assert_eq!(
        json(&listing)["pipelines"].as_array().map(Vec::len),
        Some(0)
    );
    assert_eq!(
        http_get(&addr, "/metrics", Some(TENANT_A))
            .expect("metrics")
            .0,
        403
    );
    assert_eq!(active_digest(&addr), v1, "a refused caller changed nothing");

    // Modules that must be refused, with the reason; v1 keeps serving.
    let empty_component = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
    let core_module = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    let sockets = component(
        Realloc::Bump,
        Process::Drops(1),
        &["wasi:sockets/tcp@0.2.6"],
    );
    let json_map = std::fs::read(module("transforms/json-map")).expect("json-map");
    for (what, bytes, reason) in [
        ("another world", &empty_component[..], "export"),
        ("a core module", &core_module[..], "component"),
        ("an ungranted import", &sockets[..], "wasi:sockets/tcp"),
        (
            "init refusing the configuration",
            &json_map[..],
            "refused its configuration",
        ),
    ] {
        let (code, body) = http::post_json(&addr, upload, Some(TENANT_A), bytes);
        assert_eq!(code, 422, "{what}: {body}");
        let message = body["error"].as_str().unwrap_or_default().to_string();
        assert!(
            message.contains("refused") && message.to_lowercase().contains(reason),
            "{what}: {message}"
        );
    }
    // Too large: refused on its declared length, before any byte is read.
    let (code, body) =
        post_declaring(&addr, upload, Some(TENANT_A), (128 << 20) + 1).expect("request");
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("128 MiB"), "{body}");
    assert_eq!(active_digest(&addr), v1, "refused modules changed nothing");

    // Deploy v2 with the tenant's own token, then roll back with the admin's.
    let (code, report) = http::post_json(&addr, upload, Some(TENANT_A), &v2_bytes);
    assert_eq!(code, 201, "{report}");
    assert_eq!(report["digest"], v2.as_str());
    assert_eq!(report["swapped"]["previous"], v1.as_str());
    let upload_to_traffic_ms = report["total_ms"].as_f64().expect("total_ms");
    let boundary_wait_ms = report["swapped"]["waited_ms"].as_f64().expect("waited");
    let validate_ms = report["validate_ms"].as_f64().expect("validate");
    assert_eq!(active_digest(&addr), v2);
    assert_eq!(versions(&addr, TENANT_A), vec![v1.clone(), v2.clone()]);
    // Everything written from now on went through v2 (the swap is done
    // when the upload is answered).
    wait_for_traffic(&addr, &s, 600);
    let (code, report) = http::post_json(
        &addr,
        "/api/pipelines/stream/transforms/identity/rollback",
        Some(ADMIN),
        b"",
    );
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["digest"], v1.as_str());
    assert_eq!(active_digest(&addr), v1);
    assert_eq!(versions(&addr, ADMIN), vec![v1.clone()]);
    let (code, _) = http::post_json(
        &addr,
        "/api/pipelines/stream/transforms/identity/rollback",
        Some(ADMIN),
        b"",
    );
    assert_eq!(code, 409, "nothing before v1");
    wait_for_traffic(&addr, &s, 600);
    stop.store(true, Ordering::SeqCst);
    producer.join().expect("producer");
    let n = produced.load(Ordering::SeqCst);

    // Every record once, each tagged with the version that processed it;
    // per partition the versions come in runs: v1, then v2, then v1.
    let got = broker::consume(
        &b,
        &output,
        false,
        Duration::from_secs(120),
        until_distinct(n),
    );
    let (missing, duplicates) = tally(&got, n);
    assert!(
        missing.is_empty(),
        "{} of {n} records missing",
        missing.len()
    );
    assert_eq!(
        duplicates, 0,
        "a crash-free run with two swaps doubles nothing"
    );
    let mut by_version = std::collections::BTreeMap::<String, usize>::new();
    let mut runs = std::collections::BTreeMap::<i32, Vec<String>>::new();
    let mut sorted = got.clone();
    sorted.sort_by_key(|g| (g.partition, g.offset));
    for g in &sorted {
        let v = g
            .header("sluice.module")
            .expect("every output names its module");
        assert!(v == v1 || v == v2, "unknown module {v}");
        assert!(number(g).is_some());
        *by_version.entry(v.clone()).or_default() += 1;
        let r = runs.entry(g.partition).or_default();
        if r.last() != Some(&v) {
            r.push(v);
        }
    }
    for (p, r) in &runs {
        assert!(
            r.len() <= 3 && (r.len() < 2 || r[1] == v2) && r[0] == v1,
            "partition {p}: {r:?}"
        );
    }
    assert!(
        by_version.get(&v2).copied().unwrap_or(0) > 0,
        "v2 took traffic"
    );
    eprintln!(
        "deploy while streaming: {n} records, {} by v1 and {} by v2; upload → v2 taking traffic {upload_to_traffic_ms:.1} ms (validate {validate_ms:.1} ms, batch-boundary wait {boundary_wait_ms:.1} ms)",
        by_version.get(&v1).copied().unwrap_or(0),
        by_version.get(&v2).copied().unwrap_or(0),
    );

    // The audit log: who did what, with which digest; refusals too.
    let audit = std::fs::read_to_string(dir.path().join("data/audit.log")).expect("audit log");
    let entries: Vec<serde_json::Value> = audit.lines().map(json).collect();
    assert!(entries.iter().any(|e| e["who"] == "team-a-ci"
        && e["action"] == "deploy"
        && e["digest"] == v2.as_str()
        && e["outcome"] == "done"));
    assert!(
        entries
            .iter()
            .any(|e| e["who"] == "ops" && e["action"] == "rollback" && e["digest"] == v1.as_str())
    );
    assert!(
        entries
            .iter()
            .any(|e| e["who"] == "team-b-ci" && e["outcome"] == "forbidden")
    );
    assert!(
        !audit.contains(ADMIN) && !audit.contains(TENANT_A),
        "no token in the audit log"
    );

    // Activate v2 again (stored: by digest), restart the host: it comes back
    // with v2 active.
    let (code, report) = http::post_json(
        &addr,
        "/api/pipelines/stream/transforms/identity/activate",
        Some(ADMIN),
        format!("{{\"digest\":\"{v2}\"}}").as_bytes(),
    );
    assert_eq!(code, 200, "{report}");
    let status = s.terminate(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        s.log_tail(30)
    );
    let (mut s, addr) = start(&host, &log);
    assert_eq!(
        active_digest(&addr),
        v2,
        "the active version survived the restart"
    );
    assert_eq!(versions(&addr, ADMIN), vec![v1.clone(), v2.clone()]);

    // The CLI on the same API: a tenant rolls back its own pipeline, lists
    // it, and cannot deploy with another tenant's token.
    let url = format!("http://{addr}");
    let cli = |token: &str, args: &[&str]| {
        std::process::Command::new(sluice_e2e::sluice_bin!())
            .args(args)
            .env("SLUICE_TOKEN", token)
            .output()
            .expect("sluice")
    };
    let out = cli(
        TENANT_A,
        &["rollback", "--host", &url, "stream", "identity"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&v1));
    assert_eq!(active_digest(&addr), v1);
    let out = cli(TENANT_A, &["pipelines", "--host", &url]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success()
            && listed.starts_with("PIPELINE ")
            && listed.lines().any(|l| l
                .split_whitespace()
                .take(3)
                .eq(["stream", "team-a", "running"])),
        "a table with a header: {listed}"
    );
    assert!(listed.contains(&v1[..19]), "{listed}");
    let out = cli(TENANT_A, &["pipelines", "--host", &url, "--json"]);
    let parsed = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(parsed["pipelines"][0]["name"], "stream", "{parsed}");
    // The versions the API keeps, the active one marked.
    let out = cli(
        TENANT_A,
        &["versions", "--host", &url, "stream", "identity"],
    );
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success()
            && listed
                .lines()
                .any(|l| l.starts_with(v1.as_str()) && l.ends_with("active")),
        "{listed}"
    );
    // A version uploaded without being activated is listed as stored.
    let v9_bytes = with_custom_section(&v1_bytes, "version", b"9");
    let v9 = sluice::host::registry::digest_of(&v9_bytes);
    let v9_file = dir.path().join("v9.wasm");
    std::fs::write(&v9_file, &v9_bytes).expect("v9 file");
    let out = std::process::Command::new(sluice_e2e::sluice_bin!())
        .args([
            "deploy",
            "--host",
            &url,
            "--no-activate",
            "stream",
            "identity",
            &v9_file.to_string_lossy(),
        ])
        .env("SLUICE_TOKEN", TENANT_A)
        .output()
        .expect("sluice");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(
        TENANT_A,
        &["versions", "--host", &url, "stream", "identity"],
    );
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(v9.as_str()) && l.ends_with("stored (never activated)")),
        "{listed}"
    );
    assert_eq!(active_digest(&addr), v1, "stored, not activated");
    // Pause and resume through the CLI.
    for (verb, state) in [("pause", "paused"), ("resume", "running")] {
        let out = cli(TENANT_A, &[verb, "--host", &url, "stream"]);
        assert!(
            out.status.success(),
            "{verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, text) =
                http_get(&addr, "/api/pipelines/stream", Some(ADMIN)).expect("snapshot");
            let now = json(&text)["state"].clone();
            if now == state {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after `sluice {verb}`: {now}, not {state}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let v2_file = dir.path().join("v2.wasm");
    std::fs::write(&v2_file, &v2_bytes).expect("v2 file");
    let out = cli(
        TENANT_B,
        &[
            "deploy",
            "--host",
            &url,
            "stream",
            "identity",
            &v2_file.to_string_lossy(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && err.contains("403"), "{err}");
    assert_eq!(active_digest(&addr), v1);
    // No token at all: said before any build, naming SLUICE_TOKEN (the
    // module path is not even looked at: it does not exist).
    let out = std::process::Command::new(sluice_e2e::sluice_bin!())
        .args([
            "deploy",
            "--host",
            &url,
            "stream",
            "identity",
            &dir.path().join("not-built-yet").to_string_lossy(),
        ])
        .env_remove("SLUICE_TOKEN")
        .output()
        .expect("sluice");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("401") && err.contains("SLUICE_TOKEN"),
        "{err}"
    );
    assert!(!err.contains("no such file"), "the token first: {err}");
    let status = s.terminate(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        s.log_tail(30)
    );
}

/// Keyed records `{"n":i,"note":note}` for `from..to` (the poison guest
/// fails those whose note says `fail`).
fn noted(from: usize, to: usize, note: &str) -> Vec<(Option<String>, Vec<u8>)> {
    (from..to)
        .map(|i| {
            (
                Some(format!("k{}", i % 20)),
                format!("{{\"n\":{i},\"note\":\"{note}\"}}").into_bytes(),
            )
        })
        .collect()
}

/// A host with the `stream` pipeline on fresh topics of `partitions`
/// partitions, its breaker over 100 records at 50 %, new versions on
/// probation for `probation_records`: the broker, the input and output
/// topics, the folder and the host file.
fn probation_lab(
    partitions: i32,
    probation_records: u64,
) -> (String, String, String, String, tempfile::TempDir, PathBuf) {
    let b = broker::bootstrap();
    broker::require(&b);
    let input = broker::unique("probation-in");
    let output = broker::unique("probation-out");
    let dlq = broker::unique("probation-dlq");
    let group = broker::unique("probation-group");
    broker::create_topic(&b, &input, partitions);
    broker::create_topic(&b, &output, partitions);
    broker::create_topic(&b, &dlq, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let host = lab_with(
        dir.path(),
        &b,
        &input,
        &output,
        &dlq,
        &group,
        &format!(
            "[circuit_breaker]\nwindow_records = 100\nfailure_ratio = 0.5\n[deploy]\nprobation_records = {probation_records}"
        ),
    );
    (b, input, output, dlq, dir, host)
}

/// A new version that fails most records trips its breaker on probation:
/// the host swaps the previous version back by itself, before the batch
/// that tripped it is delivered, and that batch is processed by the old
/// version. Records the new version failed before (within the breaker's
/// window) are in the dead-letter queue, attributed to it; every record is
/// in the output or the dead-letter queue, once. The desired state and the
/// audit log say so.
#[test]
fn a_new_version_that_trips_its_breaker_on_probation_is_rolled_back_automatically() {
    let (b, input, output, dlq, dir, host) = probation_lab(2, 500);
    let log = dir.path().join("host.log");
    let (mut s, addr) = start(&host, &log);
    let v1 = sluice::host::registry::digest_of(
        &std::fs::read(module("transforms/identity")).expect("v1"),
    );
    // The poison guest fails every record whose value says `fail`.
    let bad = std::fs::read(module("tests/guests/poison")).expect("poison");
    let bad_digest = sluice::host::registry::digest_of(&bad);
    let records = |from: usize, to: usize| noted(from, to, "fail");
    const N: usize = 2_000;
    broker::produce(&b, &input, records(0, N / 2));
    let first = broker::consume(
        &b,
        &output,
        false,
        Duration::from_secs(60),
        until_distinct(N / 2),
    );
    assert_eq!(first.len(), N / 2, "v1 passed the first half");

    let (code, report) = http::post_json(
        &addr,
        "/api/pipelines/stream/transforms/identity/modules",
        Some(ADMIN),
        &bad,
    );
    assert_eq!(code, 201, "{report}");
    assert_eq!(active_digest(&addr), bad_digest);
    broker::produce(&b, &input, records(N / 2, N));

    // Output + dead letters = every record, once.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (got, dead) = loop {
        let got = broker::consume(
            &b,
            &output,
            false,
            Duration::from_secs(5),
            until_distinct(N),
        );
        let dead = broker::consume(&b, &dlq, false, Duration::from_secs(5), |_| false);
        let mut all: Vec<_> = got.clone();
        all.extend(dead.iter().cloned());
        let (missing, _) = tally(&all, N);
        if missing.is_empty() || Instant::now() > deadline {
            break (got, dead);
        }
    };
    let mut all = got.clone();
    all.extend(dead.iter().cloned());
    let (missing, duplicates) = tally(&all, N);
    assert!(
        missing.is_empty(),
        "{} records neither out nor dead-lettered\n{}",
        missing.len(),
        s.log_tail(20)
    );
    assert_eq!(duplicates, 0);
    assert!(
        !dead.is_empty() && dead.len() < 200,
        "the new version's failures within its window: {}",
        dead.len()
    );
    for d in &dead {
        assert_eq!(
            d.header("sluice.dlq.module").as_deref(),
            Some(bad_digest.as_str())
        );
        assert_eq!(d.header("sluice.dlq.error.kind").as_deref(), Some("poison"));
    }
    // Every output came from v1: the bad version delivered nothing.
    assert!(
        got.iter()
            .all(|g| g.header("sluice.module").as_deref() == Some(v1.as_str()))
    );
    assert_eq!(active_digest(&addr), v1, "rolled back");
    assert_eq!(versions(&addr, ADMIN), vec![v1.clone()]);
    let (_, snapshot) = http_get(&addr, "/api/pipelines/stream", Some(ADMIN)).expect("snapshot");
    let snapshot = json(&snapshot);
    assert_eq!(snapshot["state"], "running");
    assert!(
        snapshot["last_errors"].to_string().contains("rolled back"),
        "{snapshot}"
    );
    // The tenant reads its dead letters through the API.
    let (code, body) = http_get(
        &addr,
        "/api/pipelines/stream/dead-letters?limit=1000",
        Some(TENANT_A),
    )
    .expect("dlq");
    assert_eq!(code, 200, "{body}");
    let entries = json(&body)["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(entries.len(), dead.len());
    assert!(
        entries.iter().all(|e| e["module"] == bad_digest.as_str()),
        "{body}"
    );
    // The newest few, read from the end of the topic: the last of the whole.
    let (code, body) = http_get(
        &addr,
        "/api/pipelines/stream/dead-letters?limit=3",
        Some(TENANT_A),
    )
    .expect("dlq");
    assert_eq!(code, 200, "{body}");
    let newest = json(&body)["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(newest.len(), 3.min(entries.len()), "{body}");
    assert_eq!(&newest[..], &entries[entries.len() - newest.len()..]);
    let audit = std::fs::read_to_string(dir.path().join("data/audit.log")).expect("audit");
    assert!(
        audit.lines().map(json).any(|e| e["who"] == "sluice"
            && e["action"] == "auto-rollback"
            && e["digest"] == bad_digest.as_str()),
        "{audit}"
    );
    eprintln!(
        "automatic rollback: {} records dead-lettered by the bad version before its breaker tripped, {} passed by v1",
        dead.len(),
        got.len()
    );
    let status = s.terminate(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        s.log_tail(30)
    );
}

/// Pipelines created, replaced and deleted through the API: the file is
/// checked first (a bad one is refused with its line and changes nothing),
/// only an admin may do it, and what is created is kept in the pipeline
/// directory.
#[test]
fn pipelines_are_created_replaced_and_deleted_through_the_api_by_admins_only() {
    let dir = Lab::new();
    dir.tokens(&[OPS, TEAM_A_CI]);
    let host = dir.host_file("tokens_file = \"tokens.toml\"\ninstance_slots = 20");
    // lake1's pipeline reads events1, its replacement (lake2) events2: a
    // replaced pipeline resumes its files where the first one stopped, so
    // reading the same file again would add nothing.
    for data in ["events1.jsonl", "events2.jsonl"] {
        std::fs::write(
            dir.dir().join(data),
            (0..100)
                .map(|i| format!("{{\"n\":{i}}}\n"))
                .collect::<String>(),
        )
        .expect("data");
    }
    let file = |lake: &str| {
        format!(
            "name = \"made\"\ntenant = \"team-a\"\n[source.file]\npath = {}\n[[transforms]]\nname = \"identity\"\nmodule = {}\n[outputs.default.local]\npath = {}\n[dead_letter.local]\npath = {}\n",
            toml_path(&dir.dir().join(lake.replace("lake", "events") + ".jsonl")),
            toml_path(&module("transforms/identity")),
            toml_path(&dir.dir().join(lake)),
            toml_path(&dir.dir().join("dlq")),
        )
    };
    let log = dir.dir().join("host.log");
    let mut s = Sluice::serve(&sluice_e2e::sluice_bin!(), &host, &log, &[]);
    let addr = s.address(Duration::from_secs(60));
    let put = |token: &str, body: &str| {
        let (code, text) = http_request(
            "PUT",
            &addr,
            "/api/pipelines/made",
            Some(token),
            body.as_bytes(),
        )
        .expect("put");
        (code, text)
    };
    let (code, text) = put(TENANT_A, &file("lake1"));
    assert_eq!(code, 403, "{text}");
    let (code, text) = put(ADMIN, "name = \"made\"\n[source.file]\npath = 7\n");
    assert_eq!(code, 422, "{text}");
    assert!(text.contains("line 3"), "names the line: {text}");
    assert!(
        !dir.dir().join("pipelines/made.toml").exists(),
        "nothing changed"
    );
    let (code, text) = put(
        ADMIN,
        &file("lake1").replace("name = \"made\"", "name = \"other\""),
    );
    assert_eq!(code, 422, "{text}");

    let (code, text) = put(ADMIN, &file("lake1"));
    assert_eq!(code, 201, "{text}");
    assert!(dir.dir().join("pipelines/made.toml").exists());
    let wait_lines = |lake: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while sluice_e2e::read_lake(&dir.dir().join(lake)).len() < 100 {
            assert!(Instant::now() < deadline, "{}", s.log_tail(20));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_lines("lake1");
    let (code, text) = put(ADMIN, &file("lake2"));
    assert_eq!(code, 200, "replaced: {text}");
    wait_lines("lake2");
    let (code, _) =
        http_request("DELETE", &addr, "/api/pipelines/made", Some(TENANT_A), b"").expect("delete");
    assert_eq!(code, 403);
    let (code, text) =
        http_request("DELETE", &addr, "/api/pipelines/made", Some(ADMIN), b"").expect("delete");
    assert_eq!(code, 204, "{text}");
    assert!(!dir.dir().join("pipelines/made.toml").exists());
    assert_eq!(
        http_get(&addr, "/api/pipelines/made", Some(ADMIN))
            .expect("get")
            .0,
        404
    );
    let audit = std::fs::read_to_string(dir.dir().join("data/audit.log")).expect("audit");
    assert!(audit.contains("\"action\":\"delete-pipeline\""), "{audit}");
    let status = s.terminate(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        s.log_tail(30)
    );
}

/// Two hosts in one consumer group share their desired state through a
/// compacted Kafka topic and their modules through one registry: a deploy
/// through one switches both, and a rollback through the other switches
/// both back. Records produced once both run v2 all come out tagged v2,
/// whichever host's partitions they are in.
#[test]
fn a_deploy_through_one_host_switches_every_host_of_the_group() {
    let b = broker::bootstrap();
    broker::require(&b);
    let input = broker::unique("shared-in");
    let output = broker::unique("shared-out");
    let dlq = broker::unique("shared-dlq");
    let group = broker::unique("shared-group");
    let state_topic = broker::unique("shared-state");
    broker::create_topic(&b, &input, 4);
    broker::create_topic(&b, &output, 4);
    broker::create_topic(&b, &dlq, 1);
    let root = tempfile::tempdir().expect("tempdir");
    let registry = root.path().join("registry");
    let mut hosts = Vec::new();
    for name in ["a", "b"] {
        let dir = root.path().join(name);
        let file = lab_with(&dir, &b, &input, &output, &dlq, &group, "");
        let mut text = std::fs::read_to_string(&file).expect("host file");
        text.push_str(&format!(
            "registry = {}\n[state]\nkafka_bootstrap = \"{b}\"\nkafka_topic = \"{state_topic}\"\n",
            toml_path(&registry)
        ));
        std::fs::write(&file, text).expect("host file");
        let (s, addr) = start(&file, &dir.join("host.log"));
        hosts.push((s, addr));
    }
    let v1 = sluice::host::registry::digest_of(
        &std::fs::read(module("transforms/identity")).expect("v1"),
    );
    let v2_bytes = with_custom_section(
        &std::fs::read(module("transforms/identity")).expect("v1"),
        "sluice-test-version",
        b"2",
    );
    let v2 = sluice::host::registry::digest_of(&v2_bytes);
    let wait_for = |addr: &str, digest: &str, log: &Sluice| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while active_digest(addr) != digest {
            assert!(
                Instant::now() < deadline,
                "{addr} never ran {digest}\n{}",
                log.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let records = |from: usize, to: usize| {
        (from..to)
            .map(|i| {
                (
                    Some(format!("k{}", i % 40)),
                    format!("{{\"n\":{i}}}").into_bytes(),
                )
            })
            .collect::<Vec<_>>()
    };
    broker::produce(&b, &input, records(0, 500));
    let (code, report) = http::post_json(
        &hosts[0].1,
        "/api/pipelines/stream/transforms/identity/modules",
        Some(ADMIN),
        &v2_bytes,
    );
    assert_eq!(code, 201, "{report}");
    let started = Instant::now();
    wait_for(&hosts[1].1, &v2, &hosts[1].0);
    let converged_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(versions(&hosts[1].1, ADMIN), vec![v1.clone(), v2.clone()]);
    broker::produce(&b, &input, records(500, 1500));
    let got = broker::consume(
        &b,
        &output,
        false,
        Duration::from_secs(120),
        until_distinct(1500),
    );
    let (missing, _) = tally(&got, 1500);
    assert!(missing.is_empty(), "{} missing", missing.len());
    let late: Vec<_> = got
        .iter()
        .filter(|g| number(g).is_some_and(|n| n >= 500))
        .collect();
    assert!(!late.is_empty());
    let partitions: std::collections::BTreeSet<i32> = late.iter().map(|g| g.partition).collect();
    assert!(
        late.iter()
            .all(|g| g.header("sluice.module").as_deref() == Some(v2.as_str())),
        "records produced after both switched are all v2"
    );
    // A rollback through the other host switches the first back.
    let (code, report) = http::post_json(
        &hosts[1].1,
        "/api/pipelines/stream/transforms/identity/rollback",
        Some(ADMIN),
        b"",
    );
    assert_eq!(code, 200, "{report}");
    wait_for(&hosts[0].1, &v1, &hosts[0].0);
    eprintln!(
        "two hosts: the second ran v2 {converged_ms:.0} ms after the deploy through the first; late records in {} partitions",
        partitions.len()
    );
    for (mut s, _) in hosts {
        let status = s.terminate(Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| s.success()),
            "{status:?}\n{}",
            s.log_tail(30)
        );
    }
}

fn wait_until(what: &str, s: &Sluice, ok: impl FnMut() -> bool) {
    sluice_e2e::eventually(what, Duration::from_secs(60), || s.log_tail(30), ok);
}

fn refused(addr: &str) -> String {
    http_get(addr, "/api/pipelines", Some(ADMIN))
        .map(|(_, b)| json(&b)["refused"].to_string())
        .unwrap_or_default()
}

/// GitOps: `sluice serve --watch DIR` deploys a changed module file and
/// replaces a changed pipeline file; a bad module or pipeline file is
/// refused and reported while the running version stays; a removed file
/// removes its pipeline.
#[test]
fn a_watched_directory_deploys_changed_files_and_refuses_bad_ones() {
    let b = broker::bootstrap();
    broker::require(&b);
    let input = broker::unique("watch-in");
    let output = broker::unique("watch-out");
    let dlq = broker::unique("watch-dlq");
    let group = broker::unique("watch-group");
    broker::create_topic(&b, &input, 2);
    broker::create_topic(&b, &output, 2);
    broker::create_topic(&b, &dlq, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let host = lab(dir.path(), &b, &input, &output, &dlq, &group);
    let watched = dir.path().join("pipelines");
    let v1_bytes = std::fs::read(module("transforms/identity")).expect("v1");
    let v2_bytes = with_custom_section(&v1_bytes, "sluice-test-version", b"2");
    let (v1, v2) = (
        sluice::host::registry::digest_of(&v1_bytes),
        sluice::host::registry::digest_of(&v2_bytes),
    );
    // The pipeline names its module as a file next to it.
    let m = watched.join("m.wasm");
    std::fs::write(&m, &v1_bytes).expect("module file");
    let file = watched.join("stream.toml");
    let text = std::fs::read_to_string(&file).expect("pipeline");
    let module_line = text
        .lines()
        .find(|l| l.starts_with("module = "))
        .expect("module line")
        .to_string();
    let text = text.replace(&module_line, "module = \"m.wasm\"");
    std::fs::write(&file, &text).expect("pipeline");
    let log = dir.path().join("host.log");
    let mut s = Sluice::serve_watching(&sluice_e2e::sluice_bin!(), &host, &watched, &log);
    let mut addr = String::new();
    wait_until("the host starts", &s, || {
        if let Some(a) = s.listen_address() {
            addr = a;
        }
        !addr.is_empty() && active_digest(&addr) == v1
    });
    broker::produce(
        &b,
        &input,
        (0..200).map(|i| (None, format!("{{\"n\":{i}}}").into_bytes())),
    );
    broker::consume(
        &b,
        &output,
        false,
        Duration::from_secs(60),
        until_distinct(200),
    );

    // A new module file is deployed; a bad one is refused, v2 stays.
    std::fs::write(&m, &v2_bytes).expect("v2");
    wait_until("the new module file is deployed", &s, || {
        active_digest(&addr) == v2
    });
    std::fs::write(&m, b"not a component").expect("garbage");
    wait_until("the bad module file is reported", &s, || {
        refused(&addr).contains("m.wasm")
    });
    assert_eq!(active_digest(&addr), v2, "the running version stays");

    // A bad pipeline file is refused with its line; the pipeline runs on.
    std::fs::write(&m, &v1_bytes).expect("v1 again");
    wait_until("the module file is deployed again", &s, || {
        active_digest(&addr) == v1
    });
    std::fs::write(
        &file,
        text.replace("max_records = 50", "max_records = \"many\""),
    )
    .expect("bad");
    wait_until("the bad pipeline file is reported", &s, || {
        let r = refused(&addr);
        r.contains("stream.toml") && r.contains("line")
    });
    let (_, snap) = http_get(&addr, "/api/pipelines/stream", Some(ADMIN)).expect("get");
    assert_eq!(json(&snap)["state"], "running");

    // A good change replaces the pipeline; the report clears.
    std::fs::write(&file, text.replace("max_records = 50", "max_records = 20")).expect("good");
    wait_until(
        "the changed pipeline file replaces the pipeline",
        &s,
        || {
            !refused(&addr).contains("stream.toml")
                && http_get(&addr, "/api/pipelines/stream", Some(ADMIN))
                    .is_ok_and(|(c, b)| c == 200 && json(&b)["state"] == "running")
        },
    );
    broker::produce(
        &b,
        &input,
        (200..400).map(|i| (None, format!("{{\"n\":{i}}}").into_bytes())),
    );
    let got = broker::consume(
        &b,
        &output,
        false,
        Duration::from_secs(60),
        until_distinct(400),
    );
    let (missing, _) = tally(&got, 400);
    assert!(missing.is_empty(), "{} missing", missing.len());

    // A removed file removes its pipeline.
    std::fs::remove_file(&file).expect("remove");
    wait_until("the pipeline goes with its file", &s, || {
        http_get(&addr, "/api/pipelines/stream", Some(ADMIN)).is_ok_and(|(c, _)| c == 404)
    });
    let audit = std::fs::read_to_string(dir.path().join("data/audit.log")).expect("audit");
    assert!(
        audit
            .lines()
            .map(json)
            .any(|e| e["who"] == "gitops" && e["action"] == "deploy" && e["digest"] == v2.as_str()),
        "{audit}"
    );
    let status = s.terminate(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        s.log_tail(30)
    );
}

/// A hostile tenant's oversized uploads: declared over the limit, they are
/// refused before a byte is read and cost the host nothing; sent without a
/// length (chunked), at most two are buffered at once, so four at the same
/// time cost at most two modules' worth (2 x 128 MiB) of the host's memory.
/// Every refusal is in the audit log. (Before: each 129 MiB upload was read
/// up to the limit, copied once more, and the peak grew by 255-385 MiB per
/// request.)
#[test]
fn oversized_uploads_cost_the_host_a_bounded_amount_and_are_audited() {
    let dir = Lab::new();
    dir.tokens(&[TEAM_A_CI]);
    let host = dir.host_file("tokens_file = \"tokens.toml\"\ninstance_slots = 10");
    let log = dir.dir().join("host.log");
    let mut s = Sluice::serve(&sluice_e2e::sluice_bin!(), &host, &log, &[]);
    let addr = s.address(Duration::from_secs(60));
    let upload = "/api/pipelines/stream/transforms/identity/modules";
    let before = s.peak_kib().expect("peak");
    let declared: Vec<u16> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                sc.spawn(|| {
                    post_declaring(&addr, upload, Some(TENANT_A), 129 << 20)
                        .map(|(c, _)| c)
                        .unwrap_or(0)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    });
    assert_eq!(declared, vec![413; 4]);
    let after_declared = s.peak_kib().expect("peak");
    let chunked: Vec<u16> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| sc.spawn(|| post_chunked(&addr, upload, Some(TENANT_A), 129 << 20)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    });
    let after_chunked = s.peak_kib().expect("peak");
    eprintln!(
        "host peak RSS: {} MiB at start, {} MiB after 4 declared 129 MiB uploads, {} MiB after 4 chunked ones",
        before / 1024,
        after_declared / 1024,
        after_chunked / 1024
    );
    assert!(
        after_declared < before + 16 * 1024,
        "uploads refused on their length cost memory: {before} -> {after_declared} KiB"
    );
    assert!(
        chunked.iter().all(|&c| c == 413),
        "chunked uploads over the limit: {chunked:?}"
    );
    assert!(
        after_chunked < after_declared + (2 * 128 + 48) * 1024,
        "four concurrent chunked uploads cost more than two modules: {after_declared} -> {after_chunked} KiB"
    );
    let audit = std::fs::read_to_string(dir.dir().join("data/audit.log")).expect("audit log");
    let refused = audit
        .lines()
        .filter(|l| l.contains("\"outcome\":\"refused\"") && l.contains("128 MiB"))
        .count();
    assert_eq!(refused, 8, "every 413 audited:\n{audit}");
    let status = s.terminate(Duration::from_secs(60));
    assert!(status.is_some_and(|st| st.success()), "{}", s.log_tail(20));
}

fn cli_deploy(url: &str, module: &Path, extra: &[&str]) -> std::process::Output {
    let module = module.to_string_lossy().into_owned();
    let mut args = vec!["deploy", "--host", url];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["stream", "identity", &module]);
    std::process::Command::new(sluice_e2e::sluice_bin!())
        .args(&args)
        .env("SLUICE_TOKEN", ADMIN)
        .output()
        .expect("sluice deploy")
}

/// Probation across a restart, and `sluice deploy` waiting for it: a
/// version deployed with `--no-wait` is on probation when the host gets
/// SIGTERM; the restarted host puts it on probation again (instead of
/// making it permanent) and says so. Deployed again, `sluice deploy` waits
/// while records flow and exits 0 once it passed; after another restart it
/// is still active. A version that fails its records, on probation when the
/// host stops, is rolled back automatically once the restarted host sees it
/// fail (before, it stayed active and the pipeline failed); deployed with
/// `sluice deploy` waiting, it makes it exit non-zero with the host's reason.
#[test]
fn probation_survives_a_restart_and_deploy_waits_for_its_verdict() {
    let (b, input, _output, _dlq, dir, host) = probation_lab(1, 200);
    let log = dir.path().join("host.log");
    let (mut s, addr) = start(&host, &log);
    let url = format!("http://{addr}");
    let v1_bytes = std::fs::read(module("transforms/identity")).expect("v1");
    let v1 = sluice::host::registry::digest_of(&v1_bytes);
    let v2_bytes = with_custom_section(&v1_bytes, "version", b"2");
    let v2 = sluice::host::registry::digest_of(&v2_bytes);
    let v2_file = dir.path().join("v2.wasm");
    std::fs::write(&v2_file, &v2_bytes).expect("v2 file");
    let records = noted;
    let snapshot = |addr: &str| {
        let (_, snap) = http_get(addr, "/api/pipelines/stream", Some(ADMIN)).expect("snapshot");
        json(&snap)
    };

    // v2 with --no-wait, no records: still on probation at the SIGTERM.
    let out = cli_deploy(&url, &v2_file, &["--no-wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap = snapshot(&addr);
    assert_eq!(snap["probation"]["digest"], v2.as_str(), "{snap}");
    assert_eq!(snap["probation"]["remaining"], 200, "{snap}");
    let status = s.terminate(Duration::from_secs(60));
    assert!(status.is_some_and(|st| st.success()), "{}", s.log_tail(20));

    // Restarted: v2 is on probation again.
    let (mut s, addr) = start(&host, &log);
    let url = format!("http://{addr}");
    let snap = snapshot(&addr);
    assert_eq!(active_digest(&addr), v2, "{snap}");
    assert_eq!(snap["probation"]["digest"], v2.as_str(), "{snap}");
    assert!(
        snap["last_errors"]
            .to_string()
            .contains("it is on probation again"),
        "{snap}"
    );
    assert_eq!(versions(&addr, ADMIN), vec![v1.clone(), v2.clone()]);

    // Records flow: the resumed probation passes.
    broker::produce(&b, &input, records(0, 300, "ok"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !snapshot(&addr)["probation"].is_null() {
        assert!(Instant::now() < deadline, "{}", snapshot(&addr));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(active_digest(&addr), v2);

    // `deploy` (waiting) of v3: it passes once 200 records went through it.
    let v3_bytes = with_custom_section(&v1_bytes, "version", b"3");
    let v3 = sluice::host::registry::digest_of(&v3_bytes);
    let v3_file = dir.path().join("v3.wasm");
    std::fs::write(&v3_file, &v3_bytes).expect("v3 file");
    let waiting = {
        let url = url.clone();
        let v3_file = v3_file.clone();
        std::thread::spawn(move || cli_deploy(&url, &v3_file, &[]))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while active_digest(&addr) != v3 {
        assert!(Instant::now() < deadline, "v3 never became active");
        std::thread::sleep(Duration::from_millis(50));
    }
    broker::produce(&b, &input, records(300, 600, "ok"));
    let out = waiting.join().expect("deploy thread");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && err.contains("passed its probation"),
        "{err}"
    );
    let status = s.terminate(Duration::from_secs(60));
    assert!(status.is_some_and(|st| st.success()), "{}", s.log_tail(20));
    let (mut s, addr) = start(&host, &log);
    let url = format!("http://{addr}");
    assert_eq!(active_digest(&addr), v3, "a version that passed stays");
    assert!(snapshot(&addr)["probation"].is_null());

    // A version failing every record, deployed with --no-wait and on
    // probation when the host stops: the restarted host puts it on
    // probation again and rolls it back when it fails.
    let bad = module("tests/guests/poison");
    let bad_digest = sluice::host::registry::digest_of(&std::fs::read(&bad).expect("poison"));
    let out = cli_deploy(&url, &bad, &["--no-wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = s.terminate(Duration::from_secs(60));
    assert!(status.is_some_and(|st| st.success()), "{}", s.log_tail(20));
    let (mut s, addr) = start(&host, &log);
    let url = format!("http://{addr}");
    assert_eq!(snapshot(&addr)["probation"]["digest"], bad_digest.as_str());
    broker::produce(&b, &input, records(600, 800, "fail"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while active_digest(&addr) != v3 {
        assert!(
            Instant::now() < deadline,
            "the bad version was not rolled back after the restart: {}",
            snapshot(&addr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(snapshot(&addr)["state"], "running");
    assert_eq!(
        versions(&addr, ADMIN),
        vec![v1.clone(), v2.clone(), v3.clone()]
    );

    // Deployed again with `deploy` waiting: it exits non-zero, naming it.
    let waiting = {
        let url = url.clone();
        std::thread::spawn(move || cli_deploy(&url, &bad, &[]))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while active_digest(&addr) != bad_digest {
        assert!(
            Instant::now() < deadline,
            "the bad version never became active"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    broker::produce(&b, &input, records(800, 1000, "fail"));
    let out = waiting.join().expect("deploy thread");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success()
            && err.contains(&format!("{bad_digest} was rolled back"))
            && err.contains("on probation it failed"),
        "{err}"
    );
    assert!(!err.contains("start it again"), "{err}");
    // It failed every record it saw, and the message counts only its own.
    let counts: Vec<u64> = err
        .split("failed ")
        .nth(1)
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .take(2)
                .collect()
        })
        .unwrap_or_default();
    assert!(
        counts.len() == 2 && counts[0] == counts[1] && counts[0] > 0,
        "failed N of its N records: {err}"
    );
    assert_eq!(active_digest(&addr), v3);
    let status = s.terminate(Duration::from_secs(60));
    assert!(status.is_some_and(|st| st.success()), "{}", s.log_tail(20));
}
