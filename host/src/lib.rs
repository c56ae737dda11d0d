//! # Sluice host
//!
//! The runtime behind the `sluice` command. A record travels:
//! [`source`] → [`batch`] (micro-batches) → [`engine`] (wasmtime: load, link,
//! instantiate, call, limits) → outcomes → [`sink`] and [`dlq`] → [`ledger`]
//! → commit. [`pipeline`] wires them together from a [`config`] file;
//! [`fixture`] runs transforms against fixture files (`sluice test`);
//! [`flow`] bounds what is in flight (back-pressure); [`kafka`] holds what the
//! Kafka source and sink share.

pub mod api;
pub mod batch;
pub mod cli;
pub mod client;
pub mod config;
pub mod dlq;
pub mod dlq_entry;
pub mod engine;
pub mod field_path;
pub mod fixture;
pub mod flow;
pub mod host;
pub mod kafka;
pub mod ledger;
pub mod metrics;
pub mod pipeline;
pub mod project;
pub mod record;
pub mod replay;
pub mod retry;
pub mod sink;
pub mod source;
