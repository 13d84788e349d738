//! Publishing: a bundle becomes a signed release (its files stored once by content, new
//! targets, snapshot and timestamp metadata), releases are restaged or withdrawn, and the
//! day-long timestamp is re-signed before it expires.

use super::keys::online_key;
use super::read::current_targets;
use super::{expires_in, io, PublishError, Repository};
use crate::trust::{sign, MetaFile, Release, Signed, Snapshot, TargetFile, Targets, Timestamp};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Publishes a bundle folder as a release to `channel` (and `groups`, `percent`): copies
/// its files by content into the repository, adds the release to targets, and signs new
/// targets, snapshot and timestamp. Returns the new targets version.
pub fn publish(
    repo: &Repository,
    bundle_dir: &Path,
    channel: &str,
    groups: &[String],
    percent: u8,
) -> Result<u64, PublishError> {
    publish_if(repo, &|| true, bundle_dir, channel, groups, percent)
}

/// Who a release targets, in words: `all groups`, or `groups a, b` (never a raw `[]`).
pub fn audience(groups: &[String]) -> String {
    if groups.is_empty() {
        "all groups".to_string()
    } else {
        format!("groups {}", groups.join(", "))
    }
}

/// [`publish`], asking `still_ours` once the repository lease is held and before anything
/// is written: a training run whose job another process took over answers false, and then
/// nothing is published ([`PublishError::LeaseLost`]).
pub fn publish_if(
    repo: &Repository,
    still_ours: &dyn Fn() -> bool,
    bundle_dir: &Path,
    channel: &str,
    groups: &[String],
    percent: u8,
) -> Result<u64, PublishError> {
    let bundle = crate::model::Bundle::open(bundle_dir)?;
    let m = &bundle.manifest;
    let _guard = repo.lock()?;
    if !still_ours() {
        return Err(PublishError::LeaseLost);
    }
    let prev: Option<Signed<Targets>> = repo.read_signed("targets.json")?;
    let mut targets = prev.as_ref().map(|t| t.signed.clone()).unwrap_or(Targets {
        type_: "targets".into(),
        version: 0,
        expires: String::new(),
        targets: BTreeMap::new(),
        releases: vec![],
    });
    if let Some(newest) = targets
        .releases
        .iter()
        .filter(|r| r.model == m.name && r.channel == channel)
        .filter_map(|r| crate::model::manifest::parse_version(&r.version))
        .max()
    {
        if crate::model::manifest::parse_version(&m.version) <= Some(newest) {
            return Err(PublishError::NotNewer {
                model: m.name.clone(),
                version: m.version.clone(),
                published: format!("{}.{}.{}", newest.0, newest.1, newest.2),
            });
        }
    }
    let mut files = BTreeMap::new();
    let mut all: Vec<(String, PathBuf)> = m
        .files
        .keys()
        .map(|f| (f.clone(), bundle.path(f)))
        .collect();
    all.push(("manifest.json".into(), bundle.path("manifest.json")));
    for (name, path) in all {
        let (sha, len) = crate::hash::sha256_file(&path).map_err(io(&path))?;
        let target = format!("sha256/{sha}");
        // Content-addressed: a file already there (the backbone of the last release) is
        // not sent again; two processes writing the same file write the same bytes.
        repo.blobs
            .put_file_new(&format!("targets/{target}"), &path)?;
        targets.targets.insert(
            target.clone(),
            TargetFile {
                length: len,
                sha256: sha,
            },
        );
        files.insert(name, target);
    }
    targets.releases.push(Release {
        model: m.name.clone(),
        version: m.version.clone(),
        channel: channel.into(),
        groups: groups.to_vec(),
        percent: percent.min(100),
        files,
        withdrawn: false,
    });
    targets.version += 1;
    targets.expires = expires_in(90);
    sign_chain(repo, targets)
}

