//! `sluice new NAME --lang rust|python|js`: a standalone transform project
//! with a sample transform, fixtures that pass and a README. The SDK is not
//! copied into the project: `sluice build` writes this host's SDK into the
//! project's `.sluice/` (and, for JavaScript, `sluice.js`) on every build.

use super::{BuildError, Language, write_if_changed};
use std::path::{Path, PathBuf};

const FIXTURE: &str = include_str!("templates/fixture.yaml");
const README: &str = include_str!("templates/README.md");

const RUST_CARGO: &str = include_str!("templates/rust/Cargo.toml");
const RUST_LIB: &str = include_str!("templates/rust/lib.rs");
const RUST_IGNORE: &str = include_str!("templates/rust/gitignore");
const PY_TRANSFORM: &str = include_str!("templates/python/transform.py");
const PY_PROJECT: &str = include_str!("templates/python/pyproject.toml");
const PY_IGNORE: &str = include_str!("templates/python/gitignore");
const JS_TRANSFORM: &str = include_str!("templates/js/transform.js");
const JS_PACKAGE: &str = include_str!("templates/js/package.json");
const JS_IGNORE: &str = include_str!("templates/js/gitignore");

const RUST_API: &str = "`src/lib.rs` implements `sluice_guest::Transform`: `init(config)` once, \
then `process(record, out)` per record (`record.json()`, `record.key()`, \
`record.header(name)`, `record.timestamp()`; `out.json_from(record, &value)` emits JSON keeping \
the input's key, headers and timestamp, `out.emit(&Output::from_record(record).value(..).header(..))` \
builds any record, `out.to(\"alerts\").json(..)` goes to a named output; returning \
`Err(Error::new(kind, message))` fails the record). `process_batch` takes the whole batch. \
The SDK's documentation: `cargo doc --open -p sluice-guest` after a first build.";
const PY_API: &str = "`transform.py` defines `init(config)` (optional, the parsed config) and \
`process(record, out)` (or `process_batch(records, out)` with `out[record]`). A record has \
`key`, `value` (bytes or None), `headers` (list of (name, bytes)), `timestamp`, `stream`, \
`partition`, `offset`, and `text()`, `json()`, `header(name)`. `out.json(value)` and \
`out.emit(value)` keep the input's key, headers and timestamp unless given \
(`key=None`, `headers=[]`, `timestamp=ms`), `to=\"alerts\"` sends to a named output; \
`raise sluice.Fail(kind, message)` fails the record (any other exception fails it as \
`internal`). Also `sluice.lookup(table, key)`, `sluice.log.info(..)`, `sluice.config`, \
`sluice.get(doc, \"$.a.b[0]\")` and `sluice.JsonPath`. The SDK, with its docstrings, is \
`.sluice/stage/sluice/__init__.py` after a build.";
const JS_API: &str = "`transform.js` exports `init(config)` (optional) and `process(record, out)` \
(or `processBatch(records, out)` with `out.of(record)`). A record has `key`, `value` \
(Uint8Array or null), `headers` ([name, Uint8Array] pairs), `timestamp`, `stream`, \
`partition`, `offset`, and `text()`, `json()`, `header(name)`. `out.json(value)` and \
`out.emit(value)` keep the input's key, headers and timestamp unless given \
(`{ key: null, headers: [], timestamp: ms, to: \"alerts\" }`); `throw new Fail(kind, message)` \
fails the record (any other error fails it as `internal`). Also `lookup(table, key)`, \
`log.info(..)`, `config`, `get(doc, \"$.a.b[0]\")` and `JsonPath`, all from `./sluice.js`, \
which the build writes (and documents) in the project.";

