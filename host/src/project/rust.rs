//! Rust transform projects: built with cargo for `wasm32-wasip2` in release
//! mode (cargo's own caching makes a rebuild of an unchanged project cost
//! well under a second).

use super::BuildError;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The guest target.
pub const GUEST_TARGET: &str = "wasm32-wasip2";

fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn target_dir(dir: &Path, manifest: &Path) -> Result<PathBuf, BuildError> {
    // An exported `CARGO_TARGET_DIR` says where the user wants builds to go
    // (a shared cache, a bigger disk): guests are built below it.
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR").filter(|t| !t.is_empty()) {
        let t = PathBuf::from(t);
        let t = if t.is_absolute() {
            t
        } else {
            std::env::current_dir().unwrap_or_default().join(t)
        };
        return Ok(t.join("sluice-guests"));
    }
    let out = cargo()
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(manifest)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| BuildError::Cargo {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(BuildError::Failed {
            path: dir.to_path_buf(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
            hint: String::new(),
        });
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| BuildError::Cargo {
            path: dir.to_path_buf(),
            message: format!("bad cargo metadata: {e}"),
        })?;
    let target = meta
        .get("target_directory")
        .and_then(|t| t.as_str())
        .ok_or_else(|| BuildError::Cargo {
            path: dir.to_path_buf(),
            message: "cargo metadata has no target_directory".into(),
        })?;
    // A directory of our own, so that building guests never waits on (or
    // invalidates) the lock of a host build running in the same workspace.
    Ok(Path::new(target).join("sluice-guests"))
}

/// LLVM's inlining threshold for guests (several times its default).
const INLINE_THRESHOLD: &str = "-Cllvm-args=-inline-threshold=1000";

/// How guests are optimised, as `cargo --config` settings: whole-program
/// (fat) LTO in one codegen unit, with LLVM inlining more than its default.
/// Guests run compiled by Cranelift, where every call and every function
/// entry costs more than in native code (wasmtime checks the epoch deadline
/// at each entry), so inlining across crates pays: json-map's guest code ran
/// 18 % faster per record in the engine bench (0.889 -> 0.729 µs). A
/// project's own `[profile.release]` `lto` or `codegen-units` wins over ours.
/// (LTO needs the crate built as a `cdylib` alone: see [`build`].)
fn optimisation(manifest: &str) -> Vec<String> {
    let profile = toml::from_str::<toml::Table>(manifest)
        .ok()
        .and_then(|t| t.get("profile")?.get("release")?.as_table().cloned())
        .unwrap_or_default();
    let mut settings = Vec::new();
    if !profile.contains_key("lto") {
        settings.push(r#"profile.release.lto="fat""#.to_string());
    }
    if !profile.contains_key("codegen-units") {
        settings.push("profile.release.codegen-units=1".to_string());
    }
    settings.push(format!(
        r#"target.{GUEST_TARGET}.rustflags=["{INLINE_THRESHOLD}"]"#
    ));
    settings
}

pub(super) fn build(dir: &Path, manifest: &Path, quiet: bool) -> Result<PathBuf, BuildError> {
    // A project made by `sluice new` takes the SDK from this host.
    if std::fs::read_to_string(manifest).is_ok_and(|t| t.contains(".sluice/sluice-guest")) {
        super::new::vendor_rust_sdk(dir)?;
    }
    let target = target_dir(dir, manifest)?;
    let manifest_abs = std::fs::canonicalize(manifest).unwrap_or_else(|_| manifest.to_path_buf());
    tracing::debug!(project = %dir.display(), "building transform project");
    let mut cmd = cargo();
    // `cargo rustc --crate-type cdylib`, not `cargo build`: a library that
    // is also an `rlib` (as a transform tested natively often is) gets no
    // LTO from cargo at all, whatever the profile says. Only the component
    // is wanted here.
    cmd.args([
        "rustc",
        "--release",
        "--lib",
        "--crate-type",
        "cdylib",
        "--target",
        GUEST_TARGET,
        "--message-format=json-render-diagnostics",
        "--manifest-path",
    ])
    .arg(&manifest_abs)
    .arg("--target-dir")
    .arg(&target);
    for setting in optimisation(&std::fs::read_to_string(manifest).unwrap_or_default()) {
        cmd.arg("--config").arg(setting);
    }
    cmd.stdout(Stdio::piped()).stderr(if quiet {
        Stdio::piped()
    } else {
        Stdio::inherit()
    });
    let out = cmd.output().map_err(|e| BuildError::Cargo {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut output: String = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|m| {
                m.get("message")?
                    .get("rendered")?
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        output.push_str(&stderr);
        let tail: String = {
            let lines: Vec<&str> = output.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        if !quiet {
            output.push_str("(cargo's diagnostics are above)");
        }
        let hint = if output.contains(GUEST_TARGET)
            && (output.contains("target may not be installed")
                || output.contains("can't find crate for `core`")
                || output.contains("can't find crate for `std`"))
        {
            format!("\nhint: run `rustup target add {GUEST_TARGET}`")
        } else {
            String::new()
        };
        return Err(BuildError::Failed {
            path: dir.to_path_buf(),
            output: tail,
            hint,
        });
    }
    let mut found = None;
    for line in stdout.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg.get("reason").and_then(|r| r.as_str()) != Some("compiler-artifact") {
            continue;
        }
        let same = msg
            .get("manifest_path")
            .and_then(|m| m.as_str())
            .map(|m| {
                std::fs::canonicalize(m)
                    .map(|p| p == manifest_abs)
                    .unwrap_or(false)
            })
            .unwrap_or(false);
        if !same {
            continue;
        }
        let files = msg
            .get("filenames")
            .and_then(|f| f.as_array())
            .cloned()
            .unwrap_or_default();
        for f in files {
            if let Some(f) = f.as_str().filter(|f| f.ends_with(".wasm")) {
                found = Some(PathBuf::from(f));
            }
        }
    }
    found.ok_or_else(|| BuildError::NoArtifact(dir.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_get_lto_unless_their_manifest_says_otherwise() {
        let plain = optimisation("[package]\nname = \"t\"\n");
        assert!(
            plain.contains(&r#"profile.release.lto="fat""#.to_string()),
            "{plain:?}"
        );
        assert!(plain.contains(&"profile.release.codegen-units=1".to_string()));
        assert!(plain.iter().any(|s| s.contains(INLINE_THRESHOLD)));
        let own = optimisation(
            "[package]\nname = \"t\"\n[profile.release]\nlto = false\ncodegen-units = 4\n",
        );
        assert!(!own.iter().any(|s| s.starts_with("profile.")), "{own:?}");
        // An unreadable manifest gets the defaults (cargo reports it).
        assert_eq!(optimisation("not toml ["), plain);
    }
}
