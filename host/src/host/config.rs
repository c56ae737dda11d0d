//! The host file (`host.toml`): the listener, the data and pipeline
//! directories, host-wide limits and the defaults pipelines inherit.
//!
//! ```toml
//! listen = "127.0.0.1:7070"      # the HTTP listener: /, /metrics, /api
//! token_file = "secrets/token"   # or token_env = "SLUICE_TOKEN": an admin token
//! tokens_file = "tokens.toml"    # more tokens: admins, and tenants (see `auth`)
//! data_dir = "data"              # compiled-module cache (and later state)
//! pipelines = "pipelines"        # one pipeline file (*.toml) per pipeline
//! instance_slots = 1100          # the shared pool: live transform instances
//! shutdown_timeout_ms = 60000    # SIGTERM: how long pipelines may drain
//! registry = "/shared/registry"  # module registry (default: data_dir/registry)
//! [state]                        # share the desired state with other hosts
//! kafka_bootstrap = "kafka:9092" # through a compacted topic on this cluster
//! kafka_topic = "sluice-state"   # (default `sluice-desired-state`)
//! kafka_properties = { "security.protocol" = "sasl_ssl" }  # SASL, TLS, …
//! kafka_replication_factor = 3   # when created (default: the cluster's)
//! [restart]                      # for pipelines without their own [restart]
//! max_restarts = 3
//! ```
//! Relative paths resolve against the host file's directory.

use crate::pipeline::RestartPolicy;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why a host file was refused.
#[derive(Debug, thiserror::Error)]
pub enum HostConfigError {
    /// It cannot be read.
    #[error("host file `{}`: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It does not parse or has a bad field.
    #[error("host file `{}`{}: {message}", .path.display(), .line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// The token cannot be read.
    #[error("host file `{}`: cannot read the API token: {message}", .path.display())]
    Token {
        /// The host file.
        path: PathBuf,
        /// Why (never the token).
        message: String,
    },
}

/// A Sluice host file (`sluice serve host.toml`): many pipelines in one
/// process. Relative paths resolve against the host file's folder.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Raw {
    /// Where the HTTP listener (API, status page, metrics) binds (default
    /// `127.0.0.1:7070`; port 0 picks a free port). A non-loopback address
    /// needs a token.
    listen: Option<String>,
    /// A file holding the admin bearer token the API and status page
    /// require.
    token_file: Option<PathBuf>,
    /// An environment variable holding the admin bearer token.
    token_env: Option<String>,
    /// A file of named tokens, each an admin or limited to tenants.
    tokens_file: Option<PathBuf>,
    /// The data directory: compiled-module cache, desired state, file
    /// positions, audit log (default `data`).
    data_dir: Option<PathBuf>,
    /// The directory of pipeline files, one `*.toml` per pipeline (default
    /// `pipelines`).
    pipelines: Option<PathBuf>,
    /// Live transform instances the shared pool holds (default 1100).
    instance_slots: Option<u32>,
    /// How long SIGTERM lets pipelines drain, in ms (default 60000).
    shutdown_timeout_ms: Option<u64>,
    /// The restart policy of pipelines that set none (default: 3 restarts,
    /// 1 s doubling to 60 s).
    restart: Option<RestartPolicy>,
    /// The module registry's directory (default `data_dir/registry`; share
    /// it between hosts that share their state).
    registry: Option<PathBuf>,
    /// The desired state shared with other hosts through a compacted Kafka
    /// topic.
    state: Option<SharedStateConfig>,
}

/// `[state]`: the desired state shared by several hosts.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SharedStateConfig {
    /// The Kafka cluster that keeps it.
    pub kafka_bootstrap: String,
    /// The compacted topic (default `sluice-desired-state`), created if
    /// missing.
    #[serde(default = "default_state_topic")]
    pub kafka_topic: String,
    /// Client settings for that cluster, passed to the Kafka client as they are
    /// (SASL, TLS: `security.protocol`, `sasl.mechanism`, …), as a
    /// pipeline's Kafka `properties`.
    #[serde(default)]
    pub kafka_properties: crate::kafka::Properties,
    /// Replication factor of the topic when Sluice creates it (default:
    /// the cluster's `default.replication.factor`).
    #[serde(default)]
    pub kafka_replication_factor: Option<i32>,
}

