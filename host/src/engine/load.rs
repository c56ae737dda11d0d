//! The engine (wasmtime configuration, pool, epoch ticker, linker) and
//! loading: compile, check against the world, link once into a [`Module`].

use super::host_api::{self, HostState};
use super::limits::*;
use super::{EPOCH_TICK, Grants, LoadError, TransformPre, Ungranted, WIT_PACKAGE, cache, grants};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime::component::{Component, Linker};

/// The host's wasm engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: wasmtime::Engine,
    linker: Arc<Linker<HostState>>,
    max_module_bytes: u64,
    pooled: bool,
    resident: Resident,
    fuel: bool,
    cache: Option<cache::ComponentCache>,
    /// Modules already compiled and linked by this engine, by content
    /// digest: twenty pipelines running one module compile it once.
    compiled: Arc<std::sync::Mutex<std::collections::HashMap<String, Linked>>>,
}

/// A compiled, checked and linked component.
#[derive(Clone)]
struct Linked {
    pre: TransformPre<HostState>,
    imports: Vec<String>,
}

/// How an [`Engine`] is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Tenant instances the pooling allocator holds.
    pub slots: u32,
    /// Whether compiled code counts fuel, so that `limits.fuel_per_call`
    /// can be enforced. Off by default (`SLUICE_FUEL=1` turns it on): it
    /// costs about a quarter of a JSON transform's throughput, so a host
    /// turns it on only when a pipeline sets `fuel_per_call`
    /// ([`EngineOptions::for_limits`]).
    pub fuel: bool,
    /// Fail instead of allocating instances on demand when the pool's
    /// address space cannot be reserved (`sluice serve`: a host sized for
    /// its tenants says so at start, with how many slots would fit).
    pub require_pool: bool,
    /// Where compiled modules are cached on disk (default: `SLUICE_CACHE_DIR`,
    /// else `~/.cache/sluice/components`).
    pub cache_dir: Option<PathBuf>,
    /// Reset a pooled instance's memory in place (see [`Resident`]) when the
    /// system allows it safely. On by default; `SLUICE_POOL_RESIDENT=0`
    /// turns it off.
    pub keep_resident: bool,
}

/// How a pooled slot's memory is reset when its instance ends.
///
/// By default wasmtime gives every page the instance touched back to the
/// kernel (`madvise`), so the next instance in the slot takes a page fault
/// per page it touches again, and each reset flushes TLBs on every core the
/// process runs on: most of an instantiation's time (27 of 28 µs for
/// `identity`, issue 16). With `PAGEMAP_SCAN` (Linux 6.7+) wasmtime finds the
/// pages that were written and copies their original contents back in place
/// instead, up to [`KEEP_RESIDENT_MEMORY`] per memory (the rest is given
/// back as before).
///
/// Only without swap: wasmtime 48 skips a written page that was swapped out
/// (it is not "present"), so the next instance in the slot would read the
/// last one's data (wasmtime PR #14357). The host checks `/proc/swaps` when
/// it builds its engine and keeps the default reset if any swap is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resident {
    /// Written pages are reset in place (no swap, `PAGEMAP_SCAN` works).
    InPlace,
    /// Pages are given back to the kernel; the reason why.
    Decommit(&'static str),
}

/// The most of a pooled linear memory reset in place ([`Resident`]).
pub const KEEP_RESIDENT_MEMORY: usize = 1 << 20;
/// The most of a pooled table reset in place.
pub const KEEP_RESIDENT_TABLE: usize = 64 << 10;

