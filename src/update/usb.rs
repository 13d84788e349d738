//! A model update carried on a USB stick, for sites with no network at all: one file with
//! the signed metadata chain and the bundle's files. `outpost-server models export-usb`
//! writes it; `outpost models install FILE` verifies it exactly as an online update (root
//! chain from the pinned root, signatures, thresholds, versions, file hashes and lengths,
//! staging, golden cases, atomic switch).
//!
//! One relaxation, because a stick travels for days: the short-lived timestamp and snapshot
//! may have expired on the way (they are checked at their own expiry, so their versions
//! still may not go back); root and targets must be unexpired at the trusted time. The
//! relaxation is bounded: a file whose signed timestamp expired more than
//! `update.usb_max_stale_days` ago (7 by default) is refused, since a release it carries may
//! have been withdrawn since; `--allow-stale` overrides that, with a warning, recorded as an
//! `override` model event and reported to the server.
//!
//! The header only says which release the file carries: whether this device should run it
//! is decided by the same rules as online ([`super::targeting`]), from the signed targets
//! inside the file, this agent's channel, its verified group and its own device id.
//!
//! Format: the line `OUTPOST-UPDATE 1`, one line of JSON ([`Header`]), then each entry's
//! bytes in order.

use super::local::Installed;
use super::run::{install_release, prepare, UpdateOptions, UpdateReport};
use super::targeting::{self, Device};
use super::{clock_now, io, trust_store, ActiveModels, UpdateError};
use crate::store::Store;
use crate::trust::{parse, Snapshot, Timestamp};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Read, Write};
use std::path::Path;

const MAGIC: &str = "OUTPOST-UPDATE 1";
/// Largest header line.
const MAX_HEADER: u64 = 4 << 20;
/// Largest metadata entry.
const MAX_META: u64 = 16 << 20;

/// The header of an update file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// Model.
    pub model: String,
    /// Version.
    pub version: String,
    /// Entries in the order their bytes follow.
    pub entries: Vec<Entry>,
}

/// One entry: `metadata/<name>.json` or `targets/sha256/<hash>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Name.
    pub name: String,
    /// Length in bytes.
    pub length: u64,
}

fn bad(path: &Path, reason: impl Into<String>) -> UpdateError {
    UpdateError::UsbFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Writes the update file for `model` `version` from a server's repository folder
/// (`<server data>/repo`). Returns the number of bytes written.
pub fn write(repo: &Path, model: &str, version: &str, out: &Path) -> Result<u64, UpdateError> {
    let meta = repo.join("metadata");
    let targets_bytes = std::fs::read(meta.join("targets.json")).map_err(io(&meta))?;
    let targets = parse::<crate::trust::Targets>(&targets_bytes)?.signed;
    let release = targets
        .releases
        .iter()
        .find(|r| r.model == model && r.version == version)
        .ok_or_else(|| {
            UpdateError::Refused(format!("{model} {version} is not a published release"))
        })?;
    if release.withdrawn {
        return Err(UpdateError::Refused(format!(
            "{model} {version} was withdrawn"
        )));
    }
    let mut entries: Vec<(String, std::path::PathBuf)> = Vec::new();
    let mut n = 1;
    while meta.join(format!("{n}.root.json")).is_file() {
        entries.push((
            format!("metadata/{n}.root.json"),
            meta.join(format!("{n}.root.json")),
        ));
        n += 1;
    }
    for m in ["timestamp.json", "snapshot.json", "targets.json"] {
        entries.push((format!("metadata/{m}"), meta.join(m)));
    }
    let mut seen = std::collections::BTreeSet::new();
    for target in release.files.values() {
        if seen.insert(target.clone()) {
            entries.push((
                format!("targets/{target}"),
                repo.join("targets").join(target),
            ));
        }
    }
    let mut header = Header {
        model: model.into(),
        version: version.into(),
        entries: Vec::new(),
    };
    for (name, path) in &entries {
        let len = std::fs::metadata(path).map_err(io(path))?.len();
        header.entries.push(Entry {
            name: name.clone(),
            length: len,
        });
    }
    let tmp = out.with_extension("partial");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io(&tmp))?);
    writeln!(f, "{MAGIC}").map_err(io(&tmp))?;
    serde_json::to_writer(&mut f, &header).map_err(|e| bad(out, e.to_string()))?;
    writeln!(f).map_err(io(&tmp))?;
    for (_, path) in &entries {
        let mut src = std::fs::File::open(path).map_err(io(path))?;
        std::io::copy(&mut src, &mut f).map_err(io(&tmp))?;
    }
    let file = f.into_inner().map_err(|e| bad(out, e.to_string()))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, out).map_err(io(out))?;
    Ok(std::fs::metadata(out).map(|m| m.len()).unwrap_or(0))
}

