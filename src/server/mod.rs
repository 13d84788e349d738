//! The central server: the HTTP API agents sync with, and the operator's admin actions.
//!
//! Its stages, in the order of the loop:
//! - [`api`]: the axum router agents talk to. Handlers are thin: parse, authenticate, call
//!   [`ingest`] and the store (decisions and drift windows, device reports).
//! - [`ingest`]: every incoming record checked field by field against the protocol.
//! - [`store`]: storage behind one role trait per stage ([`store::DeviceStore`],
//!   [`store::FeedbackStore`], [`store::DriftStore`], [`store::RunStore`],
//!   [`store::JobStore`], [`store::AccountStore`], [`store::AuditStore`],
//!   [`store::TaskStore`]), all of them [`store::ServerStore`] (SQLite by default,
//!   PostgreSQL to scale out).
//! - [`training`]: a run from field decisions to a candidate bundle, its evaluation and
//!   gate, and the job queue that runs each once ([`training::job`]).
//! - [`repository`]: the signed repository agents fetch from: reading, publishing,
//!   candidates, keys, the lease, the blob store.
//! - [`ops`]: operator actions (publish, stage, withdraw, revoke, train now) shared by the
//!   CLI and the [`dashboard`].
//! - [`background`]: what a serving process does by itself (jobs, fresh timestamps).
//! - [`serve`]: `outpost-server serve`: the API, the dashboard and the background work.
//! - [`config`], [`metrics`], [`export_key`]: settings, `/metrics`, sealed USB files.
//!
//! The API's routes, authentication and errors are described in [`api`].

pub mod api;
pub mod background;
pub mod config;
pub mod dashboard;
pub mod export_key;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod ops;
pub mod repository;
pub mod serve;
pub mod store;
pub mod training;

pub use crate::clock::unix_now;
pub use api::{
    decompress_limited, normalise_code, router, serve, serve_app, ApiError, AppState,
    MAX_BATCH_BYTES, MAX_BODY_BYTES, MAX_SMALL_BODY_BYTES,
};
