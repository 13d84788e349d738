//! Checking feedback from the field before anything is stored.
//!
//! A batch is parsed into the wire types (so a wrong type or an unknown `kind` or `action`
//! is refused with the path of the field, `records[3].kind`), then every record is held to
//! the protocol: ids are UUIDs, hashes are hex, names and versions are what a bundle may
//! carry, timestamps are RFC 3339, and every string and list is bounded. A batch with one
//! bad record is refused whole with a `400` naming the field and the record's feedback id
//! (the agent sets that record aside and sends the rest), so nothing invalid reaches the
//! store. The bounds are generous multiples of what an agent writes; they exist so that a
//! careless or hostile sender cannot fill the database.

use crate::protocol::{FeedbackRecord, UploadBatch};
use base64::Engine;

/// Most records in one batch (an agent sends 200).
pub const MAX_RECORDS: usize = 1000;
/// Most labels on one decision (`labels`; `new_labels` is a subset).
pub const MAX_LABELS: usize = 64;
/// Longest label, model name, annotator or content type, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Largest embedding after base64 decoding (4,096 float16 values).
pub const MAX_EMBEDDING_BYTES: usize = 8192;
/// Largest raw item (`content`) after base64 decoding.
pub const MAX_CONTENT_BYTES: usize = 4 << 20;

/// A record (or the batch) that breaks the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    /// The field's path in the batch, e.g. `records[3].kind`.
    pub field: String,
    /// What is wrong with it and what is expected.
    pub problem: String,
    /// The record's feedback id, when the record could be read that far.
    pub feedback_id: Option<String>,
}

/// Parses a decompressed batch into wire types; a type error names the field.
pub fn parse_batch(raw: &[u8]) -> Result<UploadBatch, Invalid> {
    let de = &mut serde_json::Deserializer::from_slice(raw);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let problem = e.inner().to_string();
        let feedback_id = record_index(&field).and_then(|i| feedback_id_at(raw, i));
        Invalid {
            field: if field == "." { "body".into() } else { field },
            problem,
            feedback_id,
        }
    })
}

/// `3` from `records[3].kind`.
fn record_index(path: &str) -> Option<usize> {
    path.strip_prefix("records[")?
        .split(']')
        .next()?
        .parse()
        .ok()
}

/// The feedback id of record `i` of a batch that did not parse into wire types, if that
/// much of it is readable (so the agent can set that one record aside).
fn feedback_id_at(raw: &[u8], i: usize) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(raw).ok()?;
    let id = v.get("records")?.get(i)?.get("feedback_id")?.as_str()?;
    uuid::Uuid::parse_str(id).ok().map(|_| id.to_string())
}

/// Checks every record of a batch; the first problem found is returned.
pub fn check_batch(batch: &UploadBatch) -> Result<(), Invalid> {
    if batch.records.len() > MAX_RECORDS {
        return Err(Invalid {
            field: "records".into(),
            problem: format!(
                "{} records; at most {MAX_RECORDS} per batch",
                batch.records.len()
            ),
            feedback_id: None,
        });
    }
    for (i, r) in batch.records.iter().enumerate() {
        check_record(r).map_err(|(field, problem)| Invalid {
            field: format!("records[{i}].{field}"),
            problem,
            feedback_id: Some(r.feedback_id.clone()).filter(|id| id.len() <= 64),
        })?;
    }
    Ok(())
}

/// Checks that every record answering a model version the server published gives only
/// that version's labels, or labels it flags as new (`new_labels`): a typo or a foreign
/// label set never enters training as a silent new class. `labels_of(model, version)` is
/// the label set of a published release, `None` for a version the server did not publish
/// (a bundle shipped with the agent, say), which is then held to the structural rules only.
pub fn check_known_labels(
    batch: &UploadBatch,
    labels_of: &mut dyn FnMut(&str, &str) -> Option<Vec<String>>,
) -> Result<(), Invalid> {
    for (i, r) in batch.records.iter().enumerate() {
        let Some(known) = labels_of(&r.model_name, &r.model_version) else {
            continue;
        };
        if let Some(problem) = unknown_label(r, &known) {
            return Err(Invalid {
                field: format!("records[{i}].labels"),
                problem,
                feedback_id: Some(r.feedback_id.clone()),
            });
        }
    }
    Ok(())
}

/// The problem with the first label of `r` that is neither in `known` nor flagged new.
fn unknown_label(r: &FeedbackRecord, known: &[String]) -> Option<String> {
    let l = r
        .labels
        .iter()
        .find(|l| !known.contains(l) && !r.new_labels.contains(l))?;
    Some(format!(
        "{:?} is not a label of {} {} and is not flagged in new_labels",
        clip(l),
        r.model_name,
        r.model_version
    ))
}

