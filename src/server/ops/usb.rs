//! USB files, for laptops that never see the network:
//! - `models export-usb`: one release with every root version and the current signed
//!   metadata, copied out of the blob store, written as one update file the agent verifies
//!   exactly like an online update;
//! - `feedback import`: decisions a laptop exported, opened with the export key of the
//!   device the file names (sealed files), then ingested like an upload: each record is
//!   checked like an upload's, and its labels against the published release it answers.

use super::OpsError;
use crate::server::repository::{published_targets, Repository};
use crate::server::store::{IngestResult, ServerStore, Via};
use std::path::Path;

/// Writes the USB update file of `model` `version` to `out`; returns its size in bytes.
pub fn export_release(
    store: &dyn ServerStore,
    repo: &Repository,
    model: &str,
    version: &str,
    out: &Path,
) -> Result<u64, OpsError> {
    // The USB writer reads a repository folder: the release's part of the blob store is
    // copied to a scratch folder first (root versions, metadata, its files).
    let scratch = repo.data_dir().join(".export-usb");
    let _ = std::fs::remove_dir_all(&scratch);
    let copied = copy_release(repo, model, version, &scratch);
    let written =
        copied.and_then(|()| Ok(crate::update::usb::write(&scratch, model, version, out)?));
    let _ = std::fs::remove_dir_all(&scratch);
    let n = written?;
    store.audit(
        "operator",
        "models export-usb",
        &format!("{model} {version} to {}", out.display()),
    )?;
    Ok(n)
}

fn copy_release(
    repo: &Repository,
    model: &str,
    version: &str,
    scratch: &Path,
) -> Result<(), OpsError> {
    let blobs = repo.blobs();
    let fetch = |key: String| -> Result<bool, OpsError> {
        Ok(blobs
            .get_to_file(&key, &scratch.join(&key))
            .map_err(crate::server::repository::PublishError::from)?)
    };
    for n in 1.. {
        if !fetch(format!("metadata/{n}.root.json"))? {
            break;
        }
    }
    for m in [
        "root.json",
        "timestamp.json",
        "snapshot.json",
        "targets.json",
    ] {
        fetch(format!("metadata/{m}"))?;
    }
    // The same in TUF's format (what agents verify): every TUF root version (a repository
    // from before TUF has its first one at a later version), the timestamp and the snapshot
    // and targets it leads to.
    let mut roots = 0;
    for n in 1.. {
        if fetch(format!("tuf/{n}.root.json"))? {
            roots += 1;
        } else if roots > 0
            || !blobs
                .exists(&format!("metadata/{n}.root.json"))
                .unwrap_or(false)
        {
            break;
        }
    }
    if fetch("tuf/timestamp.json".into())? {
        let pinned = |file: &str, role: &str| -> Option<u64> {
            let b = std::fs::read(scratch.join("tuf").join(file)).ok()?;
            let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
            v["signed"]["meta"][format!("{role}.json")]["version"].as_u64()
        };
        if let Some(sv) = pinned("timestamp.json", "snapshot") {
            fetch(format!("tuf/{sv}.snapshot.json"))?;
            if let Some(tv) = pinned(&format!("{sv}.snapshot.json"), "targets") {
                fetch(format!("tuf/{tv}.targets.json"))?;
            }
        }
    }
    let targets = published_targets(repo)?
        .ok_or_else(|| OpsError::NotFound(format!("nothing is published in {}", blobs.url())))?;
    for r in targets
        .releases
        .iter()
        .filter(|r| r.model == model && r.version == version)
    {
        for target in r.files.values() {
            fetch(format!("targets/{target}"))?;
        }
    }
    Ok(())
}

/// What [`import_feedback`] stored.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The device the records were stored for.
    pub device_name: String,
    /// Records in the file.
    pub records: usize,
    /// What ingest made of them.
    pub result: IngestResult,
}

/// `feedback import`: reads a USB feedback file (a sealed one opens with the export key of
/// the device it names) and ingests its records for that device, or for `device` if the
/// operator names one (an old plain file names none).
pub fn import_feedback(
    store: &dyn ServerStore,
    repo: &Repository,
    data_dir: &Path,
    file: &Path,
    device: Option<String>,
) -> Result<Imported, OpsError> {
    let secret =
        crate::server::export_key::ExportSecret::load_or_create(data_dir).map_err(|e| {
            OpsError::Internal(format!(
                "the feedback export secret {}: {e}",
                crate::server::export_key::path(data_dir).display()
            ))
        })?;
    let (header, records) =
        crate::store::usb::read_with(file, &|device| Some(secret.key_for(device)))?;
    let who = device.or(header.device_id.clone()).ok_or_else(|| {
        OpsError::NotFound("the file does not name its device: pass --device NAME".into())
    })?;
    let d = store
        .devices()?
        .into_iter()
        .find(|d| d.name == who || d.device_id == who)
        .ok_or_else(|| OpsError::NotFound(format!("no device {who:?}")))?;
    // Records from a file are validated field by field like an upload; the invalid ones
    // are refused with the field named, and never reach the store.
    let (valid, mut invalid) = crate::server::ingest::split_valid(records.clone());
    let mut published = crate::server::ingest::PublishedLabels::new(repo.blobs());
    let (valid, foreign) =
        crate::server::ingest::split_known_labels(valid, &mut |m, v| published.labels_of(m, v));
    invalid.extend(foreign);
    let mut result = store.ingest(&d.device_id, &valid, Via::Usb)?;
    result.refused.extend(invalid);
    store.audit(
        "operator",
        "feedback import",
        &format!(
            "{} from {}: {} new, {} duplicates",
            file.display(),
            d.name,
            result.acked.len() - result.duplicates,
            result.duplicates
        ),
    )?;
    Ok(Imported {
        device_name: d.name,
        records: records.len(),
        result,
    })
}