/// Signs `targets` and a matching snapshot and timestamp, and writes all three. The caller
/// holds the repository lease.
pub(super) fn sign_chain(repo: &Repository, mut targets: Targets) -> Result<u64, PublishError> {
    let data_dir = repo.data_dir();
    targets.version = repo.next_free("targets", targets.version)?;
    let version = targets.version;
    let tg = sign(targets, &[&online_key(data_dir, "targets")?]);
    let prev_sn: Option<Signed<Snapshot>> = repo.read_signed("snapshot.json")?;
    let prev_ts: Option<Signed<Timestamp>> = repo.read_signed("timestamp.json")?;
    let mut sm = BTreeMap::new();
    sm.insert(
        "targets.json".to_string(),
        MetaFile {
            version,
            sha256: None,
            length: None,
        },
    );
    let sn = sign(
        Snapshot {
            type_: "snapshot".into(),
            version: repo.next_free(
                "snapshot",
                prev_sn.map(|s| s.signed.version).unwrap_or(0) + 1,
            )?,
            expires: expires_in(30),
            meta: sm,
        },
        &[&online_key(data_dir, "snapshot")?],
    );
    let snb = serde_json::to_vec_pretty(&sn).unwrap_or_default();
    let mut tm = BTreeMap::new();
    tm.insert(
        "snapshot.json".to_string(),
        MetaFile {
            version: sn.signed.version,
            sha256: Some(crate::hash::sha256_hex(&snb)),
            length: Some(snb.len() as u64),
        },
    );
    let ts = sign(
        Timestamp {
            type_: "timestamp".into(),
            version: repo.next_free(
                "timestamp",
                prev_ts.map(|t| t.signed.version).unwrap_or(0) + 1,
            )?,
            expires: expires_in(1),
            meta: tm,
        },
        &[&online_key(data_dir, "timestamp")?],
    );
    let tgb = serde_json::to_vec_pretty(&tg).unwrap_or_default();
    let tsb = serde_json::to_vec_pretty(&ts).unwrap_or_default();
    // Each version once (put-if-absent): a process that lost a race stops here, before it
    // replaced anything another process signed.
    repo.claim_meta(&format!("{version}.targets.json"), tgb.clone())?;
    repo.claim_meta(&format!("{}.snapshot.json", sn.signed.version), snb.clone())?;
    repo.claim_meta(
        &format!("{}.timestamp.json", ts.signed.version),
        tsb.clone(),
    )?;
    // Targets and snapshot first, timestamp last: a client never sees a timestamp that
    // points at metadata not written yet.
    repo.write_meta("targets.json", tgb)?;
    repo.write_meta("snapshot.json", snb)?;
    repo.write_meta("timestamp.json", tsb)?;
    super::tuf::write_chain(
        repo,
        &super::tuf::Chain {
            targets: &tg.signed,
            snapshot_version: sn.signed.version,
            timestamp_version: ts.signed.version,
        },
    )?;
    Ok(version)
}

/// Changes the releases of `model` `version` (on `channel`, or every channel) with `change`,
/// and signs a new targets version. Errors if no release matched.
fn change_releases(
    repo: &Repository,
    model: &str,
    version: &str,
    channel: Option<&str>,
    change: impl Fn(&mut Release),
) -> Result<u64, PublishError> {
    let _guard = repo.lock()?;
    let mut targets = current_targets(repo)?;
    let mut hit = 0;
    for r in targets.releases.iter_mut().filter(|r| {
        r.model == model && r.version == version && channel.is_none_or(|c| r.channel == c)
    }) {
        change(r);
        hit += 1;
    }
    if hit == 0 {
        return Err(PublishError::NoRelease {
            model: model.into(),
            version: version.into(),
        });
    }
    targets.version += 1;
    targets.expires = expires_in(90);
    sign_chain(repo, targets)
}

/// Withdraws a release: agents stop installing it and those running it move to the newest
/// release that still applies to them. Its files stay (agents may still roll back to them).
pub fn withdraw(
    repo: &Repository,
    model: &str,
    version: &str,
    channel: Option<&str>,
) -> Result<u64, PublishError> {
    change_releases(repo, model, version, channel, |r| r.withdrawn = true)
}

/// Changes who a release goes to: its groups (if given) and its percentage.
pub fn restage(
    repo: &Repository,
    model: &str,
    version: &str,
    channel: Option<&str>,
    groups: Option<&[String]>,
    percent: u8,
) -> Result<u64, PublishError> {
    change_releases(repo, model, version, channel, |r| {
        if let Some(g) = groups {
            r.groups = g.to_vec();
        }
        r.percent = percent.min(100);
        r.withdrawn = false;
    })
}

fn timestamp_due(ts: &Signed<Timestamp>, margin: time::Duration) -> bool {
    let expires = time::OffsetDateTime::parse(
        &ts.signed.expires,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    expires - time::OffsetDateTime::now_utc() <= margin
}

/// Re-signs the timestamp (same snapshot) if it expires within `margin`: every serving
/// process calls this regularly so agents never see stale metadata from a live server.
/// Returns the new timestamp version, or `None` if it was fresh enough or another process
/// re-signed it first: the new version is written with put-if-absent as
/// `metadata/N.timestamp.json` before `timestamp.json`, so of the processes that find it
/// due at the same moment exactly one signs it. (With a database the check also runs
/// under the repository lease, so it is not even attempted twice.)
pub fn refresh_timestamp(
    repo: &Repository,
    margin: time::Duration,
) -> Result<Option<u64>, PublishError> {
    // A cheap look first, without the lease: almost always fresh.
    match repo.read_signed::<Timestamp>("timestamp.json")? {
        Some(ts) if timestamp_due(&ts, margin) => {}
        _ => return Ok(None),
    }
    let _guard = repo.lock()?;
    let Some(ts) = repo.read_signed::<Timestamp>("timestamp.json")? else {
        return Ok(None);
    };
    if !timestamp_due(&ts, margin) {
        return Ok(None);
    }
    let version = repo.next_free("timestamp", ts.signed.version + 1)?;
    let signed = sign(
        Timestamp {
            version,
            expires: expires_in(1),
            ..ts.signed
        },
        &[&online_key(repo.data_dir(), "timestamp")?],
    );
    let bytes = serde_json::to_vec_pretty(&signed).unwrap_or_default();
    if !repo
        .blobs
        .put_new(&format!("metadata/{version}.timestamp.json"), bytes.clone())?
    {
        tracing::debug!(version, "timestamp already re-signed by another process");
        return Ok(None);
    }
    repo.write_meta("timestamp.json", bytes)?;
    super::tuf::refresh_timestamp(repo, version)?;
    Ok(Some(version))
}
