//! The models a running agent serves, swappable while requests are in flight.
//!
//! Each model is an `Arc<LoadedModel>` behind a short read lock: a request clones the `Arc`
//! and runs on that model to the end, even if an update swaps in another one meanwhile (the
//! old model is dropped when its last request finishes). A swap takes the write lock only to
//! replace the `Arc`, never while a model runs.

use crate::model::LoadedModel;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Serving models by name.
#[derive(Default)]
pub struct ActiveModels {
    models: RwLock<BTreeMap<String, Arc<LoadedModel>>>,
}

impl std::fmt::Debug for ActiveModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveModels")
            .field("models", &self.versions())
            .finish()
    }
}

impl ActiveModels {
    /// From loaded models.
    pub fn new(models: Vec<Arc<LoadedModel>>) -> ActiveModels {
        ActiveModels {
            models: RwLock::new(
                models
                    .into_iter()
                    .map(|m| (m.manifest().name.clone(), m))
                    .collect(),
            ),
        }
    }

    /// The model serving under `name` now.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedModel>> {
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every serving model's name and version.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, m)| (k.clone(), m.manifest().version.clone()))
            .collect()
    }

    /// Serves `model` from now on; returns the one it replaces.
    pub fn swap(&self, model: Arc<LoadedModel>) -> Option<Arc<LoadedModel>> {
        let name = model.manifest().name.clone();
        self.models
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, model)
    }
}
