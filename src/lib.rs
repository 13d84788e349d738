//! Outpost: machine learning for humanitarian field teams who work where the network
//! comes and goes.
//!
//! The library holds all the logic; the two binaries (`outpost`, the field agent, and
//! `outpost-server`, the central training server) only parse their command lines and call
//! in here. A newcomer can read it in this order:
//!
//! Leaf modules that depend on nothing else in the crate (`tests/architecture.rs` checks):
//! - [`protocol`]: wire types shared by agent and server (decisions as feedback records,
//!   drift windows, device reports).
//! - [`clock`], [`encoding`] (base64, float16 embeddings), [`version`], [`hash`],
//!   [`vocabulary`] (closed word lists as enums, one spelling each in SQL, JSON and output).
//!
//! The agent, in the order of the loop (agent code never imports [`server`]):
//! - [`config`]: the agent's TOML configuration and where its data lives.
//! - [`model`]: model bundles (manifest, hash verification), loading ONNX Runtime, and
//!   the pool of ONNX sessions that concurrent callers share.
//! - [`infer`]: the image and text pipelines (decode, tile, georeference, tokenize, batch).
//! - [`store`]: the agent's SQLite database (items, predictions, runs, failures).
//! - [`review`]: the local review page and its JSON API.
//! - [`decisions`]: decisions given from the command line, a labels CSV, or a USB export.
//! - [`analyze`]: the `outpost analyze` job that ties the pipelines to the store.
//! - [`export`]: JSON, CSV and GeoJSON output of stored results.
//! - [`language`]: the language each report is written in (ISO 639-3).
//! - [`identity`]: the device's Ed25519 key and request signing.
//! - [`sync`]: enrollment and pushing the feedback outbox to the server.
//! - [`drift`]: noticing when field data no longer looks like the training data.
//! - [`server`]: the central server: API (ingest), store, training, the signed
//!   repository, operator actions and the dashboard.
//! - [`trust`]: TUF-style signed update metadata (roles, thresholds, versions, expiry).
//! - [`daemon`]: `outpost run`, the long-running agent (review page, sync, update and
//!   retention loops).
//! - [`status`]: `outpost status`, what the agent knows about itself.
//! - [`doctor`]: `outpost doctor`, the checks of an installation.
//! - [`bench`]: the end-to-end benchmark against raw ONNX Runtime.
//! - [`cli`]: what the binaries share at the terminal (stdout that survives `| head`,
//!   colour only on a terminal, secret prompts).

pub mod analyze;
pub mod bench;
pub mod cli;

pub mod clock;
pub mod config;
pub mod daemon;
pub mod decisions;
pub mod doctor;
pub mod drift;
pub mod encoding;
pub mod export;
pub mod hash;
pub mod identity;
pub mod infer;
pub mod language;
pub mod model;
pub mod protocol;
pub mod review;
pub mod server;
pub mod status;
pub mod store;
pub mod sync;
pub mod trust;
pub mod update;
pub mod version;
pub mod vocabulary;