/// [`split_valid`]'s second pass for a carried file: records whose labels do not fit the
/// published release they answer are refused one by one, naming the label.
pub fn split_known_labels(
    records: Vec<FeedbackRecord>,
    labels_of: &mut dyn FnMut(&str, &str) -> Option<Vec<String>>,
) -> (Vec<FeedbackRecord>, Vec<crate::protocol::Refused>) {
    let mut refused = Vec::new();
    let mut valid = Vec::new();
    for r in records {
        match labels_of(&r.model_name, &r.model_version).and_then(|k| unknown_label(&r, &k)) {
            Some(problem) => refused.push(crate::protocol::Refused {
                feedback_id: r.feedback_id.chars().take(64).collect(),
                reason: format!("labels: {problem}"),
            }),
            None => valid.push(r),
        }
    }
    (valid, refused)
}

/// The label sets of the releases published in a repository's blob store, read once per
/// model version asked for (from the signed targets and each release's manifest).
pub struct PublishedLabels<'a> {
    blobs: &'a crate::server::repository::blob::BlobStore,
    targets: Option<Option<crate::trust::Targets>>,
    seen: std::collections::HashMap<(String, String), Option<Vec<String>>>,
}

impl<'a> PublishedLabels<'a> {
    /// Reads from `blobs` (nothing is read until a version is asked for).
    pub fn new(blobs: &'a crate::server::repository::blob::BlobStore) -> PublishedLabels<'a> {
        PublishedLabels {
            blobs,
            targets: None,
            seen: Default::default(),
        }
    }

    /// The labels of `model` `version` if the server published it (`None` otherwise, or if
    /// the repository cannot be read: logged, and the record is held to the structural
    /// rules only rather than refused for the server's own trouble).
    pub fn labels_of(&mut self, model: &str, version: &str) -> Option<Vec<String>> {
        let key = (model.to_string(), version.to_string());
        if let Some(v) = self.seen.get(&key) {
            return v.clone();
        }
        let found = self.read(model, version);
        self.seen.insert(key, found.clone());
        found
    }

    fn read(&mut self, model: &str, version: &str) -> Option<Vec<String>> {
        let blobs = self.blobs;
        let targets = self.targets.get_or_insert_with(|| {
            match blobs.get("metadata/targets.json") {
                Ok(Some(b)) => crate::trust::parse::<crate::trust::Targets>(&b)
                    .map(|t| t.signed)
                    .map_err(|e| tracing::warn!(error = %e, "targets metadata unreadable; labels not checked"))
                    .ok(),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "repository unreadable; labels not checked");
                    None
                }
            }
        });
        let release = targets
            .as_ref()?
            .releases
            .iter()
            .find(|r| r.model == model && r.version == version)?;
        let target = release.files.get("manifest.json")?;
        let bytes = blobs.get(&format!("targets/{target}")).ok()??;
        let m: crate::model::Manifest = serde_json::from_slice(&bytes).ok()?;
        Some(m.labels)
    }
}

/// A carried file's records split into those that pass [`check_record`] and refusals
/// naming the field of the others (a USB file is imported once, so a bad record is refused
/// alone rather than the whole file).
pub fn split_valid(
    records: Vec<FeedbackRecord>,
) -> (Vec<FeedbackRecord>, Vec<crate::protocol::Refused>) {
    let mut refused = Vec::new();
    let valid = records
        .into_iter()
        .filter(|r| match check_record(r) {
            Ok(()) => true,
            Err((field, problem)) => {
                refused.push(crate::protocol::Refused {
                    feedback_id: r.feedback_id.chars().take(64).collect(),
                    reason: format!("{field}: {problem}"),
                });
                false
            }
        })
        .collect();
    (valid, refused)
}

