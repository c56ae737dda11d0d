//! One tenant transform's instance: its store, limits, calls and the
//! classification of what went wrong.

use super::host_api::{HostState, LogLine, RefTables, Usage};
use super::limits::GuestLimiter;
use super::limits::*;
use super::{EPOCH_TICK, Grants, Module, Processed, TransformError, abi, lift};
use crate::record::{Position, Record};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::{Store, StoreLimitsBuilder, Trap};

/// What one instance of a transform needs: its name, configuration, tables,
/// limits and grants.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// Transform name (from the pipeline), used in every error and log line.
    pub name: Arc<str>,
    /// Configuration passed to `init` (JSON text).
    pub config: String,
    /// Reference tables for `lookup`.
    pub tables: Arc<RefTables>,
    /// Limits.
    pub limits: Limits,
    /// What it may reach beyond its memory (nothing by default).
    pub grants: Grants,
}

struct Instance {
    store: Store<HostState>,
    exports: lift::Exports,
    wire: super::sluice::transform::types::Batch,
    /// Linear memory after the instance's first batch (0 before it).
    settled_bytes: u64,
}

/// One tenant transform: a module, its configuration and a live instance,
/// re-created after any failure.
pub struct Runner {
    module: Arc<Module>,
    pub(super) spec: InstanceSpec,
    instance: Option<Instance>,
    instantiations: u64,
    capture_logs: bool,
    /// The captured lines of a call that failed (its instance is gone).
    failed_logs: Vec<LogLine>,
    /// Failed calls (`process` or a re-instantiation) by error kind.
    errors: std::collections::BTreeMap<&'static str, u64>,
    /// Instantiations and failed calls not yet handed to
    /// [`Runner::take_unreported`].
    unreported: (u64, std::collections::BTreeMap<&'static str, u64>),
    /// Instances replaced because their memory kept growing.
    recycled: u64,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("name", &self.spec.name)
            .field("module", &self.module)
            .finish()
    }
}

impl Runner {
    /// Creates the runner and its first instance, calling `init`: a bad
    /// configuration is reported here, before any record flows.
    pub fn new(module: Arc<Module>, spec: InstanceSpec) -> Result<Self, TransformError> {
        if let Err((import, refusal)) = module.check_grants(&spec.grants) {
            return Err(TransformError::NotGranted {
                transform: spec.name.to_string(),
                module: module.path.display().to_string(),
                message: refusal.explain(&import),
                import,
            });
        }
        if spec.limits.fuel_per_call > 0 && !module.fuel {
            return Err(TransformError::Instantiate {
                transform: spec.name.to_string(),
                module: module.path.display().to_string(),
                message: "`limits.fuel_per_call` is set but this host's engine counts no fuel"
                    .into(),
            });
        }
        let mut runner = Runner {
            module,
            spec,
            instance: None,
            instantiations: 0,
            capture_logs: false,
            failed_logs: Vec::new(),
            errors: Default::default(),
            unreported: Default::default(),
            recycled: 0,
        };
        runner.ensure_instance()?;
        Ok(runner)
    }

    /// The transform's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The module it runs.
    pub fn module(&self) -> &Arc<Module> {
        &self.module
    }

    /// How many instances were created so far (1 + re-creations after failures).
    pub fn instantiations(&self) -> u64 {
        self.instantiations
    }

