//! The fixture runner behind `sluice test`.
//!
//! A fixture file (YAML or JSON) lives next to a transform, usually in its
//! `fixtures/` folder. It gives the transform's configuration, optional
//! reference tables, and records with the outcome expected for each:
//!
//! ```yaml
//! description: maps toll transactions
//! config: { mapping: { customer: "$.customer_id" } }
//! tables: { booths: { path: ../../../examples/toll-road/booths.csv, key: booth_id } }
//! records:
//!   - input: { customer_id: C-1 }          # a JSON value (the record value)
//!     expect:
//!       emit:
//!         - value: { customer: C-1 }       # default output
//!         - { output: alerts, value: { customer: C-1 } }
//!   - input_text: "not json"               # a raw text value
//!     expect: { fail: { kind: invalid-input, message: "not valid JSON" } }
//!   - input: {}
//!     expect: drop
//! ```
//!
//! All records of a file go to the transform as one batch; when the call
//! fails as a whole (a trap, the deadline), the batch is bisected as in a
//! pipeline and the records at fault fail alone, with kind `trap`,
//! `deadline`, `out-of-memory` or `contract`. A failure's
//! `message` matches when it is a substring of the actual message, or, with
//! `message_regex`, when the regex matches. `sluice test --bless` rewrites the
//! expectations from what the transform actually did.

use crate::engine::{
    Engine, Grants, InstanceSpec, Limits, LoadError, Outcome, RefTables, Runner, TableError,
    TransformError,
};
use crate::project::{BuildError, resolve_module};
use crate::record::{Header, Partition, Position, Record};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why fixtures could not be run (as opposed to failing).
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// Reading or writing a fixture file failed.
    #[error("fixture `{path}`: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// No fixtures found.
    #[error("no fixture files (*.yaml, *.yml, *.json) in `{0}`")]
    NoFixtures(PathBuf),
    /// Build failure.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Load failure.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Table failure.
    #[error(transparent)]
    Table(#[from] TableError),
}

/// A fixture file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureFile {
    /// What the fixture checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Module to test, relative to the fixture file (default: the transform
    /// project holding the `fixtures/` folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<PathBuf>,
    /// Configuration passed to `init`.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Reference tables, paths relative to the fixture file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tables: BTreeMap<String, crate::config::TableConfig>,
    /// Limits for the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<serde_json::Value>,
    /// Grants for the instance (`files` relative to the fixture file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<serde_json::Value>,
    /// Expected `init` failure (substring); when set, `records` are not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_init_error: Option<String>,
    /// The records, each with its expected outcome.
    #[serde(default)]
    pub records: Vec<Case>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// One input record and its expected outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// A name shown in failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The record value as a JSON value (serialized compactly; `input: null`
    /// is the JSON `null`, leave `input` out for a record with no value).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub input: Option<serde_json::Value>,
    /// The record value as raw text (use for invalid JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_text: Option<String>,
    /// The record value as base64 (any bytes, e.g. not UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_base64: Option<String>,
    /// The record key (text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Record headers (text values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Event time, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// What should happen.
    pub expect: Expect,
}

/// An expected (or actual) outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Expect {
    /// `drop`.
    Drop(DropWord),
    /// `{ emit: [...] }`.
    Emit {
        /// Output records, in order.
        emit: Vec<ExpectedOutput>,
    },
    /// `{ fail: { kind, message } }`.
    Fail {
        /// The failure.
        fail: ExpectedFailure,
    },
}

/// The word `drop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DropWord {
    /// Dropped.
    Drop,
}

/// One expected output record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedOutput {
    /// Named output; absent for the default output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Key (text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Value as JSON, compared parsed (`value: null` is the JSON `null`;
    /// leave out `value`, `value_text` and `value_base64` for no value).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<serde_json::Value>,
    /// Value as text, compared byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_text: Option<String>,
    /// Value as base64, compared byte for byte (for bytes that are not UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    /// Headers (text values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Event time, ms since the epoch: checked when given (blessed when it
    /// differs from the input's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

/// A field that is present, even as `null`, is `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

