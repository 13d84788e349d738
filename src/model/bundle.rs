//! A bundle on disk: a folder with `manifest.json` and the files it lists.
//!
//! Opening a bundle verifies every listed file (size, then sha256) before anything is
//! loaded into ONNX Runtime, so a damaged or tampered file is refused with its name.

use super::manifest::{Manifest, ManifestProblem};
use crate::hash::sha256_file;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The manifest could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest is not valid JSON of the manifest format.
    #[error("{path} is not a valid bundle manifest: {source}")]
    Parse {
        /// The manifest path.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The manifest contradicts itself.
    #[error("{path}: {problem}")]
    Invalid {
        /// The manifest path.
        path: PathBuf,
        /// What is wrong.
        problem: ManifestProblem,
    },
    /// A listed file is absent.
    #[error(
        "bundle {bundle}: file {file} is listed in the manifest but missing; reinstall the bundle"
    )]
    MissingFile {
        /// The bundle folder.
        bundle: PathBuf,
        /// The file name.
        file: String,
    },
    /// A listed file does not match its size or sha256.
    #[error("bundle {bundle}: file {file} does not match the manifest ({what}); the bundle is damaged or was tampered with, reinstall it")]
    Mismatch {
        /// The bundle folder.
        bundle: PathBuf,
        /// The file name.
        file: String,
        /// Expected against found.
        what: String,
    },
    /// Reading a listed file failed.
    #[error("bundle {bundle}: cannot read {file}: {source}")]
    Io {
        /// The bundle folder.
        bundle: PathBuf,
        /// The file name.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A bundle whose files have been verified against its manifest.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle folder.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl Bundle {
    /// Reads the manifest in `dir` and verifies every listed file.
    pub fn open(dir: &Path) -> Result<Bundle, BundleError> {
        let manifest = read_manifest(dir)?;
        verify_files(dir, &manifest.files)?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Path of a file inside the bundle.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

/// Reads and validates `dir/manifest.json` without checking the files.
pub fn read_manifest(dir: &Path) -> Result<Manifest, BundleError> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Read {
        path: path.clone(),
        source,
    })?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|source| BundleError::Parse {
        path: path.clone(),
        source,
    })?;
    manifest
        .validate()
        .map_err(|problem| BundleError::Invalid { path, problem })?;
    Ok(manifest)
}

/// Checks each file's size, then its sha256.
pub fn verify_files(
    dir: &Path,
    files: &BTreeMap<String, super::manifest::FileEntry>,
) -> Result<(), BundleError> {
    for (name, entry) in files {
        let path = dir.join(name);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BundleError::MissingFile {
                    bundle: dir.to_path_buf(),
                    file: name.clone(),
                })
            }
            Err(source) => {
                return Err(BundleError::Io {
                    bundle: dir.to_path_buf(),
                    file: name.clone(),
                    source,
                })
            }
        };
        if meta.len() != entry.size {
            return Err(BundleError::Mismatch {
                bundle: dir.to_path_buf(),
                file: name.clone(),
                what: format!("size {} expected, {} found", entry.size, meta.len()),
            });
        }
        let (sha, _) = sha256_file(&path).map_err(|source| BundleError::Io {
            bundle: dir.to_path_buf(),
            file: name.clone(),
            source,
        })?;
        if !sha.eq_ignore_ascii_case(&entry.sha256) {
            return Err(BundleError::Mismatch {
                bundle: dir.to_path_buf(),
                file: name.clone(),
                what: format!("sha256 {} expected, {} found", entry.sha256, sha),
            });
        }
    }
    Ok(())
}

/// Computes the `files` object for every file in `dir` except `manifest.json`
/// (used by `outpost models hash` and by tests that build bundles).
pub fn hash_folder(dir: &Path) -> std::io::Result<BTreeMap<String, super::manifest::FileEntry>> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.map_err(std::io::Error::other)?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(dir)
            .map_err(std::io::Error::other)?
            .to_string_lossy()
            .replace('\\', "/");
        if rel == "manifest.json" {
            continue;
        }
        let (sha256, size) = sha256_file(entry.path())?;
        out.insert(rel, super::manifest::FileEntry { sha256, size });
    }
    Ok(out)
}

/// Finds the bundle folders directly below `models_dir` (folders holding a `manifest.json`),
/// and, in the agent's installed tree (`<name>/<version>/` with an `active` symlink, see
/// [`crate::update::local`]), each model's active version (resolved, so a model loaded
/// from it keeps its own files after a switch).
pub fn discover(models_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(models_dir)? {
        let p = entry?.path();
        if p.join("manifest.json").is_file() {
            dirs.push(p);
        } else if let Ok(v) = std::fs::read_link(p.join("active")) {
            let dir = p.join(v);
            if dir.join("manifest.json").is_file() {
                dirs.push(dir);
            }
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// The manifests of every bundle [`discover`] finds (label names for exports and
/// decisions; no model is loaded). A folder that cannot be read is an error; a bundle whose
/// manifest cannot be read is left out with a warning that names it. No folder at all is
/// no bundles.
pub fn manifests(models_dir: &Path) -> std::io::Result<Vec<Manifest>> {
    let dirs = match discover(models_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        r => r?,
    };
    let mut out = Vec::new();
    for dir in dirs {
        match read_manifest(&dir) {
            Ok(m) => out.push(m),
            Err(e) => {
                tracing::warn!(bundle = %dir.display(), error = %e, "manifest not readable; bundle left out")
            }
        }
    }
    Ok(out)
}
