//! The JSON Schemas of the pipeline and host files (`sluice schema
//! pipeline|host`, generated from the config types and their doc comments)
//! are the ones shipped in `docs/schema/`, and every example file passes
//! them — checked with a JSON Schema validator nobody here wrote
//! (`jsonschema`), on the TOML read as JSON, as an editor's TOML extension
//! (Taplo, Even Better TOML) checks it.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn shipped(name: &str) -> serde_json::Value {
    let path = root().join("docs/schema").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn toml_as_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn errors(schema: &serde_json::Value, doc: &serde_json::Value) -> Vec<String> {
    let validator = jsonschema::validator_for(schema).expect("a valid JSON Schema");
    validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn the_shipped_schemas_are_the_generated_ones() {
    for (name, generated) in [
        (
            "pipeline.schema.json",
            sluice::config::PipelineConfig::json_schema(),
        ),
        ("host.schema.json", sluice::host::HostConfig::json_schema()),
    ] {
        assert_eq!(
            shipped(name),
            generated,
            "docs/schema/{name} is out of date: run `sluice schema {} > docs/schema/{name}`",
            name.split('.').next().unwrap_or_default()
        );
    }
}

#[test]
fn every_example_file_passes_its_schema() {
    let pipeline = shipped("pipeline.schema.json");
    let host = shipped("host.schema.json");
    let examples = root().join("examples");
    let mut checked = 0;
    for file in [
        "lake-copy/pipeline.toml",
        "toll-road/pipeline.toml",
        "host/pipelines/toll-road.toml",
        "host/pipelines/raw-copy.toml",
    ] {
        let doc = toml_as_json(&examples.join(file));
        let found = errors(&pipeline, &doc);
        assert!(found.is_empty(), "examples/{file}: {found:#?}");
        checked += 1;
    }
    let doc = toml_as_json(&examples.join("host/host.toml"));
    let found = errors(&host, &doc);
    assert!(found.is_empty(), "examples/host/host.toml: {found:#?}");
    assert_eq!(checked, 4);
}

/// The schema catches what the loader refuses: an unknown key, a value of
/// the wrong type, a source of no known kind — so an editor shows the
/// mistake as it is typed.
#[test]
fn the_schema_refuses_what_the_loader_refuses() {
    let pipeline = shipped("pipeline.schema.json");
    let good = toml_as_json(&root().join("examples/toll-road/pipeline.toml"));
    assert!(errors(&pipeline, &good).is_empty());
    for (what, edit) in [
        (
            "an unknown top-level key",
            Box::new(|v: &mut serde_json::Value| {
                v["nmae"] = "typo".into();
            }) as Box<dyn Fn(&mut serde_json::Value)>,
        ),
        (
            "a batch size that is text",
            Box::new(|v: &mut serde_json::Value| {
                v["batch"] = serde_json::json!({ "max_records": "many" });
            }),
        ),
        (
            "a source of no known kind",
            Box::new(|v: &mut serde_json::Value| {
                v["source"] = serde_json::json!({ "ftp": { "path": "x" } });
            }),
        ),
        (
            "a guarantee that does not exist",
            Box::new(|v: &mut serde_json::Value| {
                v["delivery"] = serde_json::json!({ "guarantee": "at-most-twice" });
            }),
        ),
    ] {
        let mut doc = good.clone();
        edit(&mut doc);
        assert!(
            !errors(&pipeline, &doc).is_empty(),
            "the schema let {what} through"
        );
        let text = toml::to_string(&doc).expect("back to TOML");
        assert!(
            sluice::config::PipelineConfig::parse(&text, Path::new("edited.toml")).is_err(),
            "the loader let {what} through"
        );
    }
}

/// The pipeline the README shows passes the schema and the loader.
#[test]
fn the_readme_pipeline_is_valid() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let start = readme
        .find("```toml\nname = ")
        .expect("the README shows a pipeline file");
    let block = &readme[start + "```toml\n".len()..];
    let block = &block[..block.find("```").expect("end of the block")];
    let doc: serde_json::Value = toml::from_str(block).expect("the README's pipeline is TOML");
    let found = errors(&shipped("pipeline.schema.json"), &doc);
    assert!(found.is_empty(), "README pipeline: {found:#?}");
    if let Err(e) = sluice::config::PipelineConfig::parse(block, Path::new("README.md")) {
        panic!("the README's pipeline is refused: {e}");
    }
}
