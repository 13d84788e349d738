//! The inference pipelines.
//!
//! - [`image`]: decode JPEG/PNG/TIFF, plan tiles, crop, preprocess to tensors.
//! - [`classify`]: one image or report through a model's [`crate::model::Classifier`].
//! - [`geotiff`]: GeoTIFF georeferencing and reprojection of tile footprints to WGS84.
//! - [`text`]: read reports from text, Markdown, CSV and JSON Lines; tokenize; batch.
//! - [`golden`]: run a bundle's golden inputs and compare with the expected outputs.
//!
//! Errors about one input file are [`InputError`]s: recorded per file, and the run goes on.

pub mod classify;
pub mod geotiff;
pub mod golden;
pub mod image;
pub mod text;

/// Why one input (a file, a row, a line) could not be analysed. The message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Zero bytes.
    #[error("the file is empty")]
    Empty,
    /// Over the file size limit.
    #[error("the file is {size} bytes, over the limit of {limit} bytes; split it or raise the limit in the config")]
    TooLarge {
        /// Size found.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// Not a format the agent reads.
    #[error("unsupported input: {0}")]
    Unsupported(String),
    /// Over the pixel limit (decompression bomb protection).
    #[error("the image is {width}x{height} pixels, over the limit of {limit} pixels; cut the scene into smaller files or raise limits.max_image_pixels")]
    TooManyPixels {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Limit in pixels.
        limit: u64,
    },
    /// Could not be decoded.
    #[error("cannot decode: {0} (the file is corrupt, truncated, or not what its name says)")]
    Decode(String),
    /// Text that is not UTF-8.
    #[error(
        "the text is not valid UTF-8 (first bad byte at offset {offset}); save the report as UTF-8"
    )]
    NotUtf8 {
        /// Byte offset of the first invalid byte.
        offset: usize,
    },
    /// A report with no text.
    #[error("the report is empty")]
    EmptyText,
    /// A report over the length limit.
    #[error(
        "the report is {size} bytes, over the limit of {limit} bytes; is this really one report?"
    )]
    TextTooLong {
        /// Size found.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// No column or field holds the text.
    #[error(
        "no text column: looked for {wanted:?}, found {found:?}; name the column with --text-field"
    )]
    NoTextField {
        /// Names looked for.
        wanted: Vec<String>,
        /// Names present.
        found: Vec<String>,
    },
    /// No model for this kind of input.
    #[error("no {0} model is installed; add a bundle to the models folder")]
    NoModel(&'static str),
    /// Reading failed.
    #[error("cannot read: {0}")]
    Io(#[source] std::io::Error),
    /// The model failed on this input.
    #[error("inference failed: {0}")]
    Model(String),
    /// A FIFO, device or socket given as an input.
    #[error("it is a {0}, not a regular file or folder; only regular files and folders are read (copy the data into a file first)")]
    NotAFile(&'static str),
    /// A symbolic link whose target does not exist.
    #[error(
        "broken symbolic link: it points to {target}, which does not exist; fix or remove the link"
    )]
    BrokenLink {
        /// Where the link points.
        target: String,
    },
    /// A symbolic link back to a folder that contains it.
    #[error("symbolic link loop: it points back to {ancestor}, which is already being read; not followed again")]
    LinkLoop {
        /// The folder it points back to.
        ancestor: String,
    },
    /// The file ends before its format says it does.
    #[error("the file is truncated ({0}); copy it again from its source")]
    Truncated(String),
    /// Binary content in a file named as text.
    #[error("not text: {0}; is this file really a report?")]
    NotText(String),
    /// A CSV quote that never closes (it would swallow every row after it).
    #[error("a quoted field opens on line {line} and never closes, so the {swallowed} lines after it would merge into one report; close the quote (a quote inside a field is written twice: \"\") and analyse the file again")]
    UnclosedQuote {
        /// Line (1-based) where the quote opens.
        line: u64,
        /// Lines it would swallow.
        swallowed: u64,
    },
}

impl InputError {
    /// A short stable code for summaries and the database.
    pub fn code(&self) -> &'static str {
        match self {
            InputError::Empty => "empty",
            InputError::TooLarge { .. } => "too-large",
            InputError::Unsupported(_) => "unsupported",
            InputError::TooManyPixels { .. } => "too-many-pixels",
            InputError::Decode(_) => "corrupt",
            InputError::NotUtf8 { .. } => "not-utf8",
            InputError::EmptyText => "empty",
            InputError::TextTooLong { .. } => "too-long",
            InputError::NoTextField { .. } => "no-text-field",
            InputError::NoModel(_) => "no-model",
            InputError::Io(_) => "io",
            InputError::Model(_) => "model",
            InputError::NotAFile(_) => "not-a-file",
            InputError::BrokenLink { .. } => "broken-link",
            InputError::LinkLoop { .. } => "link-loop",
            InputError::Truncated(_) => "truncated",
            InputError::NotText(_) => "not-text",
            InputError::UnclosedQuote { .. } => "unclosed-quote",
        }
    }
}
