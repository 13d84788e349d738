//! TUF-style metadata: the attacks of the update issue, each refused with its reason —
//! tampering, wrong or revoked keys, too few signatures, rollback, freeze (expired metadata
//! replayed, with a wrong clock), mixed releases, a root rotation missed for weeks, and a
//! target longer than its metadata says.

use outpost::trust::client::TrustedState;
use outpost::trust::*;
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

fn t(days: i64) -> String {
    (now() + Duration::days(days)).format(&Rfc3339).unwrap()
}
fn now() -> OffsetDateTime {
    OffsetDateTime::parse("2026-11-28T12:00:00Z", &Rfc3339).unwrap()
}

struct Keys {
    root: Vec<SigningKey>,
    targets: SigningKey,
    snapshot: SigningKey,
    timestamp: SigningKey,
}

fn keys() -> Keys {
    Keys {
        root: (0..3).map(|_| SigningKey::generate()).collect(),
        targets: SigningKey::generate(),
        snapshot: SigningKey::generate(),
        timestamp: SigningKey::generate(),
    }
}

fn root_doc(k: &Keys, version: u64, root_keys: &[&SigningKey], threshold: u32) -> Root {
    let mut keys = BTreeMap::new();
    let mut roles = BTreeMap::new();
    for key in root_keys
        .iter()
        .chain([&&k.targets, &&k.snapshot, &&k.timestamp])
    {
        keys.insert(key.key_id(), key.public());
    }
    roles.insert(
        "root".into(),
        RoleKeys {
            keyids: root_keys.iter().map(|k| k.key_id()).collect(),
            threshold,
        },
    );
    for (name, key) in [
        ("targets", &k.targets),
        ("snapshot", &k.snapshot),
        ("timestamp", &k.timestamp),
    ] {
        roles.insert(
            name.into(),
            RoleKeys {
                keyids: vec![key.key_id()],
                threshold: 1,
            },
        );
    }
    Root {
        type_: "root".into(),
        version,
        expires: t(365),
        keys,
        roles,
    }
}

fn bytes<T: serde::Serialize>(d: &Signed<T>) -> Vec<u8> {
    serde_json::to_vec(d).unwrap()
}

/// A consistent release: targets v`tv`, snapshot v`sv`, timestamp v`tsv`.
fn release(
    k: &Keys,
    tv: u64,
    sv: u64,
    tsv: u64,
    ts_expires: String,
) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let body = format!("head weights v{tv}");
    let mut targets = BTreeMap::new();
    targets.insert(
        format!("sha256/{}", outpost::hash::sha256_hex(body.as_bytes())),
        TargetFile {
            length: body.len() as u64,
            sha256: outpost::hash::sha256_hex(body.as_bytes()),
        },
    );
    let tg = sign(
        Targets {
            type_: "targets".into(),
            version: tv,
            expires: t(30),
            targets,
            releases: vec![],
        },
        &[&k.targets],
    );
    let mut meta = BTreeMap::new();
    meta.insert(
        "targets.json".into(),
        MetaFile {
            version: tv,
            sha256: None,
            length: None,
        },
    );
    let sn = sign(
        Snapshot {
            type_: "snapshot".into(),
            version: sv,
            expires: t(30),
            meta,
        },
        &[&k.snapshot],
    );
    let snb = bytes(&sn);
    let mut meta = BTreeMap::new();
    meta.insert(
        "snapshot.json".into(),
        MetaFile {
            version: sv,
            sha256: Some(outpost::hash::sha256_hex(&snb)),
            length: Some(snb.len() as u64),
        },
    );
    let ts = sign(
        Timestamp {
            type_: "timestamp".into(),
            version: tsv,
            expires: ts_expires,
            meta,
        },
        &[&k.timestamp],
    );
    (bytes(&tg), snb, bytes(&ts))
}

fn state(k: &Keys) -> TrustedState {
    let r: Vec<&SigningKey> = k.root.iter().collect();
    let root = sign(root_doc(k, 1, &r, 2), &[&k.root[0], &k.root[1]]);
    TrustedState::from_pinned_root(&bytes(&root), now()).unwrap()
}

fn apply(
    s: &mut TrustedState,
    rel: &(Vec<u8>, Vec<u8>, Vec<u8>),
    clock: OffsetDateTime,
) -> Result<(), TrustError> {
    s.update_timestamp(&rel.2, clock)?;
    s.update_snapshot(&rel.1, clock)?;
    s.update_targets(&rel.0, clock)
}

#[test]
fn a_good_release_verifies() {
    let k = keys();
    let mut s = state(&k);
    apply(&mut s, &release(&k, 1, 1, 1, t(1)), now()).unwrap();
    assert_eq!(s.targets.as_ref().unwrap().signed.version, 1);
}

