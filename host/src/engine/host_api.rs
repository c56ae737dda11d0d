//! What the host gives each instance: the `host` interface (log, lookup),
//! a WASI context that is empty except for what the transform was granted,
//! and per-batch counters that enforce the limits.

use super::lift::GuestText;
use super::sluice::transform::host::Level;
use super::{Grants, Limits};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{FsPerms, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

/// Adds the `host` interface (and the type-only `types` interface) to the
/// linker. Written out rather than generated, so that the strings a guest
/// passes are lifted as bounded [`GuestText`]s.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.instance("sluice:transform/types@0.1.0")?;
    let mut host = linker.instance("sluice:transform/host@0.1.0")?;
    host.func_wrap(
        "log",
        |mut store: StoreContextMut<'_, HostState>, (level, message): (Level, GuestText)| {
            store.data_mut().log(level, message);
            Ok(())
        },
    )?;
    host.func_wrap(
        "lookup",
        |mut store: StoreContextMut<'_, HostState>, (table, key): (GuestText, GuestText)| {
            Ok((store.data_mut().lookup(&table, &key),))
        },
    )?;
    Ok(())
}

/// Guest text made safe for a log line: control characters (newlines,
/// carriage returns, escape sequences) are written as escapes, so that a
/// guest cannot forge lines that look like the host's own.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Reference tables for `lookup`: table name → key → row (JSON object text).
#[derive(Debug, Default)]
pub struct RefTables {
    tables: HashMap<String, HashMap<String, String>>,
}

/// Why a reference table could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// I/O error.
    #[error("cannot read table `{table}` from `{path}`: {message}")]
    Read {
        /// Table name.
        table: String,
        /// File.
        path: String,
        /// Explanation.
        message: String,
    },
    /// Bad content.
    #[error("table `{table}` in `{path}`: {message}")]
    Invalid {
        /// Table name.
        table: String,
        /// File.
        path: String,
        /// Explanation naming the row or column at fault.
        message: String,
    },
}

impl RefTables {
    /// No tables.
    pub fn empty() -> Arc<Self> {
        Arc::new(RefTables::default())
    }

    /// Adds a table from a CSV file (header row; `key` names the key column)
    /// or a JSON file (an array of objects with a `key` field, or an object
    /// mapping keys to rows). CSV cells that are numbers or booleans in their
    /// canonical spelling become JSON numbers and booleans.
    pub fn load(&mut self, table: &str, path: &Path, key: &str) -> Result<(), TableError> {
        let p = path.display().to_string();
        let invalid = |message: String| TableError::Invalid {
            table: table.into(),
            path: p.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| TableError::Read {
            table: table.into(),
            path: p.clone(),
            message: e.to_string(),
        })?;
        let mut rows = HashMap::new();
        let is_json = path.extension().is_some_and(|e| e == "json");
        if is_json {
            let doc: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
            match doc {
                serde_json::Value::Array(items) => {
                    for (i, item) in items.into_iter().enumerate() {
                        let k = match item.get(key) {
                            Some(serde_json::Value::String(s)) => s.clone(),
                            Some(serde_json::Value::Number(n)) => n.to_string(),
                            _ => {
                                return Err(invalid(format!(
                                    "row {i} has no string or number field `{key}`"
                                )));
                            }
                        };
                        rows.insert(k, item.to_string());
                    }
                }
                serde_json::Value::Object(map) => {
                    for (k, row) in map {
                        rows.insert(k, row.to_string());
                    }
                }
                _ => {
                    return Err(invalid(
                        "must be an array of objects or an object of rows".into(),
                    ));
                }
            }
        } else {
            let mut reader = csv::Reader::from_reader(text.as_bytes());
            let headers = reader
                .headers()
                .map_err(|e| invalid(format!("bad header row: {e}")))?
                .clone();
            let key_at = headers.iter().position(|h| h == key).ok_or_else(|| {
                invalid(format!(
                    "no key column `{key}` (columns: {})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ))
            })?;
            for (i, row) in reader.records().enumerate() {
                let row = row.map_err(|e| invalid(format!("row {}: {e}", i + 2)))?;
                let mut obj = serde_json::Map::new();
                for (h, cell) in headers.iter().zip(row.iter()) {
                    obj.insert(h.to_string(), csv_cell(cell));
                }
                let k = row.get(key_at).unwrap_or_default().to_string();
                rows.insert(k, serde_json::Value::Object(obj).to_string());
            }
        }
        self.tables.insert(table.to_string(), rows);
        Ok(())
    }

    /// Looks a key up.
    pub fn get(&self, table: &str, key: &str) -> Option<&str> {
        self.tables.get(table)?.get(key).map(String::as_str)
    }

    /// Whether a table of this name is loaded.
    pub fn has(&self, table: &str) -> bool {
        self.tables.contains_key(table)
    }
}

fn csv_cell(cell: &str) -> serde_json::Value {
    if let Ok(i) = cell.parse::<i64>()
        && i.to_string() == cell
    {
        return serde_json::Value::from(i);
    }
    if let Ok(f) = cell.parse::<f64>()
        && f.is_finite()
        && f.to_string() == cell
    {
        return serde_json::Value::from(f);
    }
    match cell {
        "true" => serde_json::Value::Bool(true),
        "false" => serde_json::Value::Bool(false),
        _ => serde_json::Value::String(cell.to_string()),
    }
}

/// A log line written by a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Severity (`trace` ... `error`).
    pub level: &'static str,
    /// The message (cut at `limits.max_message_bytes`).
    pub message: String,
}

/// What a transform asked of the host in one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Log lines written.
    pub logs: u32,
    /// Log lines dropped over the limit.
    pub logs_dropped: u64,
    /// Lookups asked for (those over the limit returned nothing).
    pub lookups: u64,
}

