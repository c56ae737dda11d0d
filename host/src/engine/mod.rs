//! The transform engine: wasmtime with the component model.
//!
//! Lifecycle: a [`Engine`] is created once per host. Each module is compiled
//! once and linked once into a [`Module`] (`Component` + `InstancePre`). Each
//! tenant transform gets its own [`Runner`]: one `Store` and instance, with its
//! own limits, re-created after any trap. Guests get no ambient authority:
//! the WASI imports language runtimes touch at start-up are served from an
//! empty context (no env, args, files, sockets; stdio discarded; clocks frozen;
//! random bytes from a fixed seed); a directory, the clocks and entropy only
//! when granted (`grants.rs`), and a component importing what it was not
//! granted is refused before it runs.

mod abi;
mod bisect;
pub mod build;
mod cache;
pub mod grants;
mod host_api;
mod lift;

pub use abi::{
    Failure, MAX_FAILURE_KIND, MAX_OUTPUT_NAME, Outcome, Output, Processed, RESERVED_OUTPUT_NAMES,
    valid_output_name,
};
pub use bisect::Bisection;
pub use grants::{Grants, Ungranted};
pub use host_api::{LogLine, RefTables, TableError, Usage};
pub use lift::{GuestText, MAX_TEXT_BYTES};

use crate::record::{Position, Record};
use host_api::HostState;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker};
use wasmtime::{Store, StoreLimitsBuilder, Trap};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "transform",
});

/// The WIT package version this host implements.
pub const WIT_PACKAGE: &str = "sluice:transform@0.1.0";
const EPOCH_TICK: Duration = Duration::from_millis(5);
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
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
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

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read module `{path}`: {source}")]
    Read {
        /// The module file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not WebAssembly at all.
    #[error(
        "module `{path}` is not a WebAssembly file (it does not start with the `\\0asm` magic bytes)"
    )]
    NotWasm {
        /// The module file.
        path: PathBuf,
    },
    /// The file is a core module, not a component.
    #[error(
        "module `{path}` is a core WebAssembly module, not a component: build it for `wasm32-wasip2` \
         (or wrap it with `wasm-tools component new`) so that it implements {WIT_PACKAGE}"
    )]
    NotComponent {
        /// The module file.
        path: PathBuf,
    },
    /// Compilation failed.
    #[error("module `{path}` is not a valid component: {message}")]
    Invalid {
        /// The module file.
        path: PathBuf,
        /// wasmtime's explanation.
        message: String,
    },
    /// The component does not implement the transform world.
    #[error("module `{path}` does not implement the world `{WIT_PACKAGE}/transform`: {message}")]
    WrongWorld {
        /// The module file.
        path: PathBuf,
        /// What is missing or mismatched.
        message: String,
    },
    /// The module is larger than allowed.
    #[error("module `{path}` is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The module file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The engine could not be created.
    #[error("cannot configure the wasm engine: {0}")]
    Engine(String),
}

