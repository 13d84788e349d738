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
//!
//! **Sealed files** (`outpost-feedback 2`): the records are item data (embeddings, labels,
//! sometimes report text), and a USB stick is easy to lose, so an enrolled agent seals the
//! body with ChaCha20-Poly1305 (`ring`) under its **export key**: a key the server gave it at
//! enrollment, HMAC-SHA256 of a server secret and the device id, so the server can derive it
//! again from the file's `device_id` and nobody else can. The body is then one base64 line;
//! the header (cleartext: counts, device, time) is bound to it as associated data.

use crate::protocol::FeedbackRecord;
use serde::{Deserialize, Serialize};
use std::path::Path;

const MAGIC: &str = "outpost-feedback 1";
const MAGIC_SEALED: &str = "outpost-feedback 2";

/// A device's key for sealed feedback files (32 bytes).
#[derive(Clone)]
pub struct ExportKey(pub [u8; 32]);

impl std::fmt::Debug for ExportKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExportKey(..)")
    }
}

impl ExportKey {
    /// The export key of `device_id` under the server's secret (HMAC-SHA256).
    pub fn derive(server_secret: &[u8], device_id: &str) -> ExportKey {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, server_secret);
        let tag = ring::hmac::sign(
            &k,
            format!("outpost feedback export 1|{device_id}").as_bytes(),
        );
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        ExportKey(out)
    }

    fn aead(&self) -> ring::aead::LessSafeKey {
        ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &self.0)
                .expect("32-byte key"),
        )
    }
}

/// What the sealing binds the body to: the header's cleartext fields.
fn sealed_aad(h: &UsbHeader) -> Vec<u8> {
    format!(
        "{MAGIC_SEALED}|{}|{}|{}|{}",
        h.records,
        h.created_at,
        h.protocol,
        h.device_id.as_deref().unwrap_or("")
    )
    .into_bytes()
}

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
    /// Sealed files: the AEAD nonce (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
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
    /// A sealed file this reader has no key for, or whose seal does not open.
    #[error("{path} is sealed for {device}, and {why}; nothing was imported")]
    Sealed {
        /// The file.
        path: String,
        /// The device named in it.
        device: String,
        /// Why it cannot be opened.
        why: String,
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

/// Writes records to `path` (atomically: a temporary file, synced, then renamed), sealed
/// under `key` when one is given.
pub fn write(
    path: &Path,
    records: &[FeedbackRecord],
    device_id: Option<String>,
    key: Option<&ExportKey>,
) -> Result<UsbHeader, UsbFileError> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let io = |source| UsbFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut body = String::new();
    for r in records {
        body.push_str(&serde_json::to_string(r).map_err(|e| io(std::io::Error::other(e)))?);
        body.push('\n');
    }
    let mut header = UsbHeader {
        records: records.len(),
        sha256: String::new(),
        created_at: super::now(),
        protocol: crate::protocol::PROTOCOL_VERSION,
        device_id,
        nonce: None,
    };
    let magic = match key {
        Some(key) => {
            let mut nonce = [0u8; 12];
            ring::rand::SystemRandom::new()
                .fill(&mut nonce)
                .map_err(|_| io(std::io::Error::other("no system randomness")))?;
            header.nonce = Some(base64::engine::general_purpose::STANDARD.encode(nonce));
            let mut buf = std::mem::take(&mut body).into_bytes();
            key.aead()
                .seal_in_place_append_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::from(sealed_aad(&header)),
                    &mut buf,
                )
                .map_err(|_| io(std::io::Error::other("sealing failed")))?;
            body = base64::engine::general_purpose::STANDARD.encode(&buf);
            body.push('\n');
            MAGIC_SEALED
        }
        None => MAGIC,
    };
    header.sha256 = crate::hash::sha256_hex(body.as_bytes());
    let text = format!(
        "{magic}\n{}\n{body}",
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

/// Reads and checks a USB file that is not sealed (a sealed one is refused: use
/// [`read_with`]).
pub fn read(path: &Path) -> Result<(UsbHeader, Vec<FeedbackRecord>), UsbFileError> {
    read_with(path, &|_| None)
}

/// Reads and checks a USB file; a sealed one is opened with `key_for(device_id)`.
pub fn read_with(
    path: &Path,
    key_for: &dyn Fn(&str) -> Option<ExportKey>,
) -> Result<(UsbHeader, Vec<FeedbackRecord>), UsbFileError> {
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
    let (sealed, rest) = match (
        text.strip_prefix(MAGIC).and_then(|r| r.strip_prefix('\n')),
        text.strip_prefix(MAGIC_SEALED)
            .and_then(|r| r.strip_prefix('\n')),
    ) {
        (Some(rest), _) => (false, rest),
        (None, Some(rest)) => (true, rest),
        (None, None) => return Err(UsbFileError::NotFeedback(p)),
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
    let opened: String;
    let body = if sealed {
        opened = open_sealed(&p, &header, body, key_for)?;
        opened.as_str()
    } else {
        body
    };
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

/// The body of a sealed file, opened with the export key of the device it names.
fn open_sealed(
    p: &str,
    header: &UsbHeader,
    body: &str,
    key_for: &dyn Fn(&str) -> Option<ExportKey>,
) -> Result<String, UsbFileError> {
    use base64::Engine;
    let damaged = |what: String| UsbFileError::Damaged {
        path: p.to_string(),
        what,
    };
    let device = header.device_id.clone().unwrap_or_default();
    let sealed_err = |why: &str| UsbFileError::Sealed {
        path: p.to_string(),
        device: device.clone(),
        why: why.into(),
    };
    let key = key_for(&device).ok_or_else(|| {
        sealed_err("this server does not know that device (import it on the server the device enrolled with)")
    })?;
    let nonce: [u8; 12] = header
        .nonce
        .as_deref()
        .and_then(|n| base64::engine::general_purpose::STANDARD.decode(n).ok())
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| damaged("no nonce in a sealed file".into()))?;
    let mut buf = base64::engine::general_purpose::STANDARD
        .decode(body.trim_end())
        .map_err(|_| damaged("the sealed body is not base64".into()))?;
    let plain = key
        .aead()
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(sealed_aad(header)),
            &mut buf,
        )
        .map_err(|_| sealed_err("its seal does not open with that device's export key (was it altered, or written for another server?)"))?;
    String::from_utf8(plain.to_vec()).map_err(|_| damaged("the sealed body is not UTF-8".into()))
}