/// Installs the release an update file carries, if it is for this device. `allow_stale`:
/// the operator's override of the staleness bound. Returns what was done.
pub async fn install(
    opts: &UpdateOptions,
    file: &Path,
    active: Option<&ActiveModels>,
    allow_stale: bool,
) -> Result<UpdateReport, UpdateError> {
    let (root, installed, _lock) = prepare(opts)?;
    let result = install_inner(opts, &installed, &root, file, active, allow_stale).await;
    if let Err(e) = &result {
        let _ = super::run::record(
            &opts.database,
            "",
            None,
            "refused",
            &format!("USB update {}: {e}", file.display()),
        );
    }
    result
}

async fn install_inner(
    opts: &UpdateOptions,
    installed: &Installed,
    root: &Path,
    file: &Path,
    active: Option<&ActiveModels>,
    allow_stale: bool,
) -> Result<UpdateReport, UpdateError> {
    let f = std::fs::File::open(file).map_err(io(file))?;
    let mut r = std::io::BufReader::new(f);
    let mut magic = String::new();
    (&mut r).take(64).read_line(&mut magic).map_err(io(file))?;
    if magic.trim_end() != MAGIC {
        return Err(bad(file, "not an Outpost update file"));
    }
    let mut line = String::new();
    (&mut r)
        .take(MAX_HEADER)
        .read_line(&mut line)
        .map_err(io(file))?;
    let header: Header =
        serde_json::from_str(line.trim_end()).map_err(|e| bad(file, format!("header: {e}")))?;
    let mut meta = std::collections::BTreeMap::new();
    let mut blobs = Vec::new();
    for e in &header.entries {
        if let Some(name) = e.name.strip_prefix("metadata/") {
            if e.length > MAX_META {
                return Err(bad(file, format!("{} is too large", e.name)));
            }
            let mut b = Vec::with_capacity(e.length as usize);
            (&mut r)
                .take(e.length)
                .read_to_end(&mut b)
                .map_err(io(file))?;
            if b.len() as u64 != e.length {
                return Err(bad(file, format!("{} is cut short", e.name)));
            }
            meta.insert(name.to_string(), b);
        } else if let Some(target) = e.name.strip_prefix("targets/") {
            let hash = target
                .strip_prefix("sha256/")
                .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
                .ok_or_else(|| bad(file, format!("entry {} is not content-addressed", e.name)))?;
            let tmp = installed.partial_path(&format!("{hash}.usb"));
            if let Some(d) = tmp.parent() {
                std::fs::create_dir_all(d).map_err(io(d))?;
            }
            let mut out = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            let n = std::io::copy(&mut (&mut r).take(e.length), &mut out).map_err(io(&tmp))?;
            if n != e.length {
                return Err(bad(file, format!("{} is cut short", e.name)));
            }
            blobs.push((target.to_string(), hash.to_ascii_lowercase(), tmp));
        } else {
            return Err(bad(file, format!("unknown entry {}", e.name)));
        }
    }
    let mut state = trust_store::load(root, &opts.data_dir)?;
    let mut rn: Vec<(u64, &Vec<u8>)> = meta
        .iter()
        .filter_map(|(k, v)| {
            k.strip_suffix(".root.json")
                .and_then(|n| n.parse::<u64>().ok())
                .map(|n| (n, v))
        })
        .collect();
    rn.sort();
    for (n, bytes) in rn {
        if n > state.root.signed.version {
            state.update_root(bytes)?;
        }
    }
    let clock = clock_now();
    state.check_root(clock)?;
    let get = |name: &str| {
        meta.get(name)
            .ok_or_else(|| bad(file, format!("no metadata/{name}")))
    };
    let ts = get("timestamp.json")?;
    let ts_exp = parse::<Timestamp>(ts)?.signed.expires;
    let now = state.trusted_now(clock);
    state.update_timestamp(ts, clock.min(at_expiry(&ts_exp)?))?;
    let overrides = staleness(opts, file, &ts_exp, now, allow_stale)?;
    let sn = get("snapshot.json")?;
    let sn_exp = parse::<Snapshot>(sn)?.signed.expires;
    state.update_snapshot(sn, clock.min(at_expiry(&sn_exp)?))?;
    state.update_targets(get("targets.json")?, clock)?;
    trust_store::save(&state, &opts.data_dir)?;
    let targets = &state
        .targets
        .as_ref()
        .ok_or_else(|| bad(file, "no targets"))?
        .signed;
    for (target, hash, tmp) in blobs {
        let Some(entry) = targets.targets.get(&target) else {
            let _ = std::fs::remove_file(&tmp);
            continue;
        };
        let (sha, len) = crate::hash::sha256_file(&tmp).map_err(io(&tmp))?;
        if sha != entry.sha256 || len != entry.length || sha != hash {
            let _ = std::fs::remove_file(&tmp);
            return Err(UpdateError::File {
                target,
                reason: format!(
                    "{len} bytes with sha256 {sha}; the signed metadata says {} bytes with sha256 {}",
                    entry.length, entry.sha256
                ),
            });
        }
        installed.add_blob(&sha, &tmp, true)?;
    }
    let release = targets
        .releases
        .iter()
        .find(|r| r.model == header.model && r.version == header.version)
        .ok_or_else(|| {
            bad(
                file,
                format!(
                    "{} {} is not in the signed targets",
                    header.model, header.version
                ),
            )
        })?;
    let store = Store::open(&opts.database)?;
    let (device_id, group) = (
        store.state("device_id").map_err(super::run::state_error)?,
        store
            .state(targeting::VERIFIED_GROUP_KEY)
            .map_err(super::run::state_error)?,
    );
    let device = Device {
        channel: &opts.channel,
        group: group.as_deref(),
        device_id: device_id.as_deref(),
    };
    if let Some(why) = targeting::why_not(release, &device) {
        return Err(UpdateError::Refused(format!(
            "{} {} {why}: the update file is not for this device",
            release.model, release.version
        )));
    }
    let st = installed.state(&release.model);
    if let Some(p) = st.pinned {
        return Err(UpdateError::Refused(format!(
            "{} is pinned at {p}; `outpost models unpin {}` first",
            release.model, release.model
        )));
    }
    let current = installed.active(&release.model);
    if current.as_deref() == Some(release.version.as_str()) {
        return Ok(UpdateReport {
            root_version: state.root.signed.version,
            targets_version: Some(targets.version),
            unchanged: vec![format!("{}: {} is current", release.model, release.version)],
            ..Default::default()
        });
    }
    if let Some(why) = targeting::downgrade(targets, release, current.as_deref(), &device) {
        return Err(UpdateError::Refused(why));
    }
    for o in &overrides {
        super::run::record(
            &opts.database,
            &release.model,
            Some(&release.version),
            "override",
            o,
        )?;
    }
    let mut report = UpdateReport {
        root_version: state.root.signed.version,
        targets_version: Some(targets.version),
        overrides,
        ..Default::default()
    };
    install_release(opts, installed, release, targets, None, active, &mut report).await?;
    Ok(report)
}

