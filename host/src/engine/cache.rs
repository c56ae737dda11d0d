//! The on-disk cache of compiled components: compiling a module with
//! Cranelift costs 0.1 s for a small Rust transform and 15 s for a Python or
//! JavaScript one, so each component is compiled once per engine
//! configuration (`Engine::precompile_component`) and later loads map the
//! compiled file (with copy-on-write memory images).
//!
//! Loading compiled code skips wasmtime's validation, so the cache is
//! trusted only as far as its directory: it must be owned by this user and
//! writable by no one else (created `0700`); files are named by the SHA-256
//! of the component and the engine's compatibility hash, written through a
//! temporary file and an atomic rename, and checked the same way before they
//! are read. Anything else is never deserialized: the cache is then skipped
//! (with a warning) and the component compiled from its bytes.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;

/// A trusted cache directory.
#[derive(Debug, Clone)]
pub(crate) struct ComponentCache {
    dir: PathBuf,
}

impl ComponentCache {
    /// The cache at `SLUICE_CACHE_DIR`, else `$XDG_CACHE_HOME/sluice/components`,
    /// else `~/.cache/sluice/components`; `None` (compile every time) when
    /// `SLUICE_CACHE_DIR` is empty or the directory is not safe.
    pub fn from_env() -> Option<Self> {
        let dir = match std::env::var_os("SLUICE_CACHE_DIR") {
            Some(d) if d.is_empty() => return None,
            Some(d) => PathBuf::from(d),
            None => std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?
                .join("sluice")
                .join("components"),
        };
        match Self::open(&dir) {
            Ok(c) => Some(c),
            Err(why) => {
                tracing::warn!(dir = %dir.display(), why, "not using the compiled-module cache");
                None
            }
        }
    }

    /// Opens (creating `0700`) a cache directory and checks it is safe.
    pub fn open(dir: &Path) -> Result<Self, String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create it: {e}"))?;
        let cache = ComponentCache {
            dir: dir.to_path_buf(),
        };
        // Who are we? The owner of a file we create.
        let probe = dir.join(format!(".probe-{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(|e| format!("cannot write in it: {e}"))?;
        let me = std::fs::metadata(&probe).map(|m| m.uid());
        let _ = std::fs::remove_file(&probe);
        let me = me.map_err(|e| format!("cannot stat a file in it: {e}"))?;
        cache.trusted(dir, me)?;
        Ok(cache)
    }

    fn trusted(&self, path: &Path, owner: u32) -> Result<(), String> {
        let m = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
        if m.file_type().is_symlink() {
            return Err(format!("`{}` is a symbolic link", path.display()));
        }
        if m.uid() != owner {
            return Err(format!("`{}` belongs to another user", path.display()));
        }
        if m.permissions().mode() & 0o022 != 0 {
            return Err(format!(
                "`{}` is writable by group or others",
                path.display()
            ));
        }
        Ok(())
    }

    fn key(engine: &wasmtime::Engine, digest_hex: &str) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        format!("{digest_hex}-{:016x}.cwasm", h.finish())
    }

    /// The component for `bytes` (whose SHA-256 is `digest_hex`): mapped
    /// from the cache when present and trusted, else compiled (and stored).
    pub fn load(
        &self,
        engine: &wasmtime::Engine,
        digest_hex: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, bool)> {
        let path = self.dir.join(Self::key(engine, digest_hex));
        let owner = std::fs::metadata(&self.dir).map(|m| m.uid());
        if path.exists() {
            match owner
                .map_err(|e| e.to_string())
                .and_then(|o| self.trusted(&self.dir, o).and(self.trusted(&path, o)))
            {
                Ok(()) => match deserialize(engine, &path) {
                    Ok(c) => return Ok((c, true)),
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "cached component unusable: compiling again");
                    }
                },
                Err(why) => {
                    tracing::warn!(file = %path.display(), why, "cached component not trusted: compiling from the module");
                    return Component::new(engine, bytes).map(|c| (c, false));
                }
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        let tmp = self
            .dir
            .join(format!(".{}.{}.tmp", std::process::id(), digest_hex));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &compiled))
            .and_then(|()| std::fs::rename(&tmp, &path));
        match written {
            Ok(()) => match deserialize(engine, &path) {
                Ok(c) => Ok((c, false)),
                Err(_) => Component::new(engine, bytes).map(|c| (c, false)),
            },
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot store a compiled component");
                Component::new(engine, bytes).map(|c| (c, false))
            }
        }
    }
}

#[allow(unsafe_code)]
fn deserialize(engine: &wasmtime::Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: `path` is in a directory owned by this user and writable by no
    // one else, named by the digest of the component and the engine's
    // compatibility hash, and was written only by `precompile_component` of
    // an engine with that hash (checked by the callers). wasmtime still
    // checks the file's header against this engine.
    unsafe { Component::deserialize_file(engine, path) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = ComponentCache::open(&open).expect_err("refused");
        assert!(err.contains("writable by group or others"), "{err}");
        let ok = dir.path().join("mine");
        assert!(ComponentCache::open(&ok).is_ok());
        let mode = std::fs::metadata(&ok).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
