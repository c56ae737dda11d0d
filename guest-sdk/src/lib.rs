//! # sluice-guest: write Sluice transforms in Rust
//!
//! A transform is a type that implements [`Transform`]: it is built once per
//! instance from its configuration ([`Transform::init`]) and then sees every
//! record of every micro-batch ([`Transform::process`]). The SDK runs the
//! batch loop, decodes the host's columnar batch into [`Record`]s and encodes
//! what you emit, so you only write the logic:
//!
//! ```no_run
//! use sluice_guest::{export_transform, Config, Emit, Error, Record, Transform};
//!
//! struct Upper;
//!
//! impl Transform for Upper {
//!     fn init(_config: Config) -> Result<Self, String> {
//!         Ok(Upper)
//!     }
//!     fn process(&mut self, record: &Record<'_>, out: &mut Emit<'_>) -> Result<(), Error> {
//!         let text = record.value_str()?;
//!         out.value(text.to_uppercase().as_bytes());
//!         Ok(())
//!     }
//! }
//!
//! export_transform!(Upper);
//! ```
//!
//! Outcomes: returning `Err(error)` fails the record (it goes to the
//! dead-letter queue with the error's kind and message); returning `Ok(())`
//! after emitting one or more outputs emits them; returning `Ok(())` without
//! emitting anything drops the record. Outputs go to the default output unless
//! sent with [`Emit::to`] to a named output such as `alerts`.
//!
//! Build with `cargo build --target wasm32-wasip2 --release`; the resulting
//! `.wasm` in `target/wasm32-wasip2/release/` is a component the host loads.

mod batch;
mod error;
mod host;
mod outcome;
mod path;

#[doc(hidden)]
pub mod __rt;
#[cfg(test)]
mod tests;

pub use batch::{Batch, Header, Record};
pub use error::Error;
pub use host::{Level, log, lookup, lookup_json};
pub use outcome::{Emit, Outcomes, Output};
pub use path::{JsonPath, get};

/// The generated bindings of the `sluice:transform` world. Not part of the
/// public API: use the types re-exported at the crate root.
#[doc(hidden)]
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "transform",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "::sluice_guest::__bindings",
    });
}

/// The configuration a pipeline gives a transform (a JSON document; `{}`
/// when the pipeline gives none).
#[derive(Debug, Clone)]
pub struct Config {
    value: serde_json::Value,
}

impl Config {
    /// Parses the configuration text the host passed to `init`.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let value = if text.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(text)
                .map_err(|e| format!("configuration is not valid JSON: {e}"))?
        };
        Ok(Config { value })
    }

    /// The configuration as a JSON value.
    pub fn value(&self) -> &serde_json::Value {
        &self.value
    }

    /// Deserializes the configuration into a typed struct. The error names the
    /// field at fault, e.g. "invalid configuration: missing field `mapping`".
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        T::deserialize(&self.value).map_err(|e| format!("invalid configuration: {e}"))
    }
}

/// A transform: built once per instance from its configuration, then called
/// for every record of every batch.
pub trait Transform: Sized + 'static {
    /// Builds the transform from its configuration. An error keeps the
    /// transform from being deployed; the operator sees the message.
    fn init(config: Config) -> Result<Self, String>;

    /// Processes one record: emit outputs through `out` and return `Ok(())`,
    /// return `Ok(())` without emitting to drop it, or return an error to
    /// fail it (it goes to the dead-letter queue).
    fn process(&mut self, record: &Record<'_>, out: &mut Emit<'_>) -> Result<(), Error>;

    /// Processes a whole batch. The default calls [`Transform::process`] for
    /// each record. Override it to work on the batch at once (e.g. to look up
    /// all keys together); you must then give every record exactly one
    /// outcome, in order, through [`Outcomes::record`].
    fn process_batch(&mut self, batch: &Batch<'_>, out: &mut Outcomes) {
        for record in batch.records() {
            let mut emit = out.record();
            let result = self.process(&record, &mut emit);
            emit.finish(result);
        }
    }
}

/// Exports a [`Transform`] implementation as the component's `transform`
/// world. Call it once, at the top level of the transform crate.
#[macro_export]
macro_rules! export_transform {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __SluiceExport;

            ::std::thread_local! {
                static __SLUICE_STATE: ::std::cell::RefCell<::std::option::Option<$ty>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            impl $crate::__bindings::Guest for __SluiceExport {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    let transform = $crate::__rt::init::<$ty>(&config)?;
                    __SLUICE_STATE
                        .with(|state| *state.borrow_mut() = ::std::option::Option::Some(transform));
                    ::std::result::Result::Ok(())
                }

                fn process(
                    batch: $crate::__bindings::sluice::transform::types::Batch,
                ) -> ::std::result::Result<
                    $crate::__bindings::sluice::transform::types::Outcomes,
                    ::std::string::String,
                > {
                    __SLUICE_STATE.with(|state| match state.borrow_mut().as_mut() {
                        ::std::option::Option::Some(transform) => {
                            $crate::__rt::process(transform, &batch)
                        }
                        ::std::option::Option::None => {
                            ::std::result::Result::Err("process called before init".to_string())
                        }
                    })
                }
            }

    $crate::__bindings::__export_world!(__SluiceExport with_types_in $crate::__bindings);
        };
    };
}
