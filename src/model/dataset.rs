//! A labelled set of embeddings: what a bundle's base data reads into and what the
//! server's head training consumes. It lives with the model, not the server, because the
//! agent reads base data too (drift references) and agent code never imports the server.

/// A labelled set of embeddings.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// Embedding length.
    pub dim: usize,
    /// Row-major embeddings, `len * dim`.
    pub x: Vec<f32>,
    /// Per row, the indices of its labels (exactly one for single-label models).
    pub y: Vec<Vec<usize>>,
}

impl Dataset {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.y.len()
    }
    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
    /// Adds a row.
    pub fn push(&mut self, embedding: &[f32], labels: Vec<usize>) {
        debug_assert_eq!(embedding.len(), self.dim);
        self.x.extend_from_slice(embedding);
        self.y.push(labels);
    }
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.dim..(i + 1) * self.dim]
    }
}
