//! Why a module could not be loaded, and why a call into a transform failed.

use super::WIT_PACKAGE;
use std::path::PathBuf;

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
    /// The instance pool could not be reserved.
    #[error(
        "cannot reserve an instance pool of {slots} slots ({message}); at most {fits} slots fit in this process's address space: lower `engine.instance_slots` or raise the limit (ulimit -v)"
    )]
    Pool {
        /// Slots asked for.
        slots: u32,
        /// The largest pool that could be reserved.
        fits: u32,
        /// wasmtime's error.
        message: String,
    },
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
