//! TUF 1.0 metadata: the `{"signed", "signatures"}` envelope and typed views of the four
//! top-level roles and of delegated targets, read field by field from the received JSON.
//!
//! The envelope keeps the `signed` value exactly as received and its canonical bytes;
//! signatures are checked over those bytes ([`verify_threshold`]), so unknown fields are
//! signed too. The typed views only read what the client needs; what is stored is always the
//! received bytes, never a re-serialisation.

use super::canonical;
use super::keys::Key;
use super::TufError;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use time::OffsetDateTime;

/// The four top-level roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TopRole {
    /// `root`.
    Root,
    /// `timestamp`.
    Timestamp,
    /// `snapshot`.
    Snapshot,
    /// `targets`.
    Targets,
}

impl TopRole {
    /// The role's name (also its `_type`).
    pub fn name(self) -> &'static str {
        match self {
            TopRole::Root => "root",
            TopRole::Timestamp => "timestamp",
            TopRole::Snapshot => "snapshot",
            TopRole::Targets => "targets",
        }
    }
}

/// A received document: `signed` as received, its canonical bytes and its signatures.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The `signed` value, unknown fields included.
    pub signed: Value,
    /// Canonical JSON of `signed`: what the signatures cover.
    pub canonical: Vec<u8>,
    /// key id -> hex signature (a key id may appear once).
    pub signatures: BTreeMap<String, String>,
}

impl Envelope {
    /// Parses a document of role `role` (a role name, for messages).
    pub fn parse(role: &str, bytes: &[u8]) -> Result<Envelope, TufError> {
        let bad = |reason: String| TufError::malformed(role, reason);
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let obj = doc
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let signed = obj
            .get("signed")
            .filter(|s| s.is_object())
            .ok_or_else(|| bad("no \"signed\" object".into()))?
            .clone();
        let sigs = obj
            .get("signatures")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no \"signatures\" list".into()))?;
        let mut signatures = BTreeMap::new();
        for s in sigs {
            let keyid = s.get("keyid").and_then(Value::as_str);
            let sig = s.get("sig").and_then(Value::as_str);
            let (Some(keyid), Some(sig)) = (keyid, sig) else {
                return Err(bad("a signature lacks \"keyid\" or \"sig\"".into()));
            };
            if signatures
                .insert(keyid.to_string(), sig.to_string())
                .is_some()
            {
                return Err(bad(format!("two signatures by key {keyid}")));
            }
        }
        let canonical = canonical::encode(&signed).map_err(|e| bad(e.to_string()))?;
        Ok(Envelope {
            signed,
            canonical,
            signatures,
        })
    }
}

/// The keys of a role and how many must sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleKeys {
    /// Authorised key ids (unique).
    pub keyids: Vec<String>,
    /// Valid signatures needed (at least 1).
    pub threshold: u64,
}

/// Checks that at least `role.threshold` distinct authorised keys signed `env`.
pub fn verify_threshold(
    name: &str,
    keys: &BTreeMap<String, Key>,
    role: &RoleKeys,
    env: &Envelope,
) -> Result<(), TufError> {
    let valid = role
        .keyids
        .iter()
        .filter(|id| match (keys.get(*id), env.signatures.get(*id)) {
            (Some(key), Some(sig)) => key.verify(&env.canonical, sig),
            _ => false,
        })
        .count() as u64;
    if valid < role.threshold {
        return Err(TufError::Threshold {
            role: name.to_string(),
            valid,
            threshold: role.threshold,
        });
    }
    Ok(())
}

/// Fields every role has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    /// `version` (at least 1).
    pub version: u64,
    /// `expires`.
    pub expires: OffsetDateTime,
    /// `spec_version` (major version 1).
    pub spec_version: String,
}

impl Common {
    /// Whether the role is expired at `now`.
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        now >= self.expires
    }
}

