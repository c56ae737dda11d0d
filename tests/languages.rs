//! End-to-end: transforms in Python, JavaScript and Rust in one pipeline,
//! and the newcomer's path (`sluice new`, `sluice build`, `sluice test`)
//! from an empty directory outside the repository, as the README tells it.

use sluice::pipeline::{RunOptions, run_file};
use sluice_e2e::{module, read_lake, toml_path};
use std::path::Path;
use std::process::Command;

/// Python divides, Rust (json-map) renames, JavaScript (json-map) renames
/// again: 50 records, one of which makes Python raise ZeroDivisionError and
/// one of which has no `n`. Those two, and only they, are in the DLQ with
/// the Python transform's name and the exception; the other 48 come out in
/// order through all three languages, keeping their keys.
#[tokio::test(flavor = "multi_thread")]
async fn python_js_and_rust_in_one_pipeline_and_an_exception_stays_with_its_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    let lines: Vec<String> = (0..50)
        .map(|i| match i {
            17 => "{\"n\":0}".to_string(),
            31 => "{\"m\":1}".to_string(),
            _ => format!("{{\"n\":{}}}", i + 1),
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").expect("write");
    std::fs::write(
        dir.path().join("units.csv"),
        "id,unit\n0,zero\n1,one\n2,two\n",
    )
    .expect("csv");
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name = "mixed"
[source.file]
path = {input}
[batch]
max_records = 16
[[transforms]]
name = "divide"
module = {py}
config = {{ lookup = true }}
tables = {{ units = {{ path = "units.csv", key = "id" }} }}
[[transforms]]
name = "rename-rust"
module = {rust}
config = {{ mapping = {{ number = "$.n", quotient = "$.q", unit = "$.unit" }} }}
[[transforms]]
name = "rename-js"
module = {js}
config = {{ mapping = {{ n = "$.number", q = "$.quotient", u = "$.unit" }} }}
[outputs.default.local]
path = "out"
[dead_letter.local]
path = "dlq"
"#,
            input = toml_path(&input),
            py = toml_path(&module("tests/guests/py-divide")),
            rust = toml_path(&module("transforms/json-map")),
            js = toml_path(&module("transforms/json-map/js")),
        ),
    )
    .expect("write");
    let summary = run_file(&pipeline, &RunOptions { quiet_build: true })
        .await
        .expect("the run finishes");
    let out = read_lake(&dir.path().join("out"));
    let dlq = read_lake(&dir.path().join("dlq"));
    let want: Vec<serde_json::Value> = (0..50)
        .filter(|i| *i != 17 && *i != 31)
        .map(|i| {
            let n = i + 1;
            let unit = ["zero", "one", "two"][(n % 3) as usize];
            serde_json::json!({"n": n, "q": 100 / n, "u": unit})
        })
        .collect();
    assert_eq!(
        out, want,
        "every other record, in order, through three languages"
    );
    let got: Vec<(i64, String, String, String)> = dlq
        .iter()
        .map(|e| {
            (
                e["source"]["offset"].as_i64().expect("offset"),
                e["transform"].as_str().unwrap_or_default().to_string(),
                e["error"]["kind"].as_str().unwrap_or_default().to_string(),
                e["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(got.len(), 2, "{dlq:?}");
    assert_eq!(
        (got[0].0, got[0].1.as_str(), got[0].2.as_str()),
        (17, "divide", "internal"),
        "{dlq:?}"
    );
    assert!(
        got[0].3.contains("ZeroDivisionError") && got[0].3.contains("transform.py line"),
        "{dlq:?}"
    );
    assert_eq!(
        (got[1].0, got[1].1.as_str(), got[1].2.as_str()),
        (31, "divide", "missing-field"),
        "{dlq:?}"
    );
    // A failed record is the transform's outcome, not a trap: the batch was
    // not bisected.
    assert_eq!(summary.steps[0].batch_failures, 0, "{:?}", summary.steps[0]);
    assert_eq!(summary.dead_letter_total(), 2);
}

fn sluice(cwd: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-under-test"))
        .args(args)
        .current_dir(cwd)
        // The README's path: the project installs its own build tool.
        .env_remove("SLUICE_COMPONENTIZE_PY")
        .env_remove("SLUICE_COMPONENTIZE_JS")
        .output()
        .expect("run sluice");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `sluice new x --lang L && sluice build x && sluice test x` in an empty
/// directory outside the repository.
fn newcomer(lang: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    for args in [
        &["new", "x", "--lang", lang][..],
        &["build", "x"][..],
        &["test", "x"][..],
    ] {
        let (ok, text) = sluice(cwd, args);
        assert!(ok, "`sluice {}` failed:\n{text}", args.join(" "));
        if args[0] == "test" {
            assert!(text.contains("1 passed, 0 failed"), "{text}");
        }
        if args[0] == "build" && lang != "rust" {
            assert!(
                text.contains("imports: the host interface only (no WASI)"),
                "{text}"
            );
        }
    }
}

/// The first thing every author writes: `print()` in Python, `console.log`
/// in JavaScript. The records still pass (before, every Python record
/// failed with a trap in the WASI stub; JavaScript's lines vanished), and
/// when a record's expectation does not hold, `sluice test` shows what the
/// transform printed for it beside the diff.
fn printing(lang: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    let (ok, text) = sluice(cwd, &["new", "x", "--lang", lang]);
    assert!(ok, "{text}");
    let (file, anchor, prints) = match lang {
        "python" => (
            "x/transform.py",
            "    doc[\"greeting\"] =",
            "    print(\"about to greet\", name)\n    import sys\n    print(\"on stderr\", file=sys.stderr)\n",
        ),
        _ => (
            "x/transform.js",
            "  doc.greeting =",
            "  console.log(\"about to greet\", doc.name);\n  console.error({ on: \"stderr\" });\n",
        ),
    };
    let path = cwd.join(file);
    let source = std::fs::read_to_string(&path).expect("transform");
    assert!(source.contains(anchor), "the template changed:\n{source}");
    std::fs::write(
        &path,
        source.replacen(anchor, &format!("{prints}{anchor}"), 1),
    )
    .expect("write");
    let (ok, text) = sluice(cwd, &["build", "x"]);
    assert!(ok, "{text}");
    let (ok, text) = sluice(cwd, &["test", "x"]);
    assert!(
        ok && text.contains("1 passed, 0 failed"),
        "printing fails nothing:\n{text}"
    );
    // A wrong expectation: the diff, and beside it what was printed.
    let fixture = cwd.join("x/fixtures/sample.yaml");
    let yaml = std::fs::read_to_string(&fixture).expect("fixture");
    assert!(yaml.contains("hello, Ada"), "{yaml}");
    std::fs::write(&fixture, yaml.replace("hello, Ada", "hi, Ada")).expect("fixture");
    let (ok, text) = sluice(cwd, &["test", "x"]);
    assert!(!ok, "{text}");
    let at = text
        .find("hi, Ada")
        .unwrap_or_else(|| panic!("no diff:\n{text}"));
    let after = &text[at..];
    assert!(
        after.contains("info: about to greet Ada"),
        "the printed line beside the diff:\n{text}"
    );
    let stderr_line = if lang == "python" {
        "warn: on stderr"
    } else {
        "error: {\"on\":\"stderr\"}"
    };
    assert!(after.contains(stderr_line), "{text}");
}

#[test]
fn print_in_python_is_logged_and_shown_by_sluice_test() {
    printing("python");
}

#[test]
fn console_log_in_javascript_is_logged_and_shown_by_sluice_test() {
    printing("js");
}

#[test]
fn sluice_new_build_test_works_for_python_from_an_empty_directory() {
    newcomer("python");
}

#[test]
fn sluice_new_build_test_works_for_javascript_from_an_empty_directory() {
    newcomer("js");
}

#[test]
fn sluice_new_build_test_works_for_rust_from_an_empty_directory() {
    newcomer("rust");
}

/// componentize-js's runtime keeps growing its linear memory across
/// batches; the host replaces such an instance between batches, before it
/// reaches its limit, so no batch fails for it (without that, 300 batches of
/// 1,000 records here failed 3 batches with out-of-memory, retried).
#[tokio::test(flavor = "multi_thread")]
async fn a_javascript_instance_whose_memory_grows_is_replaced_before_it_fails_a_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    let pad = "x".repeat(100);
    let lines: String = (0..300_000)
        .map(|i| format!("{{\"n\":{i},\"pad\":\"{pad}\"}}\n"))
        .collect();
    std::fs::write(&input, lines).expect("write");
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"grow\"\n[source.file]\npath = {}\n[batch]\nmax_records = 1000\n[[transforms]]\nname = \"id\"\nmodule = {}\n[outputs.default.local]\npath = \"out\"\n[dead_letter.local]\npath = \"dlq\"\n",
            toml_path(&input),
            toml_path(&module("transforms/identity/js"))
        ),
    )
    .expect("write");
    let summary = run_file(&pipeline, &RunOptions { quiet_build: true })
        .await
        .expect("the run finishes");
    assert_eq!(summary.steps[0].batch_failures, 0, "{:?}", summary.steps[0]);
    assert_eq!(summary.dead_letter_total(), 0);
    assert_eq!(summary.outputs["default"], 300_000);
}