impl ExpectedOutput {
    /// Whether `actual` (as built by `actual_output`, with every form of its
    /// value) satisfies this expectation.
    fn accepts(&self, actual: &ActualOutput) -> bool {
        let value_ok = match (&self.value, &self.value_text, &self.value_base64) {
            (None, None, None) => actual.bytes.is_none(),
            (Some(v), None, None) => actual.json.as_ref() == Some(v),
            (None, Some(t), None) => actual.bytes.as_deref() == Some(t.as_bytes()),
            (None, None, Some(b)) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .is_ok_and(|want| actual.bytes.as_deref() == Some(&want[..]))
            }
            _ => false,
        };
        value_ok
            && self.output == actual.shown.output
            && self.key == actual.shown.key
            && self.headers == actual.shown.headers
            && self.timestamp.is_none_or(|t| actual.timestamp == Some(t))
    }
}

/// An actual output: how it is shown (and blessed), plus its raw value.
#[derive(Debug, Clone)]
struct ActualOutput {
    shown: ExpectedOutput,
    bytes: Option<Vec<u8>>,
    json: Option<serde_json::Value>,
    timestamp: Option<i64>,
}

/// An expected failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedFailure {
    /// Error kind, exactly.
    pub kind: String,
    /// A substring of the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A regex the message must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_regex: Option<String>,
}

/// The result of one fixture file.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// The fixture file.
    pub path: PathBuf,
    /// Records checked.
    pub records: usize,
    /// Human-readable mismatches (empty when the file passed).
    pub mismatches: Vec<String>,
    /// Whether the file was rewritten by `--bless`.
    pub blessed: bool,
}

impl FileReport {
    /// Whether every expectation held.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// What `sluice test PATH` runs: fixture files, and the module they test
/// when PATH is a transform project.
#[derive(Debug, Clone)]
pub struct Target {
    /// The fixture files, sorted.
    pub files: Vec<PathBuf>,
    /// The project under test (it replaces each fixture's default module).
    pub module: Option<PathBuf>,
}

/// Finds the fixture files for a path: a fixture file itself, a fixtures
/// folder, or a transform project (its fixtures folder: `fixtures/`, or the
/// one its manifest names, which may be shared by several projects).
pub fn discover(path: &Path) -> Result<Target, FixtureError> {
    if path.is_file() {
        return Ok(Target {
            files: vec![path.to_path_buf()],
            module: None,
        });
    }
    let project = crate::project::Project::detect(path)?;
    let (dir, module) = match project {
        Some(p) => (p.fixtures, Some(path.to_path_buf())),
        None if path.join("fixtures").is_dir() => (path.join("fixtures"), None),
        None => (path.to_path_buf(), None),
    };
    let entries = std::fs::read_dir(&dir).map_err(|e| FixtureError::File {
        path: dir.clone(),
        message: e.to_string(),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(FixtureError::NoFixtures(dir));
    }
    Ok(Target { files, module })
}

/// The named outputs a transform project's fixtures show it sending records
/// to, each with the first fixture file that shows it (nothing when the
/// module is a `.wasm` file or the project has no readable fixtures).
pub fn fixture_outputs(module: &Path) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    if !module.is_dir() {
        return found;
    }
    let Ok(target) = discover(module) else {
        return found;
    };
    for file in target.files {
        let Ok(fixture) = read(&file) else { continue };
        for case in &fixture.records {
            if let Expect::Emit { emit } = &case.expect {
                for name in emit.iter().filter_map(|o| o.output.as_ref()) {
                    found.entry(name.clone()).or_insert_with(|| file.clone());
                }
            }
        }
    }
    found
}

fn is_json(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "json")
}

/// Reads a fixture file.
pub fn read(path: &Path) -> Result<FixtureFile, FixtureError> {
    let text = std::fs::read_to_string(path).map_err(|e| FixtureError::File {
        path: path.into(),
        message: e.to_string(),
    })?;
    let parsed = if is_json(path) {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    } else {
        serde_yaml::from_str(&text).map_err(|e| e.to_string())
    };
    parsed.map_err(|message| FixtureError::File {
        path: path.into(),
        message,
    })
}