/// Reads fields of one JSON object, naming the role and field in every error.
pub(crate) struct Fields<'a> {
    role: &'a str,
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    pub(crate) fn of(role: &'a str, v: &'a Value, what: &str) -> Result<Self, TufError> {
        let obj = v
            .as_object()
            .ok_or_else(|| TufError::malformed(role, format!("{what} is not an object")))?;
        Ok(Fields { role, obj })
    }
    fn err(&self, reason: String) -> TufError {
        TufError::malformed(self.role, reason)
    }
    pub(crate) fn opt(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field)
    }
    pub(crate) fn req(&self, field: &str) -> Result<&'a Value, TufError> {
        self.obj
            .get(field)
            .ok_or_else(|| self.err(format!("missing field {field:?}")))
    }
    pub(crate) fn str(&self, field: &str) -> Result<&'a str, TufError> {
        self.req(field)?
            .as_str()
            .ok_or_else(|| self.err(format!("{field:?} is not a string")))
    }
    pub(crate) fn u64(&self, field: &str) -> Result<u64, TufError> {
        self.req(field)?
            .as_u64()
            .ok_or_else(|| self.err(format!("{field:?} is not a non-negative integer")))
    }
    pub(crate) fn bool(&self, field: &str) -> Result<bool, TufError> {
        self.req(field)?
            .as_bool()
            .ok_or_else(|| self.err(format!("{field:?} is not a boolean")))
    }
    pub(crate) fn obj(&self, field: &str) -> Result<&'a Map<String, Value>, TufError> {
        self.req(field)?
            .as_object()
            .ok_or_else(|| self.err(format!("{field:?} is not an object")))
    }
    pub(crate) fn strings(&self, field: &str) -> Result<Vec<String>, TufError> {
        let list = self
            .req(field)?
            .as_array()
            .ok_or_else(|| self.err(format!("{field:?} is not a list")))?;
        list.iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.err(format!("{field:?} holds a non-string")))
            })
            .collect()
    }
}

fn expires_format() -> Vec<time::format_description::BorrowedFormatItem<'static>> {
    // A constant description: parsing it cannot fail.
    time::format_description::parse_borrowed::<2>("[year]-[month]-[day]T[hour]:[minute]:[second]Z")
        .unwrap_or_default()
}

/// Formats a time as TUF's `expires` (`2030-01-01T00:00:00Z`).
pub fn format_expires(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&expires_format())
        .unwrap_or_default()
}

/// Reads the common fields and checks `_type`.
pub(crate) fn common(role: &str, expected_type: &str, f: &Fields) -> Result<Common, TufError> {
    let found = f.str("_type")?;
    if found != expected_type {
        return Err(TufError::WrongType {
            role: role.to_string(),
            expected: expected_type.to_string(),
            found: found.to_string(),
        });
    }
    let spec_version = f.str("spec_version")?;
    let parts: Vec<&str> = spec_version.split('.').collect();
    let numeric = parts
        .iter()
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !(2..=3).contains(&parts.len()) || !numeric || parts[0] != "1" {
        return Err(f.err(format!(
            "spec_version {spec_version:?} is not 1.x.y; this client implements TUF 1.0"
        )));
    }
    let version = f.u64("version")?;
    if version == 0 {
        return Err(f.err("version must be at least 1".into()));
    }
    let expires_text = f.str("expires")?;
    let expires = time::PrimitiveDateTime::parse(expires_text, &expires_format())
        .map_err(|_| {
            f.err(format!(
                "expires {expires_text:?} is not of the form 2030-01-01T00:00:00Z"
            ))
        })?
        .assume_utc();
    Ok(Common {
        version,
        expires,
        spec_version: spec_version.to_string(),
    })
}

pub(crate) fn role_keys(role: &str, v: &Value) -> Result<RoleKeys, TufError> {
    let f = Fields::of(role, v, "a role")?;
    let keyids = f.strings("keyids")?;
    let unique: BTreeSet<&String> = keyids.iter().collect();
    if unique.len() != keyids.len() {
        return Err(f.err("a role lists the same key id twice".into()));
    }
    let threshold = f.u64("threshold")?;
    if threshold == 0 {
        return Err(f.err("threshold must be at least 1".into()));
    }
    Ok(RoleKeys { keyids, threshold })
}

