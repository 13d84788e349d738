//! Wire types shared by the agent and the server: what a piece of feedback looks like when
//! it leaves the agent, over HTTP or on a USB stick. Changing a field here is a protocol
//! change: bump [`PROTOCOL_VERSION`].

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
    /// What the item is.
    pub kind: ItemKind,
    /// Model whose prediction was answered.
    pub model_name: String,
    /// Its version.
    pub model_version: String,
    /// Whether the reviewer confirmed or corrected the prediction.
    pub action: Action,
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

crate::vocabulary! {
    /// What an item is (`kind`).
    pub enum ItemKind {
        /// A tile or photo.
        Image = "image",
        /// A report.
        Text = "text",
    }
}

crate::vocabulary! {
    /// What a reviewer did with a prediction (`action`).
    pub enum Action {
        /// The prediction was right.
        Confirm = "confirm",
        /// The reviewer gave other labels.
        Correct = "correct",
    }
}

impl FeedbackRecord {
    /// The embedding as f32.
    pub fn embedding(&self) -> Result<Vec<f32>, base64::DecodeError> {
        let bytes = crate::encoding::unb64(&self.embedding_f16)?;
        Ok(crate::encoding::embedding_from_f16(&bytes))
    }
}

pub use crate::encoding::b64;

/// Header carrying the protocol version on every request and response.
pub const HEADER_PROTOCOL: &str = "x-outpost-protocol";
/// Header naming the device that signed a request.
pub const HEADER_DEVICE: &str = "x-outpost-device";
/// Header with the request time (unix seconds, device clock corrected by the server offset).
pub const HEADER_TIMESTAMP: &str = "x-outpost-timestamp";
/// Header with a random nonce (hex), never reused within the replay window.
pub const HEADER_NONCE: &str = "x-outpost-nonce";
/// Header with the Ed25519 signature (base64) over [`signing_payload`].
pub const HEADER_SIGNATURE: &str = "x-outpost-signature";
/// Header on server responses with the server's clock (unix seconds), so an agent whose
/// clock is wrong can correct its timestamps.
pub const HEADER_SERVER_TIME: &str = "x-outpost-server-time";

/// The error message of a `403` that means "this device was revoked": the agent wipes its
/// item data per `retention.on_revoked` when it sees it.
pub const REVOKED_MESSAGE: &str = "this device has been revoked";
/// How far a request's timestamp may be from the server's clock, in seconds.
pub const REPLAY_WINDOW_SECS: i64 = 300;

/// The bytes a device signs: protocol tag, method, path, sha256 of the body, timestamp and
/// nonce, one per line. Signing the body's hash binds the signature to the exact bytes.
pub fn signing_payload(
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: i64,
    nonce: &str,
) -> Vec<u8> {
    format!(
        "outpost-v{PROTOCOL_VERSION}\n{}\n{path}\n{}\n{timestamp}\n{nonce}",
        method.to_ascii_uppercase(),
        crate::hash::sha256_hex(body)
    )
    .into_bytes()
}

/// `POST /v1/enroll`: a new device registers its public key with a one-time code.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The code `outpost-server devices add` printed.
    pub code: String,
    /// Ed25519 public key, base64.
    pub public_key: String,
}

/// The server's answer to an enrollment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The device's id, sent with every later request.
    pub device_id: String,
    /// The name the operator gave it.
    pub name: String,
    /// Its group.
    pub group: String,
    /// The device's key for sealed USB feedback files (base64, 32 bytes): see
    /// [`crate::store::usb`]. Absent from servers older than sealed exports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_key: Option<String>,
}

/// `POST /v1/feedback` body (zstd-compressed JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadBatch {
    /// Protocol version of the records.
    pub protocol: u32,
    /// The decisions.
    pub records: Vec<FeedbackRecord>,
}

/// A record the server would not store, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refused {
    /// Feedback id.
    pub feedback_id: String,
    /// Why.
    pub reason: String,
}

/// The server's acknowledgement of a batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UploadAck {
    /// Ids now stored on the server (new or already there): the agent may mark them synced.
    pub acked: Vec<String>,
    /// How many of them were already stored (a retried batch).
    pub duplicates: usize,
    /// Records refused for good; the agent keeps them and reports them.
    pub refused: Vec<Refused>,
}

/// Every error response's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do (for people; may change between versions).
    pub error: String,
    /// What went wrong, for programs: one of [`ErrorCode`]'s strings (`revoked`,
    /// `invalid_record`, ...). Absent from servers older than codes: fall back on `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The request field a `400` is about (`records[3].kind`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The feedback id of the record a `400` is about, when there is one: an agent keeps
    /// that record aside and sends the rest of its outbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback_id: Option<String>,
}

