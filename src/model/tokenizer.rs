//! Loading a bundle's `tokenizer.json` the way every report is tokenized: truncated at the
//! model's `max_length`, never padded (a batch is padded to its own longest member). It lives
//! with the model because loading a bundle loads its tokenizer; the text pipeline in
//! `infer::text` uses it.

use std::path::Path;
use tokenizers::{Tokenizer, TruncationParams};

/// Loads a `tokenizer.json`, truncating at `max_length` tokens and never padding (batches
/// are padded to their own longest member instead).
pub fn load_tokenizer(path: &Path, max_length: usize) -> Result<Tokenizer, String> {
    let mut tok = Tokenizer::from_file(path).map_err(|e| e.to_string())?;
    tok.with_truncation(Some(TruncationParams {
        max_length,
        ..Default::default()
    }))
    .map_err(|e| e.to_string())?;
    tok.with_padding(None);
    Ok(tok)
}
