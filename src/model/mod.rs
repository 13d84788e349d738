//! Model bundles and the ONNX Runtime side of the agent.
//!
//! - [`manifest`]: the `manifest.json` format (documented for users in `models/README.md`).
//! - [`bundle`]: finding bundles on disk and verifying every file against its sha256.
//! - [`runtime`]: locating and loading the ONNX Runtime shared library, with clear errors.
//! - [`pool`]: a small pool of ONNX sessions so concurrent callers do not queue on one.
//! - [`dataset`]: a labelled set of embeddings (base data, training input).
//! - [`classifier`]: the [`classifier::Classifier`] trait, the one path from tensors to scores.
//! - [`loaded`]: a verified bundle with its sessions and tokenizer, ready to embed and score.
//! - [`tokenizer`]: loading a bundle's `tokenizer.json` (truncate, never pad).
//! - [`onnx_writer`]: a minimal ONNX protobuf writer (heads retrained in Rust, test models).

pub mod base_data;
pub mod bundle;
pub mod classifier;
pub mod dataset;
pub mod loaded;
pub mod manifest;
pub mod onnx_writer;
pub mod pool;
pub mod runtime;
pub mod tokenizer;

pub use bundle::{Bundle, BundleError};
pub use classifier::{Batch, Classifier};
pub use loaded::{LoadedModel, ModelError};
pub use manifest::{Manifest, Task};

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Loads every bundle found directly below `models_dir`. Bundles that fail to verify or
/// load are returned with their error instead of stopping the others.
pub fn load_all(
    models_dir: &Path,
    opts: pool::SessionOptions,
) -> (Vec<Arc<LoadedModel>>, Vec<(PathBuf, ModelError)>) {
    load_where(models_dir, opts, |_| true)
}

/// Like [`load_all`], but only the bundles whose manifest passes `wanted` are verified and
/// loaded (the manifest is read first; verifying and building sessions is the costly part).
/// A bundle whose manifest cannot be read is loaded as usual, so its error is reported.
pub fn load_where(
    models_dir: &Path,
    opts: pool::SessionOptions,
    wanted: impl Fn(&Manifest) -> bool,
) -> (Vec<Arc<LoadedModel>>, Vec<(PathBuf, ModelError)>) {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    let dirs = match bundle::discover(models_dir) {
        Ok(d) => d,
        Err(e) => {
            failed.push((
                models_dir.to_path_buf(),
                ModelError::Bundle(BundleError::Read {
                    path: models_dir.to_path_buf(),
                    source: e,
                }),
            ));
            return (ok, failed);
        }
    };
    for dir in dirs {
        if bundle::read_manifest(&dir).is_ok_and(|m| !wanted(&m)) {
            continue;
        }
        match LoadedModel::load(&dir, opts) {
            Ok(m) => ok.push(Arc::new(m)),
            Err(e) => failed.push((dir, e)),
        }
    }
    (ok, failed)
}