/// Per-store state.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: super::limits::GuestLimiter,
    name: Arc<str>,
    tables: Arc<RefTables>,
    max_logs: u32,
    max_lookups: u64,
    logs_this_batch: u32,
    pub(crate) logs_dropped: u64,
    logs_dropped_this_batch: u64,
    lookups_this_batch: u64,
    /// Last error-level line the guest logged (SDKs log panics this way).
    pub(crate) last_error: Option<String>,
    /// Whether the lines of the current batch are kept for `take_logs`
    /// (the fixture runner); a pipeline keeps none.
    pub(crate) capture_logs: bool,
    /// Lines of the current batch (at most `max_log_lines_per_batch`, each
    /// at most `max_message_bytes`), when captured.
    pub(crate) logs: Vec<LogLine>,
}

struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl HostState {
    /// The state of one instance. Fails only when a granted directory
    /// cannot be opened (the message names it).
    pub(crate) fn new(
        name: Arc<str>,
        tables: Arc<RefTables>,
        limits: super::limits::GuestLimiter,
        l: &Limits,
        grants: &Grants,
    ) -> Result<Self, String> {
        // By default: no env, no args, no preopens, no sockets, stdin empty,
        // stdout and stderr discarded, clocks frozen at the epoch, and
        // "random" bytes from a fixed seed (language runtimes ask for some at
        // start-up). Grants replace a piece of this with the real thing; the
        // import check (`Grants::check_import`) has already refused any
        // component importing what it was not granted, unless it asked for
        // inert WASI.
        use rand::SeedableRng;
        let mut builder = WasiCtx::builder();
        builder
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .insecure_random_seed(0x53)
            .allow_blocking_current_thread(true);
        if !grants.wall_clock {
            builder.wall_clock(FrozenClock);
        }
        if !grants.monotonic_clock {
            builder.monotonic_clock(FrozenClock);
        }
        if !grants.random {
            builder
                .secure_random(rand::rngs::StdRng::seed_from_u64(0x51u64))
                .insecure_random(rand::rngs::StdRng::seed_from_u64(0x52u64));
        }
        if let Some(dir) = &grants.files {
            // Opened through cap-std: the guest can reach nothing outside
            // `dir` (no `..`, no absolute paths, symlinks resolved inside),
            // and only for reading.
            builder
                .preopened_dir(dir, grants.mount(), FsPerms::ReadOnly)
                .map_err(|e| {
                    format!(
                        "cannot open the granted directory `{}`: {e:#}",
                        dir.display()
                    )
                })?;
        }
        let wasi = builder.build();
        Ok(HostState {
            wasi,
            table: ResourceTable::new(),
            limits,
            name,
            tables,
            max_logs: l.max_log_lines_per_batch,
            max_lookups: l.max_lookups_per_batch,
            logs_this_batch: 0,
            logs_dropped: 0,
            logs_dropped_this_batch: 0,
            lookups_this_batch: 0,
            last_error: None,
            capture_logs: false,
            logs: Vec::new(),
        })
    }

    /// Host calls of the current (or last) batch.
    pub(crate) fn usage(&self) -> Usage {
        Usage {
            logs: self.logs_this_batch,
            logs_dropped: self.logs_dropped_this_batch,
            lookups: self.lookups_this_batch,
        }
    }

    pub(crate) fn begin_batch(&mut self) {
        self.logs_this_batch = 0;
        self.logs_dropped_this_batch = 0;
        self.lookups_this_batch = 0;
        self.last_error = None;
        self.logs = Vec::new();
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    fn log(&mut self, level: Level, message: GuestText) {
        let message = message.into_message();
        if matches!(level, Level::Error) {
            // SDKs log a panic's message this way: kept for the trap's
            // error even when the line itself is over the limit.
            self.last_error = Some(message.clone());
        }
        if self.logs_this_batch >= self.max_logs {
            self.logs_dropped += 1;
            self.logs_dropped_this_batch += 1;
            return;
        }
        self.logs_this_batch += 1;
        let name = &*self.name;
        let text = escape_controls(&message);
        let level_name = match level {
            Level::Trace => {
                tracing::trace!(transform = name, "{text}");
                "trace"
            }
            Level::Debug => {
                tracing::debug!(transform = name, "{text}");
                "debug"
            }
            Level::Info => {
                tracing::info!(transform = name, "{text}");
                "info"
            }
            Level::Warn => {
                tracing::warn!(transform = name, "{text}");
                "warn"
            }
            Level::Error => {
                tracing::error!(transform = name, "{text}");
                "error"
            }
        };
        if self.capture_logs {
            self.logs.push(LogLine {
                level: level_name,
                message,
            });
        }
    }

    fn lookup(&mut self, table: &GuestText, key: &GuestText) -> Option<String> {
        self.lookups_this_batch += 1;
        if self.lookups_this_batch > self.max_lookups {
            if self.lookups_this_batch == self.max_lookups + 1 {
                tracing::warn!(
                    transform = &*self.name,
                    limit = self.max_lookups,
                    "lookup limit reached for this batch"
                );
            }
            return None;
        }
        // A key or table name cut to the text cap is matched against nothing
        // rather than against a different row.
        if table.cut || key.cut {
            return None;
        }
        if !self.tables.has(&table.text) {
            tracing::debug!(transform = &*self.name, table = %escape_controls(&table.text), "lookup in a table that is not configured");
            return None;
        }
        self.tables.get(&table.text, &key.text).map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_tables_type_their_cells() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("booths.csv");
        std::fs::write(
            &path,
            "booth_id,region,expected,zip\nB1,north,360,01234\nB2,south,1.5,9\n",
        )
        .expect("write");
        let mut t = RefTables::default();
        t.load("booths", &path, "booth_id").expect("load");
        let row: serde_json::Value =
            serde_json::from_str(t.get("booths", "B1").expect("row")).expect("json");
        assert_eq!(
            row,
            serde_json::json!({"booth_id": "B1", "region": "north", "expected": 360, "zip": "01234"})
        );
        assert_eq!(t.get("booths", "B3"), None);
        let err = t.load("x", &path, "nope").expect_err("bad key column");
        assert!(err.to_string().contains("no key column `nope`"), "{err}");
    }

    #[test]
    fn control_characters_in_guest_text_are_escaped() {
        let forged = "ok\n2026-12-01T00:00:00Z ERROR sluice: circuit breaker open\r\u{1b}[31m";
        let escaped = escape_controls(forged);
        assert!(
            !escaped.contains('\n') && !escaped.contains('\r') && !escaped.contains('\u{1b}'),
            "{escaped}"
        );
        assert!(
            escaped.contains("ok\\n2026") && escaped.contains("\\u{1b}[31m"),
            "{escaped}"
        );
        assert_eq!(escape_controls("plain é ü"), "plain é ü");
    }
}