pub(crate) fn keys_map(
    role: &str,
    v: &Map<String, Value>,
) -> Result<BTreeMap<String, Key>, TufError> {
    v.iter()
        .map(|(id, k)| {
            Key::from_value(k)
                .map(|key| (id.clone(), key))
                .map_err(|reason| TufError::malformed(role, format!("key {id}: {reason}")))
        })
        .collect()
}

/// The root role.
#[derive(Debug, Clone)]
pub struct Root {
    /// Common fields.
    pub common: Common,
    /// Whether files are fetched by version (metadata) and hash (targets).
    pub consistent_snapshot: bool,
    /// Keys by id.
    pub keys: BTreeMap<String, Key>,
    /// The four top-level roles.
    pub roles: BTreeMap<TopRole, RoleKeys>,
}

impl Root {
    /// Reads a root from its `signed` value.
    pub fn from_signed(v: &Value) -> Result<Root, TufError> {
        let f = Fields::of("root", v, "signed")?;
        let common = common("root", "root", &f)?;
        let consistent_snapshot = match f.opt("consistent_snapshot") {
            None => false,
            Some(_) => f.bool("consistent_snapshot")?,
        };
        let keys = keys_map("root", f.obj("keys")?)?;
        let roles_obj = f.obj("roles")?;
        let mut roles = BTreeMap::new();
        for role in [
            TopRole::Root,
            TopRole::Timestamp,
            TopRole::Snapshot,
            TopRole::Targets,
        ] {
            let v = roles_obj
                .get(role.name())
                .ok_or_else(|| TufError::malformed("root", format!("no {} role", role.name())))?;
            roles.insert(role, role_keys("root", v)?);
        }
        if roles_obj.len() != 4 {
            return Err(TufError::malformed(
                "root",
                "roles other than the four top-level ones".into(),
            ));
        }
        Ok(Root {
            common,
            consistent_snapshot,
            keys,
            roles,
        })
    }

    /// Checks that `env` is signed by a threshold of this root's keys for `role`.
    pub fn verify(&self, role: TopRole, env: &Envelope) -> Result<(), TufError> {
        // Every top-level role is present (checked when parsed).
        let keys = &self.roles[&role];
        verify_threshold(role.name(), &self.keys, keys, env)
    }

    /// The keys (by value) and threshold of a role, for noticing a rotation.
    pub fn role_key_set(&self, role: TopRole) -> (BTreeSet<&Key>, u64) {
        let r = &self.roles[&role];
        let keys = r.keyids.iter().filter_map(|id| self.keys.get(id)).collect();
        (keys, r.threshold)
    }
}

/// A file pinned by timestamp or snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaFile {
    /// Its version.
    pub version: u64,
    /// Its length, when pinned.
    pub length: Option<u64>,
    /// Its hashes (algorithm -> hex), when pinned.
    pub hashes: BTreeMap<String, String>,
}

impl MetaFile {
    fn from_value(role: &str, v: &Value) -> Result<MetaFile, TufError> {
        let f = Fields::of(role, v, "a meta entry")?;
        let version = f.u64("version")?;
        if version == 0 {
            return Err(f.err("meta version must be at least 1".into()));
        }
        let length = match f.opt("length") {
            None => None,
            Some(_) => Some(f.u64("length")?),
        };
        let hashes = match f.opt("hashes") {
            None => BTreeMap::new(),
            Some(_) => hashes(role, &f)?,
        };
        Ok(MetaFile {
            version,
            length,
            hashes,
        })
    }

