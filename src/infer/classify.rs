//! One input, classified: an image or a report is prepared exactly as analyze prepares it
//! (the same preprocessing, the same tokenizer, no padding) and run through a
//! [`Classifier`]. The review page's classify and the golden checks both use this, so a
//! score shown on the page, a golden case and an analyzed item cannot drift apart.

use super::image::preprocess_into;
use super::text::{encode, pad_batch, pad_id, Encoded};
use crate::model::classifier::{Batch, Classifier};
use ndarray::Array4;

/// One thing to classify.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// Decoded pixels (any size; resized to the model's input as analyze does).
    Image(&'a image::RgbImage),
    /// A report.
    Text(&'a str),
    /// A report already tokenized (the golden checks compare the ids first).
    Tokens(&'a Encoded),
}

/// Scores of one input (one per label). The error says why the model cannot read it.
pub fn classify_one(model: &dyn Classifier, input: Input<'_>) -> Result<Vec<f32>, String> {
    let m = model.manifest();
    let out = match input {
        Input::Image(rgb) => {
            let spec = m
                .image
                .as_ref()
                .ok_or_else(|| format!("{} reads text, not images", m.id()))?;
            let mut x = Array4::<f32>::zeros((1, 3, spec.height as usize, spec.width as usize));
            let slice = x
                .as_slice_mut()
                .ok_or("internal: input tensor not contiguous")?;
            preprocess_into(rgb, spec, slice);
            model.classify(Batch::Images(x.view()))
        }
        Input::Text(text) => {
            let tok = model
                .tokenizer()
                .ok_or_else(|| format!("{} reads images, not text", m.id()))?;
            let enc = encode(tok, text)?;
            return classify_one(model, Input::Tokens(&enc));
        }
        Input::Tokens(enc) => {
            let tok = model
                .tokenizer()
                .ok_or_else(|| format!("{} reads images, not text", m.id()))?;
            let (ids, mask, types) = pad_batch(&[enc], pad_id(tok));
            model.classify(Batch::Tokens {
                ids: ids.view(),
                mask: mask.view(),
                types: types.view(),
            })
        }
    }
    .map_err(|e| e.to_string())?;
    Ok(out.scores.row(0).to_vec())
}