impl Resident {
    /// What this system allows, if `wanted`.
    fn probe(wanted: bool) -> Resident {
        if !wanted {
            return Resident::Decommit("turned off");
        }
        match std::fs::read_to_string("/proc/swaps") {
            // A header line, then one line per swap area.
            Ok(text) if text.lines().skip(1).any(|l| !l.trim().is_empty()) => {
                return Resident::Decommit("swap is on");
            }
            Ok(_) => {}
            Err(_) => return Resident::Decommit("cannot read /proc/swaps"),
        }
        if !wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() {
            return Resident::Decommit("PAGEMAP_SCAN is not available (Linux 6.7+)");
        }
        Resident::InPlace
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            slots: std::env::var("SLUICE_INSTANCE_SLOTS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_INSTANCE_SLOTS),
            fuel: std::env::var("SLUICE_FUEL").is_ok_and(|v| v == "1" || v == "true"),
            require_pool: false,
            cache_dir: None,
            keep_resident: !std::env::var("SLUICE_POOL_RESIDENT")
                .is_ok_and(|v| v == "0" || v == "false"),
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
        let EngineOptions {
            slots,
            fuel,
            require_pool,
            cache_dir,
            keep_resident,
        } = options;
        let resident = Resident::probe(keep_resident);
        let configure = |pooling: bool, slots: u32| {
            let mut cfg = wasmtime::Config::new();
            cfg.epoch_interruption(true)
                .consume_fuel(fuel)
                .concurrency_support(false)
                .max_wasm_stack(512 << 10)
                .memory_init_cow(true)
                .cranelift_opt_level(wasmtime::OptLevel::Speed);
            // `SLUICE_PROFILE=perfmap`: write /tmp/perf-<pid>.map so that
            // `perf` names the guests' compiled functions.
            if std::env::var("SLUICE_PROFILE").is_ok_and(|v| v == "perfmap") {
                cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
            }
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
                if resident == Resident::InPlace {
                    pool.linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
                        .table_keep_resident(KEEP_RESIDENT_TABLE)
                        .pagemap_scan(wasmtime::Enabled::Yes);
                }
                cfg.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
            }
            cfg
        };
        let (inner, pooled) = match wasmtime::Engine::new(&configure(true, slots)) {
            Ok(engine) => (engine, true),
            Err(e) if require_pool => {
                // How many slots would fit: the largest pool that can be
                // reserved (each try reserves and releases address space).
                let (mut lo, mut hi) = (0u32, slots.max(1));
                while lo + 1 < hi {
                    let mid = lo + (hi - lo) / 2;
                    if wasmtime::Engine::new(&configure(true, mid)).is_ok() {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                return Err(LoadError::Pool {
                    slots,
                    fits: lo,
                    message: format!("{e:#}"),
                });
            }
            Err(e) => {
                tracing::warn!(slots, error = %e, "cannot reserve the instance pool: allocating instances on demand");
                let engine = wasmtime::Engine::new(&configure(false, slots))
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
        let resident = if pooled {
            resident
        } else {
            Resident::Decommit("no instance pool")
        };
        match resident {
            Resident::InPlace => tracing::info!(
                slots,
                keep_resident_bytes = KEEP_RESIDENT_MEMORY,
                "instance pool: written pages reset in place"
            ),
            Resident::Decommit(why) => {
                tracing::info!(slots, why, "instance pool: pages given back on reset")
            }
        }
        Ok(Engine {
            inner,
            linker: Arc::new(linker),
            max_module_bytes: MAX_MODULE_MB << 20,
            pooled,
            resident,
            fuel,
            cache: match &cache_dir {
                Some(dir) => match cache::ComponentCache::open(dir) {
                    Ok(c) => Some(c),
                    Err(why) => {
                        tracing::warn!(dir = %dir.display(), why, "not using the compiled-module cache");
                        None
                    }
                },
                None => cache::ComponentCache::from_env(),
            },
            compiled: Default::default(),
        })
    }

    /// Whether compiled code counts fuel (`limits.fuel_per_call` works).
    pub fn fuel(&self) -> bool {
        self.fuel
    }

    /// Whether instances come from the pooling allocator (else on demand).
    pub fn pooled(&self) -> bool {
        self.pooled
    }

    /// How the pool resets an ended instance's memory.
    pub fn resident(&self) -> Resident {
        self.resident
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
        let digest = format!("sha256:{digest_hex}");
        let known = self
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest_hex)
            .cloned();
        if let Some(linked) = known {
            tracing::debug!(module = %path.display(), %digest, "module already compiled by this engine");
            return Ok(Arc::new(Module {
                path: path_buf,
                digest,
                imports: linked.imports,
                pre: linked.pre,
                fuel: self.fuel,
                engine: self.inner.clone(),
            }));
        }
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
        let imports: Vec<String> = component
            .component_type()
            .imports(&self.inner)
            .map(|(name, _)| name.to_string())
            .collect();
        self.compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                digest_hex,
                Linked {
                    pre: pre.clone(),
                    imports: imports.clone(),
                },
            );
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
    pub(super) path: PathBuf,
    digest: String,
    imports: Vec<String>,
    pub(super) pre: TransformPre<HostState>,
    pub(super) fuel: bool,
    pub(super) engine: wasmtime::Engine,
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

/// The engines of a host, made when first needed: one plain engine, and a
/// second, fuel-metered one only if some pipeline sets `fuel_per_call`
/// (counting fuel slows every call). Each has its own pool, epoch ticker and
/// compiled modules; every pipeline of the host shares them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engines {
    options: EngineOptions,
    plain: Arc<std::sync::Mutex<Option<Engine>>>,
    metered: Arc<std::sync::Mutex<Option<Engine>>>,
}

impl Default for Engines {
    fn default() -> Self {
        Engines::new(EngineOptions::default())
    }
}

impl Engines {
    /// Engines built with `options` (its `fuel` is ignored: fuel is counted
    /// by the metered engine only).
    pub fn new(options: EngineOptions) -> Self {
        Engines {
            options,
            plain: Arc::default(),
            metered: Arc::default(),
        }
    }

    /// The plain engine (or, if `SLUICE_FUEL` asks, one counting fuel).
    pub fn plain(&self) -> Result<Engine, LoadError> {
        self.get(self.options.fuel)
    }

    /// The fuel-metered engine.
    pub fn metered(&self) -> Result<Engine, LoadError> {
        self.get(true)
    }

    /// The engine for a pipeline whose transforms have `limits`.
    pub fn for_limits<'a>(
        &self,
        limits: impl IntoIterator<Item = &'a Limits>,
    ) -> Result<Engine, LoadError> {
        let fuel = limits.into_iter().any(|l| l.fuel_per_call > 0);
        self.get(fuel || self.options.fuel)
    }

    /// The engines made so far.
    pub fn made(&self) -> Vec<Engine> {
        [&self.plain, &self.metered]
            .iter()
            .filter_map(|e| e.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    fn get(&self, fuel: bool) -> Result<Engine, LoadError> {
        let slot = if fuel { &self.metered } else { &self.plain };
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let engine = Engine::with_options(EngineOptions {
            fuel,
            ..self.options.clone()
        })?;
        *slot = Some(engine.clone());
        Ok(engine)
    }
}