    /// Checks length and hashes, when pinned, of `bytes` named `what`.
    pub fn verify(&self, what: &str, bytes: &[u8]) -> Result<(), TufError> {
        if let Some(len) = self.length {
            if bytes.len() as u64 != len {
                return Err(TufError::Length {
                    what: what.to_string(),
                    expected: len,
                    found: bytes.len() as u64,
                });
            }
        }
        super::hashes::verify(what, &self.hashes, bytes)
    }
}

fn hashes(role: &str, f: &Fields) -> Result<BTreeMap<String, String>, TufError> {
    let map = f.obj("hashes")?;
    if map.is_empty() {
        return Err(TufError::malformed(role, "\"hashes\" is empty".into()));
    }
    map.iter()
        .map(|(alg, h)| {
            h.as_str()
                .map(|h| (alg.clone(), h.to_string()))
                .ok_or_else(|| TufError::malformed(role, format!("hash {alg:?} is not a string")))
        })
        .collect()
}

/// The timestamp role.
#[derive(Debug, Clone)]
pub struct Timestamp {
    /// Common fields.
    pub common: Common,
    /// `meta["snapshot.json"]`.
    pub snapshot: MetaFile,
}

impl Timestamp {
    /// Reads a timestamp from its `signed` value.
    pub fn from_signed(v: &Value) -> Result<Timestamp, TufError> {
        let f = Fields::of("timestamp", v, "signed")?;
        let common = common("timestamp", "timestamp", &f)?;
        let meta = f.obj("meta")?;
        let snap = meta.get("snapshot.json").ok_or_else(|| {
            TufError::malformed("timestamp", "meta has no \"snapshot.json\"".into())
        })?;
        if meta.len() != 1 {
            return Err(TufError::malformed(
                "timestamp",
                "meta lists more than snapshot.json".into(),
            ));
        }
        Ok(Timestamp {
            common,
            snapshot: MetaFile::from_value("timestamp", snap)?,
        })
    }
}

/// The snapshot role.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Common fields.
    pub common: Common,
    /// `<role>.json` -> pinned file.
    pub meta: BTreeMap<String, MetaFile>,
}

impl Snapshot {
    /// Reads a snapshot from its `signed` value.
    pub fn from_signed(v: &Value) -> Result<Snapshot, TufError> {
        let f = Fields::of("snapshot", v, "signed")?;
        let common = common("snapshot", "snapshot", &f)?;
        let meta = f
            .obj("meta")?
            .iter()
            .map(|(name, m)| Ok((name.clone(), MetaFile::from_value("snapshot", m)?)))
            .collect::<Result<_, TufError>>()?;
        Ok(Snapshot { common, meta })
    }
}

/// One target file.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetFile {
    /// Exact length (also the download bound).
    pub length: u64,
    /// Algorithm -> hex digest (at least one).
    pub hashes: BTreeMap<String, String>,
    /// `custom`, as signed.
    pub custom: Option<Value>,
}

impl TargetFile {
    fn from_value(role: &str, v: &Value) -> Result<TargetFile, TufError> {
        let f = Fields::of(role, v, "a target")?;
        Ok(TargetFile {
            length: f.u64("length")?,
            hashes: hashes(role, &f)?,
            custom: f.opt("custom").cloned(),
        })
    }

    /// Checks length and every hash of a downloaded file.
    pub fn verify(&self, path: &str, bytes: &[u8]) -> Result<(), TufError> {
        if bytes.len() as u64 != self.length {
            return Err(TufError::Length {
                what: path.to_string(),
                expected: self.length,
                found: bytes.len() as u64,
            });
        }
        super::hashes::verify(path, &self.hashes, bytes)
    }
}

/// A role delegated to by a targets role.
#[derive(Debug, Clone)]
pub struct DelegatedRole {
    /// Role name (any string: it is quoted in URLs and file names).
    pub name: String,
    /// Keys and threshold.
    pub keys: RoleKeys,
    /// No later delegation is consulted for paths this role matches.
    pub terminating: bool,
    /// Which target paths it may sign for.
    pub scope: PathScope,
}

