//! Encodings of binary data shared by the store and the wire: base64 for binary fields in
//! JSON, and little-endian float16 for embeddings (half the size of f32; the precision lost,
//! about 1e-3 relative, is far below what retraining a head notices). A leaf module.

use base64::Engine;
use half::f16;

/// Base64 (standard alphabet, padded), the encoding of binary fields in JSON.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes standard padded base64.
pub fn unb64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD.decode(text)
}

/// Encodes an embedding as little-endian float16.
pub fn embedding_to_f16(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| f16::from_f32(x).to_le_bytes())
        .collect()
}

/// Decodes a little-endian float16 embedding (a trailing odd byte is ignored).
pub fn embedding_from_f16(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}