/// Creates the project `dir` in `lang`; returns the files written.
pub fn scaffold(dir: &Path, lang: Language) -> Result<Vec<PathBuf>, BuildError> {
    let bad = |message: String| BuildError::Project {
        path: dir.to_path_buf(),
        message,
    };
    if dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(bad("already exists and is not empty".into()));
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| bad("has no name".into()))?;
    let crate_name = crate_name(&name).ok_or_else(|| {
        bad(format!(
            "`{name}` cannot name a project: use letters, digits, `-` and `_`, starting with a letter"
        ))
    })?;
    let fill = |t: &str| {
        t.replace("{{name}}", &crate_name)
            .replace("{{crate}}", &crate_name)
    };
    let mut files: Vec<(&str, String)> = match lang {
        Language::Rust => vec![
            ("Cargo.toml", fill(RUST_CARGO)),
            ("src/lib.rs", fill(RUST_LIB)),
            (".gitignore", RUST_IGNORE.to_string()),
        ],
        Language::Python => vec![
            ("transform.py", fill(PY_TRANSFORM)),
            ("pyproject.toml", fill(PY_PROJECT)),
            (".gitignore", PY_IGNORE.to_string()),
        ],
        Language::Js => vec![
            ("transform.js", fill(JS_TRANSFORM)),
            ("package.json", fill(JS_PACKAGE)),
            (".gitignore", JS_IGNORE.to_string()),
        ],
    };
    let (language, artifact, note, api) = match lang {
        Language::Rust => (
            "Rust",
            "the component (with cargo, for wasm32-wasip2)",
            "Needs Rust with the `wasm32-wasip2` target (`rustup target add wasm32-wasip2`).",
            RUST_API,
        ),
        Language::Python => (
            "Python",
            "`.sluice/build/transform.wasm`",
            "Needs Python 3.10+ with venv: the first build installs componentize-py into \
             `.sluice/venv`. The component imports no WASI, so it runs with no grants.",
            PY_API,
        ),
        Language::Js => (
            "JavaScript",
            "`.sluice/build/transform.wasm`",
            "Needs Node.js 18+ with npm: the first build installs componentize-js into \
             `node_modules`. The component imports no WASI, so it runs with no grants.",
            JS_API,
        ),
    };
    files.push((
        "README.md",
        fill(README)
            .replace("{{language}}", language)
            .replace("{{artifact}}", artifact)
            .replace("{{build_note}}", note)
            .replace("{{api}}", api),
    ));
    files.push(("fixtures/sample.yaml", FIXTURE.to_string()));
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(rel);
        write_if_changed(&path, text.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}

/// A package name for `name`: lowercase letters, digits and `-`.
fn crate_name(name: &str) -> Option<String> {
    let first = name.chars().next()?;
    if !first.is_ascii_alphabetic() {
        return None;
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return None;
    }
    Some(name.to_ascii_lowercase().replace('_', "-"))
}

/// The Rust SDK, written into a scaffolded Rust project's `.sluice/` by the
/// build (its `Cargo.toml` points there).
pub(super) fn vendor_rust_sdk(dir: &Path) -> Result<(), BuildError> {
    const CARGO: &str = "[package]\nname = \"sluice-guest\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\ndescription = \"Write Sluice transforms in Rust (written by `sluice build`; do not edit)\"\n\n[dependencies]\nwit-bindgen = \"0.63\"\nserde = { version = \"1\", features = [\"derive\"] }\nserde_json = { version = \"1\", features = [\"preserve_order\"] }\n";
    const SOURCES: [(&str, &str); 8] = [
        ("lib.rs", include_str!("../../../guest-sdk/src/lib.rs")),
        ("__rt.rs", include_str!("../../../guest-sdk/src/__rt.rs")),
        ("batch.rs", include_str!("../../../guest-sdk/src/batch.rs")),
        ("error.rs", include_str!("../../../guest-sdk/src/error.rs")),
        ("host.rs", include_str!("../../../guest-sdk/src/host.rs")),
        (
            "outcome.rs",
            include_str!("../../../guest-sdk/src/outcome.rs"),
        ),
        ("path.rs", include_str!("../../../guest-sdk/src/path.rs")),
        ("tests.rs", include_str!("../../../guest-sdk/src/tests.rs")),
    ];
    let root = dir.join(".sluice");
    write_if_changed(
        &root.join("wit").join("transform.wit"),
        super::WIT.as_bytes(),
    )?;
    let sdk = root.join("sluice-guest");
    write_if_changed(&sdk.join("Cargo.toml"), CARGO.as_bytes())?;
    for (name, text) in SOURCES {
        write_if_changed(&sdk.join("src").join(name), text.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(crate_name("My_Transform").as_deref(), Some("my-transform"));
        assert_eq!(crate_name("x1").as_deref(), Some("x1"));
        assert_eq!(crate_name("1x"), None);
        assert_eq!(crate_name("a b"), None);
        assert_eq!(crate_name("../up"), None);
    }

    #[test]
    fn scaffolds_each_language_and_refuses_a_non_empty_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for lang in [Language::Rust, Language::Python, Language::Js] {
            let dir = tmp.path().join(format!("t-{lang}"));
            let files = scaffold(&dir, lang).expect("scaffold");
            assert!(files.iter().all(|f| f.is_file()));
            let project = super::super::Project::detect(&dir)
                .expect("detect")
                .expect("a project");
            assert_eq!(project.language, lang);
            assert_eq!(project.fixtures, dir.join("fixtures"));
            let readme = std::fs::read_to_string(dir.join("README.md")).expect("readme");
            assert!(!readme.contains("{{"), "unfilled template in {readme}");
            // No placeholder links: the project has no web page to point at.
            assert!(!readme.contains("](http"), "a link in {readme}");
            let err = scaffold(&dir, lang).expect_err("exists");
            assert!(err.to_string().contains("not empty"), "{err}");
        }
    }
}
