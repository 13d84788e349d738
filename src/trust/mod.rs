//! Signed update metadata in the style of TUF (The Update Framework), over Ed25519 (`ring`).
//!
//! Four roles, each a JSON document `{"signed": {...}, "signatures": [...]}`:
//! - **root** lists every role's keys and signature threshold; it is signed by the offline
//!   root keys (k of n) and pinned in the agent's config. A new root must be signed by a
//!   threshold of the old root's keys AND of its own, and its version is exactly one more,
//!   so an agent offline for weeks walks the chain of roots it missed, one by one.
//! - **targets** lists every bundle file with its sha256 and length, and which bundle each
//!   channel and group should run.
//! - **snapshot** pins the version of targets (no mixing of files from two releases).
//! - **timestamp** pins the snapshot and expires quickly (a replayed old state goes stale).
//!
//! Every role's version only goes up, and every role expires. This module holds the types,
//! the canonical form that is signed, signing, and the checks of one document against a
//! root; [`client::TrustedState`] applies the update sequence and its rules.
//!
//! Why our own metadata over `ring` rather than the `tough` crate: tough implements the full
//! TUF client over a repository layout and transport of its own (and pulls in its own HTTP
//! stack); the agent needs the same guarantees over its existing sync channel and USB
//! files, with content-addressed bundle files. The roles, rules and attack tests follow the
//! TUF specification so they can be reviewed against it.

pub mod client;
pub mod releases;
pub mod tuf;

use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;

/// Why metadata was refused. Each says what was wrong; none is ever silently ignored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrustError {
    /// Not valid JSON of the expected role.
    #[error("{role} metadata is malformed: {reason}")]
    Malformed {
        /// Role.
        role: String,
        /// Parser message.
        reason: String,
    },
    /// The document is of another role.
    #[error("expected {expected} metadata, found {found}")]
    WrongRole {
        /// Role expected.
        expected: String,
        /// Role found.
        found: String,
    },
    /// Fewer valid signatures than the threshold.
    #[error("{role} metadata has {valid} valid signature(s) from its authorised keys; {threshold} needed")]
    Threshold {
        /// Role.
        role: String,
        /// Valid signatures counted (one per key).
        valid: usize,
        /// Required.
        threshold: u32,
    },
    /// A version that does not go up.
    #[error(
        "{role} version {offered} is older than the trusted version {trusted} (rollback refused)"
    )]
    Rollback {
        /// Role.
        role: String,
        /// Version offered.
        offered: u64,
        /// Version trusted.
        trusted: u64,
    },
    /// A root that skips versions.
    #[error("root version {offered} does not follow the trusted root version {trusted}; roots must be applied one by one")]
    RootSkip {
        /// Version offered.
        offered: u64,
        /// Version trusted.
        trusted: u64,
    },
    /// Expired.
    #[error("{role} metadata expired at {expires} (trusted time {now}); the server must publish fresh metadata")]
    Expired {
        /// Role.
        role: String,
        /// Expiry.
        expires: String,
        /// The time used for the check.
        now: String,
    },
    /// The document pinned by a higher role differs.
    #[error("{role} metadata does not match what {by} pins ({what})")]
    Mismatch {
        /// Role checked.
        role: String,
        /// Role that pins it.
        by: String,
        /// What differs.
        what: String,
    },
    /// A target file that is not what targets says.
    #[error("file {path}: {what}")]
    Target {
        /// Target path.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// A role is missing from root.
    #[error("root defines no {0} role")]
    NoRole(String),
}

/// A public key in metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// Always `ed25519`.
    pub scheme: String,
    /// The 32-byte public key, base64.
    pub public: String,
}

impl PublicKey {
    /// The key id: sha256 of the canonical key.
    pub fn key_id(&self) -> String {
        crate::hash::sha256_hex(&canonical(self))
    }
}

/// Keys and threshold of a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    /// Authorised key ids.
    pub keyids: Vec<String>,
    /// Signatures needed.
    pub threshold: u32,
}

