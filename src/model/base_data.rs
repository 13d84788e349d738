//! A bundle's base training data (`base_data.safetensors`): the backbone embeddings of the
//! examples its head was trained on, with their labels. The server retrains heads on it plus
//! field feedback; the agent's drift monitor takes per-label statistics from it.
//!
//! Format (written by the recipes with the Python `safetensors` package): `embeddings` F16
//! `[n, dim]`; `labels` U8 `[n]` (single-label: the label index) or `[n, labels]`
//! (multi-label: 0/1 per label).

use super::Bundle;
use crate::model::dataset::Dataset;
use std::path::PathBuf;

/// Base data missing or malformed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct BaseDataError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

/// Base training data of a bundle: embeddings and label indices.
pub fn read(bundle: &Bundle) -> Result<Dataset, BaseDataError> {
    let m = &bundle.manifest;
    let Some(file) = &m.base_data else {
        return Err(BaseDataError {
            path: bundle.path("manifest.json"),
            reason: "the bundle has no base_data: retraining needs the base training embeddings"
                .into(),
        });
    };
    let path = bundle.path(file);
    let bad = |reason: String| BaseDataError {
        path: path.clone(),
        reason,
    };
    let bytes = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let emb = st
        .tensor("embeddings")
        .map_err(|e| bad(format!("embeddings: {e}")))?;
    let lab = st
        .tensor("labels")
        .map_err(|e| bad(format!("labels: {e}")))?;
    if emb.dtype() != safetensors::Dtype::F16 || lab.dtype() != safetensors::Dtype::U8 {
        return Err(bad("expected embeddings F16 and labels U8".into()));
    }
    let [n, dim] = emb.shape() else {
        return Err(bad(format!(
            "embeddings shape {:?}, expected [n, dim]",
            emb.shape()
        )));
    };
    let (n, dim) = (*n, *dim);
    if dim != m.backbone.embedding_dim {
        return Err(bad(format!(
            "embedding length {dim}, the manifest says {}",
            m.backbone.embedding_dim
        )));
    }
    let x = crate::store::embedding_from_f16(emb.data());
    let k = m.labels.len();
    let y: Vec<Vec<usize>> = match (m.multi_label, lab.shape()) {
        (false, [rows]) if *rows == n => lab.data().iter().map(|&l| vec![l as usize]).collect(),
        (true, [rows, cols]) if *rows == n && *cols == k => lab
            .data()
            .chunks(k)
            .map(|r| (0..k).filter(|&j| r[j] != 0).collect())
            .collect(),
        (_, s) => {
            return Err(bad(format!(
                "labels shape {s:?} does not fit {n} rows of {k} labels"
            )))
        }
    };
    if y.iter().flatten().any(|&l| l >= k) {
        return Err(bad("a label index is out of range".into()));
    }
    Ok(Dataset { dim, x, y })
}
