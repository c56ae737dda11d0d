//! The `sluice` command as a user runs it: fixtures pass, a changed
//! expectation fails with a diff, `--bless` repairs it, bad pipeline files
//! are refused with the line and field, stdin flows to stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn sluice(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("write stdin");
    drop(input);
    child.wait_with_output().expect("sluice runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn every_example_transform_passes_its_fixtures() {
    let out = sluice(
        &[
            "test",
            "transforms/identity",
            "transforms/json-map",
            "transforms/filter",
            "transforms/enrich",
        ],
        None,
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("9 passed, 0 failed"), "{stdout}");
}

/// One fixture set, three languages: json-map in Rust, Python and
/// JavaScript (and identity in Python and JavaScript), each built from source (the Python and JavaScript build tools
/// installed into the projects on the first run).
#[test]
fn json_map_and_identity_pass_the_shared_fixtures_in_rust_python_and_javascript() {
    let out = sluice(
        &[
            "test",
            "transforms/json-map",
            "transforms/json-map/python",
            "transforms/json-map/js",
            "transforms/identity/python",
            "transforms/identity/js",
        ],
        None,
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("14 passed, 0 failed"), "{stdout}");
    for lang in ["python", "js"] {
        assert!(
            stdout.contains(&format!(
                "ok    transforms/json-map/{lang}/../fixtures/mapping.yaml"
            )),
            "{stdout}"
        );
    }
}

#[test]
fn a_malformed_fixture_file_is_reported_and_the_others_still_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let module = root().join("transforms/identity");
    std::fs::write(
        dir.path().join("a-good.yaml"),
        format!(
            "module: {:?}\nrecords:\n  - input: {{a: 1}}\n    expect: {{emit: [{{value: {{a: 1}}}}]}}\n",
            module.display().to_string()
        ),
    )
    .expect("write");
    std::fs::write(dir.path().join("b-broken.yaml"), "records:\n  - input: [\n").expect("write");
    std::fs::write(
        dir.path().join("c-good.yaml"),
        format!(
            "module: {:?}\nrecords:\n  - input_base64: \"/w==\"\n    expect: {{emit: [{{value_base64: \"/w==\"}}]}}\n",
            module.display().to_string()
        ),
    )
    .expect("write");
    let out = sluice(&["test", dir.path().to_str().expect("utf8")], None);
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("ERROR") && stdout.contains("b-broken.yaml"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok    ") && stdout.contains("c-good.yaml"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 passed, 1 failed (1 could not run)"),
        "{stdout}"
    );
}

/// Writes the fixture `f` for `module` with `records`, blesses it, and
/// returns the blessed text and whether the blessed file then passes.
fn bless_then_test(f: &Path, module: &str, records: &str) -> (String, bool) {
    let module = root().join(module).display().to_string();
    std::fs::write(f, format!("module: {module:?}\nrecords:\n{records}")).expect("write");
    let path = f.to_str().expect("utf8");
    let out = sluice(&["test", "--bless", path], None);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let blessed = std::fs::read_to_string(f).expect("read");
    let out = sluice(&["test", path], None);
    (blessed, out.status.success())
}