    /// Failed calls so far, by error kind (`trap`, `deadline`,
    /// `out-of-memory`, ...): what a metric of traps counts.
    pub fn errors(&self) -> &std::collections::BTreeMap<&'static str, u64> {
        &self.errors
    }

    /// Instantiations and failed calls by kind since the last call: what a
    /// metric adds (runners outlive sessions, so counting deltas here never
    /// counts one twice).
    pub fn take_unreported(&mut self) -> (u64, std::collections::BTreeMap<&'static str, u64>) {
        std::mem::take(&mut self.unreported)
    }

    /// Instances replaced between batches because their memory kept growing
    /// (see [`Runner::process`]).
    pub fn recycled(&self) -> u64 {
        self.recycled
    }

    /// Bytes of the live instance's linear memory (0 between instances).
    pub fn memory_bytes(&self) -> u64 {
        self.instance
            .as_ref()
            .map(|i| i.store.data().limits.memory_bytes as u64)
            .unwrap_or(0)
    }

    /// Changes the fuel limit of the next calls (0 = unmetered). Fails if
    /// the engine counts no fuel.
    pub fn set_fuel_per_call(&mut self, fuel: u64) -> Result<(), TransformError> {
        if fuel > 0 && !self.module.fuel {
            return Err(TransformError::Instantiate {
                transform: self.spec.name.to_string(),
                module: self.module.path.display().to_string(),
                message: "`limits.fuel_per_call` is set but this host's engine counts no fuel"
                    .into(),
            });
        }
        self.spec.limits.fuel_per_call = fuel;
        Ok(())
    }

    /// Host calls of the last batch (logs written and dropped, lookups).
    pub fn usage(&self) -> Usage {
        self.instance
            .as_ref()
            .map(|i| i.store.data().usage())
            .unwrap_or_default()
    }

    /// Keeps the log lines of each batch for [`Runner::take_logs`] (the
    /// fixture runner). Off by default: a pipeline's lines go to the log and
    /// are not kept.
    pub fn capture_logs(&mut self, on: bool) {
        self.capture_logs = on;
        if let Some(i) = self.instance.as_mut() {
            i.store.data_mut().capture_logs = on;
        }
    }

    /// Log lines the guest wrote during the last batch, when captured
    /// ([`Runner::capture_logs`]).
    pub fn take_logs(&mut self) -> Vec<LogLine> {
        let mut lines = std::mem::take(&mut self.failed_logs);
        if let Some(i) = self.instance.as_mut() {
            lines.append(&mut i.store.data_mut().logs);
        }
        lines
    }

    fn ensure_instance(&mut self) -> Result<&mut Instance, TransformError> {
        if self.instance.is_none() {
            let instance = self.instantiate()?;
            self.instantiations += 1;
            self.unreported.0 += 1;
            self.instance = Some(instance);
        }
        self.instance
            .as_mut()
            .ok_or_else(|| TransformError::Instantiate {
                transform: self.spec.name.to_string(),
                module: self.module.path.display().to_string(),
                message: "instance vanished".into(),
            })
    }

    fn instantiate(&self) -> Result<Instance, TransformError> {
        let name = self.spec.name.to_string();
        let module = self.module.path.display().to_string();
        let limits = &self.spec.limits;
        let store_limits = StoreLimitsBuilder::new()
            .memory_size((limits.memory_mb as usize) << 20)
            .instances(limits.max_instances.min(MAX_INSTANCES) as usize)
            .tables(64)
            .memories(16)
            .table_elements(limits.max_table_elements.min(MAX_TABLE_ELEMENTS) as usize)
            .trap_on_grow_failure(true)
            .build();
        let store_limits = GuestLimiter::new(store_limits);
        let state = HostState::new(
            self.spec.name.clone(),
            self.spec.tables.clone(),
            store_limits,
            limits,
            &self.spec.grants,
        )
        .map_err(|message| TransformError::Instantiate {
            transform: name.clone(),
            module: module.clone(),
            message,
        })?;
        let mut state = state;
        state.capture_logs = self.capture_logs;
        let mut store = Store::new(&self.module.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(ticks(limits.timeout_ms));
        store.epoch_deadline_trap();
        // All that one call may hand the host (lists and strings, however
        // aliased): at most the guest's own memory's worth.
        store.set_hostcall_fuel((limits.memory_mb.max(1) as usize) << 20);
        refuel(&mut store, self.module.fuel, limits);
        let instance = self
            .module
            .pre
            .instance_pre()
            .instantiate(&mut store)
            .map_err(|e| classify(&self.spec, &module, &mut store, e))?;
        let exports =
            lift::Exports::new(&mut store, &instance).map_err(|e| TransformError::Instantiate {
                transform: name.clone(),
                module: module.clone(),
                message: format!("{e:#}"),
            })?;
        let cap = limits.max_message_bytes as usize;
        match lift::with_text_cap(cap, || exports.init(&mut store, &self.spec.config)) {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                return Err(TransformError::Init {
                    transform: name,
                    module,
                    message: message.into_message(),
                });
            }
            Err(e) => {
                let err = classify(&self.spec, &module, &mut store, e);
                return Err(TransformError::Init {
                    transform: name,
                    module,
                    message: err.reason(),
                });
            }
        }
        let wire = super::sluice::transform::types::Batch {
            arena: Vec::new(),
            spans: Vec::new(),
            timestamps: Vec::new(),
            header_ends: Vec::new(),
            header_spans: Vec::new(),
            sources: Vec::new(),
            source_index: Vec::new(),
            offsets: Vec::new(),
        };
        Ok(Instance {
            store,
            exports,
            wire,
            settled_bytes: 0,
        })
    }

    /// Processes one batch. On any error the instance is discarded and the
    /// next call starts a fresh one.
    pub fn process(
        &mut self,
        records: &[(&Record, &Position)],
    ) -> Result<Processed, TransformError> {
        self.failed_logs.clear();
        let result = self.process_inner(records);
        if let Err(e) = &result {
            *self.errors.entry(e.kind()).or_default() += 1;
            *self.unreported.1.entry(e.kind()).or_default() += 1;
            if let Some(mut i) = self.instance.take()
                && self.capture_logs
            {
                self.failed_logs = std::mem::take(&mut i.store.data_mut().logs);
            }
        } else {
            self.recycle_if_growing();
        }
        result
    }

    /// Linear memory never shrinks, and some language runtimes keep growing
    /// it across calls (a componentize-js 0.23 identity transform, fed
    /// 120 KB batches, reached 64 MiB after about 100 of them), so such an
    /// instance would hit its limit and fail a batch. An instance past 3/4
    /// of its limit that has grown by more than 1/8 of the limit since its
    /// first batch is replaced before the next batch instead (a fresh
    /// instance costs one instantiation and `init`). One whose memory is
    /// high but steady is left alone.
    fn recycle_if_growing(&mut self) {
        let limit = u64::from(self.spec.limits.memory_mb) << 20;
        let Some(instance) = self.instance.as_mut() else {
            return;
        };
        let now = instance.store.data().limits.memory_bytes as u64;
        if instance.settled_bytes == 0 {
            instance.settled_bytes = now;
            return;
        }
        if now > limit / 4 * 3 && now > instance.settled_bytes + limit / 8 {
            tracing::debug!(transform = %self.spec.name, memory_bytes = now, first_batch_bytes = instance.settled_bytes, "replacing an instance whose memory keeps growing");
            self.instance = None;
            self.recycled += 1;
        }
    }

    fn process_inner(
        &mut self,
        records: &[(&Record, &Position)],
    ) -> Result<Processed, TransformError> {
        self.ensure_instance()?;
        let Runner {
            spec,
            instance,
            module,
            ..
        } = self;
        let limits = &spec.limits;
        let name = spec.name.to_string();
        let Some(instance) = instance.as_mut() else {
            return Err(TransformError::Instantiate {
                transform: name,
                module: module.path.display().to_string(),
                message: "instance vanished".into(),
            });
        };
        abi::encode(records, &mut instance.wire);
        instance.store.data_mut().begin_batch();
        // A refused grow of an earlier call that the guest survived says
        // nothing about this one.
        instance.store.data_mut().limits.take_denied();
        instance.store.set_epoch_deadline(ticks(limits.timeout_ms));
        refuel(&mut instance.store, module.fuel, limits);
        let started = Instant::now();
        let exports = instance.exports;
        let (store, wire) = (&mut instance.store, &instance.wire);
        let result = lift::with_text_cap(limits.max_message_bytes as usize, || {
            exports.process(store, wire)
        });
        tracing::trace!(transform = %name, records = records.len(), elapsed_us = started.elapsed().as_micros() as u64, "process call");
        let wire_out = match result {
            Ok(Ok(out)) => out,
            Ok(Err(message)) => {
                return Err(TransformError::Batch {
                    transform: name,
                    module: module.path.display().to_string(),
                    message: message.into_message(),
                });
            }
            Err(e) => {
                let module = module.path.display().to_string();
                return Err(classify(spec, &module, &mut instance.store, e));
            }
        };
        abi::decode(wire_out, records, limits).map_err(|message| TransformError::Contract {
            transform: name,
            module: module.path.display().to_string(),
            message,
        })
    }
}

