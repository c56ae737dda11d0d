//! Capability grants: what a transform may reach beyond its own memory.
//!
//! A transform gets no ambient authority. Its component's imports are
//! checked against its grants before it is instantiated ("link time"):
//!
//! - the WASI basics every language runtime imports (`wasi:io/*`,
//!   `wasi:cli/*`, `wasi:random/insecure-seed`) are always linked and served
//!   from an empty context: no environment, no arguments, stdin empty,
//!   stdout and stderr discarded, a fixed seed;
//! - `wasi:filesystem/*` needs `files` (one read-only directory, preopened
//!   with cap-std), `wasi:clocks/monotonic-clock` needs `monotonic_clock`,
//!   `wasi:clocks/wall-clock` needs `wall_clock`, `wasi:random/random` and
//!   `wasi:random/insecure` need `random`;
//! - `wasi:sockets/*` can never be granted;
//! - anything else (`wasi:http`, other packages) is not provided.
//!
//! An import that is not granted refuses the transform with an error naming
//! the import, unless `ungranted_wasi = "inert"`: language runtimes such as
//! componentize-py and componentize-js import all of WASI whether or not the
//! code uses it, so for them the ungranted WASI interfaces are served from
//! the empty context instead (no preopens, sockets denied, clocks frozen at
//! the epoch, random bytes from a fixed seed): linked, but with nothing
//! behind them.

use serde::Deserialize;
use std::path::PathBuf;

/// Where a granted directory appears inside the guest by default.
pub const DEFAULT_FILES_MOUNT: &str = "/data";

/// What a transform is granted. Everything defaults to nothing.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Grants {
    /// A host directory the guest may read (never write), e.g. reference
    /// files. Relative paths are resolved against the pipeline file.
    pub files: Option<PathBuf>,
    /// Where `files` appears in the guest (default `/data`).
    pub files_mount: Option<String>,
    /// The host's monotonic clock (else a clock frozen at 0).
    pub monotonic_clock: bool,
    /// The host's wall clock (else a clock frozen at the Unix epoch).
    pub wall_clock: bool,
    /// Entropy from the host (else bytes from a fixed seed).
    pub random: bool,
    /// What to do with WASI imports that are not granted.
    pub ungranted_wasi: Ungranted,
}

/// What the host does with a WASI import the transform was not granted.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Ungranted {
    /// Refuse the transform before it runs, naming the import (default).
    #[default]
    Refuse,
    /// Link it to the empty context (for language runtimes that import
    /// everything): no preopens, sockets denied, frozen clocks, fixed seed.
    Inert,
}

impl Grants {
    /// Checks the grants as written; `at` is where they are in the
    /// pipeline file (`transforms[0].grants`), for the message.
    pub fn check(&self, at: &str) -> Result<(), String> {
        if let Some(mount) = &self.files_mount {
            if self.files.is_none() {
                return Err(format!("`{at}.files_mount` is set but `files` is not"));
            }
            if !mount.starts_with('/') || mount.split('/').any(|c| c == "..") {
                return Err(format!(
                    "`{at}.files_mount`: `{mount}` must be an absolute guest path without `..`"
                ));
            }
        }
        Ok(())
    }

    /// Where the granted directory is mounted in the guest.
    pub fn mount(&self) -> &str {
        self.files_mount.as_deref().unwrap_or(DEFAULT_FILES_MOUNT)
    }

    /// Resolves a relative `files` path against `base`.
    pub fn resolved(mut self, base: &std::path::Path) -> Grants {
        if let Some(p) = &self.files {
            self.files = Some(base.join(p));
        }
        self
    }

    /// Names of what is granted, for logs and `sluice check`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.files {
            parts.push(format!(
                "files {} (read-only, at {})",
                p.display(),
                self.mount()
            ));
        }
        if self.monotonic_clock {
            parts.push("monotonic clock".into());
        }
        if self.wall_clock {
            parts.push("wall clock".into());
        }
        if self.random {
            parts.push("random".into());
        }
        if parts.is_empty() {
            "nothing".into()
        } else {
            parts.join(", ")
        }
    }

    /// Checks one import of a component against these grants. `Ok(Linked)`
    /// says how it will be served; `Err` explains the refusal.
    pub fn check_import(&self, import: &str) -> Result<Linked, Refusal> {
        let Some(rest) = import.strip_prefix("wasi:") else {
            if import.starts_with("sluice:transform/") {
                return Ok(Linked::Contract);
            }
            return Err(Refusal::Unknown);
        };
        let interface = rest.split('@').next().unwrap_or(rest);
        let (package, _) = interface.split_once('/').unwrap_or((interface, ""));
        let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("");
        if !version.starts_with("0.2.") {
            return Err(Refusal::Version);
        }
        let needs = match interface {
            "io/error" | "io/poll" | "io/streams" | "random/insecure-seed" => {
                return Ok(Linked::Basic);
            }
            _ if package == "cli" => return Ok(Linked::Basic),
            "filesystem/types" | "filesystem/preopens" => {
                Need::Grant("files", self.files.is_some())
            }
            "clocks/monotonic-clock" => Need::Grant("monotonic_clock", self.monotonic_clock),
            "clocks/wall-clock" => Need::Grant("wall_clock", self.wall_clock),
            "random/random" | "random/insecure" => Need::Grant("random", self.random),
            _ if package == "sockets" => Need::Never,
            _ => return Err(Refusal::Unknown),
        };
        match (needs, self.ungranted_wasi) {
            (Need::Grant(_, true), _) => Ok(Linked::Granted),
            (_, Ungranted::Inert) => Ok(Linked::Inert),
            (Need::Grant(grant, false), Ungranted::Refuse) => Err(Refusal::NotGranted(grant)),
            (Need::Never, Ungranted::Refuse) => Err(Refusal::NeverGranted),
        }
    }
}

