//! A verified bundle loaded into ONNX Runtime: backbone and head session pools, and the
//! tokenizer for text models. This is the one place that turns tensors into scores; the
//! pipelines in `infer` prepare the tensors.

use super::bundle::{Bundle, BundleError};
use super::manifest::{Manifest, Task};
use super::pool::{SessionOptions, SessionPool};
use ndarray::{Array2, ArrayView2, ArrayView4};
use ort::value::TensorRef;
use std::path::Path;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The bundle itself was refused.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// ONNX Runtime is not available.
    #[error(transparent)]
    Runtime(#[from] super::runtime::RuntimeError),
    /// ONNX Runtime refused to load a file of the bundle.
    #[error("bundle {bundle}: ONNX Runtime cannot load {file}: {reason}")]
    Load {
        /// `name@version`.
        bundle: String,
        /// The ONNX file.
        file: String,
        /// ONNX Runtime's message.
        reason: String,
    },
    /// The ONNX file does not have the inputs or outputs the manifest names.
    #[error(
        "bundle {bundle}: {file} has no {kind} named {name:?} (it has {found:?}); fix the manifest"
    )]
    Signature {
        /// `name@version`.
        bundle: String,
        /// The ONNX file.
        file: String,
        /// "input" or "output".
        kind: &'static str,
        /// The name the manifest expects.
        name: String,
        /// What the file has.
        found: Vec<String>,
    },
    /// The tokenizer file could not be loaded.
    #[error("bundle {bundle}: cannot load tokenizer {file}: {reason}")]
    Tokenizer {
        /// `name@version`.
        bundle: String,
        /// The tokenizer file.
        file: String,
        /// The tokenizer library's message.
        reason: String,
    },
    /// Running the network failed.
    #[error("model {bundle}: inference failed: {reason}")]
    Run {
        /// `name@version`.
        bundle: String,
        /// ONNX Runtime's message.
        reason: String,
    },
    /// The network returned something of the wrong shape.
    #[error("model {bundle}: {what}")]
    Shape {
        /// `name@version`.
        bundle: String,
        /// What was wrong.
        what: String,
    },
}

/// A bundle ready to run.
pub struct LoadedModel {
    /// The verified bundle.
    pub bundle: Bundle,
    backbone: SessionPool,
    head: SessionPool,
    /// The tokenizer (text models only).
    pub tokenizer: Option<tokenizers::Tokenizer>,
}

impl LoadedModel {
    /// Verifies the bundle in `dir` and loads it. ONNX Runtime must be initialised first
    /// ([`super::runtime::init`]).
    pub fn load(dir: &Path, opts: SessionOptions) -> Result<LoadedModel, ModelError> {
        let bundle = Bundle::open(dir)?;
        Self::from_bundle(bundle, opts)
    }

