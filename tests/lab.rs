//! The lab an end-to-end test sets up: a private folder holding a host
//! file, its tokens, a `pipelines/` folder and data files, and the host
//! started on it as a process.

use crate::process::Sluice;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A private folder (removed with the lab when the lab made it).
pub struct Lab {
    root: PathBuf,
    _made: Option<tempfile::TempDir>,
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Lab {
    /// A new lab with empty `pipelines/`, `data/` and `lake/` folders.
    pub fn new() -> Lab {
        let made = tempfile::tempdir().expect("tempdir");
        let lab = Lab::at(made.path());
        Lab {
            _made: Some(made),
            ..lab
        }
    }

    /// A lab in `dir`, an existing folder (one host of several in a test's
    /// folder); the folders are made as in [`Lab::new`].
    pub fn at(dir: &Path) -> Lab {
        for d in ["pipelines", "data", "lake"] {
            std::fs::create_dir_all(dir.join(d)).expect("lab folder");
        }
        Lab {
            root: dir.to_path_buf(),
            _made: None,
        }
    }

    /// The lab's folder.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// A path inside the lab.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Writes `text` at `rel` (folders made as needed); its path.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("folder");
        }
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// Writes `pipelines/<name>.toml`; its path.
    pub fn write_pipeline(&self, name: &str, text: &str) -> PathBuf {
        self.write(&format!("pipelines/{name}.toml"), text)
    }

    /// Writes `host.toml`: a listener on a free loopback port, the lab's
    /// `pipelines/` folder (the default), and `settings`; its path.
    pub fn host_file(&self, settings: &str) -> PathBuf {
        self.write(
            "host.toml",
            &format!("listen = \"127.0.0.1:0\"\n{settings}\n"),
        )
    }

    /// Writes `tokens.toml` (name it in the host file as
    /// `tokens_file = "tokens.toml"`); its path.
    pub fn tokens(&self, tokens: &[Token]) -> PathBuf {
        let text: String = tokens
            .iter()
            .map(|t| {
                let role = match t.tenant {
                    None => "admin = true".to_string(),
                    Some(tenant) => format!("tenant = \"{tenant}\""),
                };
                format!(
                    "[[token]]\nname = \"{}\"\ntoken = \"{}\"\n{role}\n",
                    t.name, t.token
                )
            })
            .collect();
        self.write("tokens.toml", &text)
    }

    /// Starts `sluice serve` (`bin`: `sluice_bin!()`) on `host` (its log:
    /// `host.log` in the lab) and waits until it listens; the process and
    /// its address.
    pub fn serve(&self, bin: &Path, host: &Path) -> (Sluice, String) {
        let s = Sluice::serve(bin, host, &self.path("host.log"), &[]);
        let addr = s.address(Duration::from_secs(60));
        (s, addr)
    }
}

/// A token of `tokens.toml`: an admin's, or a tenant's.
pub struct Token<'a> {
    /// Its name (audit log).
    pub name: &'a str,
    /// The secret.
    pub token: &'a str,
    /// `None`: an admin.
    pub tenant: Option<&'a str>,
}
