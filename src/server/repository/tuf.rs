//! The repository in TUF 1.0's format, signed with the same role keys, beside the
//! repository's own format (which today's agents read).
//!
//! What and why: operators and auditors can point python-tuf's `ngclient`, or any TUF
//! client, at `GET /v1/tuf/metadata/` and `GET /v1/tuf/targets/` and check every claim
//! the server makes. Each time the server signs its own root, targets, snapshot or
//! timestamp, it signs the same version in TUF's JSON with the same Ed25519 key (key ids
//! per the specification: sha256 of the canonical key), under the blob prefix `tuf/`:
//!
//! ```text
//! tuf/N.root.json, tuf/root.json     every root version (root.json: the newest)
//! tuf/N.targets.json                 releases in targets `custom` (see trust::releases)
//! tuf/N.snapshot.json                pins targets.json: version, length, sha256
//! tuf/timestamp.json                 pins snapshot.json: version, length, sha256
//! ```
//!
//! Consistent snapshots are on, so clients fetch `N.<role>.json` and target files by
//! content (`models/<model>/<version>/<sha256>.<file>`, served from `targets/sha256/`).
//! A repository initialised before this format has no TUF root until its root keys sign
//! one (the next `keys rotate`); until then nothing is written here.

use super::blob::BlobError;
use super::{PublishError, Repository};
use crate::trust::tuf::keys::Key;
use crate::trust::tuf::metadata::format_expires;
use crate::trust::tuf::sign::{sign, Ed25519Signer};
use crate::trust::{Root, SigningKey, Targets};
use base64::Engine;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The blob prefix of the TUF repository.
pub const PREFIX: &str = "tuf";

/// The `spec_version` written (python-tuf 7 writes the same).
pub const SPEC_VERSION: &str = "1.0.31";

/// The versions and expiry of one signed chain, as the repository's own format has them.
pub(super) struct Chain<'a> {
    /// Targets as signed (releases, files).
    pub targets: &'a Targets,
    /// Snapshot version.
    pub snapshot_version: u64,
    /// Timestamp version.
    pub timestamp_version: u64,
}

fn key_of(k: &SigningKey) -> Result<Ed25519Signer, PublishError> {
    Ed25519Signer::from_pkcs8(k.pkcs8())
        .ok_or_else(|| PublishError::Keys("a signing key is not an Ed25519 key".into()))
}

fn tuf_expires(rfc3339: &str) -> String {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(format_expires)
        .unwrap_or_else(|_| format_expires(time::OffsetDateTime::now_utc()))
}

fn expires_in(days: i64) -> String {
    format_expires(time::OffsetDateTime::now_utc() + time::Duration::days(days))
}

fn signed_bytes(signed: &Value, signers: &[&Ed25519Signer]) -> Result<Vec<u8>, PublishError> {
    sign(signed, signers).map_err(|e| PublishError::Metadata {
        name: "TUF metadata".into(),
        reason: e.to_string(),
    })
}

fn put(repo: &Repository, name: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
    repo.blobs.put(&format!("{PREFIX}/{name}"), bytes)
}

/// The TUF root's `signed` of the repository's root: the same keys (hex, TUF key ids),
/// roles, thresholds, version and expiry, with consistent snapshots.
pub fn root_signed(root: &Root) -> Value {
    let mut ids: BTreeMap<&str, String> = BTreeMap::new();
    let mut keys = Map::new();
    for (old_id, pk) in &root.keys {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(&pk.public) else {
            continue;
        };
        let key = Key::ed25519(&raw);
        ids.insert(old_id, key.key_id());
        keys.insert(key.key_id(), key.to_value());
    }
    let roles: Map<String, Value> = root
        .roles
        .iter()
        .map(|(name, r)| {
            let keyids: Vec<&String> = r
                .keyids
                .iter()
                .filter_map(|id| ids.get(id.as_str()))
                .collect();
            (
                name.clone(),
                json!({"keyids": keyids, "threshold": r.threshold.max(1)}),
            )
        })
        .collect();
    json!({
        "_type": "root",
        "spec_version": SPEC_VERSION,
        "version": root.version,
        "expires": tuf_expires(&root.expires),
        "consistent_snapshot": true,
        "keys": keys,
        "roles": roles,
    })
}

