//! TUF 1.0 client workflow (src/trust/tuf): the attacks named in issue 21, each tried
//! against a repository signed by real Ed25519 keys and served from memory — unknown fields
//! added without re-signing, a targets file that does not match the hash and length the
//! snapshot pins, recovery after a snapshot fast-forward when only the snapshot key is
//! rotated, a model delegated to another team's key (and what that key may not sign) — plus
//! the basics: received bytes stored as received, rollback, expiry.

use outpost::trust::tuf::hashes::sha256_hex;
use outpost::trust::tuf::metadata::format_expires;
use outpost::trust::tuf::sign::{sign, Ed25519Signer};
use outpost::trust::tuf::updater::{FetchError, Fetcher, Limits, MetadataStore, Updater};
use outpost::trust::tuf::{TufError, TufErrorKind};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};

const URL: &str = "http://repo.test/metadata/";

/// Files by name: the repository's (served) or the client's (trusted metadata).
#[derive(Clone, Default)]
struct Mem(Arc<Mutex<HashMap<String, Vec<u8>>>>);

impl Mem {
    fn put(&self, name: &str, bytes: Vec<u8>) {
        self.0.lock().unwrap().insert(name.to_string(), bytes);
    }
    fn get(&self, name: &str) -> Option<Vec<u8>> {
        self.0.lock().unwrap().get(name).cloned()
    }
}

impl Fetcher for Mem {
    async fn fetch(&self, url: &str, max_len: u64) -> Result<Vec<u8>, FetchError> {
        let name = url.strip_prefix(URL).unwrap_or(url);
        match self.get(name) {
            None => Err(FetchError::NotFound),
            Some(b) if b.len() as u64 > max_len => Err(FetchError::TooLarge { max: max_len }),
            Some(b) => Ok(b),
        }
    }
}

impl MetadataStore for Mem {
    fn load(&self, role: &str) -> Result<Option<Vec<u8>>, TufError> {
        Ok(self.get(role))
    }
    fn save(&self, role: &str, bytes: &[u8]) -> Result<(), TufError> {
        self.put(role, bytes.to_vec());
        Ok(())
    }
    fn remove(&self, role: &str) -> Result<(), TufError> {
        self.0.lock().unwrap().remove(role);
        Ok(())
    }
}

fn expires(days: i64) -> String {
    format_expires(OffsetDateTime::now_utc() + Duration::days(days))
}

/// A repository with consistent snapshots, one key per role, one delegated team role.
struct Repo {
    served: Mem,
    root_key: Ed25519Signer,
    timestamp_key: Ed25519Signer,
    snapshot_key: Ed25519Signer,
    targets_key: Ed25519Signer,
    team_key: Ed25519Signer,
    versions: BTreeMap<&'static str, u64>,
    targets: Value,
    team: Value,
    /// Last published bytes of each role.
    published: BTreeMap<&'static str, Vec<u8>>,
}

fn key_entry(s: &Ed25519Signer) -> (String, Value) {
    (s.key_id(), s.key().to_value())
}

fn role(s: &Ed25519Signer) -> Value {
    json!({"keyids": [s.key_id()], "threshold": 1})
}

fn meta(bytes: &[u8], version: u64) -> Value {
    json!({"version": version, "length": bytes.len(), "hashes": {"sha256": sha256_hex(bytes)}})
}

impl Repo {
    fn new() -> Repo {
        let team_key = Ed25519Signer::generate();
        let mut repo = Repo {
            served: Mem::default(),
            root_key: Ed25519Signer::generate(),
            timestamp_key: Ed25519Signer::generate(),
            snapshot_key: Ed25519Signer::generate(),
            targets_key: Ed25519Signer::generate(),
            versions: BTreeMap::new(),
            targets: json!({}),
            team: json!({}),
            published: BTreeMap::new(),
            team_key,
        };
        let model = b"head-v1".to_vec();
        repo.targets = json!({
            "models/readme.txt": {"length": 5, "hashes": {"sha256": sha256_hex(b"hello")}},
        });
        repo.team = json!({
            "models/landcover/head.onnx": {"length": model.len(), "hashes": {"sha256": sha256_hex(&model)},
                                           "custom": {"channel": "stable", "percent": 100}},
            "other/evil.onnx": {"length": 1, "hashes": {"sha256": sha256_hex(b"x")}},
        });
        repo.publish_root();
        repo.publish(&["team", "targets", "snapshot", "timestamp"]);
        repo
    }

    fn bump(&mut self, role: &'static str) -> u64 {
        let v = self.versions.entry(role).or_insert(0);
        *v += 1;
        *v
    }