/// The staleness bound: a file whose signed timestamp expired more than
/// `opts.limits.usb_max_stale` before the trusted time `now` is refused, unless
/// `allow_stale`; then the override is returned, to be said and recorded.
fn staleness(
    opts: &UpdateOptions,
    file: &Path,
    ts_expires: &str,
    now: time::OffsetDateTime,
    allow_stale: bool,
) -> Result<Vec<String>, UpdateError> {
    let expired = at_expiry(ts_expires)? + time::Duration::seconds(1);
    let max = opts.limits.usb_max_stale;
    let age = now - expired;
    if age <= time::Duration::try_from(max).unwrap_or(time::Duration::MAX) {
        return Ok(vec![]);
    }
    let days = |d: f64| format!("{:.1} days", d / 86_400.0);
    let said = format!(
        "its signed timestamp expired {} ago ({ts_expires}), more than the {} allowed (update.usb_max_stale_days)",
        days(age.as_seconds_f64()),
        days(max.as_secs_f64())
    );
    if !allow_stale {
        return Err(bad(
            file,
            format!("{said}: a release it carries may have been withdrawn since. Bring a fresh file, or install this one anyway with `outpost models install --allow-stale FILE` (recorded and reported)"),
        ));
    }
    let o = format!(
        "stale update file {} installed by operator override (--allow-stale): {said}",
        file.display()
    );
    tracing::warn!("{o}");
    Ok(vec![o])
}

fn at_expiry(expires: &str) -> Result<time::OffsetDateTime, UpdateError> {
    time::OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339)
        .map(|t| t - time::Duration::seconds(1))
        .map_err(|e| {
            UpdateError::Trust(crate::trust::TrustError::Malformed {
                role: "timestamp".into(),
                reason: e.to_string(),
            })
        })
}