/// Writes TUF root `root.version` signed by `signers` (the root keys that signed the
/// repository's own root of that version): `tuf/N.root.json` and `tuf/root.json`.
pub(super) fn write_root(
    repo: &Repository,
    root: &Root,
    signers: &[&SigningKey],
) -> Result<(), PublishError> {
    let keys = signers
        .iter()
        .map(|k| key_of(k))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&Ed25519Signer> = keys.iter().collect();
    let bytes = signed_bytes(&root_signed(root), &refs)?;
    put(repo, &format!("{}.root.json", root.version), bytes.clone())?;
    put(repo, "root.json", bytes)?;
    Ok(())
}

/// Whether the repository has a TUF root (else nothing else is written in TUF's format).
fn has_root(repo: &Repository) -> Result<bool, PublishError> {
    Ok(repo.blobs.exists(&format!("{PREFIX}/root.json"))?)
}

fn meta(version: u64, bytes: &[u8]) -> Value {
    json!({
        "version": version,
        "length": bytes.len(),
        "hashes": {"sha256": crate::hash::sha256_hex(bytes)},
    })
}

/// Signs and writes TUF targets, snapshot and timestamp of the same versions as the
/// repository's own chain just signed. The caller holds the repository lease and has
/// claimed those versions in the repository's own format.
pub(super) fn write_chain(repo: &Repository, chain: &Chain) -> Result<(), PublishError> {
    if !has_root(repo)? {
        tracing::debug!("no TUF root yet: TUF metadata not written");
        return Ok(());
    }
    let data_dir = repo.data_dir();
    let online = |role: &str| key_of(&super::keys::online_key(data_dir, role)?);
    let targets = json!({
        "_type": "targets",
        "spec_version": SPEC_VERSION,
        "version": chain.targets.version,
        "expires": tuf_expires(&chain.targets.expires),
        "targets": crate::trust::releases::tuf_targets(chain.targets),
    });
    let tg = signed_bytes(&targets, &[&online("targets")?])?;
    let snapshot = json!({
        "_type": "snapshot",
        "spec_version": SPEC_VERSION,
        "version": chain.snapshot_version,
        "expires": expires_in(30),
        "meta": {"targets.json": meta(chain.targets.version, &tg)},
    });
    let sn = signed_bytes(&snapshot, &[&online("snapshot")?])?;
    let ts = timestamp_bytes(repo, chain.timestamp_version, chain.snapshot_version, &sn)?;
    put(repo, &format!("{}.targets.json", chain.targets.version), tg)?;
    put(
        repo,
        &format!("{}.snapshot.json", chain.snapshot_version),
        sn,
    )?;
    // Timestamp last: a client never sees a timestamp pinning a snapshot not written yet.
    put(repo, "timestamp.json", ts)?;
    Ok(())
}

fn timestamp_bytes(
    repo: &Repository,
    version: u64,
    snapshot_version: u64,
    snapshot: &[u8],
) -> Result<Vec<u8>, PublishError> {
    let key = key_of(&super::keys::online_key(repo.data_dir(), "timestamp")?)?;
    let timestamp = json!({
        "_type": "timestamp",
        "spec_version": SPEC_VERSION,
        "version": version,
        "expires": expires_in(1),
        "meta": {"snapshot.json": meta(snapshot_version, snapshot)},
    });
    signed_bytes(&timestamp, &[&key])
}

/// Re-signs the TUF timestamp as `version` (same snapshot), when the repository's own
/// timestamp was re-signed. The caller holds the lease and claimed `version`.
pub(super) fn refresh_timestamp(repo: &Repository, version: u64) -> Result<(), PublishError> {
    let Some(current) = repo.blobs.get(&format!("{PREFIX}/timestamp.json"))? else {
        return Ok(());
    };
    let damaged = |reason: String| PublishError::Metadata {
        name: format!("{}/{PREFIX}/timestamp.json", repo.blobs.url()),
        reason,
    };
    let doc: Value = serde_json::from_slice(&current).map_err(|e| damaged(e.to_string()))?;
    let snapshot_version = doc["signed"]["meta"]["snapshot.json"]["version"]
        .as_u64()
        .ok_or_else(|| damaged("no snapshot version".into()))?;
    let name = format!("{PREFIX}/{snapshot_version}.snapshot.json");
    let snapshot = repo
        .blobs
        .get(&name)?
        .ok_or_else(|| damaged(format!("{name} is missing")))?;
    let ts = timestamp_bytes(repo, version, snapshot_version, &snapshot)?;
    put(repo, "timestamp.json", ts)?;
    Ok(())
}
