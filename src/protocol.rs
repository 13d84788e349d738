//! Wire types shared by the agent and the server: what a piece of feedback looks like when
//! it leaves the agent, over HTTP or on a USB stick. Changing a field here is a protocol
//! change: bump [`PROTOCOL_VERSION`].

use base64::Engine;
use serde::{Deserialize, Serialize};

/// Version of the agent-server protocol.
pub const PROTOCOL_VERSION: u32 = 1;

/// One decision, as it travels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    /// UUID; the server stores each id once, however often it arrives.
    pub feedback_id: String,
    /// Content hash of the item.
    pub item_id: String,
    /// `image` or `text`.
    pub kind: String,
    /// Model whose prediction was answered.
    pub model_name: String,
    /// Its version.
    pub model_version: String,
    /// `confirm` or `correct`.
    pub action: String,
    /// Labels given.
    pub labels: Vec<String>,
    /// Given labels the model does not know yet.
    pub new_labels: Vec<String>,
    /// Who gave it.
    pub annotator: String,
    /// When (RFC 3339).
    pub created_at: String,
    /// An earlier decision the server has seen that this one replaces.
    pub supersedes: Option<String>,
    /// The item's embedding: little-endian float16, base64.
    pub embedding_f16: String,
    /// The raw item (tile image or report text), base64, only if the setting allows it.
    pub content: Option<String>,
    /// MIME type of `content`.
    pub content_type: Option<String>,
}

impl FeedbackRecord {
    /// The embedding as f32.
    pub fn embedding(&self) -> Result<Vec<f32>, base64::DecodeError> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(&self.embedding_f16)?;
        Ok(crate::store::embedding_from_f16(&bytes))
    }
}

/// Base64 (standard alphabet, padded), the encoding of binary fields in JSON.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
