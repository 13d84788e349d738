//! The `manifest.json` of a model bundle. The user-facing description of every field is in
//! `models/README.md`; keep the two in step.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The manifest format this agent reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// What a bundle does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Image tiles in, one label (softmax) or several (sigmoid) out.
    ImageClassification,
    /// Report text in, one label or several out.
    TextClassification,
}

impl Task {
    /// The name used in manifests and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::ImageClassification => "image-classification",
            Task::TextClassification => "text-classification",
        }
    }
}

/// The backbone network: preprocessed input to embedding.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackboneSpec {
    /// ONNX file inside the bundle.
    pub file: String,
    /// Name of the embedding output.
    pub output: String,
    /// Length of the embedding.
    pub embedding_dim: usize,
    /// The backbone computes each item of a batch independently of the others (static
    /// quantisation or float), so analyze may batch reports of similar length. A dynamically
    /// quantised backbone scales activations per run: its reports run one at a time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch_independent: bool,
}

/// The head network: embedding to per-label probabilities.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadSpec {
    /// ONNX file inside the bundle.
    pub file: String,
    /// Name of the embedding input.
    pub input: String,
    /// Name of the scores output.
    pub output: String,
}

/// Channel order the backbone expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red.
    Bgr,
}

/// How an input of another size is brought to the model's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeRule {
    /// Bilinear interpolation (triangle filter).
    Bilinear,
    /// Nearest neighbour.
    Nearest,
}

/// Image preprocessing: NCHW float32, `(p/255 - mean) / std` per channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageSpec {
    /// Name of the backbone's image input.
    pub input: String,
    /// Model input height in pixels.
    pub height: u32,
    /// Model input width in pixels.
    pub width: u32,
    /// Channel order.
    pub channel_order: ChannelOrder,
    /// Per-channel mean, on pixels scaled to 0..1.
    pub mean: [f32; 3],
    /// Per-channel standard deviation, on pixels scaled to 0..1.
    pub std: [f32; 3],
    /// Resize rule for inputs of another size.
    pub resize: ResizeRule,
}

/// Text preprocessing: a Hugging Face tokenizer and the backbone's input names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TextSpec {
    /// `tokenizer.json` inside the bundle.
    pub tokenizer: String,
    /// Longest input in tokens (special tokens included); longer reports are truncated.
    pub max_length: usize,
    /// Name of the token ids input.
    pub input_ids: String,
    /// Name of the attention mask input.
    pub attention_mask: String,
    /// Name of the token type ids input, if the backbone has one.
    #[serde(default)]
    pub token_type_ids: Option<String>,
}

/// Size and sha256 of one bundle file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Lower-case hex sha256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// A bundle's `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// Model name, `[a-z0-9-]+`, the same across versions.
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// What the model does.
    pub task: Task,
    /// Several labels per item (sigmoid head) rather than one (softmax head).
    pub multi_label: bool,
    /// One line for humans.
    #[serde(default)]
    pub description: String,
    /// The backbone network.
    pub backbone: BackboneSpec,
    /// The head network.
    pub head: HeadSpec,
    /// Label names in the order of the head's outputs.
    pub labels: Vec<String>,
    /// Per-label decision thresholds (multi-label only).
    #[serde(default)]
    pub thresholds: Option<Vec<f32>>,
    /// Image preprocessing, for image models.
    #[serde(default)]
    pub image: Option<ImageSpec>,
    /// Text preprocessing, for text models.
    #[serde(default)]
    pub text: Option<TextSpec>,
    /// Golden inputs and expected outputs.
    #[serde(default)]
    pub golden: Option<String>,
    /// Reference statistics for drift monitoring.
    #[serde(default)]
    pub reference_stats: Option<String>,
    /// Training embeddings and labels for retraining the head.
    #[serde(default)]
    pub base_data: Option<String>,
    /// Every file of the bundle (except the manifest) with sha256 and size.
    pub files: BTreeMap<String, FileEntry>,
}

/// A manifest that parses but says something inconsistent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ManifestProblem(pub String);

impl Manifest {
    /// Checks the manifest's internal consistency (not the files; see `Bundle::open`).
    pub fn validate(&self) -> Result<(), ManifestProblem> {
        let bad = |m: String| Err(ManifestProblem(m));
        if self.format != MANIFEST_FORMAT {
            return bad(format!(
                "manifest format {} is not supported (this agent reads format {MANIFEST_FORMAT}); update the agent",
                self.format
            ));
        }
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return bad(format!(
                "model name {:?} must be lower-case letters, digits and '-'",
                self.name
            ));
        }
        if parse_version(&self.version).is_none() {
            return bad(format!(
                "version {:?} is not a semantic version MAJOR.MINOR.PATCH",
                self.version
            ));
        }
        if self.labels.is_empty() {
            return bad("the manifest lists no labels".into());
        }
        if let Some(t) = &self.thresholds {
            if t.len() != self.labels.len() {
                return bad(format!(
                    "{} thresholds for {} labels",
                    t.len(),
                    self.labels.len()
                ));
            }
        }
        if self.multi_label && self.thresholds.is_none() {
            return bad("a multi-label model needs per-label thresholds".into());
        }
        match self.task {
            Task::ImageClassification if self.image.is_none() => {
                return bad("an image-classification bundle needs an \"image\" section".into())
            }
            Task::TextClassification if self.text.is_none() => {
                return bad("a text-classification bundle needs a \"text\" section".into())
            }
            _ => {}
        }
        let mut needed = vec![&self.backbone.file, &self.head.file];
        if let Some(t) = &self.text {
            needed.push(&t.tokenizer);
        }
        for f in [&self.golden, &self.reference_stats, &self.base_data]
            .into_iter()
            .flatten()
        {
            needed.push(f);
        }
        for f in needed {
            if !self.files.contains_key(f) {
                return bad(format!("{f} is used but not listed in \"files\""));
            }
        }
        for name in self.files.keys() {
            let p = std::path::Path::new(name);
            if p.is_absolute()
                || p.components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return bad(format!(
                    "file name {name:?} must be a relative path inside the bundle"
                ));
            }
        }
        Ok(())
    }

    /// `name@version`, the form used in logs and messages.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

pub use crate::version::parse_version;
