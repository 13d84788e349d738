//! The installed models under `<data_dir>/models`:
//!
//! ```text
//! <name>/<version>/        a verified bundle (files hard-linked from the blob store)
//! <name>/active            symlink -> <version>; switched by one rename
//! <name>/state.json        previous active version, pin, versions that failed and why
//! .blobs/sha256/<hash>     every file the agent has, by content (never fetched twice)
//! .partial/<hash>.partial  downloads in progress (survive restarts, resume by Range)
//! .staging/                bundles being assembled and validated
//! ```
//!
//! The shipped models (the installer's `models_dir`) are the initial install: [`Installed::seed`]
//! copies each into this tree once, so the shipped folder stays an untouched fallback.

use super::{io, UpdateError};
use crate::model::manifest::parse_version;
use crate::model::pool::SessionOptions;
use crate::model::{Bundle, LoadedModel};
use crate::trust::{Release, Targets};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Per-model state beside the active pointer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelState {
    /// The version active before the current one (what `models rollback` goes back to).
    #[serde(default)]
    pub previous: Option<String>,
    /// A version pinned by hand: automatic updates leave the model alone.
    #[serde(default)]
    pub pinned: Option<String>,
    /// Versions that failed validation or the post-swap health check, with the reason;
    /// they are not tried again automatically.
    #[serde(default)]
    pub failed: BTreeMap<String, String>,
}

/// One installed model, for listing.
#[derive(Debug, Clone, Serialize)]
pub struct ModelListing {
    /// Name.
    pub model: String,
    /// Versions on disk, oldest first.
    pub versions: Vec<String>,
    /// The active one.
    pub active: Option<String>,
    /// State (previous, pin, failures).
    pub state: ModelState,
}

/// The `<data_dir>/models` tree.
#[derive(Debug, Clone)]
pub struct Installed {
    root: PathBuf,
}

/// A file name inside a bundle must stay inside it.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\\')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// A model name or version used as a folder name.
fn safe_component(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
}

fn version_key(v: &str) -> (Option<(u64, u64, u64)>, String) {
    (parse_version(v), v.to_string())
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), UpdateError> {
    use std::io::Write;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(path.parent());
    Ok(())
}

fn sync_dir(dir: Option<&Path>) {
    if let Some(d) = dir {
        if let Ok(f) = std::fs::File::open(d) {
            let _ = f.sync_all();
        }
    }
}

/// Hard-links `from` to `to`, or copies it if links are not possible.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), UpdateError> {
    if let Some(d) = to.parent() {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to).map_err(io(to))?;
    Ok(())
}

impl Installed {
    /// The tree of `data_dir` (folders are created when first written).
    pub fn new(data_dir: &Path) -> Installed {
        Installed {
            root: super::models_root(data_dir),
        }
    }

