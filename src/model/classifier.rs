//! The one way from prepared tensors to scores: a [`Classifier`] embeds a [`Batch`] with its
//! backbone and scores the embeddings with its head.
//!
//! analyze, the review page's classify, the golden checks and the bench all go through this
//! trait instead of assembling embed-and-score themselves, the way text-embeddings-inference
//! puts ONNX behind a `Backend` trait: the pipelines only prepare tensors (`infer`), and a
//! model that runs elsewhere (another runtime, a test double) fits behind the same trait.
//! [`super::LoadedModel`] (ONNX Runtime session pools) is the implementation the agent ships.

use super::loaded::{decide, ModelError};
use super::manifest::Manifest;
use ndarray::{Array2, ArrayView2, ArrayView4};

/// A batch of prepared inputs, in the layout of the backbone's inputs.
#[derive(Debug, Clone, Copy)]
pub enum Batch<'a> {
    /// Preprocessed images, NCHW float32.
    Images(ArrayView4<'a, f32>),
    /// Padded token ids, attention mask and token type ids, `[batch, tokens]` int64.
    Tokens {
        /// Token ids.
        ids: ArrayView2<'a, i64>,
        /// 1 for a token, 0 for padding.
        mask: ArrayView2<'a, i64>,
        /// Segment ids (zeros for one sentence).
        types: ArrayView2<'a, i64>,
    },
}

impl Batch<'_> {
    /// Items in the batch.
    pub fn len(&self) -> usize {
        match self {
            Batch::Images(x) => x.shape()[0],
            Batch::Tokens { ids, .. } => ids.shape()[0],
        }
    }

    /// Whether the batch has no item.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Embeddings and scores of one batch, row `i` for item `i`.
#[derive(Debug, Clone)]
pub struct Classified {
    /// `[batch, embedding_dim]`.
    pub embeddings: Array2<f32>,
    /// `[batch, labels]` probabilities.
    pub scores: Array2<f32>,
}

/// A model that embeds and scores batches. Implementations must be usable from several
/// threads at once (the review page and analyze share a model).
pub trait Classifier: Send + Sync {
    /// The bundle's manifest: labels, thresholds, input specification.
    fn manifest(&self) -> &Manifest;

    /// The tokenizer of a text model.
    fn tokenizer(&self) -> Option<&tokenizers::Tokenizer>;

    /// Runs the backbone: `[batch, embedding_dim]`.
    fn embed(&self, batch: Batch<'_>) -> Result<Array2<f32>, ModelError>;

    /// Runs the head on embeddings: `[batch, labels]` probabilities.
    fn score(&self, embeddings: ArrayView2<'_, f32>) -> Result<Array2<f32>, ModelError>;

    /// Backbone then head.
    fn classify(&self, batch: Batch<'_>) -> Result<Classified, ModelError> {
        let embeddings = self.embed(batch)?;
        let scores = self.score(embeddings.view())?;
        Ok(Classified { embeddings, scores })
    }

    /// The labels a score vector decides for (see [`decide`]).
    fn decide(&self, scores: &[f32]) -> Vec<usize> {
        decide(self.manifest(), scores)
    }
}

impl Classifier for super::LoadedModel {
    fn manifest(&self) -> &Manifest {
        &self.bundle.manifest
    }

    fn tokenizer(&self) -> Option<&tokenizers::Tokenizer> {
        self.tokenizer.as_ref()
    }

    fn embed(&self, batch: Batch<'_>) -> Result<Array2<f32>, ModelError> {
        match batch {
            Batch::Images(x) => self.embed_images(x),
            Batch::Tokens { ids, mask, types } => self.embed_tokens(ids, mask, types),
        }
    }

    fn score(&self, embeddings: ArrayView2<'_, f32>) -> Result<Array2<f32>, ModelError> {
        super::LoadedModel::score(self, embeddings)
    }
}
