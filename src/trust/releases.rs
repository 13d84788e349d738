//! Releases in TUF 1.0 targets: how the repository's releases (model, version, channel,
//! groups, staged percentage, withdrawal) are written into signed targets `custom` fields,
//! and read back from a verified targets role.
//!
//! What and why: TUF signs files, not releases. A release's files get target paths
//! `models/<model>/<version>/<file>` (so a model's targets can be delegated to another
//! team's key with the pattern `models/<model>/*`), each with its length and sha256; with
//! consistent snapshots a client fetches `models/<model>/<version>/<sha256>.<file>`, so the
//! URL carries the hash and the server keeps every file once, by content. The release
//! itself lives in the `custom` of its `manifest.json` target:
//!
//! ```json
//! "models/colours/1.0.1/manifest.json": {"length": 512, "hashes": {"sha256": "..."},
//!   "custom": {"outpost": {"model": "colours", "version": "1.0.1",
//!     "files": {"head.onnx": "models/colours/1.0.1/head.onnx", ...},
//!     "rollouts": [{"channel": "stable", "groups": ["north"], "percent": 10,
//!                   "withdrawn": false}]}}}
//! ```
//!
//! One version of a model on two channels is one set of files with two rollouts. Should
//! two channels carry different bundles under one version, the second gets the folder
//! `models/<model>/<version>~<first 12 hex of its manifest hash>/`, so no target path ever
//! names two files.

use super::tuf::metadata::Targets as TufTargets;
use super::{Release, TargetFile, Targets};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The key of our object in a target's `custom`.
pub const CUSTOM_KEY: &str = "outpost";

/// The target path of `file` of `model` `version` in folder `folder` (see the module).
fn target_path(folder: &str, file: &str) -> String {
    format!("{folder}/{file}")
}

/// One release folder being written: its release and its files and rollouts.
struct Folder {
    model: String,
    version: String,
    files: BTreeMap<String, String>,
    rollouts: Vec<Value>,
}

/// The TUF `targets` object (target path -> `{length, hashes, custom}`) of the
/// repository's releases. Files a release names but targets does not list are skipped
/// (a damaged repository; agents would refuse that release for the missing file).
pub fn tuf_targets(targets: &Targets) -> Map<String, Value> {
    // (model, version) -> [(manifest content path, folder)]
    let mut folders: BTreeMap<(String, String), Vec<(String, String)>> = BTreeMap::new();
    let mut manifests: BTreeMap<String, Folder> = BTreeMap::new();
    let mut out = Map::new();
    for r in &targets.releases {
        let manifest = r.files.get("manifest.json").cloned().unwrap_or_default();
        let seen = folders
            .entry((r.model.clone(), r.version.clone()))
            .or_default();
        let folder = match seen.iter().find(|(m, _)| *m == manifest) {
            Some((_, f)) => f.clone(),
            None => {
                let base = format!("models/{}/{}", r.model, r.version);
                let f = if seen.is_empty() {
                    base
                } else {
                    let short: String = manifest
                        .rsplit('/')
                        .next()
                        .unwrap_or_default()
                        .chars()
                        .take(12)
                        .collect();
                    format!("{base}~{short}")
                };
                seen.push((manifest.clone(), f.clone()));
                f
            }
        };
        let entry = manifests.entry(folder.clone()).or_insert_with(|| Folder {
            model: r.model.clone(),
            version: r.version.clone(),
            files: BTreeMap::new(),
            rollouts: Vec::new(),
        });
        for (name, content) in &r.files {
            let Some(file) = targets.targets.get(content) else {
                continue;
            };
            let path = target_path(&folder, name);
            entry.files.insert(name.clone(), path.clone());
            out.insert(
                path,
                json!({"length": file.length, "hashes": {"sha256": file.sha256}}),
            );
        }
        entry.rollouts.push(json!({
            "channel": r.channel,
            "groups": r.groups,
            "percent": r.percent.min(100),
            "withdrawn": r.withdrawn,
        }));
    }
    for (folder, f) in manifests {
        let path = target_path(&folder, "manifest.json");
        if let Some(Value::Object(t)) = out.get_mut(&path) {
            t.insert(
                "custom".into(),
                json!({CUSTOM_KEY: {
                    "model": f.model, "version": f.version, "files": f.files,
                    "rollouts": f.rollouts,
                }}),
            );
        }
    }
    out
}