fn write(path: &Path, fixture: &FixtureFile) -> Result<(), FixtureError> {
    let text = if is_json(path) {
        serde_json::to_string_pretty(fixture)
            .map(|t| t + "\n")
            .map_err(|e| e.to_string())
    } else {
        serde_yaml::to_string(fixture).map_err(|e| e.to_string())
    };
    let text = text.map_err(|message| FixtureError::File {
        path: path.into(),
        message,
    })?;
    std::fs::write(path, text).map_err(|e| FixtureError::File {
        path: path.into(),
        message: e.to_string(),
    })
}

/// The module a fixture file tests.
fn module_for(path: &Path, fixture: &FixtureFile) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    match &fixture.module {
        Some(m) => dir.join(m),
        None if dir.file_name().is_some_and(|n| n == "fixtures") => {
            dir.parent().unwrap_or(Path::new(".")).to_path_buf()
        }
        None => dir.to_path_buf(),
    }
}

fn case_record(case: &Case) -> Result<Record, String> {
    use base64::Engine as _;
    let value = match (&case.input, &case.input_text, &case.input_base64) {
        (_, _, Some(b64)) => Some(bytes::Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("input_base64: {e}"))?,
        )),
        (_, Some(text), None) => Some(bytes::Bytes::from(text.clone())),
        (Some(v), None, None) => Some(bytes::Bytes::from(v.to_string())),
        (None, None, None) => None,
    };
    Ok(Record {
        key: case.key.clone().map(bytes::Bytes::from),
        value,
        headers: case
            .headers
            .iter()
            .map(|(k, v)| Header::new(k, v.clone().into_bytes()))
            .collect(),
        timestamp: case.timestamp,
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn actual_output(
    output_names: &[String],
    out: &crate::engine::Output,
    input_timestamp: Option<i64>,
) -> ActualOutput {
    use base64::Engine as _;
    let bytes = out.record.value.as_deref().map(<[u8]>::to_vec);
    let json = bytes
        .as_deref()
        .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok());
    let (value_text, value_base64) = match (&bytes, &json) {
        (Some(_), Some(_)) | (None, _) => (None, None),
        (Some(b), None) => match std::str::from_utf8(b) {
            Ok(t) => (Some(t.to_string()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(b)),
            ),
        },
    };
    let timestamp = out.record.timestamp;
    ActualOutput {
        shown: ExpectedOutput {
            output: (out.slot != 0).then(|| {
                output_names
                    .get(out.slot as usize)
                    .cloned()
                    .unwrap_or_default()
            }),
            key: out.record.key.as_deref().map(text),
            value: json.clone(),
            value_text,
            value_base64,
            headers: out
                .record
                .headers
                .iter()
                .map(|h| (h.name_str().into_owned(), text(&h.value)))
                .collect(),
            timestamp: timestamp.filter(|_| timestamp != input_timestamp),
        },
        bytes,
        json,
        timestamp,
    }
}

/// What a record actually did.
#[derive(Debug, Clone)]
enum Actual {
    Drop,
    Fail(ExpectedFailure),
    Emit(Vec<ActualOutput>),
}

impl Actual {
    /// The expectation `--bless` writes.
    fn shown(&self) -> Expect {
        match self {
            Actual::Drop => Expect::Drop(DropWord::Drop),
            Actual::Fail(f) => Expect::Fail { fail: f.clone() },
            Actual::Emit(outs) => Expect::Emit {
                emit: outs.iter().map(|o| o.shown.clone()).collect(),
            },
        }
    }
}

fn matches(expected: &Expect, actual: &Actual) -> bool {
    match (expected, actual) {
        (Expect::Fail { fail: e }, Actual::Fail(a)) => {
            let msg = a.message.as_deref().unwrap_or_default();
            e.kind == a.kind
                && e.message.as_deref().is_none_or(|m| msg.contains(m))
                && e.message_regex
                    .as_deref()
                    .is_none_or(|r| regex::Regex::new(r).is_ok_and(|re| re.is_match(msg)))
        }
        (Expect::Drop(_), Actual::Drop) => true,
        (Expect::Emit { emit }, Actual::Emit(outs)) => {
            emit.len() == outs.len() && emit.iter().zip(outs).all(|(e, a)| e.accepts(a))
        }
        _ => false,
    }
}

fn render(case: &Expect) -> String {
    serde_yaml::to_string(case).unwrap_or_else(|e| format!("<cannot render: {e}>"))
}

fn diff(expected: &str, actual: &str) -> String {
    let d = similar::TextDiff::from_lines(expected, actual);
    let mut out = String::new();
    for change in d.iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => "-",
            similar::ChangeTag::Insert => "+",
            similar::ChangeTag::Equal => " ",
        };
        out.push_str(&format!("      {sign} {}", change));
        if !change.to_string().ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// Runs fixture files, building and compiling each module once.
#[derive(Debug)]
pub struct FixtureRunner {
    engine: Engine,
    quiet_build: bool,
    modules: std::collections::HashMap<PathBuf, Arc<crate::engine::Module>>,
}

impl FixtureRunner {
    /// A runner; `quiet_build` captures cargo's output when building modules.
    pub fn new(engine: Engine, quiet_build: bool) -> Self {
        FixtureRunner {
            engine,
            quiet_build,
            modules: Default::default(),
        }
    }

    fn module(&mut self, source: &Path) -> Result<Arc<crate::engine::Module>, FixtureError> {
        let key = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
        if let Some(m) = self.modules.get(&key) {
            return Ok(m.clone());
        }
        let path = resolve_module(source, self.quiet_build)?;
        let module = self.engine.load_file(&path)?;
        self.modules.insert(key, module.clone());
        Ok(module)
    }

    /// Runs one fixture file; with `bless`, rewrites its expectations.
    /// `project` (from [`discover`]) is the module unless the file names one.
    pub fn run_file(
        &mut self,
        path: &Path,
        project: Option<&Path>,
        bless: bool,
    ) -> Result<FileReport, FixtureError> {
        let fixture = read(path)?;
        let source = match (project, &fixture.module) {
            (Some(p), None) => p.to_path_buf(),
            _ => module_for(path, &fixture),
        };
        let module = self.module(&source)?;
        run_fixture(module, fixture, path, bless)
    }
}

fn run_fixture(
    module: Arc<crate::engine::Module>,
    mut fixture: FixtureFile,
    path: &Path,
    bless: bool,
) -> Result<FileReport, FixtureError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tables = RefTables::default();
    for (name, t) in &fixture.tables {
        tables.load(name, &dir.join(&t.path), &t.key)?;
    }
    let limits: Limits = match &fixture.limits {
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| FixtureError::File {
            path: path.into(),
            message: format!("limits: {e}"),
        })?,
        None => Limits::default(),
    };
    let grants: Grants = match &fixture.grants {
        Some(v) => serde_json::from_value::<Grants>(v.clone())
            .map_err(|e| FixtureError::File {
                path: path.into(),
                message: format!("grants: {e}"),
            })?
            .resolved(dir),
        None => Grants::default(),
    };
    let spec = InstanceSpec {
        grants,
        name: Arc::from(
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        config: fixture.config.to_string(),
        tables: Arc::new(tables),
        limits,
    };
    let mut report = FileReport {
        path: path.into(),
        records: fixture.records.len(),
        mismatches: Vec::new(),
        blessed: false,
    };
    let mut runner = match (
        Runner::new(module.clone(), spec.clone()),
        &fixture.expect_init_error,
    ) {
        (Ok(r), None) => r,
        (Err(e), Some(want)) => {
            if !e.to_string().contains(want.as_str()) {
                report.mismatches.push(format!(
                    "  init error: expected a message containing {want:?}, got {:?}",
                    e.to_string()
                ));
            }
            return Ok(report);
        }
        (Ok(_), Some(want)) => {
            report.mismatches.push(format!(
                "  init: expected an error containing {want:?}, but init succeeded"
            ));
            return Ok(report);
        }
        (Err(e), None) => {
            report.mismatches.push(format!("  init failed: {e}"));
            return Ok(report);
        }
    };

    let mut records = Vec::with_capacity(fixture.records.len());
    for (i, case) in fixture.records.iter().enumerate() {
        records.push(case_record(case).map_err(|message| FixtureError::File {
            path: path.into(),
            message: format!("record {i}: {message}"),
        })?);
    }
    // Trap messages name the module's file: show it without the directory,
    // so blessed expectations do not depend on where the build went.
    let module_path = module.path().display().to_string();
    let module_name = module
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let portable = |m: &str| m.replace(&module_path, &module_name);
    let stream = Arc::from(path.display().to_string().as_str());
    let positions: Vec<Position> = (0..records.len())
        .map(|i| Position {
            partition: Partition {
                stream: Arc::clone(&stream),
                partition: 0,
            },
            offset: i as i64,
        })
        .collect();
    let inputs: Vec<(&Record, &Position)> = records.iter().zip(&positions).collect();
    // A batch that fails as a whole is bisected as in a pipeline, so a
    // fixture can assert which record traps and how.
    let actual: Vec<Actual> = match runner.process_isolating(&inputs) {
        Ok((processed, _)) => processed
            .outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| match o {
                Outcome::Drop => Actual::Drop,
                Outcome::Fail(f) => Actual::Fail(ExpectedFailure {
                    kind: f.kind.clone(),
                    message: Some(portable(&f.message)),
                    message_regex: None,
                }),
                Outcome::Emit { start, end } => Actual::Emit(
                    processed.outputs[*start..*end]
                        .iter()
                        .map(|out| {
                            actual_output(&processed.output_names, out, records[i].timestamp)
                        })
                        .collect(),
                ),
            })
            .collect(),
        Err(e) => records
            .iter()
            .map(|_| Actual::Fail(batch_failure(&e, &portable)))
            .collect(),
    };

    let mut changed = Vec::new();
    for (i, (case, got)) in fixture.records.iter_mut().zip(actual).enumerate() {
        if matches(&case.expect, &got) {
            continue;
        }
        if bless {
            case.expect = got.shown();
            changed.push(i);
            report.blessed = true;
        } else {
            let label = case
                .name
                .as_deref()
                .map(|n| format!(" `{n}`"))
                .unwrap_or_default();
            let logs = logs_of(&module, &spec, (&records[i], &positions[i]));
            report.mismatches.push(format!(
                "  record {i}{label}: expected (-) vs actual (+):\n{}{logs}",
                diff(&render(&case.expect), &render(&got.shown()))
            ));
        }
    }
    if report.blessed {
        bless_file(path, &fixture, &changed)?;
    }
    Ok(report)
}

