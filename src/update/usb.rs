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
//! Format: the line `OUTPOST-UPDATE 2`, one line of JSON ([`Header`]), then each entry's
//! bytes in order: `tuf/<file>` (TUF 1.0 metadata, verified by [`crate::trust::tuf`] as
//! online), `metadata/N.root.json` (roots of the format before TUF, for an agent still
//! pinned to one: it moves onto TUF from the file alone, [`super::verified`]) and
//! `targets/sha256/<hash>` (the release's files). Files of version 1 (before TUF) are
//! refused with what to do.

use super::local::Installed;
use super::run::{install_release, prepare, UpdateOptions, UpdateReport};
use super::targeting::{self, Device};
use super::tuf_client::DirStore;
use super::{clock_now, io, trust_store, verified, ActiveModels, UpdateError};
use crate::store::Store;
use crate::trust::releases::releases_from;
use crate::trust::tuf::metadata::{Envelope, Targets as TufTargets};
use crate::trust::tuf::trusted::TrustedSet;
use crate::trust::tuf::updater::{FetchError, Fetcher, Limits, MetadataStore, Updater};
use crate::trust::tuf::TufError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::Path;
use time::OffsetDateTime;

/// The first line of an update file (version 2: TUF 1.0 metadata).
const MAGIC: &str = "OUTPOST-UPDATE 2";
/// Files written before TUF metadata (refused with what to do).
const OLD_MAGIC: &str = "OUTPOST-UPDATE 1";
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

/// One entry: `tuf/<name>.json`, `metadata/N.root.json` or `targets/sha256/<hash>`.
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

fn read_tuf(tuf: &Path, file: &str) -> Result<(Vec<u8>, serde_json::Value), UpdateError> {
    let path = tuf.join(file);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(&path, e.to_string()))?;
    Ok((bytes, v))
}

fn pinned_version(doc: &serde_json::Value, role: &str, path: &Path) -> Result<u64, UpdateError> {
    doc["signed"]["meta"][format!("{role}.json")]["version"]
        .as_u64()
        .ok_or_else(|| bad(path, format!("pins no {role} version")))
}