/// Why a release in signed targets could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("release in target {path}: {reason}")]
pub struct ReleaseError {
    /// The manifest target whose `custom` is wrong.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// A release read from verified TUF targets: the release (its `files` are TUF target
/// paths) and the signed description of each of its files by target path.
#[derive(Debug, Clone, PartialEq)]
pub struct TufRelease {
    /// Model, version, channel, groups, percentage, withdrawal, files.
    pub release: Release,
    /// Target path -> length and sha256.
    pub files: BTreeMap<String, TargetFile>,
}

/// Every release of a verified targets role: one per rollout of each manifest target
/// whose `custom` carries ours. Targets without it are not releases and are ignored; a
/// release whose `custom` is malformed, or names a file the role does not sign, is an
/// error (the whole role is refused rather than part of a release installed).
pub fn releases_from(targets: &TufTargets) -> Result<Vec<TufRelease>, ReleaseError> {
    let mut out = Vec::new();
    for (path, t) in &targets.targets {
        let Some(ours) = t.custom.as_ref().and_then(|c| c.get(CUSTOM_KEY)) else {
            continue;
        };
        let bad = |reason: String| ReleaseError {
            path: path.clone(),
            reason,
        };
        let text = |field: &str| {
            ours.get(field)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| bad(format!("custom.{CUSTOM_KEY}.{field} is not a string")))
        };
        let (model, version) = (text("model")?, text("version")?);
        let names = ours
            .get("files")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("no files".into()))?;
        let mut files = BTreeMap::new();
        let mut names_to_paths = BTreeMap::new();
        for (name, p) in names {
            let p = p
                .as_str()
                .ok_or_else(|| bad(format!("file {name} is not a target path")))?;
            let signed = targets
                .targets
                .get(p)
                .ok_or_else(|| bad(format!("file {name}: target {p} is not signed")))?;
            let sha256 = signed
                .hashes
                .get("sha256")
                .ok_or_else(|| bad(format!("target {p} has no sha256")))?;
            files.insert(
                p.to_string(),
                TargetFile {
                    length: signed.length,
                    sha256: sha256.clone(),
                },
            );
            names_to_paths.insert(name.clone(), p.to_string());
        }
        let rollouts = ours
            .get("rollouts")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no rollouts".into()))?;
        for ro in rollouts {
            out.push(TufRelease {
                release: rollout(&model, &version, &names_to_paths, ro).map_err(bad)?,
                files: files.clone(),
            });
        }
    }
    Ok(out)
}

fn rollout(
    model: &str,
    version: &str,
    files: &BTreeMap<String, String>,
    ro: &Value,
) -> Result<Release, String> {
    let channel = ro
        .get("channel")
        .and_then(Value::as_str)
        .ok_or("a rollout has no channel")?;
    let groups = ro
        .get("groups")
        .and_then(Value::as_array)
        .ok_or("a rollout has no groups list")?
        .iter()
        .map(|g| g.as_str().map(str::to_string))
        .collect::<Option<Vec<_>>>()
        .ok_or("a rollout's groups are not strings")?;
    let percent = ro
        .get("percent")
        .and_then(Value::as_u64)
        .filter(|p| *p <= 100)
        .ok_or("a rollout's percent is not 0-100")?;
    let withdrawn = ro
        .get("withdrawn")
        .and_then(Value::as_bool)
        .ok_or("a rollout's withdrawn is not a boolean")?;
    Ok(Release {
        model: model.to_string(),
        version: version.to_string(),
        channel: channel.to_string(),
        groups,
        percent: percent as u8,
        files: files.clone(),
        withdrawn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(sha: &str) -> TargetFile {
        TargetFile {
            length: 3,
            sha256: sha.repeat(64),
        }
    }

    fn release(version: &str, channel: &str, manifest: &str) -> Release {
        Release {
            model: "m".into(),
            version: version.into(),
            channel: channel.into(),
            groups: vec!["north".into()],
            percent: 10,
            files: [
                (
                    "manifest.json".to_string(),
                    format!("sha256/{}", manifest.repeat(64)),
                ),
                (
                    "head.onnx".to_string(),
                    format!("sha256/{}", "c".repeat(64)),
                ),
            ]
            .into(),
            withdrawn: channel == "canary",
        }
    }

    #[test]
    fn releases_round_trip_through_custom_and_never_share_a_path() {
        let old = Targets {
            type_: "targets".into(),
            version: 3,
            expires: String::new(),
            targets: ["a", "b", "c"]
                .iter()
                .map(|h| (format!("sha256/{}", h.repeat(64)), file(h)))
                .collect(),
            releases: vec![
                release("1.0.0", "stable", "a"),
                release("1.0.0", "canary", "a"),
                release("1.0.0", "beta", "b"),
            ],
        };
        let map = tuf_targets(&old);
        assert!(map.contains_key("models/m/1.0.0/head.onnx"), "{map:?}");
        let other = format!("models/m/1.0.0~{}/manifest.json", "b".repeat(12));
        assert!(map.contains_key(&other), "{map:?}");
        let signed = json!({"_type": "targets", "spec_version": "1.0.31", "version": 3,
            "expires": "2030-01-01T00:00:00Z", "targets": map});
        let t = TufTargets::from_signed("targets", &signed).unwrap();
        let mut got = releases_from(&t).unwrap();
        got.sort_by(|a, b| a.release.channel.cmp(&b.release.channel));
        let channels: Vec<_> = got.iter().map(|r| r.release.channel.as_str()).collect();
        assert_eq!(channels, ["beta", "canary", "stable"]);
        let stable = &got[2].release;
        assert_eq!((stable.percent, stable.withdrawn), (10, false));
        assert_eq!(stable.groups, ["north"]);
        assert!(got[1].release.withdrawn);
        assert_eq!(
            stable.files["head.onnx"], "models/m/1.0.0/head.onnx",
            "files are TUF target paths"
        );
        assert_eq!(got[2].files["models/m/1.0.0/head.onnx"], file("c"));
    }

    #[test]
    fn a_release_naming_an_unsigned_file_is_refused() {
        let signed = json!({"_type": "targets", "spec_version": "1.0.31", "version": 1,
            "expires": "2030-01-01T00:00:00Z", "targets": {
                "models/m/1/manifest.json": {"length": 1, "hashes": {"sha256": "00"},
                    "custom": {"outpost": {"model": "m", "version": "1",
                        "files": {"head.onnx": "models/m/1/head.onnx"}, "rollouts": []}}}}});
        let t = TufTargets::from_signed("targets", &signed).unwrap();
        let err = releases_from(&t).unwrap_err();
        assert!(err.reason.contains("not signed"), "{err}");
    }
}