/// The machine-readable `code` of an API error (documented in `docs/openapi.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not what the endpoint takes (not zstd, not JSON, wrong shape).
    BadRequest,
    /// 400: a feedback record breaks the protocol; `field` and `feedback_id` say which.
    InvalidRecord,
    /// 401: not signed, unknown device, bad signature, or a timestamp outside the window.
    Unauthorized,
    /// 403: this device was revoked (the agent wipes per `retention.on_revoked`).
    Revoked,
    /// 403: a one-time enrollment code that is unknown, used or expired.
    BadEnrollmentCode,
    /// 403: not allowed from where the request came (`/metrics` from another machine).
    Forbidden,
    /// 404: no such metadata or file.
    NotFound,
    /// 408: the request headers or body did not arrive in time.
    Timeout,
    /// 409: a nonce seen before (a replay); send a new request.
    Replayed,
    /// 413: the body is larger than the endpoint takes.
    TooLarge,
    /// 416: a range past the end of a file.
    RangeNotSatisfiable,
    /// 426: another protocol version.
    ProtocolMismatch,
    /// 500: the server failed; its log says why.
    Internal,
}

impl ErrorCode {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidRecord => "invalid_record",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Revoked => "revoked",
            ErrorCode::BadEnrollmentCode => "bad_enrollment_code",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Replayed => "replayed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RangeNotSatisfiable => "range_not_satisfiable",
            ErrorCode::ProtocolMismatch => "protocol_mismatch",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Drift summaries an agent sends (`POST /v1/drift`, signed, zstd): its windows since the
/// last acknowledged one, each with the agent's window id (stored once per device).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriftUpload {
    /// Protocol version.
    pub protocol: u32,
    /// (agent window id, window), oldest first.
    pub windows: Vec<(i64, DriftWindow)>,
}

/// The server's answer to a drift upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriftAck {
    /// The highest window id now stored for the device.
    pub up_to: i64,
    /// Windows that were new.
    pub stored: usize,
}

/// `POST /v1/device/models` (signed, JSON): which model versions a device runs, and the
/// updates it refused or rolled back since its last report. The server answers a
/// [`DeviceStatus`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceModelsReport {
    /// One entry per installed model.
    pub models: Vec<DeviceModel>,
    /// Updates refused or rolled back, not yet reported.
    pub failures: Vec<ModelFailure>,
    /// Feedback decided on the device and not yet acknowledged by the server (its outbox),
    /// so the operators' dashboard can show what is still in the field. Absent from older
    /// agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_feedback: Option<i64>,
    /// A fresh random value (hex) the server must echo in its signed
    /// [`DeviceAssignment`], so an answer cannot be replayed from another exchange.
    /// Absent from older agents (their answer carries no signed assignment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
}

/// A model as a device runs it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceModel {
    /// Model name.
    pub model: String,
    /// The version serving now, if any.
    pub active_version: Option<String>,
    /// The version an operator pinned on the device, if any.
    pub pinned: Option<String>,
    /// Every version on disk.
    pub installed: Vec<String>,
}

/// An update a device refused, or a version it rolled back from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelFailure {
    /// Model name (empty when the metadata itself was refused).
    pub model: String,
    /// The version concerned, if known.
    pub version: Option<String>,
    /// `refused` (never installed) or `rolled_back` (installed, then undone).
    pub kind: String,
    /// Why, as the agent said it.
    pub reason: String,
    /// When, on the device's clock (RFC 3339).
    pub at: String,
}

/// The server's answer to a [`DeviceModelsReport`]: what the device needs to pick its release.
///
/// `device_id` and `group` are plain JSON that anyone on the path can rewrite: the agent
/// never targets by them. It takes its group only from `assignment`, verified against the
/// trusted root (see [`DeviceAssignment`]), and its device id from its own enrollment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// The device id (informative).
    pub device_id: String,
    /// Its group (informative).
    pub group: String,
    /// The same facts signed by the server, bound to the report's challenge. Absent when
    /// the report had no challenge or the server holds no timestamp key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<crate::trust::Signed<DeviceAssignment>>,
}

/// The `_type` of a [`DeviceAssignment`].
pub const DEVICE_ASSIGNMENT_TYPE: &str = "device-assignment";
/// How long a signed assignment is meant to be used (informative: freshness comes from
/// the challenge, which the agent draws at random for each report).
pub const DEVICE_ASSIGNMENT_SECS: i64 = 300;

