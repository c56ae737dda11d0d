//! Opening the object store a lake URL names. Options are checked by name
//! (a misspelt `endpiont` is an error, not silently ignored), credentials
//! also come from the environment, and no value of an option appears in a
//! message: options carry secrets.

use object_store::ObjectStore;
use object_store::ObjectStoreScheme;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// Which store, before anything is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on local disk.
    Local(PathBuf),
    /// In memory (tests).
    Memory,
    /// A cloud store: its scheme and the URL.
    Cloud(ObjectStoreScheme, url::Url),
}

/// What a lake URL names: the store and the prefix inside it.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The store.
    pub location: Location,
    /// The prefix objects go under (for cloud stores; local directories
    /// are the store's root).
    pub prefix: StorePath,
    /// The URL without credentials or query, for messages.
    pub describe: String,
}

/// Parses `url` (a URL, or a path relative to `base`) and checks `options`.
pub fn parse(url: &str, options: &BTreeMap<String, String>, base: &Path) -> Result<Parsed, String> {
    if url.trim().is_empty() {
        return Err("is empty".into());
    }
    let has_scheme = url.contains("://");
    if !has_scheme {
        if !options.is_empty() {
            return Err("options apply to cloud stores; a local path takes none".into());
        }
        let dir = base.join(url);
        return Ok(Parsed {
            describe: format!("lake `{}`", dir.display()),
            location: Location::Local(dir),
            prefix: StorePath::default(),
        });
    }
    let parsed =
        url::Url::parse(url).map_err(|e| format!("`{}` is not a URL: {e}", redact(url)))?;
    let describe = format!("lake `{}`", redact(url));
    let (scheme, path) = ObjectStoreScheme::parse(&parsed).map_err(|_| {
        format!(
            "`{}`: not a store URL (use s3://, gs://, az://, file:// or memory://)",
            redact(url)
        )
    })?;
    let prefix = StorePath::parse(path.as_ref())
        .map_err(|e| format!("`{}`: bad prefix: {e}", redact(url)))?;
    let check = |known: &dyn Fn(&str) -> bool, what: &str| -> Result<(), String> {
        for key in options.keys() {
            if !known(&key.to_ascii_lowercase()) {
                return Err(format!("unknown {what} option `{key}`"));
            }
        }
        Ok(())
    };
    let location = match scheme {
        ObjectStoreScheme::Local => {
            if !options.is_empty() {
                return Err("options apply to cloud stores; file:// takes none".into());
            }
            let dir = parsed
                .to_file_path()
                .map_err(|()| format!("`{}` is not a local path", redact(url)))?;
            return Ok(Parsed {
                describe: format!("lake `{}`", dir.display()),
                location: Location::Local(dir),
                prefix: StorePath::default(),
            });
        }
        ObjectStoreScheme::Memory => Location::Memory,
        ObjectStoreScheme::AmazonS3 => {
            check(&|k| AmazonS3ConfigKey::from_str(k).is_ok(), "S3")?;
            Location::Cloud(scheme, parsed)
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            check(&|k| GoogleConfigKey::from_str(k).is_ok(), "GCS")?;
            Location::Cloud(scheme, parsed)
        }
        ObjectStoreScheme::MicrosoftAzure => {
            check(&|k| AzureConfigKey::from_str(k).is_ok(), "Azure")?;
            Location::Cloud(scheme, parsed)
        }
        ObjectStoreScheme::Http => {
            return Err(format!(
                "`{}`: plain HTTP stores cannot write create-if-absent; use s3://, gs:// or az://",
                redact(url)
            ));
        }
        _ => return Err(format!("`{}`: unsupported store", redact(url))),
    };
    Ok(Parsed {
        location,
        prefix,
        describe,
    })
}