#[test]
fn tampered_metadata_and_wrong_keys_are_refused() {
    let k = keys();
    let mut s = state(&k);
    let (tg, sn, ts) = release(&k, 1, 1, 1, t(1));
    // Tampered timestamp: one character of the signed content changed.
    let bad = String::from_utf8(ts.clone())
        .unwrap()
        .replace("\"version\":1", "\"version\":7");
    assert!(matches!(
        s.update_timestamp(bad.as_bytes(), now()),
        Err(TrustError::Threshold { .. })
    ));
    // Signed by a key root does not authorise for timestamp (the snapshot key).
    let doc: Signed<Timestamp> = serde_json::from_slice(&ts).unwrap();
    let wrong = sign(doc.signed.clone(), &[&k.snapshot]);
    assert!(matches!(
        s.update_timestamp(&bytes(&wrong), now()),
        Err(TrustError::Threshold { .. })
    ));
    // An attacker's own key.
    let mallory = SigningKey::generate();
    let forged = sign(doc.signed, &[&mallory]);
    let e = s.update_timestamp(&bytes(&forged), now()).unwrap_err();
    assert!(e.to_string().contains("0 valid signature"), "{e}");
    // The genuine one still works, then a snapshot whose bytes differ from the pinned hash is refused.
    s.update_timestamp(&ts, now()).unwrap();
    let mut sn_bad = sn.clone();
    sn_bad.push(b' ');
    assert!(matches!(
        s.update_snapshot(&sn_bad, now()),
        Err(TrustError::Mismatch { .. })
    ));
    s.update_snapshot(&sn, now()).unwrap();
    s.update_targets(&tg, now()).unwrap();
}

#[test]
fn fewer_root_signatures_than_the_threshold_are_refused() {
    let k = keys();
    let mut s = state(&k);
    let r: Vec<&SigningKey> = k.root.iter().collect();
    let one = sign(root_doc(&k, 2, &r, 2), &[&k.root[0]]);
    let e = s.update_root(&bytes(&one)).unwrap_err();
    assert!(
        matches!(
            e,
            TrustError::Threshold {
                valid: 1,
                threshold: 2,
                ..
            }
        ),
        "{e}"
    );
    // The same key twice counts once.
    let mut twice = sign(root_doc(&k, 2, &r, 2), &[&k.root[0]]);
    twice.signatures.push(twice.signatures[0].clone());
    assert!(matches!(
        s.update_root(&bytes(&twice)),
        Err(TrustError::Threshold { valid: 1, .. })
    ));
}

#[test]
fn rollback_to_an_older_release_is_refused() {
    let k = keys();
    let mut s = state(&k);
    apply(&mut s, &release(&k, 2, 2, 2, t(1)), now()).unwrap();
    let old = release(&k, 1, 1, 1, t(1));
    assert!(matches!(
        s.update_timestamp(&old.2, now()),
        Err(TrustError::Rollback { .. })
    ));
    // A newer timestamp that points at an older snapshot is a rollback too.
    let sneaky = release(&k, 1, 1, 3, t(1));
    assert!(matches!(
        s.update_timestamp(&sneaky.2, now()),
        Err(TrustError::Rollback { .. })
    ));
}

#[test]
fn mixed_releases_are_refused() {
    let k = keys();
    let mut s = state(&k);
    let a = release(&k, 1, 1, 1, t(1));
    let b = release(&k, 2, 2, 2, t(1));
    s.update_timestamp(&b.2, now()).unwrap();
    // Snapshot of release 1 under the timestamp of release 2.
    assert!(matches!(
        s.update_snapshot(&a.1, now()),
        Err(TrustError::Mismatch { .. })
    ));
    s.update_snapshot(&b.1, now()).unwrap();
    // Targets of release 1 under the snapshot of release 2.
    assert!(matches!(
        s.update_targets(&a.0, now()),
        Err(TrustError::Mismatch { .. })
    ));
}

#[test]
fn expired_metadata_is_refused_and_a_clock_set_back_does_not_revive_it() {
    let k = keys();
    let mut s = state(&k);
    // Fresh for one day.
    let rel = release(&k, 1, 1, 1, t(1));
    apply(&mut s, &rel, now()).unwrap();
    // Three days later the same (replayed) timestamp is stale.
    let later = now() + Duration::days(3);
    let e = s.update_timestamp(&rel.2, later).unwrap_err();
    assert!(matches!(e, TrustError::Expired { .. }), "{e}");
    // A newer release accepted at day 3 moves the trusted time forward...
    let rel2 = release(&k, 2, 2, 2, t(4));
    apply(&mut s, &rel2, later).unwrap();
    // ...so a clock set back to day 0 cannot make the old, expired state acceptable.
    assert!(s.trusted_now(now()) >= later);
    let mut fresh_state = state(&k);
    fresh_state.time_floor = s.time_floor;
    assert!(matches!(
        fresh_state.update_timestamp(&rel.2, now()),
        Err(TrustError::Expired { .. })
    ));
    // A laptop clock a week ahead sees fresh metadata as expired: refused with the reason,
    // and the state it had stays as it was.
    let ahead = now() + Duration::days(10);
    let rel3 = release(&k, 3, 3, 3, t(4));
    let e = s.update_timestamp(&rel3.2, ahead).unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    assert_eq!(s.targets.as_ref().unwrap().signed.version, 2);
}