enum Need {
    Grant(&'static str, bool),
    Never,
}

/// How an accepted import is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linked {
    /// Sluice's own `host` and `types` interfaces.
    Contract,
    /// A WASI basic, served from the empty context.
    Basic,
    /// Granted: served by the host for real.
    Granted,
    /// Not granted, served from the empty context (`ungranted_wasi = "inert"`).
    Inert,
}

impl Linked {
    /// How the import is served, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Linked::Contract => "the Sluice contract",
            Linked::Basic => "WASI basic, served empty",
            Linked::Granted => "granted",
            Linked::Inert => "not granted, served inert",
        }
    }
}

/// Why an import is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A WASI interface the transform was not granted; holds the grant.
    NotGranted(&'static str),
    /// A WASI interface that is never granted (sockets).
    NeverGranted,
    /// A WASI version other than 0.2.x.
    Version,
    /// Not something Sluice provides.
    Unknown,
}

impl Refusal {
    /// A sentence for the error message, given the import's name.
    pub fn explain(&self, import: &str) -> String {
        match self {
            Refusal::NotGranted(grant) => format!(
                "it imports `{import}`, which this transform was not granted: add `{grant}` to its \
                 [grants] if it needs it, or set `ungranted_wasi = \"inert\"` if the import comes \
                 from a language runtime that never uses it (it is then served from an empty context)"
            ),
            Refusal::NeverGranted => format!(
                "it imports `{import}`: network access is never granted to a transform (set \
                 `ungranted_wasi = \"inert\"` if a language runtime imports it without using it; \
                 every socket call is then denied)"
            ),
            Refusal::Version => format!(
                "it imports `{import}`, a WASI version this host does not provide (it provides WASI 0.2)"
            ),
            Refusal::Unknown => format!("it imports `{import}`, which Sluice does not provide"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basics_link_and_authority_needs_a_grant() {
        let none = Grants::default();
        for basic in [
            "wasi:io/streams@0.2.6",
            "wasi:cli/environment@0.2.9",
            "wasi:cli/terminal-stdout@0.2.0",
            "wasi:random/insecure-seed@0.2.6",
        ] {
            assert_eq!(none.check_import(basic), Ok(Linked::Basic), "{basic}");
        }
        assert_eq!(
            none.check_import("sluice:transform/host@0.1.0"),
            Ok(Linked::Contract)
        );
        assert_eq!(
            none.check_import("wasi:filesystem/preopens@0.2.6"),
            Err(Refusal::NotGranted("files"))
        );
        assert_eq!(
            none.check_import("wasi:clocks/monotonic-clock@0.2.6"),
            Err(Refusal::NotGranted("monotonic_clock"))
        );
        assert_eq!(
            none.check_import("wasi:clocks/wall-clock@0.2.6"),
            Err(Refusal::NotGranted("wall_clock"))
        );
        assert_eq!(
            none.check_import("wasi:random/random@0.2.6"),
            Err(Refusal::NotGranted("random"))
        );
        assert_eq!(
            none.check_import("wasi:sockets/tcp@0.2.6"),
            Err(Refusal::NeverGranted)
        );
        assert_eq!(
            none.check_import("wasi:http/outgoing-handler@0.2.6"),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            none.check_import("acme:vault/secrets"),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            none.check_import("wasi:cli/environment@0.3.0"),
            Err(Refusal::Version)
        );
        let msg = Refusal::NotGranted("files").explain("wasi:filesystem/types@0.2.6");
        assert!(
            msg.contains("`wasi:filesystem/types@0.2.6`") && msg.contains("`files`"),
            "{msg}"
        );
    }

    #[test]
    fn grants_and_inert_mode() {
        let g = Grants {
            files: Some("ref".into()),
            monotonic_clock: true,
            random: true,
            ..Grants::default()
        };
        assert_eq!(
            g.check_import("wasi:filesystem/types@0.2.6"),
            Ok(Linked::Granted)
        );
        assert_eq!(
            g.check_import("wasi:clocks/monotonic-clock@0.2.6"),
            Ok(Linked::Granted)
        );
        assert_eq!(
            g.check_import("wasi:random/insecure@0.2.6"),
            Ok(Linked::Granted)
        );
        assert_eq!(
            g.check_import("wasi:clocks/wall-clock@0.2.6"),
            Err(Refusal::NotGranted("wall_clock"))
        );
        let inert = Grants {
            ungranted_wasi: Ungranted::Inert,
            ..Grants::default()
        };
        assert_eq!(
            inert.check_import("wasi:sockets/tcp@0.2.9"),
            Ok(Linked::Inert)
        );
        assert_eq!(
            inert.check_import("wasi:filesystem/preopens@0.2.9"),
            Ok(Linked::Inert)
        );
        // Inert mode does not make unknown interfaces appear.
        assert_eq!(
            inert.check_import("wasi:http/types@0.2.9"),
            Err(Refusal::Unknown)
        );
    }
}
