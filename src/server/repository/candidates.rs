//! Candidate bundles in the blob store: a training run copies its candidate to
//! `candidates/<model>/<version>/` (index written last), so a candidate held on one server
//! process can be published from another.

use super::{PublishError, Repository};
use std::path::Path;

/// The blob-store prefix of a candidate bundle kept by a training run.
fn candidate_prefix(model: &str, version: &str) -> String {
    format!("candidates/{model}/{version}")
}

/// Copies a candidate bundle folder into the blob store (`candidates/<model>/<version>/`,
/// then a `.files` index written last), so that any server process sharing the store can
/// publish it later, not only the one that trained it.
pub fn store_candidate(
    repo: &Repository,
    model: &str,
    version: &str,
    dir: &Path,
) -> Result<(), PublishError> {
    let prefix = candidate_prefix(model, version);
    let mut files = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.map_err(|e| PublishError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        if !e.file_type().is_file() {
            continue;
        }
        let rel = e
            .path()
            .strip_prefix(dir)
            .unwrap_or(e.path())
            .to_string_lossy()
            .replace('\\', "/");
        repo.blobs()
            .put_file_new(&format!("{prefix}/{rel}"), e.path())?;
        files.push(rel);
    }
    let index = serde_json::to_vec(&files).unwrap_or_default();
    repo.blobs().put(&format!("{prefix}/.files"), index)?;
    Ok(())
}

/// Brings a candidate bundle back from the blob store into `dir` when this machine does
/// not have it (it was trained by another server process). Returns whether it fetched.
pub fn fetch_candidate(
    repo: &Repository,
    model: &str,
    version: &str,
    dir: &Path,
) -> Result<bool, PublishError> {
    if dir.join("manifest.json").is_file() {
        return Ok(false);
    }
    let prefix = candidate_prefix(model, version);
    let Some(index) = repo.blobs().get(&format!("{prefix}/.files"))? else {
        return Ok(false);
    };
    let files: Vec<String> = serde_json::from_slice(&index).map_err(|e| PublishError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::other(format!("damaged candidate index: {e}")),
    })?;
    let tmp = dir.with_extension(format!("fetching.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for rel in &files {
        if rel.split('/').any(|c| c == ".." || c.is_empty()) {
            continue;
        }
        repo.blobs()
            .get_to_file(&format!("{prefix}/{rel}"), &tmp.join(rel))?;
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|source| PublishError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::rename(&tmp, dir).map_err(|source| PublishError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(true)
}