    fn root_signed(&self, version: u64) -> Value {
        let keys: serde_json::Map<String, Value> = [
            &self.root_key,
            &self.timestamp_key,
            &self.snapshot_key,
            &self.targets_key,
        ]
        .into_iter()
        .map(key_entry)
        .collect();
        json!({"_type": "root", "spec_version": "1.0.31", "version": version,
               "expires": expires(365), "consistent_snapshot": true, "keys": keys,
               "roles": {"root": role(&self.root_key), "timestamp": role(&self.timestamp_key),
                         "snapshot": role(&self.snapshot_key), "targets": role(&self.targets_key)}})
    }

    /// Publishes the next root, signed by `old` root key (if rotated) and the current one.
    fn publish_root_signed_by(&mut self, extra: Option<&Ed25519Signer>) {
        let v = self.bump("root");
        let signed = self.root_signed(v);
        let mut signers = vec![&self.root_key];
        signers.extend(extra);
        let bytes = sign(&signed, &signers).unwrap();
        self.served.put(&format!("{v}.root.json"), bytes.clone());
        self.published.insert("root", bytes);
    }

    fn publish_root(&mut self) {
        self.publish_root_signed_by(None)
    }

    fn publish(&mut self, roles: &[&'static str]) {
        for &r in roles {
            let v = self.bump(r);
            let (signed, key) = match r {
                "team" => (self.targets_doc(v, self.team.clone(), None), &self.team_key),
                "targets" => {
                    let deleg = json!({"keys": {self.team_key.key_id(): self.team_key.key().to_value()},
                        "roles": [{"name": "team", "keyids": [self.team_key.key_id()], "threshold": 1,
                                   "terminating": true, "paths": ["models/landcover/*"]}]});
                    (
                        self.targets_doc(v, self.targets.clone(), Some(deleg)),
                        &self.targets_key,
                    )
                }
                "snapshot" => (self.snapshot_doc(v), &self.snapshot_key),
                _ => (self.timestamp_doc(v), &self.timestamp_key),
            };
            let bytes = sign(&signed, &[key]).unwrap();
            let name = if r == "timestamp" {
                "timestamp.json".to_string()
            } else {
                format!("{v}.{r}.json")
            };
            self.served.put(&name, bytes.clone());
            self.published.insert(r, bytes);
        }
    }

    fn targets_doc(&self, v: u64, targets: Value, delegations: Option<Value>) -> Value {
        let mut d = json!({"_type": "targets", "spec_version": "1.0.31", "version": v,
                           "expires": expires(30), "targets": targets});
        if let Some(del) = delegations {
            d["delegations"] = del;
        }
        d
    }

    fn snapshot_doc(&self, v: u64) -> Value {
        json!({"_type": "snapshot", "spec_version": "1.0.31", "version": v, "expires": expires(7),
               "meta": {"targets.json": meta(&self.published["targets"], self.versions["targets"]),
                        "team.json": meta(&self.published["team"], self.versions["team"])}})
    }

    fn timestamp_doc(&self, v: u64) -> Value {
        json!({"_type": "timestamp", "spec_version": "1.0.31", "version": v, "expires": expires(1),
               "meta": {"snapshot.json": meta(&self.published["snapshot"], self.versions["snapshot"])}})
    }

    /// A client that trusts root version 1.
    fn client(&self) -> Mem {
        let local = Mem::default();
        local.put("root", self.served.get("1.root.json").unwrap());
        local
    }
}

async fn refresh(repo: &Repo, local: &Mem) -> Result<(), TufError> {
    let mut up = Updater::new(
        repo.served.clone(),
        local.clone(),
        URL,
        Limits::default(),
        OffsetDateTime::now_utc(),
    )?;
    up.refresh().await
}

#[tokio::test]
async fn a_fresh_client_trusts_the_received_bytes_unknown_fields_included() {
    let mut repo = Repo::new();
    repo.targets["models/readme.txt"]["custom"] = json!({"x-unknown": {"nested": [1, 2]}});
    repo.publish(&["targets", "snapshot", "timestamp"]);
    let local = repo.client();
    refresh(&repo, &local).await.unwrap();
    for role in ["targets", "snapshot", "timestamp"] {
        assert_eq!(
            local.get(role).unwrap(),
            repo.published[role],
            "{role} stored as received"
        );
    }
}

#[tokio::test]
async fn an_unknown_field_added_to_targets_without_re_signing_is_refused() {
    let mut repo = Repo::new();
    let name = format!("{}.targets.json", repo.versions["targets"]);
    let mut doc: Value = serde_json::from_slice(&repo.served.get(&name).unwrap()).unwrap();
    doc["signed"]["x-added"] = json!("not signed");
    doc["signed"]["targets"]["models/readme.txt"]["custom"] = json!({"channel": "canary"});
    let tampered = serde_json::to_vec(&doc).unwrap();
    // Also pin the tampered bytes in a re-signed snapshot, so only the signature can refuse.
    repo.served.put(&name, tampered.clone());
    repo.published.insert("targets", tampered);
    repo.publish(&["snapshot", "timestamp"]);
    let local = repo.client();
    let err = refresh(&repo, &local).await.unwrap_err();
    assert_eq!(err.kind(), TufErrorKind::Threshold, "{err}");
    assert!(
        local.get("targets").is_none(),
        "nothing of the tampered targets is kept"
    );
}

#[tokio::test]
async fn a_targets_file_that_is_not_what_the_snapshot_pins_is_refused() {
    let mut repo = Repo::new();
    let pinned = repo.published["targets"].clone();
    // A validly signed targets file of the same version, but other content than pinned.
    repo.targets["models/readme.txt"]["length"] = json!(6);
    let v = repo.versions["targets"];
    let other = sign(
        &repo.targets_doc(v, repo.targets.clone(), None),
        &[&repo.targets_key],
    )
    .unwrap();
    assert_ne!(other, pinned);
    repo.served.put(&format!("{v}.targets.json"), other);
    let local = repo.client();
    let err = refresh(&repo, &local).await.unwrap_err();
    assert!(
        matches!(err.kind(), TufErrorKind::Hash | TufErrorKind::Length),
        "{err}"
    );
    assert!(local.get("targets").is_none());
}

#[tokio::test]
async fn after_a_snapshot_fast_forward_rotating_only_the_snapshot_key_recovers() {
    let mut repo = Repo::new();
    let local = repo.client();
    // An attacker with the snapshot key fast-forwards the snapshot version to 1000.
    repo.versions.insert("snapshot", 999);
    repo.publish(&["snapshot", "timestamp"]);
    refresh(&repo, &local).await.unwrap();
    // The operators rotate the snapshot key only, and restart snapshot versions at 1.
    repo.snapshot_key = Ed25519Signer::generate();
    repo.publish_root();
    repo.versions.insert("snapshot", 0);
    repo.publish(&["snapshot", "timestamp"]);
    refresh(&repo, &local).await.unwrap();
    let snap: Value = serde_json::from_slice(&local.get("snapshot").unwrap()).unwrap();
    assert_eq!(snap["signed"]["version"], 1);
}

#[tokio::test]
async fn a_snapshot_rollback_without_rotation_is_refused() {
    let mut repo = Repo::new();
    let local = repo.client();
    repo.versions.insert("snapshot", 9);
    repo.publish(&["snapshot", "timestamp"]);
    refresh(&repo, &local).await.unwrap();
    repo.versions.insert("snapshot", 0);
    repo.publish(&["snapshot", "timestamp"]);
    let err = refresh(&repo, &local).await.unwrap_err();
    assert_eq!(err.kind(), TufErrorKind::Version, "{err}");
}

#[tokio::test]
async fn a_model_delegated_to_a_team_key_is_found_and_the_team_cannot_sign_outside_its_paths() {
    let repo = Repo::new();
    let local = repo.client();
    let mut up = Updater::new(
        repo.served.clone(),
        local.clone(),
        URL,
        Limits::default(),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let info = up
        .target_info("models/landcover/head.onnx")
        .await
        .unwrap()
        .expect("delegated target");
    assert_eq!(info.custom.as_ref().unwrap()["channel"], "stable");
    assert!(info
        .verify("models/landcover/head.onnx", b"head-v1")
        .is_ok());
    assert!(info
        .verify("models/landcover/head.onnx", b"head-v2")
        .is_err());
    // The team's metadata lists other/evil.onnx, but it was delegated models/landcover/* only.
    assert_eq!(up.target_info("other/evil.onnx").await.unwrap(), None);
    assert!(local.get("team").is_some());
}

#[tokio::test]
async fn a_root_chain_is_walked_and_a_root_not_signed_by_the_old_keys_is_refused() {
    let mut repo = Repo::new();
    let old = std::mem::replace(&mut repo.root_key, Ed25519Signer::generate());
    repo.publish_root_signed_by(Some(&old));
    repo.publish_root();
    repo.publish(&["timestamp"]);
    let local = repo.client();
    refresh(&repo, &local).await.unwrap();
    let root: Value = serde_json::from_slice(&local.get("root").unwrap()).unwrap();
    assert_eq!(root["signed"]["version"], 3);
    // A root signed only by a key the trusted root does not know is refused.
    repo.root_key = Ed25519Signer::generate();
    repo.publish_root();
    let err = refresh(&repo, &local).await.unwrap_err();
    assert_eq!(err.kind(), TufErrorKind::Threshold, "{err}");
}

#[tokio::test]
async fn expired_timestamp_is_refused() {
    let mut repo = Repo::new();
    let v = repo.bump("timestamp");
    let mut doc = repo.timestamp_doc(v);
    doc["expires"] = json!(expires(-1));
    repo.served.put(
        "timestamp.json",
        sign(&doc, &[&repo.timestamp_key]).unwrap(),
    );
    let err = refresh(&repo, &repo.client()).await.unwrap_err();
    assert_eq!(err.kind(), TufErrorKind::Expired, "{err}");
}