impl SharedStateConfig {
    /// The state topic's settings.
    pub fn topic(&self) -> crate::kafka::compacted::TopicSettings {
        crate::kafka::compacted::TopicSettings {
            bootstrap: self.kafka_bootstrap.clone(),
            topic: self.kafka_topic.clone(),
            properties: self.kafka_properties.clone(),
            replication_factor: self.kafka_replication_factor,
            table: "state.kafka".into(),
        }
    }
}

fn default_state_topic() -> String {
    "sluice-desired-state".into()
}

/// The host's settings.
#[derive(Clone)]
pub struct HostConfig {
    /// Where the HTTP listener binds (default `127.0.0.1:7070`; port 0
    /// picks a free port).
    pub listen: SocketAddr,
    /// The bearer token the API and status page require, if any. Required
    /// on a non-loopback address.
    pub token: Option<String>,
    /// Every token the API accepts: `token` (an admin, named `admin`) and
    /// those of `tokens_file`. Empty: reads are open (loopback only) and
    /// writes are refused.
    pub tokens: Vec<super::auth::ApiToken>,
    /// The data directory (compiled-module cache).
    pub data_dir: PathBuf,
    /// The directory of pipeline files.
    pub pipelines: PathBuf,
    /// Live transform instances the shared pool holds (default 1100).
    pub instance_slots: u32,
    /// How long SIGTERM lets pipelines drain, in ms (default 60000).
    pub shutdown_timeout_ms: u64,
    /// The restart policy of pipelines that set none (default: 3 restarts,
    /// 1 s doubling to 60 s).
    pub restart: RestartPolicy,
    /// The module registry's directory (default `data_dir/registry`; share
    /// it between hosts that share their state).
    pub registry: PathBuf,
    /// The shared desired state, if hosts share one.
    pub shared_state: Option<SharedStateConfig>,
}

impl std::fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("tokens", &self.tokens)
            .field("data_dir", &self.data_dir)
            .field("pipelines", &self.pipelines)
            .field("instance_slots", &self.instance_slots)
            .finish()
    }
}

impl HostConfig {
    /// The JSON Schema of a host file (`sluice schema host`; `docs/schema/`).
    pub fn json_schema() -> serde_json::Value {
        let mut schema = serde_json::to_value(schemars::schema_for!(Raw)).unwrap_or_default();
        if let Some(o) = schema.as_object_mut() {
            o.insert("title".into(), "Sluice host file".into());
        }
        schema
    }

