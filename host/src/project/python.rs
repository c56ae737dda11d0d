//! Python transform projects: `transform.py` (and any other `.py` files and
//! packages of the project) built with componentize-py.
//!
//! componentize-py is installed once into the project's `.sluice/venv`
//! (pinned, from PyPI) unless `SLUICE_COMPONENTIZE_PY` names one. The
//! sources are staged into `.sluice/stage/` beside this host's SDK
//! (`sluice`), so nothing else of the project (its fixtures, a virtual
//! environment) ends up in the component. `--stub-wasi` leaves the
//! component importing nothing but the host interface: no ambient authority,
//! and no WASI to grant.

use super::{BuildError, Cached, find_program, run_tool, sources, write_if_changed};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The componentize-py release Sluice builds with.
pub const COMPONENTIZE_PY: &str = "0.25.1";

const SDK_INIT: &str = include_str!("../../../guest-sdk/python/sluice/__init__.py");
const SDK_APP: &str = include_str!("../../../guest-sdk/python/sluice/_app.py");

fn python(dir: &Path) -> Result<PathBuf, BuildError> {
    find_program("SLUICE_PYTHON", &["python3", "python"]).ok_or_else(|| BuildError::Tool {
        path: dir.to_path_buf(),
        message: "it is a Python transform and building it needs Python 3.10 or newer, but \
                  neither python3 nor python is on PATH: install Python (e.g. `apt-get install \
                  python3 python3-venv`) or set SLUICE_PYTHON to its path"
            .into(),
    })
}

/// The componentize-py to use, installing it into `.sluice/venv` if needed.
fn componentize_py(dir: &Path, quiet: bool) -> Result<PathBuf, BuildError> {
    if let Some(p) = std::env::var_os("SLUICE_COMPONENTIZE_PY").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let venv = dir.join(".sluice").join("venv");
    let tool = venv.join("bin").join("componentize-py");
    let stamp = venv.join(format!("componentize-py-{COMPONENTIZE_PY}"));
    if tool.is_file() && stamp.is_file() {
        return Ok(tool);
    }
    let py = python(dir)?;
    eprintln!(
        "sluice: installing componentize-py {COMPONENTIZE_PY} into {} (once per project)",
        venv.display()
    );
    let mut cmd = Command::new(&py);
    cmd.arg("-m").arg("venv").arg(&venv);
    run_tool(dir, &mut cmd, "python -m venv", true).map_err(|e| {
        let e = e.to_string();
        BuildError::Tool {
            path: dir.to_path_buf(),
            message: format!(
                "cannot create a virtual environment with {}{}: {e}",
                py.display(),
                venv_hint(&e)
            ),
        }
    })?;
    let mut cmd = Command::new(venv.join("bin").join("python"));
    cmd.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--quiet",
    ])
    .arg(format!("componentize-py=={COMPONENTIZE_PY}"));
    run_tool(dir, &mut cmd, "pip install componentize-py", quiet)?;
    write_if_changed(&stamp, b"")?;
    Ok(tool)
}

/// Debian's Python lacks `venv` (and `ensurepip`) unless python3-venv is
/// installed; say so only when that is what failed, not for a full disk.
fn venv_hint(error: &str) -> &'static str {
    if error.contains("ensurepip") || error.contains("No module named venv") {
        " (on Debian, install python3-venv)"
    } else {
        ""
    }
}

pub(super) fn build(dir: &Path, quiet: bool) -> Result<PathBuf, BuildError> {
    if !dir.join("transform.py").is_file() {
        return Err(BuildError::Project {
            path: dir.to_path_buf(),
            message: "a Python transform project needs a transform.py defining \
                      `process(record, out)` (or `process_batch(records, out)`)"
                .into(),
        });
    }
    let files = sources(dir, &[".py"])?;
    if files
        .iter()
        .any(|f| f.starts_with("sluice") || f == Path::new("sluice.py"))
    {
        return Err(BuildError::Project {
            path: dir.to_path_buf(),
            message: "`sluice` is the SDK's name, provided by the build: rename the project's \
                      own `sluice` module or package"
                .into(),
        });
    }
    let work = dir.join(".sluice");
    let cache = Cached::new(
        dir,
        &files,
        &[
            b"python",
            COMPONENTIZE_PY.as_bytes(),
            super::WIT.as_bytes(),
            SDK_INIT.as_bytes(),
            SDK_APP.as_bytes(),
        ],
    )?;
    if cache.fresh() {
        return Ok(cache.out);
    }
    let out = &cache.out;
    let tool = componentize_py(dir, quiet)?;

    // Stage: the project's sources and this host's SDK and world.
    let stage = work.join("stage");
    let _ = std::fs::remove_dir_all(&stage);
    for f in &files {
        let bytes = std::fs::read(dir.join(f)).map_err(|e| BuildError::Io {
            path: dir.join(f),
            message: e.to_string(),
        })?;
        write_if_changed(&stage.join(f), &bytes)?;
    }
    write_if_changed(
        &stage.join("sluice").join("__init__.py"),
        SDK_INIT.as_bytes(),
    )?;
    write_if_changed(&stage.join("sluice").join("_app.py"), SDK_APP.as_bytes())?;
    let wit = work.join("wit");
    write_if_changed(&wit.join("transform.wit"), super::WIT.as_bytes())?;

    let _ = std::fs::remove_file(out);
    if !quiet {
        eprintln!("sluice: building {} with componentize-py", dir.display());
    }
    let mut cmd = Command::new(&tool);
    cmd.arg("-d")
        .arg(&wit)
        .args([
            "-w",
            "transform",
            "componentize",
            "--stub-wasi",
            "sluice._app",
            "-p",
        ])
        .arg(&stage)
        .arg("-o")
        .arg(out);
    run_tool(dir, &mut cmd, "componentize-py", quiet)?;
    cache.done(dir)
}

#[cfg(test)]
mod tests {
    use super::venv_hint;

    #[test]
    fn the_python3_venv_hint_is_given_only_when_venv_is_missing() {
        let debian = "The virtual environment was not created successfully because ensurepip is \
                      not available. On Debian/Ubuntu systems, you need to install the python3-venv";
        assert!(venv_hint(debian).contains("python3-venv"));
        assert!(venv_hint("/usr/bin/python3: No module named venv").contains("python3-venv"));
        let full = "Error: [Errno 28] No space left on device: '/x/.sluice'";
        assert_eq!(venv_hint(full), "");
    }
}