/// The root role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Root {
    /// Always `root`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// Version, starting at 1.
    pub version: u64,
    /// Expiry (RFC 3339).
    pub expires: String,
    /// Keys by id.
    pub keys: BTreeMap<String, PublicKey>,
    /// `root`, `targets`, `snapshot`, `timestamp`.
    pub roles: BTreeMap<String, RoleKeys>,
}

/// One file of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFile {
    /// Exact length in bytes (also the download cap).
    pub length: u64,
    /// sha256, lower-case hex.
    pub sha256: String,
}

/// A release in targets: a bundle and who should run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// Model name.
    pub model: String,
    /// Bundle version.
    pub version: String,
    /// Channel (`stable`, `canary`).
    pub channel: String,
    /// Device groups it goes to (empty: every group).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Share of devices (0-100) in those groups, by a stable hash of the device id.
    #[serde(default = "hundred")]
    pub percent: u8,
    /// Bundle files: file name in the bundle -> target path.
    pub files: BTreeMap<String, String>,
    /// Withdrawn by an operator: no device should install it, and devices running it move
    /// to the newest release that still applies to them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withdrawn: bool,
}

impl Release {
    /// Whether this release is meant for a device: same channel, not withdrawn, the device's
    /// group listed (or no groups listed), and the device inside the staged percentage.
    pub fn applies_to(&self, channel: &str, group: &str, device_id: &str) -> bool {
        !self.withdrawn
            && self.channel == channel
            && (self.groups.is_empty() || self.groups.iter().any(|g| g == group))
            && rollout_bucket(&self.model, device_id) < u32::from(self.percent.min(100))
    }
}

/// A device's stable position (0-99) in the staged rollout of `model`: the first four bytes
/// of sha256("model/device_id"). Widening a release from 10% to 50% keeps the first 10%.
pub fn rollout_bucket(model: &str, device_id: &str) -> u32 {
    let h = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{model}/{device_id}").as_bytes(),
    );
    let b = h.as_ref();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) % 100
}

impl Targets {
    /// The release of `model` a device should run: the newest (by semantic version) that
    /// applies to it, or `None`.
    pub fn release_for(
        &self,
        model: &str,
        channel: &str,
        group: &str,
        device_id: &str,
    ) -> Option<&Release> {
        self.releases
            .iter()
            .filter(|r| r.model == model && r.applies_to(channel, group, device_id))
            .max_by_key(|r| crate::version::parse_version(&r.version))
    }
}

fn hundred() -> u8 {
    100
}

/// The targets role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    /// Always `targets`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// Version.
    pub version: u64,
    /// Expiry.
    pub expires: String,
    /// Content-addressed files: path -> length and hash.
    pub targets: BTreeMap<String, TargetFile>,
    /// Releases.
    #[serde(default)]
    pub releases: Vec<Release>,
}

/// A pinned metadata file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    /// Its version.
    pub version: u64,
    /// Its sha256 (of the whole signed document), when pinned by hash.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Its length.
    #[serde(default)]
    pub length: Option<u64>,
}

/// The snapshot role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Always `snapshot`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// Version.
    pub version: u64,
    /// Expiry.
    pub expires: String,
    /// `targets.json` -> version.
    pub meta: BTreeMap<String, MetaFile>,
}

/// The timestamp role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timestamp {
    /// Always `timestamp`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// Version.
    pub version: u64,
    /// Expiry (short).
    pub expires: String,
    /// `snapshot.json` -> version, hash, length.
    pub meta: BTreeMap<String, MetaFile>,
}

/// A signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Key id.
    pub keyid: String,
    /// Ed25519 signature over the canonical `signed`, base64.
    pub sig: String,
}

/// A signed document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signed<T> {
    /// The content.
    pub signed: T,
    /// Signatures over its canonical form.
    pub signatures: Vec<Signature>,
}

/// Common fields of every role, for generic checks.
pub trait Role: Serialize + DeserializeOwned {
    /// Role name.
    const NAME: &'static str;
    /// `_type`.
    fn type_(&self) -> &str;
    /// Version.
    fn version(&self) -> u64;
    /// Expiry.
    fn expires(&self) -> &str;
}