/// Opens the store (no I/O yet for cloud stores: clients connect lazily).
pub fn open(
    parsed: &Parsed,
    options: &BTreeMap<String, String>,
) -> Result<Arc<dyn ObjectStore>, String> {
    let fail = |e: object_store::Error| format!("cannot open {}: {}", parsed.describe, e);
    Ok(match &parsed.location {
        Location::Local(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
            Arc::new(LocalFileSystem::new_with_prefix(dir).map_err(fail)?)
        }
        Location::Memory => Arc::new(InMemory::new()),
        Location::Cloud(scheme, url) => {
            let opts = options
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()));
            match scheme {
                ObjectStoreScheme::AmazonS3 => {
                    let mut b = AmazonS3Builder::from_env().with_url(url.as_str());
                    for (k, v) in opts {
                        if let Ok(key) = AmazonS3ConfigKey::from_str(&k) {
                            b = b.with_config(key, v);
                        }
                    }
                    Arc::new(b.build().map_err(fail)?)
                }
                ObjectStoreScheme::GoogleCloudStorage => {
                    let mut b = GoogleCloudStorageBuilder::from_env().with_url(url.as_str());
                    for (k, v) in opts {
                        if let Ok(key) = GoogleConfigKey::from_str(&k) {
                            b = b.with_config(key, v);
                        }
                    }
                    Arc::new(b.build().map_err(fail)?)
                }
                ObjectStoreScheme::MicrosoftAzure => {
                    let mut b = MicrosoftAzureBuilder::from_env().with_url(url.as_str());
                    for (k, v) in opts {
                        if let Ok(key) = AzureConfigKey::from_str(&k) {
                            b = b.with_config(key, v);
                        }
                    }
                    Arc::new(b.build().map_err(fail)?)
                }
                _ => return Err(format!("{}: unsupported store", parsed.describe)),
            }
        }
    })
}

/// A URL without user info or query (SAS tokens, keys).
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => url.split(['?', '@']).next().unwrap_or_default().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_options_are_checked_without_echoing_secrets() {
        let none = BTreeMap::new();
        let p = parse("lake/out", &none, Path::new("/base")).expect("path");
        assert_eq!(p.location, Location::Local(PathBuf::from("/base/lake/out")));
        let p = parse("s3://bucket/raw/events", &none, Path::new(".")).expect("s3");
        assert_eq!(p.prefix.as_ref(), "raw/events");
        assert!(matches!(
            p.location,
            Location::Cloud(ObjectStoreScheme::AmazonS3, _)
        ));
        let mut opts = BTreeMap::new();
        opts.insert("endpiont".to_string(), "http://x".to_string());
        let e = parse("s3://bucket/p", &opts, Path::new(".")).expect_err("typo");
        assert!(e.contains("unknown S3 option `endpiont`"), "{e}");
        let mut opts = BTreeMap::new();
        opts.insert("secret_access_key".to_string(), "hunter2".to_string());
        opts.insert("account_name".to_string(), "x".to_string());
        let e = parse("s3://bucket/p", &opts, Path::new(".")).expect_err("azure key on s3");
        assert!(!e.contains("hunter2"), "{e}");
        let e = parse(
            "s3://user:hunter2@bucket/p?sig=hunter2",
            &opts,
            Path::new("."),
        )
        .expect_err("azure key on s3");
        assert!(!e.contains("hunter2"), "{e}");
        let p = parse("az://container/p", &none, Path::new(".")).expect("azure");
        assert!(matches!(
            p.location,
            Location::Cloud(ObjectStoreScheme::MicrosoftAzure, _)
        ));
        let p = parse("gs://bucket/p", &none, Path::new(".")).expect("gcs");
        assert!(matches!(
            p.location,
            Location::Cloud(ObjectStoreScheme::GoogleCloudStorage, _)
        ));
        assert!(parse("http://example.com/x", &none, Path::new(".")).is_err());
        assert!(
            parse("https://x.invalid/y?sig=hunter2", &none, Path::new("."))
                .expect_err("http")
                .contains("https://x.invalid/y")
        );
    }
}
