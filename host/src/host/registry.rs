//! The module registry: component bytes stored content-addressed by
//! SHA-256 (`modules/<hex>.wasm`) in an object store — a local directory
//! under the data directory, through `object_store`, so that a shared store
//! is a change of store, not of code. Versions are immutable: an object is
//! written create-if-absent, and its bytes are checked against its name
//! whenever it is read. What is stored was validated first (see
//! [`super::deploy`]); the host never compiles source code from a client.

use object_store::local::LocalFileSystem;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store cannot be used.
    #[error("module registry: {0}")]
    Store(String),
    /// No module with this digest.
    #[error("module registry: no module `{0}`")]
    Missing(String),
    /// A stored object's bytes do not match its name.
    #[error("module registry: `{0}` is corrupt (its bytes do not hash to its name)")]
    Corrupt(String),
    /// Not a digest of the form `sha256:<64 hex digits>`.
    #[error("`{0}` is not a module digest (sha256:<64 hex digits>)")]
    BadDigest(String),
}

/// Modules by digest.
pub struct Registry {
    store: Arc<dyn ObjectStore>,
    /// Local copies, for the engine to load (and its on-disk cache to key).
    local: PathBuf,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("local", &self.local)
            .finish()
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn hex_of(digest: &str) -> Result<&str, RegistryError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| RegistryError::BadDigest(digest.to_string()))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(RegistryError::BadDigest(digest.to_string()));
    }
    Ok(hex)
}

impl Registry {
    /// The registry in directory `root` (local copies under
    /// `data_dir/modules`).
    pub fn open(root: &Path, data_dir: &Path) -> Result<Self, RegistryError> {
        let root = root.to_path_buf();
        let local = data_dir.join("modules");
        for d in [&root, &local] {
            std::fs::create_dir_all(d)
                .map_err(|e| RegistryError::Store(format!("`{}`: {e}", d.display())))?;
        }
        let store = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| RegistryError::Store(e.to_string()))?;
        Ok(Registry {
            store: Arc::new(store),
            local,
        })
    }

    fn location(hex: &str) -> object_store::path::Path {
        object_store::path::Path::from(format!("modules/{hex}.wasm"))
    }

    /// Stores `bytes` (if not already there); returns their digest.
    pub async fn put(&self, bytes: &[u8]) -> Result<String, RegistryError> {
        let digest = digest_of(bytes);
        let hex = hex_of(&digest)?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(
                &Self::location(hex),
                PutPayload::from(bytes::Bytes::copy_from_slice(bytes)),
                opts,
            )
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(digest),
            Err(e) => Err(RegistryError::Store(e.to_string())),
        }
    }

    /// The bytes of module `digest`, checked against it.
    pub async fn get(&self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let hex = hex_of(digest)?;
        let got = match self.store.get(&Self::location(hex)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(RegistryError::Missing(digest.to_string()));
            }
            Err(e) => return Err(RegistryError::Store(e.to_string())),
        };
        let bytes = got
            .bytes()
            .await
            .map_err(|e| RegistryError::Store(e.to_string()))?;
        if digest_of(&bytes) != digest {
            return Err(RegistryError::Corrupt(digest.to_string()));
        }
        Ok(bytes.to_vec())
    }

    /// A local file holding module `digest` (written from the store when
    /// missing), for a pipeline to load.
    pub async fn local_file(&self, digest: &str) -> Result<PathBuf, RegistryError> {
        let hex = hex_of(digest)?;
        let path = self.local.join(format!("{hex}.wasm"));
        if let Ok(bytes) = std::fs::read(&path)
            && digest_of(&bytes) == digest
        {
            return Ok(path);
        }
        let bytes = self.get(digest).await?;
        let tmp = self.local.join(format!("{hex}.wasm.tmp"));
        std::fs::write(&tmp, &bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| RegistryError::Store(format!("`{}`: {e}", path.display())))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn modules_are_stored_once_by_digest_and_checked_when_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Registry::open(&dir.path().join("registry"), dir.path()).expect("open");
        let d = r.put(b"module one").await.expect("put");
        assert_eq!(d, digest_of(b"module one"));
        assert_eq!(r.put(b"module one").await.expect("again"), d);
        assert_eq!(r.get(&d).await.expect("get"), b"module one");
        let f = r.local_file(&d).await.expect("local");
        assert_eq!(std::fs::read(f).expect("read"), b"module one");
        // Tampered with in the store: refused.
        let hex = d.trim_start_matches("sha256:");
        std::fs::write(
            dir.path().join(format!("registry/modules/{hex}.wasm")),
            b"evil",
        )
        .expect("tamper");
        assert!(matches!(r.get(&d).await, Err(RegistryError::Corrupt(_))));
        assert!(matches!(
            r.get(&digest_of(b"other")).await,
            Err(RegistryError::Missing(_))
        ));
        for bad in ["sha256:../../etc/passwd", "md5:00", "sha256:ABC"] {
            assert!(
                matches!(r.get(bad).await, Err(RegistryError::BadDigest(_))),
                "{bad}"
            );
        }
    }
}
