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
mod cache;
mod error;
pub mod grants;
mod host_api;
mod lift;
mod limits;
mod load;
mod runner;

pub use abi::{
    Failure, MAX_FAILURE_KIND, MAX_OUTPUT_NAME, Outcome, Output, Processed, RESERVED_OUTPUT_NAMES,
    valid_output_name,
};
pub use bisect::Bisection;
pub use error::{LoadError, TransformError};
pub use grants::{Grants, Ungranted};
pub use host_api::{LogLine, RefTables, TableError, Usage, escape_controls};
pub use lift::{GuestText, MAX_TEXT_BYTES};
pub use limits::{
    DEFAULT_INSTANCE_SLOTS, Limits, MAX_INSTANCES, MAX_MEMORY_MB, MAX_MODULE_MB, MAX_TABLE_ELEMENTS,
};
pub use load::{
    Engine, EngineOptions, Engines, KEEP_RESIDENT_MEMORY, KEEP_RESIDENT_TABLE, Module, Resident,
};
pub use runner::{InstanceSpec, Runner};

use std::time::Duration;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "transform",
});

/// The WIT package version this host implements.
pub const WIT_PACKAGE: &str = "sluice:transform@0.1.0";
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);