    /// Reads and checks a host file.
    pub fn load(path: &Path) -> Result<Self, HostConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| HostConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        // Absolute, so that paths kept in the desired state (a stored
        // module's file under `data_dir`) mean the same file to every
        // reader: a pipeline file resolves a relative `module` against its
        // own folder, not against the working directory.
        let base = std::path::absolute(&base).map_err(|source| HostConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path, &base)
    }

    /// Parses a host file's text; relative paths resolve against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Self, HostConfigError> {
        let invalid = |line: Option<usize>, message: String| HostConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            message,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text.get(..s.start).unwrap_or(text).matches('\n').count() + 1);
            invalid(line, e.message().to_string())
        })?;
        let line_of = |key: &str| {
            text.lines()
                .position(|l| l.trim_start().starts_with(key))
                .map(|i| i + 1)
        };
        let listen_text = raw.listen.unwrap_or_else(|| "127.0.0.1:7070".into());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(
                line_of("listen"),
                format!(
                    "`listen`: `{listen_text}` is not an address and port (e.g. 127.0.0.1:7070)"
                ),
            )
        })?;
        let token = match (&raw.token_file, &raw.token_env) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    line_of("token_env"),
                    "`token_file` and `token_env`: give one".into(),
                ));
            }
            (Some(file), None) => {
                let file = base.join(file);
                let t = std::fs::read_to_string(&file).map_err(|e| HostConfigError::Token {
                    path: path.to_path_buf(),
                    message: format!("`token_file` `{}`: {e}", file.display()),
                })?;
                Some(t.trim().to_string())
            }
            (None, Some(var)) => Some(
                std::env::var(var)
                    .map_err(|_| HostConfigError::Token {
                        path: path.to_path_buf(),
                        message: format!("`token_env`: the variable `{var}` is not set"),
                    })?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        if let Some(t) = &token
            && t.len() < 16
        {
            return Err(HostConfigError::Token {
                path: path.to_path_buf(),
                message: format!("the token is {} characters; use at least 16", t.len()),
            });
        }
        let mut tokens = Vec::new();
        if let Some(t) = &token {
            tokens.push(
                super::auth::ApiToken::new("admin", t, super::auth::Role::Admin).map_err(
                    |message| HostConfigError::Token {
                        path: path.to_path_buf(),
                        message,
                    },
                )?,
            );
        }
        if let Some(file) = &raw.tokens_file {
            tokens.extend(
                super::auth::load_tokens(&base.join(file)).map_err(|message| {
                    HostConfigError::Token {
                        path: path.to_path_buf(),
                        message,
                    }
                })?,
            );
        }
        if !listen.ip().is_loopback() && tokens.is_empty() {
            return Err(invalid(
                line_of("listen"),
                format!(
                    "`listen` = `{listen}` is not a loopback address: set `token_file` or `token_env` (the API and status page then require `Authorization: Bearer <token>`)"
                ),
            ));
        }
        let instance_slots = raw
            .instance_slots
            .unwrap_or(crate::engine::DEFAULT_INSTANCE_SLOTS);
        if instance_slots == 0 {
            return Err(invalid(
                line_of("instance_slots"),
                "`instance_slots` must be at least 1".into(),
            ));
        }
        let data_dir = base.join(raw.data_dir.unwrap_or_else(|| "data".into()));
        Ok(HostConfig {
            listen,
            token,
            tokens,
            registry: raw
                .registry
                .map(|r| base.join(r))
                .unwrap_or_else(|| data_dir.join("registry")),
            shared_state: raw.state,
            data_dir,
            pipelines: base.join(raw.pipelines.unwrap_or_else(|| "pipelines".into())),
            instance_slots,
            shutdown_timeout_ms: raw.shutdown_timeout_ms.unwrap_or(60_000),
            restart: raw.restart.unwrap_or_else(super::default_restart),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HostConfig, HostConfigError> {
        HostConfig::parse(text, Path::new("host.toml"), Path::new("/srv"))
    }

    #[test]
    fn defaults_resolve_against_the_host_file() {
        let c = parse("").expect("valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.pipelines, PathBuf::from("/srv/pipelines"));
        assert_eq!(c.data_dir, PathBuf::from("/srv/data"));
        assert_eq!(c.restart.max_restarts, 3);
        assert!(c.token.is_none());
    }

    #[test]
    fn a_host_file_given_by_a_relative_path_keeps_absolute_paths() {
        // The bundled example: `data_dir = "../../.sluice/host"`, read as
        // the README runs it (from this crate's folder here).
        let c = HostConfig::load(Path::new("../examples/host/host.toml")).expect("valid");
        for p in [&c.data_dir, &c.registry, &c.pipelines] {
            assert!(p.is_absolute(), "{}", p.display());
        }
        assert!(
            c.data_dir.ends_with(".sluice/host"),
            "{}",
            c.data_dir.display()
        );
    }

    #[test]
    fn a_public_listener_needs_a_token() {
        let e = parse("listen = \"0.0.0.0:7070\"\n").expect_err("refused");
        let text = e.to_string();
        assert!(
            text.contains("line 1") && text.contains("not a loopback"),
            "{text}"
        );
    }

    #[test]
    fn a_token_from_the_environment_is_never_shown() {
        // SAFETY of the test: a variable only this test uses.
        let var = "SLUICE_TEST_HOST_TOKEN_7f3a";
        // Not set: says which variable, and nothing else.
        let e =
            parse(&format!("listen = \"0.0.0.0:1\"\ntoken_env = \"{var}\"\n")).expect_err("unset");
        assert!(e.to_string().contains(var), "{e}");
        let c = HostConfig::parse(
            "token_file = \"tok\"\n",
            Path::new("host.toml"),
            &tempdir_with_token("0123456789abcdef-secret"),
        )
        .expect("valid");
        assert_eq!(c.token.as_deref(), Some("0123456789abcdef-secret"));
        assert!(!format!("{c:?}").contains("secret"), "{c:?}");
    }

    #[test]
    fn unknown_fields_name_their_line() {
        let e = parse("listen = \"127.0.0.1:1\"\nlisten_port = 3\n").expect_err("refused");
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    fn tempdir_with_token(token: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-host-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("tok"), format!("{token}\n")).expect("write");
        dir
    }
}