#[test]
fn a_root_rotation_missed_for_weeks_is_walked_one_version_at_a_time() {
    let k = keys();
    let mut s = state(&k);
    // v2 replaces root key 0 with a new key 3 and rotates the timestamp key; v3 rotates again.
    let k3 = SigningKey::generate();
    let new_ts = SigningKey::generate();
    let mut k2 = keys();
    k2.root = vec![
        SigningKey::from_pkcs8(k.root[1].pkcs8()).unwrap(),
        SigningKey::from_pkcs8(k.root[2].pkcs8()).unwrap(),
        SigningKey::from_pkcs8(k3.pkcs8()).unwrap(),
    ];
    k2.targets = SigningKey::from_pkcs8(k.targets.pkcs8()).unwrap();
    k2.snapshot = SigningKey::from_pkcs8(k.snapshot.pkcs8()).unwrap();
    k2.timestamp = SigningKey::from_pkcs8(new_ts.pkcs8()).unwrap();
    let r2: Vec<&SigningKey> = k2.root.iter().collect();
    // Signed by 2 of the old root keys and 2 of the new ones.
    let v2 = sign(root_doc(&k2, 2, &r2, 2), &[&k.root[1], &k.root[2], &k3]);
    let k4 = SigningKey::generate();
    let r3 = [&k2.root[1], &k3, &k4];
    let v3 = sign(root_doc(&k2, 3, &r3, 2), &[&k2.root[1], &k3, &k4]);
    // Skipping v2 is refused; v2 then v3 works.
    assert!(matches!(
        s.update_root(&bytes(&v3)),
        Err(TrustError::RootSkip { .. })
    ));
    s.update_root(&bytes(&v2)).unwrap();
    s.update_root(&bytes(&v3)).unwrap();
    s.check_root(now()).unwrap();
    assert_eq!(s.root.signed.version, 3);
    // The old timestamp key no longer counts; the new one does.
    let old = release(&k, 1, 1, 1, t(1));
    assert!(matches!(
        s.update_timestamp(&old.2, now()),
        Err(TrustError::Threshold { .. })
    ));
    apply(&mut s, &release(&k2, 1, 1, 1, t(1)), now()).unwrap();
    // A revoked root key (key 0, dropped in v2) cannot sign v4 with one other old key.
    let v4 = sign(root_doc(&k2, 4, &r3, 2), &[&k.root[0], &k3]);
    assert!(matches!(
        s.update_root(&bytes(&v4)),
        Err(TrustError::Threshold { .. })
    ));
}

#[test]
fn a_target_larger_than_its_metadata_says_is_refused() {
    let body = b"0123456789";
    let entry = TargetFile {
        length: 10,
        sha256: outpost::hash::sha256_hex(body),
    };
    verify_target("head.onnx", &entry, body).unwrap();
    let mut endless = body.to_vec();
    endless.extend_from_slice(b"and more");
    let e = verify_target("head.onnx", &entry, &endless).unwrap_err();
    assert!(e.to_string().contains("18 bytes, metadata says 10"), "{e}");
    let e = verify_target("head.onnx", &entry, b"9123456789").unwrap_err();
    assert!(e.to_string().contains("sha256"), "{e}");
}

#[test]
fn an_unknown_field_added_to_targets_without_re_signing_is_refused() {
    let k = keys();
    let rel = release(&k, 1, 1, 1, t(1));
    let mut doc: serde_json::Value = serde_json::from_slice(&rel.0).unwrap();
    doc["signed"]["x-added"] = serde_json::json!("never signed");
    let err = parse::<Targets>(&serde_json::to_vec(&doc).unwrap()).unwrap_err();
    assert!(matches!(err, TrustError::Malformed { .. }), "{err}");
    assert!(parse::<Targets>(&rel.0).is_ok());
}

#[test]
fn targets_other_than_the_snapshot_pins_are_refused() {
    let k = keys();
    let mut s = state(&k);
    let (tg, _, _) = release(&k, 1, 1, 1, t(1));
    // A snapshot pinning the sha256 and length of other bytes than the targets served.
    let mut meta = BTreeMap::new();
    meta.insert(
        "targets.json".into(),
        MetaFile {
            version: 1,
            sha256: Some(outpost::hash::sha256_hex(b"other targets")),
            length: Some(tg.len() as u64),
        },
    );
    let sn = bytes(&sign(
        Snapshot {
            type_: "snapshot".into(),
            version: 1,
            expires: t(30),
            meta,
        },
        &[&k.snapshot],
    ));
    let mut meta = BTreeMap::new();
    meta.insert(
        "snapshot.json".into(),
        MetaFile {
            version: 1,
            sha256: None,
            length: None,
        },
    );
    let ts = bytes(&sign(
        Timestamp {
            type_: "timestamp".into(),
            version: 1,
            expires: t(1),
            meta,
        },
        &[&k.timestamp],
    ));
    let err = apply(&mut s, &(tg, sn, ts), now()).unwrap_err();
    assert!(matches!(err, TrustError::Mismatch { .. }), "{err}");
}
