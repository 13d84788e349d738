//! Reading the signed repository: the targets now published, the current release of a
//! model, and a release's files put back together as a bundle (what training starts from).

use super::{PublishError, Repository};
use crate::model::Bundle;
use crate::trust::{Release, Targets};

/// The signed targets of the repository (an error if nothing is published yet).
pub fn current_targets(repo: &Repository) -> Result<Targets, PublishError> {
    repo.read_signed::<Targets>("targets.json")?
        .map(|t| t.signed)
        .ok_or_else(|| {
            PublishError::Keys(format!(
                "{}: metadata/targets.json: nothing published yet",
                repo.blobs.url()
            ))
        })
}

/// The signed targets of the repository, `None` if nothing is published yet. A store that
/// cannot be read, or metadata that does not parse, is an error (never "nothing").
pub fn published_targets(repo: &Repository) -> Result<Option<Targets>, PublishError> {
    Ok(repo
        .read_signed::<Targets>("targets.json")?
        .map(|t| t.signed))
}

/// The newest release of `model` that is not withdrawn, on any channel (`None` if there
/// is none).
pub fn current_release(repo: &Repository, model: &str) -> Result<Option<Release>, PublishError> {
    Ok(published_targets(repo)?.and_then(|t| {
        t.releases
            .into_iter()
            .filter(|r| r.model == model && !r.withdrawn)
            .max_by_key(|r| crate::version::parse_version(&r.version))
    }))
}

/// Puts the files of a published release in a folder (copied from the repository's blob
/// store) and verifies it as a bundle.
pub fn materialise(repo: &Repository, release: &Release) -> Result<Bundle, PublishError> {
    let dir = repo
        .data_dir()
        .join("bundles")
        .join(&release.model)
        .join(&release.version);
    if let Ok(b) = Bundle::open(&dir) {
        return Ok(b);
    }
    let _ = std::fs::remove_dir_all(&dir);
    for (name, target) in &release.files {
        let to = dir.join(name);
        if !repo
            .blobs()
            .get_to_file(&format!("targets/{target}"), &to)
            .map_err(PublishError::from)?
        {
            return Err(PublishError::Io {
                path: to,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "{target} is missing from the repository {}",
                        repo.blobs().url()
                    ),
                ),
            });
        }
    }
    Ok(Bundle::open(&dir)?)
}