/// Why a call into a transform failed. The batch is then failed as a whole
/// and the instance is discarded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TransformError {
    /// `init` returned an error: the transform is not deployed.
    #[error("transform `{transform}` (module `{module}`) refused its configuration: {message}")]
    Init {
        /// Transform name.
        transform: String,
        /// The module file it runs.
        module: String,
        /// The guest's message.
        message: String,
    },
    /// The guest trapped (panic, out-of-bounds access, ...).
    #[error("transform `{transform}` (module `{module}`) trapped: {message}")]
    Trap {
        /// Transform name.
        transform: String,
        /// The module file it runs.
        module: String,
        /// The trap and, when the guest logged one, its panic message.
        message: String,
    },
    /// The call ran past its time budget.
    #[error("transform `{transform}` (module `{module}`) exceeded its deadline of {timeout_ms} ms")]
    Deadline {
        /// Transform name.
        transform: String,
        /// The module file it runs.
        module: String,
        /// The budget.
        timeout_ms: u64,
    },
    /// The guest tried to grow its memory past its limit.
    #[error(
        "transform `{transform}` (module `{module}`) ran out of memory (limit {limit_mb} MiB): {message}"
    )]
    OutOfMemory {
        /// Transform name.
        transform: String,
        /// The module file it runs.
        module: String,
        /// The limit.
        limit_mb: u32,
        /// wasmtime's message.
        message: String,
    },
    /// The call burnt all its fuel (`limits.fuel_per_call`).
    #[error("transform `{transform}` (module `{module}`) ran out of fuel (limit {fuel} per call)")]
    OutOfFuel {
        /// Transform name.
        transform: String,
        /// The module file it runs.
        module: String,
        /// The limit.
        fuel: u64,
    },
    /// `process` returned an error for the whole batch.
    #[error("transform `{transform}` (module `{module}`) failed the batch: {message}")]
    Batch {
        /// Transform name.
        transform: String,
        /// The module file it runs.
        module: String,
        /// The guest's message.
        message: String,
    },
    /// The guest broke the contract (wrong outcome count, bad spans, limits).
    #[error("transform `{transform}` (module `{module}`) broke the contract: {message}")]
    Contract {
        /// Transform name.
        transform: String,
        /// The module file it runs.
        module: String,
        /// What was wrong.
        message: String,
    },
    /// The component imports something the transform was not granted; it
    /// is refused before it runs.
    #[error("transform `{transform}` (module `{module}`) is refused: {message}")]
    NotGranted {
        /// Transform name.
        transform: String,
        /// The module file it runs.
        module: String,
        /// The import at fault.
        import: String,
        /// Why, and what to change.
        message: String,
    },
    /// The host could not create an instance.
    #[error("cannot instantiate transform `{transform}` (module `{module}`): {message}")]
    Instantiate {
        /// Transform name.
        transform: String,
        /// The module file it runs.
        module: String,
        /// wasmtime's message.
        message: String,
    },
}

impl TransformError {
    /// What went wrong, without the transform and module names.
    pub fn reason(&self) -> String {
        match self {
            TransformError::Init { message, .. } => format!("refused its configuration: {message}"),
            TransformError::Trap { message, .. } => format!("trapped: {message}"),
            TransformError::Deadline { timeout_ms, .. } => {
                format!("exceeded its deadline of {timeout_ms} ms")
            }
            TransformError::OutOfMemory {
                limit_mb, message, ..
            } => format!("ran out of memory (limit {limit_mb} MiB): {message}"),
            TransformError::OutOfFuel { fuel, .. } => {
                format!("ran out of fuel (limit {fuel} per call)")
            }
            TransformError::Batch { message, .. } => format!("failed the batch: {message}"),
            TransformError::Contract { message, .. } => {
                format!("broke the contract: {message}")
            }
            TransformError::NotGranted { message, .. } => format!("is refused: {message}"),
            TransformError::Instantiate { message, .. } => {
                format!("could not be instantiated: {message}")
            }
        }
    }

    /// Short machine-readable kind, used in the dead-letter queue.
    pub fn kind(&self) -> &'static str {
        match self {
            TransformError::Init { .. } => "init",
            TransformError::Trap { .. } => "trap",
            TransformError::Deadline { .. } => "deadline",
            TransformError::OutOfMemory { .. } => "out-of-memory",
            TransformError::OutOfFuel { .. } => "out-of-fuel",
            TransformError::Batch { .. } => "batch-failed",
            TransformError::Contract { .. } => "contract",
            TransformError::Instantiate { .. } => "instantiate",
            TransformError::NotGranted { .. } => "not-granted",
        }
    }
}

/// The host's wasm engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: wasmtime::Engine,
    linker: Arc<Linker<HostState>>,
    max_module_bytes: u64,
    pooled: bool,
    fuel: bool,
    cache: Option<cache::ComponentCache>,
}

/// How an [`Engine`] is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Tenant instances the pooling allocator holds.
    pub slots: u32,
    /// Whether compiled code counts fuel, so that `limits.fuel_per_call`
    /// can be enforced. Off by default (`SLUICE_FUEL=1` turns it on): it
    /// costs about a quarter of a JSON transform's throughput, so a host
    /// turns it on only when a pipeline sets `fuel_per_call`
    /// ([`EngineOptions::for_limits`]).
    pub fuel: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            slots: std::env::var("SLUICE_INSTANCE_SLOTS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_INSTANCE_SLOTS),
            fuel: std::env::var("SLUICE_FUEL").is_ok_and(|v| v == "1" || v == "true"),
        }
    }
}