/// Which target paths a delegated role is trusted for.
#[derive(Debug, Clone)]
pub enum PathScope {
    /// Shell-style patterns, matched component by component (`models/*/bundle-*`).
    Patterns(Vec<String>),
    /// Hex prefixes of the sha256 of the target path.
    HashPrefixes(Vec<String>),
}

impl DelegatedRole {
    /// Whether this role may sign for `target_path`.
    pub fn matches(&self, target_path: &str) -> bool {
        match &self.scope {
            PathScope::Patterns(ps) => ps.iter().any(|p| super::pattern::matches(p, target_path)),
            PathScope::HashPrefixes(prefixes) => {
                let h = hex::encode(ring::digest::digest(
                    &ring::digest::SHA256,
                    target_path.as_bytes(),
                ));
                prefixes.iter().any(|p| h.starts_with(p.as_str()))
            }
        }
    }
}

/// `delegations` of a targets role.
#[derive(Debug, Clone)]
pub struct Delegations {
    /// Keys by id.
    pub keys: BTreeMap<String, Key>,
    /// Delegated roles in priority order.
    pub roles: Vec<DelegatedRole>,
}

impl Delegations {
    fn from_value(role: &str, v: &Value) -> Result<Delegations, TufError> {
        let f = Fields::of(role, v, "delegations")?;
        if f.opt("succinct_roles").is_some() {
            return Err(TufError::malformed(
                role,
                "succinct_roles (TAP 15 hash bins) are not supported by this client".into(),
            ));
        }
        let keys = keys_map(role, f.obj("keys")?)?;
        let list = f
            .req("roles")?
            .as_array()
            .ok_or_else(|| TufError::malformed(role, "delegations.roles is not a list".into()))?;
        let mut names = BTreeSet::new();
        let mut roles = Vec::with_capacity(list.len());
        for r in list {
            let d = delegated_role(role, r)?;
            if !names.insert(d.name.clone()) {
                return Err(TufError::malformed(
                    role,
                    format!("role {:?} delegated twice", d.name),
                ));
            }
            roles.push(d);
        }
        Ok(Delegations { keys, roles })
    }
}

fn delegated_role(role: &str, v: &Value) -> Result<DelegatedRole, TufError> {
    let f = Fields::of(role, v, "a delegated role")?;
    let name = f.str("name")?.to_string();
    let keys = role_keys(role, v)?;
    let terminating = f.bool("terminating")?;
    let scope = match (f.opt("paths"), f.opt("path_hash_prefixes")) {
        (Some(_), None) => PathScope::Patterns(f.strings("paths")?),
        (None, Some(_)) => PathScope::HashPrefixes(f.strings("path_hash_prefixes")?),
        _ => {
            return Err(TufError::malformed(
                role,
                format!("delegated role {name:?} needs exactly one of paths, path_hash_prefixes"),
            ))
        }
    };
    Ok(DelegatedRole {
        name,
        keys,
        terminating,
        scope,
    })
}

/// A targets role (top-level or delegated).
#[derive(Debug, Clone)]
pub struct Targets {
    /// Common fields.
    pub common: Common,
    /// Target path -> file.
    pub targets: BTreeMap<String, TargetFile>,
    /// Delegations, if any.
    pub delegations: Option<Delegations>,
}

impl Targets {
    /// Reads a targets role named `role` from its `signed` value.
    pub fn from_signed(role: &str, v: &Value) -> Result<Targets, TufError> {
        let f = Fields::of(role, v, "signed")?;
        let common = common(role, "targets", &f)?;
        let targets = f
            .obj("targets")?
            .iter()
            .map(|(path, t)| Ok((path.clone(), TargetFile::from_value(role, t)?)))
            .collect::<Result<_, TufError>>()?;
        let delegations = match f.opt("delegations") {
            None => None,
            Some(d) => Some(Delegations::from_value(role, d)?),
        };
        Ok(Targets {
            common,
            targets,
            delegations,
        })
    }
}