    /// Loads an already verified bundle.
    pub fn from_bundle(bundle: Bundle, opts: SessionOptions) -> Result<LoadedModel, ModelError> {
        let m = &bundle.manifest;
        let id = m.id();
        let open = |file: &str, opts: SessionOptions| {
            SessionPool::new(&bundle.path(file), opts).map_err(|e| ModelError::Load {
                bundle: id.clone(),
                file: file.to_string(),
                reason: e.to_string(),
            })
        };
        let backbone = open(&m.backbone.file, opts)?;
        // The head is one small matrix product: more threads only wake a second pool that
        // competes with the backbone's (models/README.md, "Notes for the runtime").
        let head_opts = SessionOptions {
            intra_threads: 1,
            ..opts
        };
        let head = open(&m.head.file, head_opts)?;
        let check = |pool: &SessionPool, file: &str, kind: &'static str, name: &str| {
            let found = if kind == "input" {
                &pool.input_names
            } else {
                &pool.output_names
            };
            if found.iter().any(|n| n == name) {
                Ok(())
            } else {
                Err(ModelError::Signature {
                    bundle: id.clone(),
                    file: file.to_string(),
                    kind,
                    name: name.to_string(),
                    found: found.clone(),
                })
            }
        };
        check(&backbone, &m.backbone.file, "output", &m.backbone.output)?;
        check(&head, &m.head.file, "input", &m.head.input)?;
        check(&head, &m.head.file, "output", &m.head.output)?;
        if let Some(img) = &m.image {
            check(&backbone, &m.backbone.file, "input", &img.input)?;
        }
        let mut tokenizer = None;
        if let Some(t) = &m.text {
            check(&backbone, &m.backbone.file, "input", &t.input_ids)?;
            check(&backbone, &m.backbone.file, "input", &t.attention_mask)?;
            if let Some(tt) = &t.token_type_ids {
                check(&backbone, &m.backbone.file, "input", tt)?;
            }
            let tok = super::tokenizer::load_tokenizer(&bundle.path(&t.tokenizer), t.max_length)
                .map_err(|reason| ModelError::Tokenizer {
                    bundle: id.clone(),
                    file: t.tokenizer.clone(),
                    reason,
                })?;
            tokenizer = Some(tok);
        }
        Ok(LoadedModel {
            bundle,
            backbone,
            head,
            tokenizer,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.bundle.manifest
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        self.bundle.manifest.id()
    }

    /// The task.
    pub fn task(&self) -> Task {
        self.bundle.manifest.task
    }

    fn run_err(&self, e: impl std::fmt::Display) -> ModelError {
        ModelError::Run {
            bundle: self.id(),
            reason: e.to_string(),
        }
    }

    fn to_matrix(
        &self,
        shape: &[i64],
        data: &[f32],
        cols: usize,
        what: &str,
    ) -> Result<Array2<f32>, ModelError> {
        if shape.len() != 2 || shape[1] as usize != cols {
            return Err(ModelError::Shape {
                bundle: self.id(),
                what: format!("{what} has shape {shape:?}, expected [batch, {cols}]"),
            });
        }
        Array2::from_shape_vec((shape[0] as usize, cols), data.to_vec()).map_err(|e| {
            ModelError::Shape {
                bundle: self.id(),
                what: e.to_string(),
            }
        })
    }

    /// Runs the image backbone on a preprocessed NCHW batch; returns `[batch, embedding_dim]`.
    pub fn embed_images(&self, batch: ArrayView4<'_, f32>) -> Result<Array2<f32>, ModelError> {
        let m = self.manifest();
        let Some(img) = &m.image else {
            return Err(ModelError::Shape {
                bundle: self.id(),
                what: "not an image model".into(),
            });
        };
        let input = TensorRef::from_array_view(batch).map_err(|e| self.run_err(e))?;
        let mut s = self.backbone.get().map_err(|e| self.run_err(e))?;
        let out = s
            .run(ort::inputs![img.input.as_str() => input])
            .map_err(|e| self.run_err(e))?;
        let (shape, data) = out[m.backbone.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| self.run_err(e))?;
        self.to_matrix(shape, data, m.backbone.embedding_dim, "the embedding")
    }

    /// Runs the text backbone on padded token ids and mask (`[batch, tokens]`, int64).
    pub fn embed_tokens(
        &self,
        ids: ArrayView2<'_, i64>,
        mask: ArrayView2<'_, i64>,
        type_ids: ArrayView2<'_, i64>,
    ) -> Result<Array2<f32>, ModelError> {
        let m = self.manifest();
        let Some(t) = &m.text else {
            return Err(ModelError::Shape {
                bundle: self.id(),
                what: "not a text model".into(),
            });
        };
        let ids_t = TensorRef::from_array_view(ids).map_err(|e| self.run_err(e))?;
        let mask_t = TensorRef::from_array_view(mask).map_err(|e| self.run_err(e))?;
        let mut s = self.backbone.get().map_err(|e| self.run_err(e))?;
        let out = match &t.token_type_ids {
            Some(tt) => {
                let tt_t = TensorRef::from_array_view(type_ids).map_err(|e| self.run_err(e))?;
                s.run(ort::inputs![
                    t.input_ids.as_str() => ids_t,
                    t.attention_mask.as_str() => mask_t,
                    tt.as_str() => tt_t
                ])
            }
            None => s.run(ort::inputs![
                t.input_ids.as_str() => ids_t,
                t.attention_mask.as_str() => mask_t
            ]),
        }
        .map_err(|e| self.run_err(e))?;
        let (shape, data) = out[m.backbone.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| self.run_err(e))?;
        self.to_matrix(shape, data, m.backbone.embedding_dim, "the embedding")
    }

    /// Runs the head on embeddings; returns `[batch, labels]` probabilities.
    pub fn score(&self, embeddings: ArrayView2<'_, f32>) -> Result<Array2<f32>, ModelError> {
        let m = self.manifest();
        let input = TensorRef::from_array_view(embeddings).map_err(|e| self.run_err(e))?;
        let mut s = self.head.get().map_err(|e| self.run_err(e))?;
        let out = s
            .run(ort::inputs![m.head.input.as_str() => input])
            .map_err(|e| self.run_err(e))?;
        let (shape, data) = out[m.head.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| self.run_err(e))?;
        self.to_matrix(shape, data, m.labels.len(), "the head's scores")
    }

    /// The labels a score vector decides for: the arg-max for single-label models, every
    /// label at or above its threshold for multi-label models. Sorted by score, highest first.
    pub fn decide(&self, scores: &[f32]) -> Vec<usize> {
        decide(self.manifest(), scores)
    }
}

/// See [`LoadedModel::decide`].
pub fn decide(m: &Manifest, scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    match (&m.thresholds, m.multi_label) {
        (Some(t), true) => order.into_iter().filter(|&i| scores[i] >= t[i]).collect(),
        _ => order.into_iter().take(1).collect(),
    }
}