macro_rules! role {
    ($t:ty, $name:expr) => {
        impl Role for $t {
            const NAME: &'static str = $name;
            fn type_(&self) -> &str {
                &self.type_
            }
            fn version(&self) -> u64 {
                self.version
            }
            fn expires(&self) -> &str {
                &self.expires
            }
        }
    };
}
role!(Root, "root");
role!(Targets, "targets");
role!(Snapshot, "snapshot");
role!(Timestamp, "timestamp");

/// The bytes that are signed: JSON with object keys sorted and no whitespace
/// (`serde_json::Value` keeps keys in a BTreeMap).
pub fn canonical<T: Serialize>(v: &T) -> Vec<u8> {
    let value = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
    serde_json::to_vec(&value).unwrap_or_default()
}

/// A signing key (held by the server for online roles, offline for root).
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> SigningKey {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("system randomness")
            .as_ref()
            .to_vec();
        SigningKey::from_pkcs8(&pkcs8).expect("fresh key parses")
    }
    /// From PKCS#8 bytes.
    pub fn from_pkcs8(bytes: &[u8]) -> Option<SigningKey> {
        Ed25519KeyPair::from_pkcs8(bytes)
            .ok()
            .map(|pair| SigningKey {
                pair,
                pkcs8: bytes.to_vec(),
            })
    }
    /// PKCS#8 bytes, to store the key.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }
    /// The public key as metadata lists it.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            scheme: "ed25519".into(),
            public: base64::engine::general_purpose::STANDARD
                .encode(self.pair.public_key().as_ref()),
        }
    }
    /// Its key id.
    pub fn key_id(&self) -> String {
        self.public().key_id()
    }
}

/// Signs a role with each key.
pub fn sign<T: Serialize>(signed: T, keys: &[&SigningKey]) -> Signed<T> {
    let bytes = canonical(&signed);
    let signatures = keys
        .iter()
        .map(|k| Signature {
            keyid: k.key_id(),
            sig: base64::engine::general_purpose::STANDARD.encode(k.pair.sign(&bytes).as_ref()),
        })
        .collect();
    Signed { signed, signatures }
}

/// Parses a document of role `T`.
pub fn parse<T: Role>(bytes: &[u8]) -> Result<Signed<T>, TrustError> {
    let doc: Signed<T> = serde_json::from_slice(bytes).map_err(|e| TrustError::Malformed {
        role: T::NAME.into(),
        reason: e.to_string(),
    })?;
    if doc.signed.type_() != T::NAME {
        return Err(TrustError::WrongRole {
            expected: T::NAME.into(),
            found: doc.signed.type_().into(),
        });
    }
    // Signatures are checked over our re-serialisation of `signed`: a field we do not know
    // would be dropped there and so never signed. Refuse any document whose `signed` is not
    // exactly what we re-serialise (issue 21: unknown fields added without re-signing).
    let received: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| TrustError::Malformed {
            role: T::NAME.into(),
            reason: e.to_string(),
        })?;
    let received = serde_json::to_vec(&received["signed"]).unwrap_or_default();
    if received != canonical(&doc.signed) {
        return Err(TrustError::Malformed {
            role: T::NAME.into(),
            reason: "its signed part holds fields this agent does not know (or non-canonical \
                     values); they would not be covered by the signature check"
                .into(),
        });
    }
    Ok(doc)
}