/// Writes the update file for `model` `version` from a server's repository folder
/// (`<server data>/repo`): the TUF metadata chain (every TUF root version, the timestamp
/// and the snapshot and targets it leads to), the root versions of the format before TUF
/// (an agent still pinned to it moves onto TUF from the file alone), and the release's
/// files. Returns the number of bytes written.
pub fn write(repo: &Path, model: &str, version: &str, out: &Path) -> Result<u64, UpdateError> {
    let tuf = repo.join("tuf");
    let (_, ts) = read_tuf(&tuf, "timestamp.json")?;
    let sv = pinned_version(&ts, "snapshot", &tuf)?;
    let (_, sn) = read_tuf(&tuf, &format!("{sv}.snapshot.json"))?;
    let tv = pinned_version(&sn, "targets", &tuf)?;
    let (_, tg) = read_tuf(&tuf, &format!("{tv}.targets.json"))?;
    let targets = TufTargets::from_signed("targets", &tg["signed"]).map_err(UpdateError::Tuf)?;
    let releases = releases_from(&targets)
        .map_err(|e| UpdateError::Tuf(TufError::malformed("targets", e.to_string())))?;
    let mine: Vec<_> = releases
        .iter()
        .filter(|r| r.release.model == model && r.release.version == version)
        .collect();
    let release = match mine.iter().find(|r| !r.release.withdrawn) {
        Some(r) => r,
        None if mine.is_empty() => {
            return Err(UpdateError::Refused(format!(
                "{model} {version} is not a published release"
            )))
        }
        None => {
            return Err(UpdateError::Refused(format!(
                "{model} {version} was withdrawn"
            )))
        }
    };
    let mut entries: Vec<(String, std::path::PathBuf)> = Vec::new();
    let meta = repo.join("metadata");
    for n in 1.. {
        let p = meta.join(format!("{n}.root.json"));
        if !p.is_file() {
            break;
        }
        entries.push((format!("metadata/{n}.root.json"), p));
    }
    // A repository from before TUF signed its first TUF root at a later root version.
    let legacy_roots = entries.len();
    let mut found = false;
    for n in 1.. {
        let p = tuf.join(format!("{n}.root.json"));
        if p.is_file() {
            entries.push((format!("tuf/{n}.root.json"), p));
            found = true;
        } else if found || n > legacy_roots {
            break;
        }
    }
    for m in [
        "timestamp.json".to_string(),
        format!("{sv}.snapshot.json"),
        format!("{tv}.targets.json"),
    ] {
        entries.push((format!("tuf/{m}"), tuf.join(&m)));
    }
    let mut seen = std::collections::BTreeSet::new();
    for file in release.files.values() {
        let target = format!("sha256/{}", file.sha256.to_ascii_lowercase());
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

/// What an update file holds, read and bounded but not yet verified.
struct Entries {
    /// Root versions of the format before TUF, by file name.
    legacy: BTreeMap<String, Vec<u8>>,
    /// TUF metadata, by file name.
    tuf: BTreeMap<String, Vec<u8>>,
    /// (sha256, where its bytes were copied).
    blobs: Vec<(String, std::path::PathBuf)>,
}

fn read_header(file: &Path, r: &mut impl BufRead) -> Result<Header, UpdateError> {
    let mut magic = String::new();
    r.by_ref()
        .take(64)
        .read_line(&mut magic)
        .map_err(io(file))?;
    match magic.trim_end() {
        MAGIC => {}
        OLD_MAGIC => {
            return Err(bad(
                file,
                "an update file from a server before TUF metadata: export it again with \
                 `outpost-server models export-usb` on a current server",
            ))
        }
        _ => return Err(bad(file, "not an Outpost update file")),
    }
    let mut line = String::new();
    r.by_ref()
        .take(MAX_HEADER)
        .read_line(&mut line)
        .map_err(io(file))?;
    serde_json::from_str(line.trim_end()).map_err(|e| bad(file, format!("header: {e}")))
}

fn read_meta(file: &Path, r: &mut impl Read, e: &Entry) -> Result<Vec<u8>, UpdateError> {
    if e.length > MAX_META {
        return Err(bad(file, format!("{} is too large", e.name)));
    }
    let mut b = Vec::with_capacity(e.length as usize);
    r.by_ref()
        .take(e.length)
        .read_to_end(&mut b)
        .map_err(io(file))?;
    if b.len() as u64 != e.length {
        return Err(bad(file, format!("{} is cut short", e.name)));
    }
    Ok(b)
}

fn read_entries(
    file: &Path,
    r: &mut impl BufRead,
    header: &Header,
    installed: &Installed,
) -> Result<Entries, UpdateError> {
    let mut out = Entries {
        legacy: BTreeMap::new(),
        tuf: BTreeMap::new(),
        blobs: Vec::new(),
    };
    for e in &header.entries {
        if let Some(name) = e.name.strip_prefix("metadata/") {
            out.legacy.insert(name.to_string(), read_meta(file, r, e)?);
        } else if let Some(name) = e.name.strip_prefix("tuf/") {
            out.tuf.insert(name.to_string(), read_meta(file, r, e)?);
        } else if let Some(target) = e.name.strip_prefix("targets/") {
            let hash = target
                .strip_prefix("sha256/")
                .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
                .ok_or_else(|| bad(file, format!("entry {} is not content-addressed", e.name)))?;
            let tmp = installed.partial_path(&format!("{hash}.usb"));
            if let Some(d) = tmp.parent() {
                std::fs::create_dir_all(d).map_err(io(d))?;
            }
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            let n = std::io::copy(&mut r.by_ref().take(e.length), &mut f).map_err(io(&tmp))?;
            if n != e.length {
                return Err(bad(file, format!("{} is cut short", e.name)));
            }
            out.blobs.push((hash.to_ascii_lowercase(), tmp));
        } else {
            return Err(bad(file, format!("unknown entry {}", e.name)));
        }
    }
    Ok(out)
}

/// TUF metadata served from an update file's entries (file name -> bytes).
struct FileFetcher<'a>(&'a BTreeMap<String, Vec<u8>>);

impl Fetcher for FileFetcher<'_> {
    async fn fetch(&self, url: &str, max_len: u64) -> Result<Vec<u8>, FetchError> {
        match self.0.get(url.trim_start_matches('/')) {
            None => Err(FetchError::NotFound),
            Some(b) if b.len() as u64 > max_len => Err(FetchError::TooLarge { max: max_len }),
            Some(b) => Ok(b.clone()),
        }
    }
}

/// The signed expiry of TUF document `name` in the file (read before verification only to
/// choose the time the short-lived roles are checked at; the signature check follows).
fn expiry_of(entries: &Entries, file: &Path, name: &str) -> Result<OffsetDateTime, UpdateError> {
    let b = entries
        .tuf
        .get(name)
        .ok_or_else(|| bad(file, format!("no tuf/{name}")))?;
    let env = Envelope::parse(name, b).map_err(UpdateError::Tuf)?;
    let expires = env.signed["expires"].as_str().unwrap_or_default();
    OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339)
        .map_err(|e| bad(file, format!("tuf/{name} expires {expires:?}: {e}")))
}