type Problem = (&'static str, String);

/// Checks one record against the protocol: `Err((field, problem))`.
pub fn check_record(r: &FeedbackRecord) -> Result<(), Problem> {
    uuid_field("feedback_id", &r.feedback_id)?;
    if let Some(s) = &r.supersedes {
        uuid_field("supersedes", s)?;
        if s == &r.feedback_id {
            return Err(("supersedes", "a decision cannot supersede itself".into()));
        }
    }
    if r.item_id.len() != 64 || !r.item_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err((
            "item_id",
            "must be a sha256 content hash (64 hex digits)".into(),
        ));
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= MAX_NAME_BYTES
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !name_ok(&r.model_name) {
        return Err((
            "model_name",
            format!("must be 1 to {MAX_NAME_BYTES} lower-case letters, digits and '-'"),
        ));
    }
    if r.model_version.len() > 32
        || crate::model::manifest::parse_version(&r.model_version).is_none()
    {
        return Err((
            "model_version",
            "must be a semantic version MAJOR.MINOR.PATCH".into(),
        ));
    }
    check_labels(r)?;
    text_field("annotator", &r.annotator, false)?;
    if time::OffsetDateTime::parse(
        &r.created_at,
        &time::format_description::well_known::Rfc3339,
    )
    .is_err()
    {
        return Err((
            "created_at",
            format!(
                "{:?} is not an RFC 3339 time (2026-01-31T12:00:00Z)",
                clip(&r.created_at)
            ),
        ));
    }
    check_payload(r)
}

fn check_labels(r: &FeedbackRecord) -> Result<(), Problem> {
    if r.labels.is_empty() || r.labels.len() > MAX_LABELS {
        return Err((
            "labels",
            format!(
                "{} labels; a decision gives 1 to {MAX_LABELS}",
                r.labels.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for l in &r.labels {
        text_field("labels", l, true)?;
        if !seen.insert(l.as_str()) {
            return Err(("labels", format!("{:?} is given twice", clip(l))));
        }
    }
    if r.new_labels.len() > r.labels.len() {
        return Err(("new_labels", "lists more labels than `labels`".into()));
    }
    if let Some(l) = r.new_labels.iter().find(|l| !seen.contains(l.as_str())) {
        return Err((
            "new_labels",
            format!(
                "{:?} is not among the decision's labels: new labels are flagged, not added",
                clip(l)
            ),
        ));
    }
    Ok(())
}

fn check_payload(r: &FeedbackRecord) -> Result<(), Problem> {
    let b64 = base64::engine::general_purpose::STANDARD;
    // The base64 text is at most 4/3 of the bytes (+ padding): check that before decoding.
    if r.embedding_f16.len() > MAX_EMBEDDING_BYTES / 3 * 4 + 4 {
        return Err((
            "embedding_f16",
            format!("larger than {MAX_EMBEDDING_BYTES} bytes"),
        ));
    }
    match b64.decode(&r.embedding_f16) {
        Ok(e) if !e.is_empty() && e.len() % 2 == 0 && e.len() <= MAX_EMBEDDING_BYTES => {}
        Ok(_) => {
            return Err((
                "embedding_f16",
                format!("must be 1 to {} float16 values", MAX_EMBEDDING_BYTES / 2),
            ))
        }
        Err(_) => return Err(("embedding_f16", "is not base64".into())),
    }
    if let Some(c) = &r.content {
        if c.len() > MAX_CONTENT_BYTES / 3 * 4 + 4 {
            return Err(("content", format!("larger than {MAX_CONTENT_BYTES} bytes")));
        }
        if b64.decode(c).is_err() {
            return Err(("content", "is not base64".into()));
        }
        let Some(t) = &r.content_type else {
            return Err(("content_type", "is needed when content is sent".into()));
        };
        let mime_ok = t.len() <= MAX_NAME_BYTES
            && t.split_once('/').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && t.bytes().all(|c| c.is_ascii_graphic() || c == b' ')
            });
        if !mime_ok {
            return Err((
                "content_type",
                "must be a MIME type such as image/png".into(),
            ));
        }
    } else if let Some(t) = &r.content_type {
        text_field("content_type", t, false)?;
    }
    Ok(())
}

fn uuid_field(field: &'static str, v: &str) -> Result<(), Problem> {
    if v.len() > 36 || uuid::Uuid::parse_str(v).is_err() {
        return Err((field, format!("{:?} is not a UUID", clip(v))));
    }
    Ok(())
}

/// Free text: bounded, no control characters; `nonempty` if it may not be blank.
fn text_field(field: &'static str, v: &str, nonempty: bool) -> Result<(), Problem> {
    if v.len() > MAX_NAME_BYTES {
        return Err((
            field,
            format!("{} bytes; at most {MAX_NAME_BYTES}", v.len()),
        ));
    }
    if nonempty && v.trim().is_empty() {
        return Err((field, "is empty".into()));
    }
    if v.chars().any(char::is_control) {
        return Err((field, "contains control characters".into()));
    }
    Ok(())
}

/// The start of a long value, for an error message.
fn clip(v: &str) -> String {
    v.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Action, ItemKind};

    fn good() -> FeedbackRecord {
        FeedbackRecord {
            feedback_id: "6c1f6f7e-3f3b-4a8e-9a51-0d7f3c0f2b11".into(),
            item_id: "a".repeat(64),
            kind: ItemKind::Image,
            model_name: "land-cover".into(),
            model_version: "1.2.0".into(),
            action: Action::Correct,
            labels: vec!["flooded".into(), "road".into()],
            new_labels: vec!["road".into()],
            annotator: "amina".into(),
            created_at: "2026-11-30T10:00:00Z".into(),
            supersedes: None,
            embedding_f16: crate::protocol::b64(&[0u8; 8]),
            content: Some(crate::protocol::b64(b"png")),
            content_type: Some("image/png".into()),
        }
    }

    #[test]
    fn a_record_an_agent_writes_passes() {
        assert_eq!(check_record(&good()), Ok(()));
        let mut r = good();
        r.content = None;
        r.content_type = None;
        r.supersedes = Some("0c1f6f7e-3f3b-4a8e-9a51-0d7f3c0f2b11".into());
        assert_eq!(check_record(&r), Ok(()));
    }

    #[test]
    fn a_type_error_names_the_field_path() {
        let e = parse_batch(br#"{"protocol":1,"records":[{"feedback_id":"x","kind":"video"}]}"#)
            .unwrap_err();
        assert_eq!(e.field, "records[0].kind", "{e}");
    }
}