/// Writes blessed expectations: in a YAML file, only the `expect:` blocks
/// of the records that changed are replaced, so the author's comments,
/// flow style and order stay; when the file's layout is not one this can
/// edit safely (the edited text must parse to exactly the blessed fixture),
/// the whole file is written again.
fn bless_file(path: &Path, fixture: &FixtureFile, changed: &[usize]) -> Result<(), FixtureError> {
    if !is_json(path)
        && let Ok(original) = std::fs::read_to_string(path)
        && let Some(text) = edit_expectations(&original, fixture, changed)
        && serde_yaml::from_str::<FixtureFile>(&text)
            .ok()
            .and_then(|f| serde_json::to_value(f).ok())
            == serde_json::to_value(fixture).ok()
    {
        return std::fs::write(path, text).map_err(|e| FixtureError::File {
            path: path.into(),
            message: e.to_string(),
        });
    }
    write(path, fixture)
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

/// The text with the `expect:` block of each record in `changed` replaced
/// by the fixture's (block style); `None` when the layout is not the plain
/// one (`records:` at the top, items `- ` in block style).
fn edit_expectations(text: &str, fixture: &FixtureFile, changed: &[usize]) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| l.trim_end() == "records:")?;
    // The items: `- ` lines at one indentation, until a top-level key.
    let mut items: Vec<usize> = Vec::new();
    let mut item_indent = None;
    let mut end = lines.len();
    for (n, line) in lines.iter().enumerate().skip(start + 1) {
        if is_blank_or_comment(line) {
            continue;
        }
        let ind = indent_of(line);
        let rest = &line[ind..];
        if ind == 0 && !rest.starts_with("- ") && rest != "-" {
            end = n;
            break;
        }
        if rest.starts_with("- ") && item_indent.is_none_or(|i| i == ind) {
            item_indent = Some(ind);
            items.push(n);
        }
    }
    if items.len() != fixture.records.len() {
        return None;
    }
    let key_indent = item_indent? + 2;
    let mut replace: Vec<(usize, usize, String)> = Vec::new();
    for &i in changed {
        let first = items[i];
        let last = items.get(i + 1).copied().unwrap_or(end);
        // The `expect:` key: on the dash line or a line at the key indentation.
        let at = (first..last).find(|&n| {
            let l = lines[n];
            if n == first {
                l[key_indent - 2..].starts_with("- expect:")
            } else {
                indent_of(l) == key_indent && l[key_indent..].starts_with("expect:")
            }
        })?;
        let mut stop = at + 1;
        while stop < last {
            let l = lines[stop];
            if !l.trim().is_empty() && indent_of(l) <= key_indent {
                break;
            }
            stop += 1;
        }
        // Trailing blank lines and comments stay where they are.
        while stop > at + 1 && is_blank_or_comment(lines[stop - 1]) {
            stop -= 1;
        }
        let prefix = &lines[at]
            [..indent_of(lines[at]) + lines[at][indent_of(lines[at])..].find("expect:")?];
        let rendered = serde_yaml::to_string(&fixture.records[i].expect).ok()?;
        let rendered = rendered.trim_end();
        let block = if rendered.lines().count() == 1 && !rendered.contains(": ") {
            format!("{prefix}expect: {rendered}")
        } else {
            let pad = " ".repeat(key_indent + 2);
            let body: Vec<String> = rendered.lines().map(|l| format!("{pad}{l}")).collect();
            format!("{prefix}expect:\n{}", body.join("\n"))
        };
        replace.push((at, stop, block));
    }
    let mut out = String::with_capacity(text.len());
    let mut n = 0;
    for (from, to, block) in replace {
        for l in &lines[n..from] {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str(&block);
        out.push('\n');
        n = to;
    }
    for l in &lines[n..] {
        out.push_str(l);
        out.push('\n');
    }
    Some(out)
}