/// Turns a wasmtime error from a guest call into a [`TransformError`].
fn classify(
    spec: &InstanceSpec,
    module: &str,
    store: &mut Store<HostState>,
    e: wasmtime::Error,
) -> TransformError {
    let transform = spec.name.to_string();
    let module = module.to_string();
    let panic = store.data_mut().last_error.take();
    let root = e.root_cause().to_string();
    // Where it happened: the innermost frames of the guest's own code
    // (demangled, without hashes; the standard library's panic and abort
    // machinery skipped).
    let frames: Vec<String> = e
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|bt| {
            bt.frames()
                .iter()
                .filter_map(|f| f.func_name())
                .map(|name| format!("{:#}", rustc_demangle::demangle(name)))
                .filter(|name| !is_runtime_frame(name))
                .take(3)
                .collect()
        })
        .unwrap_or_default();
    let text = if frames.is_empty() {
        root
    } else {
        format!("{root} (in {})", frames.join(" < "))
    };
    if e.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
        return TransformError::OutOfFuel {
            transform,
            module,
            fuel: spec.limits.fuel_per_call,
        };
    }
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return TransformError::Deadline {
            transform,
            module,
            timeout_ms: spec.limits.timeout_ms,
        };
    }
    if store.data_mut().limits.take_denied() {
        return TransformError::OutOfMemory {
            transform,
            module,
            limit_mb: spec.limits.memory_mb,
            message: text,
        };
    }
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        // `wasi:cli/exit`: the guest ended its own instance.
        return TransformError::Trap {
            transform,
            module,
            message: format!("the guest called exit({})", exit.0),
        };
    }
    if e.downcast_ref::<Trap>().is_none() && e.downcast_ref::<wasmtime::WasmBacktrace>().is_none() {
        // Not a trap in guest code: wasmtime refused what the guest handed
        // over the boundary (a `cabi_realloc` result or a list pointer or
        // length outside its memory, a misaligned pointer, invalid UTF-8).
        return TransformError::Contract {
            transform,
            module,
            message: format!("broke the canonical ABI: {text}"),
        };
    }
    let message = match panic {
        Some(p) => format!("{text} (guest said: {p})"),
        None => text,
    };
    TransformError::Trap {
        transform,
        module,
        message,
    }
}

/// Frames of the language runtime's panic, abort and allocation paths,
/// which say nothing about where the guest went wrong.
fn is_runtime_frame(name: &str) -> bool {
    const PREFIXES: [&str; 9] = [
        "std::",
        "core::",
        "alloc::",
        "__rust",
        "rust_panic",
        "abort",
        "dlmalloc",
        "<std::",
        "<core::",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Gives the store the fuel of one call: the limit, or (unmetered) all
/// there is.
fn refuel(store: &mut Store<HostState>, metered: bool, limits: &Limits) {
    if !metered {
        return;
    }
    let fuel = match limits.fuel_per_call {
        0 => u64::MAX,
        n => n,
    };
    if let Err(e) = store.set_fuel(fuel) {
        tracing::error!(error = %e, "cannot set fuel");
    }
}

fn ticks(timeout_ms: u64) -> u64 {
    (timeout_ms / EPOCH_TICK.as_millis() as u64).max(1) + 1
}