/// The first TUF root from the file alone: the pinned root if it is TUF's, else the walk
/// of the format before TUF through the file's root versions and the signed transition
/// ([`verified::transition`]).
fn initial_root(
    opts: &UpdateOptions,
    pinned_root: &Path,
    file: &Path,
    entries: &Entries,
    now: OffsetDateTime,
) -> Result<Vec<u8>, UpdateError> {
    let pinned = std::fs::read(pinned_root).map_err(|e| UpdateError::PinnedRoot {
        path: pinned_root.to_path_buf(),
        reason: e.to_string(),
    })?;
    if verified::is_tuf(&pinned) {
        TrustedSet::new(&pinned, now).map_err(|e| UpdateError::PinnedRoot {
            path: pinned_root.to_path_buf(),
            reason: e.to_string(),
        })?;
        return Ok(pinned);
    }
    let mut state = trust_store::load(pinned_root, &opts.data_dir)?;
    let mut rn: Vec<(u64, &Vec<u8>)> = entries
        .legacy
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
    trust_store::save(&state, &opts.data_dir)?;
    let v = state.root.signed.version;
    let bytes = entries.tuf.get(&format!("{v}.root.json")).ok_or_else(|| {
        bad(
            file,
            format!("no TUF root version {v}: this agent's pinned root predates TUF and moves onto it through that root (export the file again from a current server)"),
        )
    })?;
    verified::transition(&state.root.signed, bytes, now).map_err(UpdateError::Tuf)?;
    Ok(bytes.clone())
}

/// Verifies the file's TUF metadata as an online refresh does, with one relaxation (module
/// doc): the timestamp and snapshot are checked just before their own expiry, root and
/// targets at the trusted time, and the staleness bound applies.
async fn verify(
    opts: &UpdateOptions,
    pinned_root: &Path,
    file: &Path,
    entries: &Entries,
    allow_stale: bool,
) -> Result<(verified::Verified, Vec<String>), UpdateError> {
    let now = clock_now().max(verified::time_floor(&opts.data_dir));
    let store = DirStore::new(&verified::tuf_dir(&opts.data_dir)).map_err(UpdateError::Tuf)?;
    if store.load("root").map_err(UpdateError::Tuf)?.is_none() {
        let root = initial_root(opts, pinned_root, file, entries, now)?;
        store.save("root", &root).map_err(UpdateError::Tuf)?;
    }
    let ts_exp = expiry_of(entries, file, "timestamp.json")?;
    let second = time::Duration::seconds(1);
    let mut at = now.min(ts_exp - second);
    let sv = entries
        .tuf
        .get("timestamp.json")
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v["signed"]["meta"]["snapshot.json"]["version"].as_u64());
    if let Some(sv) = sv {
        at = at.min(expiry_of(entries, file, &format!("{sv}.snapshot.json"))? - second);
    }
    let fetcher = FileFetcher(&entries.tuf);
    let mut up =
        Updater::new(fetcher, store, "", Limits::default(), at).map_err(UpdateError::Tuf)?;
    up.refresh().await.map_err(UpdateError::Tuf)?;
    let set = up.trusted();
    let root = &set.root().common;
    let targets = set
        .targets("targets", "root")
        .map(|t| t.common.clone())
        .ok_or_else(|| bad(file, "no targets"))?;
    for (role, c) in [("root", root), ("targets", &targets)] {
        if c.is_expired(now) {
            return Err(UpdateError::Tuf(TufError::Expired {
                role: role.into(),
                expires: crate::trust::tuf::metadata::format_expires(c.expires),
            }));
        }
    }
    let overrides = staleness(opts, file, ts_exp, now, allow_stale)?;
    // The floor rises to the time the file was checked at, not to the clock: a laptop whose
    // clock ran ahead while installing a stick must not be locked out of fresher files.
    verified::save_floor(&opts.data_dir, at)?;
    Ok((verified::Verified::from_set(set)?, overrides))
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
    let header = read_header(file, &mut r)?;
    let entries = read_entries(file, &mut r, &header, installed)?;
    let (verified, overrides) = verify(opts, root, file, &entries, allow_stale).await?;
    let targets = &verified.targets;
    let by_hash: BTreeMap<String, &crate::trust::TargetFile> = targets
        .targets
        .values()
        .map(|t| (t.sha256.to_ascii_lowercase(), t))
        .collect();
    for (hash, tmp) in entries.blobs {
        let Some(entry) = by_hash.get(&hash) else {
            let _ = std::fs::remove_file(&tmp);
            continue;
        };
        let (sha, len) = crate::hash::sha256_file(&tmp).map_err(io(&tmp))?;
        if sha != entry.sha256 || len != entry.length {
            let _ = std::fs::remove_file(&tmp);
            return Err(UpdateError::File {
                target: format!("sha256/{hash}"),
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
            root_version: verified.root_version,
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
        root_version: verified.root_version,
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
    ts_expires: OffsetDateTime,
    now: OffsetDateTime,
    allow_stale: bool,
) -> Result<Vec<String>, UpdateError> {
    let max = opts.limits.usb_max_stale;
    let age = now - ts_expires;
    if age <= time::Duration::try_from(max).unwrap_or(time::Duration::MAX) {
        return Ok(vec![]);
    }
    let days = |d: f64| format!("{:.1} days", d / 86_400.0);
    let said = format!(
        "its signed timestamp expired {} ago ({}), more than the {} allowed (update.usb_max_stale_days)",
        days(age.as_seconds_f64()),
        crate::trust::tuf::metadata::format_expires(ts_expires),
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