impl EngineOptions {
    /// The default options, with fuel counted if any of `limits` sets
    /// `fuel_per_call`.
    pub fn for_limits<'a>(limits: impl IntoIterator<Item = &'a Limits>) -> Self {
        let mut options = EngineOptions::default();
        options.fuel |= limits.into_iter().any(|l| l.fuel_per_call > 0);
        options
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Creates the engine and starts its epoch ticker thread.
    pub fn new() -> Result<Self, LoadError> {
        Self::with_options(EngineOptions::default())
    }

    /// An engine whose pooling allocator holds `slots` live tenant instances
    /// (linear memories of at most [`MAX_MEMORY_MB`] each). Instantiating a
    /// tenant then reuses a pre-reserved slot with a copy-on-write image of
    /// the module's memory (microseconds). If the address space for the pool
    /// cannot be reserved, falls back to allocating on demand.
    pub fn with_slots(slots: u32) -> Result<Self, LoadError> {
        Self::with_options(EngineOptions {
            slots,
            ..EngineOptions::default()
        })
    }

    /// An engine built with `options` (see [`Engine::with_slots`]).
    pub fn with_options(options: EngineOptions) -> Result<Self, LoadError> {
        let EngineOptions { slots, fuel } = options;
        let configure = |pooling: bool| {
            let mut cfg = wasmtime::Config::new();
            cfg.epoch_interruption(true)
                .consume_fuel(fuel)
                .concurrency_support(false)
                .max_wasm_stack(512 << 10)
                .memory_init_cow(true)
                .cranelift_opt_level(wasmtime::OptLevel::Speed);
            if pooling {
                let n = slots.max(1);
                let mut pool = wasmtime::PoolingAllocationConfig::new();
                pool.total_component_instances(n)
                    .total_core_instances(n.saturating_mul(4))
                    .total_memories(n)
                    .total_tables(n.saturating_mul(2))
                    .max_memory_size((MAX_MEMORY_MB as usize) << 20)
                    .max_core_instances_per_component(MAX_INSTANCES)
                    .max_memories_per_component(16)
                    .max_tables_per_component(64)
                    .table_elements(MAX_TABLE_ELEMENTS as usize)
                    .max_unused_warm_slots(n.min(100));
                cfg.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
            }
            cfg
        };
        let (inner, pooled) = match wasmtime::Engine::new(&configure(true)) {
            Ok(engine) => (engine, true),
            Err(e) => {
                tracing::warn!(slots, error = %e, "cannot reserve the instance pool: allocating instances on demand");
                let engine = wasmtime::Engine::new(&configure(false))
                    .map_err(|e| LoadError::Engine(e.to_string()))?;
                (engine, false)
            }
        };
        let mut linker = Linker::<HostState>::new(&inner);
        host_api::add_to_linker(&mut linker).map_err(|e| LoadError::Engine(e.to_string()))?;
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        let weak = inner.weak();
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| LoadError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(Engine {
            inner,
            linker: Arc::new(linker),
            max_module_bytes: MAX_MODULE_MB << 20,
            pooled,
            fuel,
            cache: cache::ComponentCache::from_env(),
        })
    }

    /// Whether instances come from the pooling allocator (else on demand).
    pub fn pooled(&self) -> bool {
        self.pooled
    }

    /// Loads, compiles and links a component file.
    pub fn load_file(&self, path: &Path) -> Result<Arc<Module>, LoadError> {
        let size = std::fs::metadata(path)
            .map_err(|source| LoadError::Read {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        if size > self.max_module_bytes {
            return Err(LoadError::TooLarge {
                path: path.to_path_buf(),
                size,
                limit: self.max_module_bytes,
            });
        }
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.load_bytes(path, &bytes)
    }

    /// Loads, compiles and links a component from bytes; `path` names it in errors.
    pub fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Arc<Module>, LoadError> {
        let path_buf = path.to_path_buf();
        if bytes.len() as u64 > self.max_module_bytes {
            return Err(LoadError::TooLarge {
                path: path_buf,
                size: bytes.len() as u64,
                limit: self.max_module_bytes,
            });
        }
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(LoadError::NotWasm { path: path_buf });
        }
        // Layer byte: 0 for core modules, 1 for components.
        if bytes[6..8] == [0, 0] {
            return Err(LoadError::NotComponent { path: path_buf });
        }
        let digest_hex = hex::encode(Sha256::digest(bytes));
        let component = match &self.cache {
            Some(cache) => cache.load(&self.inner, &digest_hex, bytes).map(|(c, hit)| {
                tracing::debug!(module = %path.display(), cached = hit, "component loaded");
                c
            }),
            None => Component::new(&self.inner, bytes),
        }
        .map_err(|e| LoadError::Invalid {
            path: path_buf.clone(),
            message: format!("{e:#}"),
        })?;
        check_world(&self.inner, &component).map_err(|message| LoadError::WrongWorld {
            path: path_buf.clone(),
            message,
        })?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::WrongWorld {
                path: path_buf.clone(),
                message: format!("{e:#}"),
            })?;
        let pre = TransformPre::new(pre).map_err(|e| LoadError::WrongWorld {
            path: path_buf.clone(),
            message: format!("{e:#}"),
        })?;
        let digest = format!("sha256:{digest_hex}");
        let imports = component
            .component_type()
            .imports(&self.inner)
            .map(|(name, _)| name.to_string())
            .collect();
        Ok(Arc::new(Module {
            path: path_buf,
            digest,
            imports,
            pre,
            fuel: self.fuel,
            engine: self.inner.clone(),
        }))
    }
}