/// Counts valid signatures of `doc` by the keys `root` authorises for `role` (each key
/// counts once) and checks the threshold.
pub fn verify_signatures<T: Role>(
    doc: &Signed<T>,
    root: &Root,
    role: &str,
) -> Result<(), TrustError> {
    let keys = root
        .roles
        .get(role)
        .ok_or_else(|| TrustError::NoRole(role.into()))?;
    let bytes = canonical(&doc.signed);
    let mut counted = std::collections::BTreeSet::new();
    for s in &doc.signatures {
        if !keys.keyids.contains(&s.keyid) || counted.contains(&s.keyid) {
            continue;
        }
        let Some(pk) = root.keys.get(&s.keyid) else {
            continue;
        };
        if pk.scheme != "ed25519" || pk.key_id() != s.keyid {
            continue;
        }
        let (Ok(public), Ok(sig)) = (
            base64::engine::general_purpose::STANDARD.decode(&pk.public),
            base64::engine::general_purpose::STANDARD.decode(&s.sig),
        ) else {
            continue;
        };
        if UnparsedPublicKey::new(&ED25519, &public)
            .verify(&bytes, &sig)
            .is_ok()
        {
            counted.insert(s.keyid.clone());
        }
    }
    if counted.len() < keys.threshold.max(1) as usize {
        return Err(TrustError::Threshold {
            role: role.into(),
            valid: counted.len(),
            threshold: keys.threshold.max(1),
        });
    }
    Ok(())
}

/// Checks a downloaded target file against its entry: exact length and sha256.
pub fn verify_target(path: &str, entry: &TargetFile, bytes: &[u8]) -> Result<(), TrustError> {
    if bytes.len() as u64 != entry.length {
        return Err(TrustError::Target {
            path: path.into(),
            what: format!("{} bytes, metadata says {}", bytes.len(), entry.length),
        });
    }
    let sha = crate::hash::sha256_hex(bytes);
    if sha != entry.sha256 {
        return Err(TrustError::Target {
            path: path.into(),
            what: format!("sha256 {sha}, metadata says {}", entry.sha256),
        });
    }
    Ok(())
}

#[cfg(test)]
mod release_tests {
    use super::*;

    fn release(version: &str, channel: &str, groups: &[&str], percent: u8) -> Release {
        Release {
            model: "m".into(),
            version: version.into(),
            channel: channel.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            percent,
            files: BTreeMap::new(),
            withdrawn: false,
        }
    }

    #[test]
    fn the_newest_applicable_release_is_chosen() {
        let mut t = Targets {
            type_: "targets".into(),
            version: 1,
            expires: String::new(),
            targets: BTreeMap::new(),
            releases: vec![
                release("1.0.0", "stable", &[], 100),
                release("1.10.0", "stable", &["north"], 100),
                release("1.2.0", "stable", &[], 100),
                release("2.0.0", "canary", &[], 100),
            ],
        };
        let pick = |t: &Targets, g: &str| {
            t.release_for("m", "stable", g, "dev-1")
                .map(|r| r.version.clone())
        };
        assert_eq!(
            pick(&t, "north").as_deref(),
            Some("1.10.0"),
            "semantic, not string order"
        );
        assert_eq!(pick(&t, "south").as_deref(), Some("1.2.0"), "groups filter");
        t.releases[1].withdrawn = true;
        assert_eq!(
            pick(&t, "north").as_deref(),
            Some("1.2.0"),
            "withdrawn is skipped"
        );
        t.releases[2].percent = 0;
        assert_eq!(
            pick(&t, "north").as_deref(),
            Some("1.0.0"),
            "0% reaches nobody"
        );
        assert_eq!(
            t.release_for("m", "canary", "x", "d").unwrap().version,
            "2.0.0"
        );
    }

    #[test]
    fn rollout_buckets_are_stable_and_spread() {
        assert_eq!(rollout_bucket("m", "a"), rollout_bucket("m", "a"));
        let inside = (0..1000)
            .filter(|i| rollout_bucket("m", &format!("device-{i}")) < 30)
            .count();
        assert!(
            (230..370).contains(&inside),
            "about 30% of devices: {inside}"
        );
        // Widening keeps the devices already in.
        let r10 = release("1.0.0", "stable", &[], 10);
        let r50 = release("1.0.0", "stable", &[], 50);
        for i in 0..200 {
            let d = format!("device-{i}");
            if r10.applies_to("stable", "g", &d) {
                assert!(r50.applies_to("stable", "g", &d));
            }
        }
    }
}