/// `--bless` writes what the transform did, and what it writes passes: a
/// JSON `null` output, an output timestamp, bytes that are not UTF-8.
#[test]
fn blessed_expectations_pass_including_null_values_and_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("f.yaml");
    let (blessed, passes) = bless_then_test(
        &f,
        "transforms/identity",
        "  - input: null\n    timestamp: 5\n    expect: drop\n  - input_base64: \"AP8=\"\n    expect: drop\n  - input_text: \"1.00000000000000000001\"\n    expect: drop\n",
    );
    assert!(blessed.contains("value: null"), "{blessed}");
    assert!(blessed.contains("value_base64: AP8="), "{blessed}");
    assert!(passes, "the blessed file must pass:\n{blessed}");
    let path = f.to_str().expect("utf8");
    // Exact bytes: `value_text` is compared byte for byte (`value` parsed,
    // where both numbers are the same double).
    let module = root().join("transforms/identity").display().to_string();
    for (want, passes) in [
        ("value_text: '1.00000000000000000001'", true),
        ("value_text: '1.00000000000000000002'", false),
        ("value: 1.00000000000000000002", true),
    ] {
        std::fs::write(
            &f,
            format!(
                "module: {module:?}\nrecords:\n  - input_text: '1.00000000000000000001'\n    expect: {{emit: [{{{want}}}]}}\n"
            ),
        )
        .expect("write");
        let out = sluice(&["test", path], None);
        assert_eq!(
            out.status.success(),
            passes,
            "{want}: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn a_changed_expectation_fails_with_a_diff_and_bless_rewrites_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let original =
        std::fs::read_to_string(root().join("transforms/filter/fixtures/paid-only.yaml"))
            .expect("fixture");
    let changed = original.replacen(
        "value: {txn: T1, amount: 3.5}",
        "value: {txn: T1, amount: 4.5}",
        1,
    );
    assert_ne!(changed, original);
    let fixture = dir.path().join("paid-only.yaml");
    let module = root().join("transforms/filter");
    std::fs::write(
        &fixture,
        format!(
            "# the author's note, kept by --bless\nmodule: {}\n{changed}",
            module.display()
        ),
    )
    .expect("write");
    let f = fixture.to_str().expect("utf8 path");

    let out = sluice(&["test", f], None);
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "must fail:\n{stdout}");
    assert!(
        stdout.contains("FAIL") && stdout.contains("record 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("-     amount: 4.5") && stdout.contains("+     amount: 3.5"),
        "diff shows both sides:\n{stdout}"
    );
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");

    let out = sluice(&["test", "--bless", f], None);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("(blessed)"));
    let out = sluice(&["test", f], None);
    assert!(
        out.status.success(),
        "passes after bless: {}",
        text(&out.stdout)
    );
    let blessed = std::fs::read_to_string(&fixture).expect("read");
    assert!(
        blessed.contains("amount: 3.5") && !blessed.contains("amount: 4.5"),
        "{blessed}"
    );
    // Only the changed expectation was rewritten: the comment and every
    // other line of the file are as the author wrote them.
    assert!(
        blessed.starts_with("# the author's note, kept by --bless\n"),
        "{blessed}"
    );
    let before: Vec<&str> = changed.lines().collect();
    let kept = before
        .iter()
        .filter(|l| blessed.lines().any(|b| b == **l))
        .count();
    assert!(
        kept + 3 >= before.len(),
        "{kept} of {} lines kept:\n{blessed}",
        before.len()
    );
}

#[test]
fn a_malformed_pipeline_is_refused_with_line_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "name = \"x\"\n[source.file]\npath = \"-\"\nformat = \"xml\"\n",
    )
    .expect("write");
    let out = sluice(&["run", p.to_str().expect("utf8")], None);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bad.toml")
            && stderr.contains("line 4")
            && stderr.contains("format")
            && stderr.contains("xml"),
        "{stderr}"
    );
}

#[test]
fn stdin_to_stdout_through_json_map() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pipe_pipeline(dir.path(), "");
    let out = sluice(
        &["run", p.to_str().expect("utf8")],
        Some("{\"user\":{\"name\":\"ada\"}}\n{\"user\":{\"name\":\"bob\"}}\n"),
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stdout, "{\"who\":\"ada\"}\n{\"who\":\"bob\"}\n");
    assert!(
        text(&out.stderr).contains("in:       2 records"),
        "{}",
        text(&out.stderr)
    );
}

fn pipe_pipeline(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("p.toml");
    let module = root().join("transforms/json-map");
    std::fs::write(
        &p,
        format!(
            "name = \"pipe\"\n{extra}\n[source.file]\npath = \"-\"\n[[transforms]]\nname = \"map\"\nmodule = {:?}\nconfig = {{ mapping = {{ who = \"$.user.name\" }} }}\n[outputs.default.stdout]\n[dead_letter.stdout]\n",
            module.display().to_string()
        ),
    )
    .expect("write");
    p
}