/// Checks exports and imports against the transform world, with messages
/// that name what is missing.
fn check_world(engine: &wasmtime::Engine, component: &Component) -> Result<(), String> {
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    let missing: Vec<&str> = ["init", "process"]
        .into_iter()
        .filter(|n| !exports.contains(n))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing export{} {} (it exports: {})",
            if missing.len() > 1 { "s" } else { "" },
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", "),
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            }
        ));
    }
    for (name, _) in ty.imports(engine) {
        if let Some(rest) = name.strip_prefix("sluice:transform/") {
            let version = rest.split('@').nth(1).unwrap_or("");
            if !version.starts_with("0.1.") {
                return Err(format!(
                    "it imports `{name}`, built against another version of the contract; this host provides {WIT_PACKAGE}"
                ));
            }
        } else {
            // Whatever no grant can ever satisfy is refused here, for every
            // transform; the rest is checked against each transform's grants.
            let anything = Grants {
                ungranted_wasi: Ungranted::Inert,
                ..Grants::default()
            };
            if let Err(refusal) = anything.check_import(name) {
                return Err(refusal.explain(name));
            }
        }
    }
    Ok(())
}

/// A compiled and linked transform module, shared by all its instances.
pub struct Module {
    path: PathBuf,
    digest: String,
    imports: Vec<String>,
    pre: TransformPre<HostState>,
    fuel: bool,
    engine: wasmtime::Engine,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("path", &self.path)
            .field("digest", &self.digest)
            .finish()
    }
}

impl Module {
    /// The file the module was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `sha256:<hex>` of the module bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The component's imports (interface names with versions).
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// Checks every import against `grants`: the first one refused is
    /// returned with the reason. This is the link-time check a transform
    /// passes before it is instantiated.
    pub fn check_grants(&self, grants: &Grants) -> Result<(), (String, grants::Refusal)> {
        for import in &self.imports {
            grants
                .check_import(import)
                .map_err(|refusal| (import.clone(), refusal))?;
        }
        Ok(())
    }
}

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
    wire: sluice::transform::types::Batch,
}

/// One tenant transform: a module, its configuration and a live instance,
/// re-created after any failure.
pub struct Runner {
    module: Arc<Module>,
    spec: InstanceSpec,
    instance: Option<Instance>,
    instantiations: u64,
    capture_logs: bool,
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
        self.instance
            .as_mut()
            .map(|i| std::mem::take(&mut i.store.data_mut().logs))
            .unwrap_or_default()
    }

    fn ensure_instance(&mut self) -> Result<&mut Instance, TransformError> {
        if self.instance.is_none() {
            let instance = self.instantiate()?;
            self.instantiations += 1;
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
        let wire = sluice::transform::types::Batch {
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
        })
    }

    /// Processes one batch. On any error the instance is discarded and the
    /// next call starts a fresh one.
    pub fn process(
        &mut self,
        records: &[(&Record, &Position)],
    ) -> Result<Processed, TransformError> {
        let result = self.process_inner(records);
        if result.is_err() {
            self.instance = None;
        }
        result
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
    if text.contains("forcing trap when growing memory") {
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
