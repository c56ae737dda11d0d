use super::*;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

#[test]
fn tells_the_language_and_the_fixtures_from_the_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    assert!(Project::detect(&d.join("none")).expect("ok").is_none());
    write(&d.join("empty/readme.txt"), "");
    assert!(Project::detect(&d.join("empty")).expect("ok").is_none());

    write(&d.join("py/transform.py"), "");
    let p = Project::detect(&d.join("py"))
        .expect("ok")
        .expect("project");
    assert_eq!(p.language, Language::Python);
    assert_eq!(p.fixtures, d.join("py/fixtures"));

    write(
        &d.join("py2/pyproject.toml"),
        "[tool.sluice]\nfixtures = \"../shared\"\n",
    );
    let p = Project::detect(&d.join("py2"))
        .expect("ok")
        .expect("project");
    assert_eq!(p.language, Language::Python);
    assert_eq!(p.fixtures, d.join("py2/../shared"));

    write(
        &d.join("js/package.json"),
        r#"{"sluice": {"fixtures": "f"}}"#,
    );
    let p = Project::detect(&d.join("js"))
        .expect("ok")
        .expect("project");
    assert_eq!(p.language, Language::Js);
    assert_eq!(p.fixtures, d.join("js/f"));

    write(&d.join("rs/Cargo.toml"), "[package]\nname = \"x\"\n");
    let p = Project::detect(&d.join("rs"))
        .expect("ok")
        .expect("project");
    assert_eq!(p.language, Language::Rust);

    write(&d.join("badjs/package.json"), "{not json");
    let err = Project::detect(&d.join("badjs")).expect_err("bad manifest");
    assert!(err.to_string().contains("package.json"), "{err}");
    write(
        &d.join("badpy/pyproject.toml"),
        "[tool.sluice]\nfixtures = 3\n",
    );
    let err = Project::detect(&d.join("badpy")).expect_err("bad manifest");
    assert!(err.to_string().contains("tool.sluice.fixtures"), "{err}");
}

#[test]
fn sources_skip_fixtures_environments_and_hidden_folders() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    for f in [
        "transform.py",
        "lib/helper.py",
        "fixtures/x.py",
        ".sluice/stage/transform.py",
        "node_modules/a.py",
        "env2/pyvenv.cfg",
        "env2/lib/site.py",
        "notes.txt",
    ] {
        write(&d.join(f), "");
    }
    let found = sources(d, &[".py"]).expect("sources");
    assert_eq!(
        found,
        vec![
            PathBuf::from("lib/helper.py"),
            PathBuf::from("transform.py")
        ]
    );
}

#[test]
fn the_build_hash_changes_with_any_input() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    write(&d.join("a.py"), "1");
    let files = vec![PathBuf::from("a.py")];
    let h1 = inputs_hash(d, &files, &[b"x"]).expect("hash");
    assert_eq!(h1, inputs_hash(d, &files, &[b"x"]).expect("hash"));
    assert_ne!(h1, inputs_hash(d, &files, &[b"y"]).expect("hash"));
    write(&d.join("a.py"), "2");
    assert_ne!(h1, inputs_hash(d, &files, &[b"x"]).expect("hash"));
}

#[test]
fn a_missing_project_entry_file_is_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    write(&d.join("py/pyproject.toml"), "[project]\nname = \"x\"\n");
    let err = resolve_module(&d.join("py"), true).expect_err("no transform.py");
    assert!(err.to_string().contains("transform.py"), "{err}");
    write(&d.join("js/package.json"), "{}");
    let err = resolve_module(&d.join("js"), true).expect_err("no transform.js");
    assert!(err.to_string().contains("transform.js"), "{err}");
}

#[test]
fn a_module_path_with_nothing_there_says_so() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("transfroms/json-map");
    let err = resolve_module(&missing, true).expect_err("nothing there");
    let text = err.to_string();
    assert!(
        text.contains("no such file or directory") && text.contains("transfroms/json-map"),
        "{text}"
    );
    // A folder that is no project still says what a module is.
    let err = resolve_module(tmp.path(), true).expect_err("no project");
    assert!(err.to_string().contains("neither a .wasm file"), "{err}");
}