#[test]
fn a_quiet_stream_is_flushed_after_max_wait() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pipe_pipeline(dir.path(), "[batch]\nmax_records = 1000\nmax_wait_ms = 200");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", p.to_str().expect("utf8")])
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    stdin
        .write_all(b"{\"user\":{\"name\":\"eve\"}}\n")
        .expect("write");
    stdin.flush().expect("flush");
    // The batch is far from full and stdin stays open: only max_wait can flush it.
    let line = rx.recv_timeout(std::time::Duration::from_secs(60));
    drop(stdin);
    let status = child.wait().expect("wait");
    assert_eq!(
        line.expect("flushed while the stream was still open"),
        "{\"who\":\"eve\"}"
    );
    assert!(status.success());
}

#[test]
fn check_validates_without_processing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pipe_pipeline(dir.path(), "");
    let out = sluice(
        &["check", p.to_str().expect("utf8")],
        Some("{\"user\":{\"name\":\"never read\"}}\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("ok: transform `map`") && text(&out.stderr).contains("sha256:")
    );
    assert!(text(&out.stdout).is_empty(), "nothing processed");

    let bad = dir.path().join("bad.toml");
    let module = root().join("transforms/json-map");
    std::fs::write(
        &bad,
        format!(
            "name = \"x\"\n[source.file]\npath = \"-\"\n[[transforms]]\nname = \"map\"\nmodule = {:?}\nconfig = {{ mapping = {{ who = \"$[\" }} }}\n[outputs.default.stdout]\n[dead_letter.stdout]\n",
            module.display().to_string()
        ),
    )
    .expect("write");
    let out = sluice(&["check", bad.to_str().expect("utf8")], None);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("transform `map` (module `")
            && stderr.contains("refused its configuration")
            && stderr.contains("mapping `who`"),
        "{stderr}"
    );
}

/// Runs a pipeline on `stdin`; its stdout as JSON lines (and as text).
fn run_json_lines(pipeline: &Path, stdin: &str) -> (Vec<serde_json::Value>, String) {
    let out = sluice(&["run", pipeline.to_str().expect("utf8")], Some(stdin));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    (lines, stdout)
}

