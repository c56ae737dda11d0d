//! Limits of one transform instance and the host-wide bounds they live in.

use serde::Deserialize;

/// Tenant instances an engine's pool holds by default (`SLUICE_INSTANCE_SLOTS`).
pub const DEFAULT_INSTANCE_SLOTS: u32 = 1100;
/// The largest module the host loads, in MiB (a Python or JavaScript
/// component is 12–35 MiB).
pub const MAX_MODULE_MB: u64 = 128;
/// The largest linear memory a tenant may be given (`limits.memory_mb`).
pub const MAX_MEMORY_MB: u32 = 256;
/// The largest table a tenant may be given (`limits.max_table_elements`).
pub const MAX_TABLE_ELEMENTS: u32 = 1 << 20;
/// The most core instances a tenant's component may create
/// (`limits.max_instances`).
pub const MAX_INSTANCES: u32 = 64;

/// Limits for one transform instance. Every field has a safe default.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest linear memory of the instance, in MiB (default 64).
    pub memory_mb: u32,
    /// Wall-clock budget of one `init` or `process` call, in ms (default 5000).
    pub timeout_ms: u64,
    /// Wall-clock budget for isolating the records at fault in one failed
    /// batch, in ms (default 60,000: a looping record in a batch of 1,000
    /// costs about ten deadlines). Past it, the groups still failing fail
    /// whole, each record saying it was not isolated.
    pub isolation_budget_ms: u64,
    /// Most output records one input may produce (default 1000).
    pub max_outputs_per_record: u32,
    /// Most output bytes one batch may produce, in MiB (default 64).
    pub max_output_mb: u32,
    /// Most bytes one output record may have (key, value and headers), in
    /// KiB (default 8192 = 8 MiB).
    pub max_record_output_kb: u32,
    /// Most elements a table of the instance may grow to (default and
    /// maximum 1,048,576).
    pub max_table_elements: u32,
    /// Most core instances, tables and memories the component may create
    /// (default and maximum 64, 64 and 16).
    pub max_instances: u32,
    /// Log lines a transform may write per batch; the rest are counted and
    /// dropped (default 100).
    pub max_log_lines_per_batch: u32,
    /// Longest string the host copies from the guest, in bytes: log lines,
    /// failure messages, a batch's or `init`'s error (longer ones are cut
    /// before they are copied, and say so). Default 4096, at most 65536.
    pub max_message_bytes: u32,
    /// Lookups a transform may make per batch before they return nothing
    /// (default 1,000,000).
    pub max_lookups_per_batch: u64,
    /// Fuel (about one unit per wasm instruction) one `init` or `process`
    /// call may burn; 0 = unmetered, the deadline alone bounds the call
    /// (default 0). Unlike the deadline, fuel is deterministic: the same
    /// batch fails the same way on a busy or an idle host.
    pub fuel_per_call: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: 64,
            timeout_ms: 5_000,
            isolation_budget_ms: 60_000,
            max_outputs_per_record: 1_000,
            max_output_mb: 64,
            max_record_output_kb: 8 << 10,
            max_table_elements: MAX_TABLE_ELEMENTS,
            max_instances: MAX_INSTANCES,
            max_log_lines_per_batch: 100,
            max_message_bytes: 4096,
            max_lookups_per_batch: 1_000_000,
            fuel_per_call: 0,
        }
    }
}

impl Limits {
    /// Checks the limits against the host-wide bounds; `at` is where they
    /// are in the pipeline file (`transforms[0].limits`), for the message.
    pub fn check(&self, at: &str) -> Result<(), String> {
        if self.memory_mb == 0 || self.timeout_ms == 0 || self.isolation_budget_ms == 0 {
            return Err(format!(
                "`{at}`: memory_mb, timeout_ms and isolation_budget_ms must be at least 1"
            ));
        }
        if self.max_table_elements > MAX_TABLE_ELEMENTS
            || self.max_instances > MAX_INSTANCES
            || self.max_instances == 0
            || self.max_record_output_kb == 0
        {
            return Err(format!(
                "`{at}`: max_table_elements at most {MAX_TABLE_ELEMENTS}, max_instances within 1 and {MAX_INSTANCES}, max_record_output_kb at least 1"
            ));
        }
        if !(64..=super::MAX_TEXT_BYTES as u32).contains(&self.max_message_bytes) {
            return Err(format!(
                "`{at}.max_message_bytes`: within 64 and {}",
                super::MAX_TEXT_BYTES
            ));
        }
        if self.memory_mb > MAX_MEMORY_MB {
            return Err(format!("`{at}.memory_mb`: at most {MAX_MEMORY_MB} MiB"));
        }
        Ok(())
    }
}

/// The store's resource limiter: wasmtime's [`wasmtime::StoreLimits`], plus
/// what the host needs to know afterwards — whether a memory grow was
/// refused (so out-of-memory is classified from the limiter, not from an
/// error message's text) and how large the guest's memory is (a metric).
pub(crate) struct GuestLimiter {
    inner: wasmtime::StoreLimits,
    /// Bytes of the largest linear memory, as last grown.
    pub memory_bytes: usize,
    /// A memory grow was refused since the last [`GuestLimiter::take_denied`].
    denied_memory: bool,
}

impl GuestLimiter {
    pub(crate) fn new(inner: wasmtime::StoreLimits) -> Self {
        GuestLimiter {
            inner,
            memory_bytes: 0,
            denied_memory: false,
        }
    }

    /// Whether a memory grow was refused since the last call; clears it.
    pub(crate) fn take_denied(&mut self) -> bool {
        std::mem::take(&mut self.denied_memory)
    }
}

impl wasmtime::ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        match self.inner.memory_growing(current, desired, maximum) {
            Ok(true) => {
                self.memory_bytes = self.memory_bytes.max(desired);
                Ok(true)
            }
            other => {
                self.denied_memory = true;
                other
            }
        }
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.denied_memory = true;
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn a_refused_grow_is_remembered_once_and_memory_tracks_growth() {
        let inner = wasmtime::StoreLimitsBuilder::new()
            .memory_size(1 << 20)
            .build();
        let mut l = GuestLimiter::new(inner);
        assert!(matches!(l.memory_growing(0, 65536, None), Ok(true)));
        assert_eq!(l.memory_bytes, 65536);
        assert!(!l.take_denied());
        assert!(matches!(l.memory_growing(65536, 2 << 20, None), Ok(false)));
        assert_eq!(l.memory_bytes, 65536, "a refused grow does not count");
        assert!(l.take_denied());
        assert!(!l.take_denied(), "cleared after it is read");
    }
}