/// What the transform logged (`sluice.log`, `print()`, `console.log`) for
/// one record run alone on a fresh instance, shown beside its diff: the
/// fixture's batch runs as one call, so its lines are not per record.
fn logs_of(
    module: &Arc<crate::engine::Module>,
    spec: &InstanceSpec,
    record: (&Record, &Position),
) -> String {
    let Ok(mut runner) = Runner::new(module.clone(), spec.clone()) else {
        return String::new();
    };
    runner.capture_logs(true);
    let _ = runner.process(&[record]);
    let lines = runner.take_logs();
    if lines.is_empty() {
        return String::new();
    }
    let mut out = String::from("    its log (the record run alone):\n");
    for l in lines {
        out.push_str(&format!(
            "      {}: {}\n",
            l.level,
            crate::engine::escape_controls(&l.message)
        ));
    }
    out
}

fn batch_failure(e: &TransformError, portable: &dyn Fn(&str) -> String) -> ExpectedFailure {
    ExpectedFailure {
        kind: e.kind().to_string(),
        message: Some(portable(&e.to_string())),
        message_regex: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_outcome_shapes() {
        let f: FixtureFile = serde_yaml::from_str(
            "records:\n  - input: {a: 1}\n    expect: drop\n  - input_text: x\n    expect: {fail: {kind: k, message: m}}\n  - input: 1\n    expect: {emit: [{value: 2}, {output: alerts, value_text: t}]}\n",
        )
        .expect("valid fixture");
        assert_eq!(f.records[0].expect, Expect::Drop(DropWord::Drop));
        assert!(matches!(f.records[1].expect, Expect::Fail { .. }));
        let Expect::Emit { emit } = &f.records[2].expect else {
            panic!("emit")
        };
        assert_eq!(emit[1].output.as_deref(), Some("alerts"));
    }

    #[test]
    fn failure_messages_match_by_substring_or_regex() {
        let actual = Actual::Fail(ExpectedFailure {
            kind: "k".into(),
            message: Some("value at line 3 is bad".into()),
            message_regex: None,
        });
        let sub = Expect::Fail {
            fail: ExpectedFailure {
                kind: "k".into(),
                message: Some("line 3".into()),
                message_regex: None,
            },
        };
        let re = Expect::Fail {
            fail: ExpectedFailure {
                kind: "k".into(),
                message: None,
                message_regex: Some(r"line \d+".into()),
            },
        };
        let wrong = Expect::Fail {
            fail: ExpectedFailure {
                kind: "k".into(),
                message: Some("line 4".into()),
                message_regex: None,
            },
        };
        let kind = Expect::Fail {
            fail: ExpectedFailure {
                kind: "other".into(),
                message: None,
                message_regex: None,
            },
        };
        assert!(matches(&sub, &actual));
        assert!(matches(&re, &actual));
        assert!(!matches(&wrong, &actual));
        assert!(!matches(&kind, &actual));
    }

    #[test]
    fn a_json_null_value_differs_from_no_value() {
        let f: FixtureFile = serde_yaml::from_str(
            "records:\n  - input: 1\n    expect: {emit: [{value: null}, {key: k}]}\n",
        )
        .expect("valid fixture");
        let Expect::Emit { emit } = &f.records[0].expect else {
            panic!("emit")
        };
        assert_eq!(emit[0].value, Some(serde_json::Value::Null));
        assert_eq!(emit[1].value, None);
        let actual = |bytes: Option<&[u8]>| ActualOutput {
            shown: ExpectedOutput {
                output: None,
                key: None,
                value: None,
                value_text: None,
                value_base64: None,
                headers: BTreeMap::new(),
                timestamp: None,
            },
            bytes: bytes.map(<[u8]>::to_vec),
            json: bytes.and_then(|b| serde_json::from_slice(b).ok()),
            timestamp: Some(7),
        };
        assert!(emit[0].accepts(&actual(Some(b"null"))));
        assert!(!emit[0].accepts(&actual(None)));
        let mut none = emit[1].clone();
        none.key = None;
        assert!(none.accepts(&actual(None)));
        assert!(!none.accepts(&actual(Some(b"null"))));
        // A timestamp is checked only when given.
        none.timestamp = Some(8);
        assert!(!none.accepts(&actual(None)));
        none.timestamp = Some(7);
        assert!(none.accepts(&actual(None)));
        // Blessing writes `value: null`, which reads back as JSON null.
        let text = serde_yaml::to_string(&emit[0]).expect("yaml");
        assert!(text.contains("value: null"), "{text}");
    }

    #[test]
    fn bless_edits_only_the_changed_expectations() {
        let original = "# the author's notes\ndescription: x\nconfig: {a: 1}   # inline\nrecords:\n  # first\n  - name: one\n    input: {n: 1}\n    expect: drop   # was dropped\n  - input: {n: 2}\n    expect:\n      emit:\n        - value: {n: 2}\n\n  # third, flow style kept\n  - {input: {n: 3}, expect: drop}\n";
        let mut fixture: FixtureFile = serde_yaml::from_str(original).expect("parse");
        fixture.records[1].expect = Expect::Emit {
            emit: vec![ExpectedOutput {
                output: Some("alerts".into()),
                key: None,
                value: Some(serde_json::json!({"n": 20})),
                value_text: None,
                value_base64: None,
                headers: BTreeMap::new(),
                timestamp: None,
            }],
        };
        fixture.records[0].expect = Expect::Fail {
            fail: ExpectedFailure {
                kind: "invalid-input".into(),
                message: Some("bad".into()),
                message_regex: None,
            },
        };
        let text = edit_expectations(original, &fixture, &[0, 1]).expect("edited");
        for kept in [
            "# the author's notes",
            "config: {a: 1}   # inline",
            "  # first",
            "    input: {n: 1}",
            "  # third, flow style kept",
            "  - {input: {n: 3}, expect: drop}",
        ] {
            assert!(text.contains(kept), "lost `{kept}`:\n{text}");
        }
        assert!(
            !text.contains("# was dropped"),
            "the old expectation is gone:\n{text}"
        );
        let back: FixtureFile = serde_yaml::from_str(&text).expect("parses");
        assert_eq!(
            serde_json::to_value(&back).expect("json"),
            serde_json::to_value(&fixture).expect("json"),
            "{text}"
        );
        // A layout it does not know (flow-style records) is left to a full rewrite.
        let flow = "records: [{input: {n: 1}, expect: drop}]\n";
        let f: FixtureFile = serde_yaml::from_str(flow).expect("parse");
        assert!(edit_expectations(flow, &f, &[0]).is_none());
    }

    #[test]
    fn diff_marks_changed_lines() {
        let d = diff("emit:\n- value: 1\n", "emit:\n- value: 2\n");
        assert!(
            d.contains("- - value: 1") && d.contains("+ - value: 2"),
            "{d}"
        );
    }
}