    /// The `models` folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a verified file lives.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join(".blobs/sha256").join(sha256)
    }

    /// Whether the store holds a file.
    pub fn has_blob(&self, sha256: &str) -> bool {
        self.blob_path(sha256).is_file()
    }

    /// Where a download in progress lives.
    pub fn partial_path(&self, sha256: &str) -> PathBuf {
        self.root.join(".partial").join(format!("{sha256}.partial"))
    }

    /// Adds a file whose sha256 was just verified to the store (hard link or copy, then rename).
    pub fn add_blob(&self, sha256: &str, from: &Path, move_it: bool) -> Result<(), UpdateError> {
        let dest = self.blob_path(sha256);
        if dest.is_file() {
            if move_it {
                let _ = std::fs::remove_file(from);
            }
            return Ok(());
        }
        let dir = self.root.join(".blobs/sha256");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        if move_it {
            std::fs::rename(from, &dest).map_err(io(&dest))?;
        } else {
            let tmp = dir.join(format!(".{sha256}.tmp"));
            link_or_copy(from, &tmp)?;
            std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        }
        sync_dir(Some(&dir));
        Ok(())
    }

    fn model_dir(&self, model: &str) -> PathBuf {
        self.root.join(model)
    }

    /// The folder of an installed version.
    pub fn version_dir(&self, model: &str, version: &str) -> PathBuf {
        self.model_dir(model).join(version)
    }

    /// Installed model names.
    pub fn models(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.root)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| safe_component(n))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Versions of `model` on disk (folders with a manifest), oldest first.
    pub fn versions(&self, model: &str) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.model_dir(model))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| {
                        e.file_type().map(|t| t.is_dir()).unwrap_or(false)
                            && e.path().join("manifest.json").is_file()
                    })
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| safe_component(n))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|v| version_key(v));
        out
    }

    /// The active version of `model`.
    pub fn active(&self, model: &str) -> Option<String> {
        let target = std::fs::read_link(self.model_dir(model).join("active")).ok()?;
        let v = target.to_str()?.to_string();
        (safe_component(&v) && self.version_dir(model, &v).join("manifest.json").is_file())
            .then_some(v)
    }

    /// The active bundle folder of every installed model (resolved, so a model loaded from
    /// it keeps reading its own version's files after a switch).
    pub fn active_dirs(&self) -> Vec<PathBuf> {
        self.models()
            .into_iter()
            .filter_map(|m| self.active(&m).map(|v| self.version_dir(&m, &v)))
            .collect()
    }

    /// Per-model state.
    pub fn state(&self, model: &str) -> ModelState {
        std::fs::read(self.model_dir(model).join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Saves per-model state.
    pub fn save_state(&self, model: &str, s: &ModelState) -> Result<(), UpdateError> {
        write_atomic(
            &self.model_dir(model).join("state.json"),
            &serde_json::to_vec_pretty(s).unwrap_or_default(),
        )
    }

    /// Everything, for `outpost models list`.
    pub fn list(&self) -> Vec<ModelListing> {
        self.models()
            .into_iter()
            .map(|m| ModelListing {
                versions: self.versions(&m),
                active: self.active(&m),
                state: self.state(&m),
                model: m,
            })
            .filter(|l| !l.versions.is_empty())
            .collect()
    }

    /// Points `<model>/active` at `version` with one rename, and remembers the version it
    /// replaces as `previous`.
    pub fn activate(&self, model: &str, version: &str) -> Result<Option<String>, UpdateError> {
        if !safe_component(model) || !safe_component(version) {
            return Err(UpdateError::Refused(format!(
                "{model:?} {version:?} is not a valid model name and version"
            )));
        }
        if !self
            .version_dir(model, version)
            .join("manifest.json")
            .is_file()
        {
            return Err(UpdateError::Refused(format!(
                "{model} {version} is not installed (installed: {})",
                self.versions(model).join(", ")
            )));
        }
        let before = self.active(model);
        let dir = self.model_dir(model);
        let tmp = dir.join(format!(".active.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        #[cfg(unix)]
        std::os::unix::fs::symlink(version, &tmp).map_err(io(&tmp))?;
        #[cfg(not(unix))]
        return Err(UpdateError::Refused(
            "model switching needs symlinks (Unix)".into(),
        ));
        #[allow(unreachable_code)]
        {
            std::fs::rename(&tmp, dir.join("active")).map_err(io(&dir))?;
            sync_dir(Some(&dir));
            if before.as_deref() != Some(version) {
                let mut s = self.state(model);
                s.previous = before.clone();
                self.save_state(model, &s)?;
            }
            Ok(before)
        }
    }

    /// Removes leftovers of an interrupted staging (a crash between staging and commit).
    pub fn clean_staging(&self) {
        let _ = std::fs::remove_dir_all(self.root.join(".staging"));
    }

    /// Assembles `release` from the blob store in a fresh staging folder and opens it as a
    /// bundle: every file verified against the manifest, which must be the release's model
    /// and version and list exactly the release's files (no file of another release mixed in).
    pub fn stage(&self, release: &Release, targets: &Targets) -> Result<Bundle, UpdateError> {
        let refuse = |reason: String| UpdateError::Release {
            model: release.model.clone(),
            version: release.version.clone(),
            reason,
        };
        if !safe_component(&release.model) || !safe_component(&release.version) {
            return Err(refuse(
                "model name or version is not a safe folder name".into(),
            ));
        }
        let staging = self.root.join(".staging").join(format!(
            "{}-{}-{}",
            release.model,
            release.version,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        for (name, target) in &release.files {
            if !safe_name(name) {
                return Err(refuse(format!("file name {name:?} leaves the bundle")));
            }
            let entry = targets.targets.get(target).ok_or_else(|| {
                refuse(format!(
                    "{name} names {target}, which targets does not list"
                ))
            })?;
            // The blob store is keyed by the signed sha256 (every file is checked against
            // it before it enters the store): it must be one.
            let hex =
                entry.sha256.len() == 64 && entry.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex {
                return Err(refuse(format!("{target} has no valid signed sha256")));
            }
            let blob = self.blob_path(&entry.sha256);
            if !blob.is_file() {
                return Err(refuse(format!("{name} ({target}) was not downloaded")));
            }
            link_or_copy(&blob, &staging.join(name))?;
        }
        let bundle = Bundle::open(&staging).map_err(|e| refuse(e.to_string()))?;
        let m = &bundle.manifest;
        if m.name != release.model || m.version != release.version {
            return Err(refuse(format!(
                "its manifest is {} {} (files of two releases mixed?)",
                m.name, m.version
            )));
        }
        let listed: std::collections::BTreeSet<&str> = m
            .files
            .keys()
            .map(String::as_str)
            .chain(["manifest.json"])
            .collect();
        let shipped: std::collections::BTreeSet<&str> =
            release.files.keys().map(String::as_str).collect();
        if listed != shipped {
            return Err(refuse(format!(
                "the release's files {shipped:?} differ from the manifest's {listed:?}"
            )));
        }
        Ok(bundle)
    }

    /// Moves a validated staging folder to `<model>/<version>/` (one rename). An existing
    /// complete version folder is kept.
    pub fn commit(&self, staged: &Bundle) -> Result<PathBuf, UpdateError> {
        let m = &staged.manifest;
        let dest = self.version_dir(&m.name, &m.version);
        if dest.join("manifest.json").is_file() && Bundle::open(&dest).is_ok() {
            let _ = std::fs::remove_dir_all(&staged.dir);
            return Ok(dest);
        }
        let _ = std::fs::remove_dir_all(&dest);
        let parent = self.model_dir(&m.name);
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        std::fs::rename(&staged.dir, &dest).map_err(io(&dest))?;
        sync_dir(Some(&parent));
        Ok(dest)
    }

    /// Installs every bundle of the shipped models folder that is not installed yet (files
    /// verified, copied into the store), and activates it if its model has no active
    /// version. Returns what it installed.
    pub fn seed(&self, shipped: &Path) -> Vec<String> {
        let mut done = Vec::new();
        if same_dir(shipped, &self.root) {
            return done;
        }
        for dir in crate::model::bundle::discover(shipped).unwrap_or_default() {
            let Ok(m) = crate::model::bundle::read_manifest(&dir) else {
                continue;
            };
            if !safe_component(&m.name) || !safe_component(&m.version) {
                continue;
            }
            if self
                .version_dir(&m.name, &m.version)
                .join("manifest.json")
                .is_file()
            {
                if self.active(&m.name).is_none() {
                    let _ = self.activate(&m.name, &m.version);
                }
                continue;
            }
            let bundle = match Bundle::open(&dir) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(bundle = %dir.display(), error = %e, "shipped bundle not installed");
                    continue;
                }
            };
            match self.import(&bundle) {
                Ok(_) => {
                    if self.active(&m.name).is_none() {
                        let _ = self.activate(&m.name, &m.version);
                    }
                    tracing::info!(model = %m.name, version = %m.version, "installed the shipped bundle");
                    done.push(m.id());
                }
                Err(e) => {
                    tracing::warn!(bundle = %dir.display(), error = %e, "shipped bundle not installed")
                }
            }
        }
        done
    }

    /// Copies a verified bundle into the store and the version tree (not activated).
    pub fn import(&self, bundle: &Bundle) -> Result<PathBuf, UpdateError> {
        let m = &bundle.manifest;
        let staging = self.root.join(".staging").join(format!(
            "{}-{}-import-{}",
            m.name,
            m.version,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&staging);
        let mut names: Vec<String> = m.files.keys().cloned().collect();
        names.push("manifest.json".into());
        for name in names {
            if !safe_name(&name) {
                return Err(UpdateError::Refused(format!(
                    "file name {name:?} leaves the bundle"
                )));
            }
            let src = bundle.path(&name);
            let (sha, _) = crate::hash::sha256_file(&src).map_err(io(&src))?;
            self.add_blob(&sha, &src, false)?;
            link_or_copy(&self.blob_path(&sha), &staging.join(&name))?;
        }
        let staged = Bundle::open(&staging).map_err(|e| UpdateError::Validation {
            model: m.name.clone(),
            version: m.version.clone(),
            reason: e.to_string(),
        })?;
        self.commit(&staged)
    }

    /// Removes versions beyond the `keep` newest, never the active, previous or pinned one,
    /// then blobs no version uses and `wanted` (hashes of releases still being fetched)
    /// does not list.
    pub fn prune(&self, keep: usize, wanted: &std::collections::BTreeSet<String>) {
        let mut used = wanted.clone();
        for model in self.models() {
            let st = self.state(&model);
            let active = self.active(&model);
            let versions = self.versions(&model);
            let n = versions.len();
            for (i, v) in versions.iter().enumerate() {
                let protected = Some(v) == active.as_ref()
                    || Some(v) == st.previous.as_ref()
                    || Some(v) == st.pinned.as_ref();
                if i + keep.max(2) < n && !protected {
                    let _ = std::fs::remove_dir_all(self.version_dir(&model, v));
                    continue;
                }
                if let Ok(m) = crate::model::bundle::read_manifest(&self.version_dir(&model, v)) {
                    used.extend(m.files.values().map(|f| f.sha256.to_ascii_lowercase()));
                    if let Ok((sha, _)) =
                        crate::hash::sha256_file(&self.version_dir(&model, v).join("manifest.json"))
                    {
                        used.insert(sha);
                    }
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.root.join(".blobs/sha256")) {
            for e in rd.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().to_string();
                if name.len() == 64 && !used.contains(&name) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Loads a bundle in ONNX Runtime and runs its golden cases: the validation before a
/// switch, and the health check after one.
pub fn validate(dir: &Path, opts: SessionOptions) -> Result<LoadedModel, String> {
    let model = LoadedModel::load(dir, opts).map_err(|e| e.to_string())?;
    health_check(&model)?;
    Ok(model)
}

/// The health check after a switch: the model loaded from its final folder runs its golden
/// cases. (`OUTPOST_FAULT_HEALTH=<name>@<version>` makes it fail: a test hook for the
/// automatic rollback.)
pub fn post_swap_check(model: &LoadedModel) -> Result<(), String> {
    if std::env::var("OUTPOST_FAULT_HEALTH").ok().as_deref() == Some(model.id().as_str()) {
        return Err("post-swap health check failed (test hook OUTPOST_FAULT_HEALTH)".into());
    }
    health_check(model)
}

/// Runs a loaded model's golden cases (a bundle without golden cases passes).
pub fn health_check(model: &LoadedModel) -> Result<(), String> {
    match crate::infer::golden::check(model)? {
        Some(r) if !r.passed() => Err(format!(
            "golden outputs not reproduced: {}",
            r.failures.join("; ")
        )),
        _ => Ok(()),
    }
}
