//! The agent's trusted metadata in the repository's own format (before TUF) on disk
//! (`<data_dir>/trust/`): the newest accepted root, timestamp, snapshot and targets, and the
//! time floor. Online updates read TUF ([`super::verified`]); this format still verifies
//! USB update files, and its root chain is walked once, to move an agent pinned to it onto
//! TUF ([`walk_legacy_roots`]). The root the operator pinned in
//! the config is always the starting point; a newer root on disk is used only if it is
//! still signed by a threshold of its own keys (it was accepted through the chain before).
//!
//! The time floor is saved only when metadata was accepted, so a run with a clock far ahead
//! that accepted nothing cannot push the floor into the future and lock the agent out.

use super::local::write_atomic;
use super::{io, UpdateError};
use crate::trust::client::TrustedState;
use crate::trust::{parse, verify_signatures, Role, Root, Signed};
use std::path::{Path, PathBuf};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const FLOOR: &str = "time_floor";

/// Loads the trusted state: the pinned root, then what was accepted before.
pub fn load(pinned_root: &Path, data_dir: &Path) -> Result<TrustedState, UpdateError> {
    let dir = super::trust_dir(data_dir);
    let pinned = std::fs::read(pinned_root).map_err(|e| UpdateError::PinnedRoot {
        path: pinned_root.to_path_buf(),
        reason: e.to_string(),
    })?;
    let floor = std::fs::read_to_string(dir.join(FLOOR))
        .ok()
        .and_then(|s| OffsetDateTime::parse(s.trim(), &Rfc3339).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut state =
        TrustedState::from_pinned_root(&pinned, floor).map_err(|e| UpdateError::PinnedRoot {
            path: pinned_root.to_path_buf(),
            reason: e.to_string(),
        })?;
    if let Some(root) = read::<Root>(&dir.join("root.json")) {
        if root.signed.version > state.root.signed.version
            && verify_signatures(&root, &root.signed, "root").is_ok()
        {
            state.root = root;
        }
    }
    let r = state.root.signed.clone();
    let ok = |role: &str, doc: &Option<Signed<_>>| -> bool {
        match doc {
            Some(d) => verify_signatures::<crate::trust::Timestamp>(d, &r, role).is_ok(),
            None => false,
        }
    };
    let ts = read(&dir.join("timestamp.json"));
    if ok("timestamp", &ts) {
        state.timestamp = ts;
    }
    let sn: Option<Signed<crate::trust::Snapshot>> = read(&dir.join("snapshot.json"));
    if sn
        .as_ref()
        .is_some_and(|d| verify_signatures(d, &r, "snapshot").is_ok())
    {
        state.snapshot = sn;
    }
    let tg: Option<Signed<crate::trust::Targets>> = read(&dir.join("targets.json"));
    if tg
        .as_ref()
        .is_some_and(|d| verify_signatures(d, &r, "targets").is_ok())
    {
        state.targets = tg;
    }
    Ok(state)
}

fn read<T: Role>(path: &Path) -> Option<Signed<T>> {
    std::fs::read(path).ok().and_then(|b| parse(&b).ok())
}

fn write<T: serde::Serialize>(dir: &Path, name: &str, doc: &T) -> Result<(), UpdateError> {
    write_atomic(
        &dir.join(name),
        &serde_json::to_vec_pretty(doc).unwrap_or_default(),
    )
}

/// Saves the trusted state (after something was accepted).
pub fn save(state: &TrustedState, data_dir: &Path) -> Result<(), UpdateError> {
    let dir = super::trust_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    write(&dir, "root.json", &state.root)?;
    let names: [(&str, Option<serde_json::Value>); 3] = [
        (
            "timestamp.json",
            state
                .timestamp
                .as_ref()
                .and_then(|d| serde_json::to_value(d).ok()),
        ),
        (
            "snapshot.json",
            state
                .snapshot
                .as_ref()
                .and_then(|d| serde_json::to_value(d).ok()),
        ),
        (
            "targets.json",
            state
                .targets
                .as_ref()
                .and_then(|d| serde_json::to_value(d).ok()),
        ),
    ];
    for (name, doc) in names {
        match doc {
            Some(d) => write(&dir, name, &d)?,
            None => {
                let _ = std::fs::remove_file(dir.join(name));
            }
        }
    }
    write_atomic(
        &dir.join(FLOOR),
        state
            .time_floor
            .format(&Rfc3339)
            .unwrap_or_default()
            .as_bytes(),
    )
}

/// The trust folder.
pub fn dir(data_dir: &Path) -> PathBuf {
    super::trust_dir(data_dir)
}

/// Walks the root chain of the repository's own format from the pinned root (and what was
/// accepted before) through `/v1/metadata/N.root.json`, one version at a time, each signed
/// by a threshold of the previous root's keys and its own; saves and returns the newest.
/// Used once, to move the agent onto TUF ([`super::verified`]).
pub async fn walk_legacy_roots(
    client: &crate::sync::SyncClient,
    pinned_root: &Path,
    data_dir: &Path,
) -> Result<Root, UpdateError> {
    let mut state = load(pinned_root, data_dir)?;
    loop {
        let next = state.root.signed.version + 1;
        let path = format!("/v1/metadata/{next}.root.json");
        let res = client
            .get(&path, None, std::time::Duration::from_secs(60))
            .await?;
        if res.status() == reqwest::StatusCode::NOT_FOUND {
            break;
        }
        if !res.status().is_success() {
            return Err(crate::sync::error_from(res).await.into());
        }
        let what = format!("metadata {path}");
        let bytes = crate::sync::read_limited(res, 512_000, client.server_url(), &what).await?;
        state.update_root(&bytes)?;
        tracing::info!(version = next, "root metadata (format before TUF) rotated");
        save(&state, data_dir)?;
    }
    Ok(state.root.signed)
}
