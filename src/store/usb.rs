//! The outbox on a USB stick: when there is no network at all, `outpost feedback export`
//! writes every pending decision to one file that staff carry to headquarters, where the
//! server imports it (exactly once, however often the same file or an overlapping one is
//! carried: records are keyed by their feedback id).
//!
//! Format (text, so it survives any file system and can be inspected):
//!
//! ```text
//! outpost-feedback 1                       <- magic and format version
//! {"records":N,"sha256":"...","created_at":"...","annotators":[...]}   <- header
//! {"feedback_id":...}                      <- N records, one JSON object per line
//! ```
//!
//! `sha256` covers every byte after the header line, so a damaged or truncated file is
//! detected before anything is imported.

use crate::protocol::FeedbackRecord;
use serde::{Deserialize, Serialize};
use std::path::Path;

const MAGIC: &str = "outpost-feedback 1";

/// The header line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsbHeader {
    /// Number of records.
    pub records: usize,
    /// sha256 of the body.
    pub sha256: String,
    /// When the file was written.
    pub created_at: String,
    /// Protocol version of the records.
    pub protocol: u32,
    /// The enrolled device that wrote the file, if it is enrolled.
    #[serde(default)]
    pub device_id: Option<String>,
}

/// Why a USB file was refused.
#[derive(Debug, thiserror::Error)]
pub enum UsbFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Not an outpost feedback file.
    #[error("{0} is not an Outpost feedback file (it does not start with \"{MAGIC}\")")]
    NotFeedback(String),
    /// Damaged.
    #[error("{path} is damaged: {what}. Export it again from the agent; nothing was imported")]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
}

/// Writes records to `path` (atomically: a temporary file, synced, then renamed).
pub fn write(
    path: &Path,
    records: &[FeedbackRecord],
    device_id: Option<String>,
) -> Result<UsbHeader, UsbFileError> {
    let io = |source| UsbFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut body = String::new();
    for r in records {
        body.push_str(&serde_json::to_string(r).map_err(|e| io(std::io::Error::other(e)))?);
        body.push('\n');
    }
    let header = UsbHeader {
        records: records.len(),
        sha256: crate::hash::sha256_hex(body.as_bytes()),
        created_at: super::now(),
        protocol: crate::protocol::PROTOCOL_VERSION,
        device_id,
    };
    let text = format!(
        "{MAGIC}\n{}\n{body}",
        serde_json::to_string(&header).map_err(|e| io(std::io::Error::other(e)))?
    );
    let tmp = path.with_extension("partial");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(header)
}

/// Reads and checks a USB file.
pub fn read(path: &Path) -> Result<(UsbHeader, Vec<FeedbackRecord>), UsbFileError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| UsbFileError::Io {
        path: p.clone(),
        source,
    })?;
    let damaged = |what: String| UsbFileError::Damaged {
        path: p.clone(),
        what,
    };
    let text = String::from_utf8(bytes).map_err(|_| damaged("not valid UTF-8".into()))?;
    let Some(rest) = text.strip_prefix(MAGIC).and_then(|r| r.strip_prefix('\n')) else {
        return Err(UsbFileError::NotFeedback(p));
    };
    let (header_line, body) = rest
        .split_once('\n')
        .ok_or_else(|| damaged("no header line".into()))?;
    let header: UsbHeader = serde_json::from_str(header_line)
        .map_err(|e| damaged(format!("unreadable header ({e})")))?;
    let sha = crate::hash::sha256_hex(body.as_bytes());
    if sha != header.sha256 {
        return Err(damaged(format!(
            "checksum mismatch (header says {}, content is {sha})",
            header.sha256
        )));
    }
    let mut records = Vec::with_capacity(header.records);
    for (i, line) in body.lines().enumerate() {
        let r: FeedbackRecord =
            serde_json::from_str(line).map_err(|e| damaged(format!("record {}: {e}", i + 1)))?;
        records.push(r);
    }
    if records.len() != header.records {
        return Err(damaged(format!(
            "{} records, header says {}",
            records.len(),
            header.records
        )));
    }
    Ok((header, records))
}