/// Which group a device is in, as the server signs it in answer to one device report.
///
/// Signed with the server's online **timestamp** key (the role root lists for short-lived,
/// online statements; every serving process already holds it to re-sign the timestamp), in
/// the metadata form `{"signed": {...}, "signatures": [...]}`. Its own `_type` keeps it
/// from ever passing for timestamp metadata, and it names the device and echoes the
/// agent's random challenge, so it is good for that device and that exchange only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceAssignment {
    /// Always [`DEVICE_ASSIGNMENT_TYPE`].
    #[serde(rename = "_type")]
    pub type_: String,
    /// The device the assignment is for.
    pub device_id: String,
    /// Its group.
    pub group: String,
    /// The challenge of the report this answers.
    pub challenge: String,
    /// When the server signed it (unix seconds, server clock).
    pub issued_at: u64,
    /// Informative expiry (RFC 3339).
    pub expires: String,
}

impl crate::trust::Role for DeviceAssignment {
    const NAME: &'static str = DEVICE_ASSIGNMENT_TYPE;
    fn type_(&self) -> &str {
        &self.type_
    }
    fn version(&self) -> u64 {
        self.issued_at
    }
    fn expires(&self) -> &str {
        &self.expires
    }
}

/// Whether `s` is an acceptable report challenge: 32 to 128 lower-case hex characters.
pub fn valid_challenge(s: &str) -> bool {
    (32..=128).contains(&s.len()) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A window's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftState {
    /// Looks like the training data.
    Ok,
    /// More unfamiliar items than chance explains.
    Watch,
    /// Mostly unfamiliar: do not trust the labels without review.
    Drifted,
}

impl DriftState {
    /// The spelling in SQL, JSON and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftState::Ok => "ok",
            DriftState::Watch => "watch",
            DriftState::Drifted => "drifted",
        }
    }
    /// Parses [`DriftState::as_str`].
    pub fn parse(s: &str) -> DriftState {
        match s {
            "drifted" => DriftState::Drifted,
            "watch" => DriftState::Watch,
            _ => DriftState::Ok,
        }
    }
}

/// One window of predictions, as stored and as sent to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftWindow {
    /// Model.
    pub model_name: String,
    /// Model version.
    pub model_version: String,
    /// Items in the window.
    pub items: usize,
    /// Items above the novelty threshold.
    pub novel: usize,
    /// The drift score: `novel / items`.
    pub score: f64,
    /// Verdict.
    pub state: DriftState,
    /// PSI of the top-score histogram against the reference.
    pub top_score_psi: Option<f64>,
    /// PSI of the predicted-label mix against the reference (single-label models).
    pub label_psi: Option<f64>,
    /// Likely cause: the labels the novel items were given, most frequent first.
    pub novel_labels: Vec<(String, usize)>,
    /// Likely cause: the source folders of the novel items, most frequent first.
    pub novel_folders: Vec<(String, usize)>,
    /// First prediction (analysis time).
    pub started_at: String,
    /// Last prediction.
    pub ended_at: String,
    /// The window broken down by the language of its items (reports; tiles have none),
    /// most items first. Absent from agents older than this field.
    #[serde(default)]
    pub languages: Vec<LanguageDrift>,
}

/// Most languages a drift window may list (the agent lists every language it saw; a window
/// of 50 reports rarely holds more than a handful).
pub const MAX_DRIFT_LANGUAGES: usize = 64;

/// One language's share of a drift window: how many of its items were in that language and
/// how many of those were unfamiliar. `language` is the ISO 639-3 code of
/// `crate::language`, or [`LanguageDrift::UNKNOWN`] for items without a detected language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanguageDrift {
    /// ISO 639-3 code, or `unknown`.
    pub language: String,
    /// Items of the window in this language.
    pub items: usize,
    /// Of those, items above the novelty threshold.
    pub novel: usize,
}

impl LanguageDrift {
    /// The `language` of items whose language was not detected (tiles, very short text).
    pub const UNKNOWN: &'static str = "unknown";
}

impl DriftWindow {
    /// Checks the per-language breakdown of a window received from another device: at most
    /// [`MAX_DRIFT_LANGUAGES`] entries, codes of 2-16 lower-case ASCII letters, each
    /// language's novel items within its items, and no more items than the window has.
    pub fn check_languages(&self) -> Result<(), String> {
        if self.languages.len() > MAX_DRIFT_LANGUAGES {
            return Err(format!(
                "a drift window lists {} languages (at most {MAX_DRIFT_LANGUAGES})",
                self.languages.len()
            ));
        }
        let mut total = 0usize;
        for l in &self.languages {
            let c = &l.language;
            if !(2..=16).contains(&c.len()) || !c.bytes().all(|b| b.is_ascii_lowercase()) {
                return Err(format!(
                    "drift window language {c:?} is not 2-16 lower-case letters"
                ));
            }
            if l.novel > l.items {
                return Err(format!(
                    "drift window language {c}: {} unfamiliar of {} items",
                    l.novel, l.items
                ));
            }
            total = total.saturating_add(l.items);
        }
        if total > self.items {
            return Err(format!(
                "drift window languages add up to {total} items, the window has {}",
                self.items
            ));
        }
        Ok(())
    }
}