#[test]
fn check_lists_every_import_and_refuses_what_is_not_granted() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("ref")).expect("mkdir");
    std::fs::write(dir.path().join("ref/codes.txt"), "A=1").expect("write");
    let module = root().join("tests/guests/ambient");
    let pipeline = |grants: &str| {
        format!(
            "name = \"x\"\n[source.file]\npath = \"-\"\nformat = \"lines\"\n[[transforms]]\nname = \"nosy\"\nmodule = {:?}\n{grants}[outputs.default.stdout]\n[dead_letter.stdout]\n",
            module.display().to_string()
        )
    };
    let bare = dir.path().join("bare.toml");
    std::fs::write(&bare, pipeline("")).expect("write");
    let out = sluice(&["check", bare.to_str().expect("utf8")], None);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for refused in [
        "import wasi:filesystem/types@0.2.6: REFUSED",
        "import wasi:filesystem/preopens@0.2.6: REFUSED",
        "import wasi:clocks/wall-clock@0.2.6: REFUSED",
        "import wasi:clocks/monotonic-clock@0.2.6: REFUSED",
        "import wasi:random/random@0.2.6: REFUSED",
    ] {
        assert!(stderr.contains(refused), "`{refused}` in {stderr}");
    }
    assert!(
        stderr.contains("import wasi:cli/environment@0.2.6: WASI basic, served empty"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: transform `nosy` (module `") && stderr.contains("is refused"),
        "{stderr}"
    );

    let granted = dir.path().join("granted.toml");
    std::fs::write(
        &granted,
        pipeline("[transforms.grants]\nfiles = \"ref\"\nmonotonic_clock = true\nwall_clock = true\nrandom = true\n"),
    )
    .expect("write");
    let out = sluice(&["check", granted.to_str().expect("utf8")], None);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("import wasi:filesystem/types@0.2.6: granted")
            && stderr.contains("(read-only, at /data)"),
        "{stderr}"
    );
    // And a run reads the granted file, and only that.
    let (lines, stdout) = run_json_lines(
        &granted,
        "read:/data/codes.txt\nwrite:/data/codes.txt\nread:/data/../granted.toml\n",
    );
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0]["read"], "A=1", "{stdout}");
    assert!(lines[1].get("error").is_some(), "read-only: {stdout}");
    assert!(lines[2].get("error").is_some(), "no escape: {stdout}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ref/codes.txt")).expect("read"),
        "A=1"
    );

    // Inert WASI and a fuel limit (the host then counts fuel).
    let inert = dir.path().join("inert.toml");
    std::fs::write(
        &inert,
        pipeline("limits = { fuel_per_call = 100000000 }\n[transforms.grants]\nungranted_wasi = \"inert\"\n"),
    )
    .expect("write");
    let (lines, stdout) = run_json_lines(&inert, "env\nread:/data/codes.txt\n");
    assert_eq!(
        lines[0],
        serde_json::json!({"env": 0, "args": 0}),
        "{stdout}"
    );
    assert!(lines[1].get("error").is_some(), "nothing granted: {stdout}");

    let missing = dir.path().join("missing.toml");
    std::fs::write(
        &missing,
        pipeline("[transforms.grants]\nfiles = \"nope\"\n"),
    )
    .expect("write");
    let out = sluice(&["check", missing.to_str().expect("utf8")], None);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("transform `nosy`: the granted directory") && stderr.contains("nope"),
        "{stderr}"
    );
}

#[test]
fn a_hostile_fixture_asserts_the_one_trapping_record_of_a_thousand() {
    let out = sluice(&["test", "tests/guests/poison"], None);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("(1000 records)") && stdout.contains("1 passed, 0 failed"),
        "{stdout}"
    );

    // Expecting the wrong kind for the trapping record fails, naming it.
    let dir = tempfile::tempdir().expect("tempdir");
    let original =
        std::fs::read_to_string(root().join("tests/guests/poison/fixtures/one-trap-in-1000.json"))
            .expect("fixture");
    let changed = original.replacen("\"kind\": \"trap\"", "\"kind\": \"deadline\"", 1);
    assert_ne!(changed, original);
    let mut doc: serde_json::Value = serde_json::from_str(&changed).expect("json");
    doc["module"] = root()
        .join("tests/guests/poison")
        .display()
        .to_string()
        .into();
    let fixture = dir.path().join("wrong.json");
    std::fs::write(&fixture, doc.to_string()).expect("write");
    let out = sluice(&["test", fixture.to_str().expect("utf8")], None);
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "must fail:\n{stdout}");
    assert!(stdout.contains("record 500 `traps`"), "{stdout}");
    assert!(stdout.contains("1 failed"), "{stdout}");
}

/// A pipeline file `name` (tenant `tenant`): stdin → the poison guest → stdout.
fn poison_pipeline(dir: &Path, name: &str, tenant: &str) -> PathBuf {
    let p = dir.join("p.toml");
    std::fs::write(
        &p,
        format!(
            "name = \"{name}\"\ntenant = \"{tenant}\"\n[source.file]\npath = \"-\"\n[[transforms]]\nname = \"poison\"\nmodule = {:?}\n[outputs.default.stdout]\n[dead_letter.stdout]\n",
            root().join("tests/guests/poison").display().to_string()
        ),
    )
    .expect("write");
    p
}

/// A guest's log line with a newline, a carriage return and an escape
/// sequence is one line of the host's log, with those characters escaped:
/// it cannot forge a line that looks like the host's own.
#[test]
fn a_guest_cannot_forge_host_log_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = poison_pipeline(dir.path(), "forge", "default");
    let out = sluice(
        &["run", p.to_str().expect("utf8")],
        Some("{\"v\":\"lognewline\"}\n"),
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("innocent"), "the line is logged: {stderr}");
    for line in stderr.lines() {
        assert!(
            !line.trim_start().starts_with("2026-12-01T00:00:00.000000Z"),
            "a forged line: {line:?}\n{stderr}"
        );
    }
    assert!(
        stderr.contains("innocent\\n2026-12-01T00:00:00.000000Z ERROR sluice: circuit breaker open\\r\\u{1b}[31mred"),
        "escaped in place: {stderr}"
    );
}

/// `SLUICE_LOG_FORMAT=json`: one JSON object per line, and a guest's log
/// line carries its pipeline and tenant like the host's own lines.
#[test]
fn json_logs_carry_the_pipeline_and_tenant_even_for_guest_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = poison_pipeline(dir.path(), "logged", "team-7");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", p.to_str().expect("utf8")])
        .env("SLUICE_LOG_FORMAT", "json")
        .env("SLUICE_LOG", "info")
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"{\"v\":\"lognewline\"}\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("sluice runs");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let guest = lines
        .iter()
        .find(|l| l.to_string().contains("innocent"))
        .unwrap_or_else(|| panic!("no guest line: {stderr}"));
    assert_eq!(guest["span"]["pipeline"], "logged", "{guest}");
    assert_eq!(guest["span"]["tenant"], "team-7", "{guest}");
    let host_lines = lines
        .iter()
        .filter(|l| l["span"]["pipeline"] == "logged")
        .count();
    assert!(
        host_lines >= 2,
        "the host's own lines carry it too: {stderr}"
    );
}

/// A host whose instance pool does not fit in the address space says how
/// many slots would.
#[test]
fn a_host_that_cannot_reserve_its_pool_says_how_many_slots_fit() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("pipelines")).expect("dir");
    let host = dir.path().join("host.toml");
    std::fs::write(&host, "listen = \"127.0.0.1:0\"\ninstance_slots = 5000\n").expect("write");
    // 64 GiB of address space: the binary runs, 5,000 slots of 4 GiB do not.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -v 67108864 && exec {} serve {}",
            env!("CARGO_BIN_EXE_sluice"),
            host.display()
        ))
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let fits: u32 = stderr
        .split("at most ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no slot count: {stderr}"));
    assert!(
        fits > 0 && fits < 5000 && stderr.contains("5000 slots"),
        "{stderr}"
    );
}

/// What is wrong with a pipeline's contents is reported with the pipeline
/// file, the line and the transform: a missing module, a directory that is
/// not a transform project, a duplicate name, a limit out of range.
#[test]
fn errors_in_a_pipeline_name_the_file_the_line_and_the_transform() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = root().join("transforms/identity").display().to_string();
    let write = |name: &str, transforms: &str| {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            format!(
                "name = \"p\"\n[source.file]\npath = \"-\"\n\n{transforms}\n[outputs.default.stdout]\n[dead_letter.stdout]\n"
            ),
        )
        .expect("write");
        p
    };
    std::fs::create_dir_all(dir.path().join("not-a-project")).expect("mkdir");
    let cases = [
        (
            "missing.toml",
            format!(
                "[[transforms]]\nname = \"ok\"\nmodule = {id:?}\n\n[[transforms]]\nname = \"gone\"\nmodule = \"nowhere.wasm\"\n"
            ),
            vec![
                "missing.toml",
                "line 11",
                "transform `gone`",
                "nowhere.wasm",
            ],
        ),
        (
            "dir.toml",
            "[[transforms]]\nname = \"odd\"\nmodule = \"not-a-project\"\n".to_string(),
            vec!["dir.toml", "line 7", "transform `odd`", "not-a-project"],
        ),
        (
            "twice.toml",
            format!(
                "[[transforms]]\nname = \"a\"\nmodule = {id:?}\n[[transforms]]\nname = \"a\"\nmodule = {id:?}\n"
            ),
            vec!["twice.toml", "line 9", "used twice"],
        ),
        (
            "limits.toml",
            format!(
                "[[transforms]]\nname = \"a\"\nmodule = {id:?}\nlimits = {{ memory_mb = 100000 }}\n"
            ),
            vec!["limits.toml", "line 8", "memory_mb"],
        ),
    ];
    for (file, transforms, wants) in cases {
        let p = write(file, &transforms);
        let out = sluice(&["check", p.to_str().expect("utf8")], None);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{file}: {stderr}");
        for want in wants {
            assert!(stderr.contains(want), "{file}: want {want:?} in {stderr}");
        }
    }
}

/// A blessed trap names the module by file name, not by where it was built,
/// so the fixture passes on every machine.
#[test]
fn blessed_trap_messages_do_not_name_the_build_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (blessed, passes) = bless_then_test(
        &dir.path().join("trap.yaml"),
        "tests/guests/poison",
        "  - input_text: boom\n    expect: drop\n",
    );
    assert!(blessed.contains("kind: trap"), "{blessed}");
    assert!(blessed.contains(".wasm"), "the module is named: {blessed}");
    // (The fixture's own `module:` line names the project by its full path.)
    let message = &blessed[blessed.find("message").unwrap_or(0)..];
    assert!(
        !message.contains(&root().display().to_string()) && !message.contains("/target/"),
        "{blessed}"
    );
    assert!(passes, "{blessed}");
}

/// enrich sends large amounts to `alerts`; a pipeline without that output:
/// `sluice check` warns (enrich's fixtures show the output), and the run's
/// summary names the output and how many records went to the dead-letter
/// queue for it instead of passing in silence.
#[test]
fn an_output_the_pipeline_does_not_declare_is_named_by_check_and_the_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("p.toml");
    std::fs::write(dir.path().join("booths.csv"), "booth_id,region\nB1,north\n").expect("csv");
    std::fs::write(
        &p,
        format!(
            "name = \"undeclared\"\n[source.file]\npath = \"-\"\n[[transforms]]\nname = \"enrich\"\nmodule = {:?}\nconfig = {{ table = \"booths\", key = \"$.booth\", fields = [\"region\"], alert = {{ field = \"$.amount\", above = 20, output = \"alerts\" }} }}\ntables = {{ booths = {{ path = \"booths.csv\", key = \"booth_id\" }} }}\n[outputs.default.stdout]\n[dead_letter.local]\npath = \"dlq\"\n",
            root().join("transforms/enrich").display().to_string()
        ),
    )
    .expect("write");
    let out = sluice(&["check", p.to_str().expect("utf8")], None);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("WARNING: transform `enrich` sends records to output `alerts`")
            && stderr.contains("booths.yaml")
            && stderr.contains("(1 warnings)"),
        "{stderr}"
    );
    let input: String = (0..10)
        .map(|i| format!("{{\"booth\":\"B1\",\"amount\":{}}}\n", i * 5))
        .collect();
    let out = sluice(&["run", p.to_str().expect("utf8")], Some(&input));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Amounts 25, 30, 35, 40, 45 are above 20.
    assert!(
        stderr.contains("transform `enrich` sent 5 records to output `alerts`, which the pipeline does not declare"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pipeline `undeclared` finished"),
        "{stderr}"
    );
}

/// A run ended by SIGTERM says it stopped, not that it finished: its source
/// (stdin, still open) was not drained.
#[test]
fn a_run_stopped_by_a_signal_says_stopped() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pipe_pipeline(dir.path(), "[batch]\nmax_records = 1000\nmax_wait_ms = 100");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", p.to_str().expect("utf8")])
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    stdin
        .write_all(b"{\"user\":{\"name\":\"eve\"}}\n")
        .expect("write");
    stdin.flush().expect("flush");
    // Once its first record is out, the pipeline runs: stop it.
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "{\"who\":\"eve\"}");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().expect("wait");
    drop(stdin);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("pipeline `pipe` stopped after") && !stderr.contains("finished"),
        "{stderr}"
    );
}

/// `sluice completions bash|zsh|fish` prints a script that knows the
/// commands; `deploy --help` says any language's project.
#[test]
fn completions_and_help_know_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = sluice(&["completions", shell], None);
        let script = text(&out.stdout);
        assert!(out.status.success(), "{}", text(&out.stderr));
        for command in ["deploy", "rollback", "versions", "pause", "completions"] {
            assert!(script.contains(command), "{shell}: no `{command}`");
        }
    }
    let out = sluice(&["deploy", "--help"], None);
    let help = text(&out.stdout);
    assert!(
        help.contains("Rust, Python or") && help.contains("JavaScript"),
        "{help}"
    );
}

/// Reads a child's stderr on a thread; the lines so far, shared.
fn stderr_lines(child: &mut std::process::Child) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::BufRead;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
    lines
}

fn wait_for_line(
    lines: &std::sync::Mutex<Vec<String>>,
    what: &str,
    timeout: std::time::Duration,
) -> Option<usize> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        {
            let l = lines.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = l.iter().position(|x| x.contains(what)) {
                return Some(i);
            }
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A Kafka source whose broker is not there (nothing listens on the port):
/// `sluice check --connect` says so naming the address; `sluice run` says it
/// once as an error naming the address, then keeps librdkafka's repeated
/// warnings to a few lines, and a SIGTERM ends it with "stopped"; a host
/// shows the pipeline's source as unreachable on its API and in its metrics.
#[test]
fn an_unreachable_broker_is_named_once_and_shown_as_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let bootstrap = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("pipelines")).expect("dir");
    let p = dir.path().join("pipelines/down.toml");
    std::fs::write(
        &p,
        format!(
            "name = \"down\"\n[source.kafka]\nbootstrap = \"{bootstrap}\"\ntopics = [\"t\"]\ngroup = \"g\"\n[[transforms]]\nname = \"identity\"\nmodule = {:?}\n[outputs.default.stdout]\n[dead_letter.stdout]\n",
            root().join("transforms/identity").display().to_string()
        ),
    )
    .expect("write");
    let path = p.to_str().expect("utf8");

    let out = sluice(&["check", "--connect", path], None);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("error: source:") && stderr.contains(&bootstrap),
        "{stderr}"
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", path])
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let lines = stderr_lines(&mut child);
    let first = wait_for_line(
        &lines,
        "cannot reach the Kafka brokers",
        std::time::Duration::from_secs(60),
    );
    // What it logs over the next 5 s (it retried several times a second).
    std::thread::sleep(std::time::Duration::from_secs(5));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    // The reader thread sees the end of stderr once the process is gone.
    let _ = wait_for_line(
        &lines,
        "pipeline `down`",
        std::time::Duration::from_secs(10),
    );
    let all = lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let text = all.join("\n");
    let first = first.unwrap_or_else(|| panic!("no error naming the broker:\n{text}"));
    assert!(
        all[first].contains("ERROR") && all[first].contains(&bootstrap),
        "{}",
        all[first]
    );
    let after: Vec<&String> = all[first..]
        .iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(
        after.len() <= 12,
        "{} warnings and errors in 5 s after the first:\n{text}",
        after.len()
    );
    assert!(status.success(), "{text}");
    assert!(
        text.contains("pipeline `down` stopped after"),
        "a signal stops it:\n{text}"
    );

    // A host shows the source as unreachable.
    let host = dir.path().join("host.toml");
    std::fs::write(&host, "listen = \"127.0.0.1:0\"\n").expect("host file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", host.to_str().expect("utf8")])
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let lines = stderr_lines(&mut child);
    let at = wait_for_line(
        &lines,
        "listening on http://",
        std::time::Duration::from_secs(60),
    )
    .expect("listening");
    let addr = lines.lock().unwrap_or_else(|e| e.into_inner())[at]
        .split("listening on http://")
        .nth(1)
        .map(|a| a.trim_end_matches('/').trim().to_string())
        .expect("address");
    let get = |path: &str| -> String {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let page = get("/api/pipelines/down");
        if page.contains("source unreachable since") && page.contains(&bootstrap) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{page}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let metrics = get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sluice_source_unreachable{")
                && l.contains("pipeline=\"down\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
