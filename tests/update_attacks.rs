//! Attacks on over-the-air updates, each its own test, with the real `outpost-server` and
//! `outpost` binaries: the server's repository is altered the way an attacker who controls
//! the server or the network would. In every case the agent refuses, says what and why,
//! records it (and reports it to the server), and keeps serving a verified model.

mod common;
#[path = "common/update.rs"]
mod upd;

use outpost::trust::{parse, sign, Signed, Targets, Timestamp};
use upd::{strings, Env};

/// Runs `outpost update`, expects a refusal whose message has every one of `words`, and
/// the agent still serving `version`.
fn expect_refusal(env: &Env, extra_env: &[(&str, &str)], words: &[&str], version: &str) -> String {
    let (c, r, err) = env.update_json(extra_env);
    assert_eq!(c, 1, "refused: {r}\n{err}");
    let msg = match r.get("error").and_then(|e| e.as_str()) {
        Some(e) => e.to_string(),
        None => strings(&r, "refused").join("\n"),
    };
    for w in words {
        assert!(msg.contains(w), "{w:?} in {msg}");
    }
    env.assert_serving(version);
    eprintln!("refused as expected: {msg}");
    msg
}

fn repo_meta(env: &Env, name: &str) -> std::path::PathBuf {
    env.repo().join("metadata").join(name)
}

#[test]
fn tampered_file_is_refused() {
    let env = Env::new();
    env.publish("1.1.0", 3.0, 3.0, 0);
    let (head, _) = env.server_file("head.onnx");
    let mut b = std::fs::read(&head).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0x55;
    std::fs::write(&head, b).unwrap();
    let msg = expect_refusal(&env, &[], &["refused", "sha256", "tampered"], "1.0.0");
    assert!(msg.contains(&head.file_name().unwrap().to_string_lossy().to_string()));
    assert!(
        std::fs::read_dir(env.agent.join("data/models/.partial"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "the bad download is deleted"
    );
    assert!(env.devices_list().contains("refused 1.1.0"));
}

#[test]
fn metadata_signed_by_a_wrong_key_is_refused() {
    let env = Env::new();
    env.publish("1.1.0", 3.0, 3.0, 0);
    let p = repo_meta(&env, "targets.json");
    let t: Signed<Targets> = parse(&std::fs::read(&p).unwrap()).unwrap();
    let forged = sign(t.signed, &[&outpost::trust::SigningKey::generate()]);
    std::fs::write(&p, serde_json::to_vec(&forged).unwrap()).unwrap();
    expect_refusal(
        &env,
        &[],
        &["targets metadata has 0 valid signature(s)", "1 needed"],
        "1.0.0",
    );
    assert!(env.devices_list().contains("refused metadata"));
}

#[test]
fn metadata_signed_by_a_revoked_key_is_refused() {
    let env = Env::new();
    // Root v2 revokes the targets key (a new one replaces it) but the server keeps signing
    // with the old one, as a thief of the old key would.
    let r2 = env.rotate("targets", 2, false);
    env.write_root(&r2);
    env.publish("1.1.0", 3.0, 3.0, 0);
    expect_refusal(
        &env,
        &[],
        &["targets metadata has 0 valid signature(s)"],
        "1.0.0",
    );
}

#[test]
fn root_below_threshold_is_refused() {
    let env = Env::new();
    // Root v2 signed by 1 of the 3 root keys; the threshold is 2.
    let r2 = env.rotate("timestamp", 1, true);
    env.write_root(&r2);
    env.publish("1.1.0", 3.0, 3.0, 0);
    expect_refusal(
        &env,
        &[],
        &["root metadata has 1 valid signature(s)", "2 needed"],
        "1.0.0",
    );
}

#[test]
fn older_metadata_offered_again_is_refused() {
    let env = Env::new();
    let meta = env.repo().join("metadata");
    let saved: Vec<(String, Vec<u8>)> = ["timestamp.json", "snapshot.json", "targets.json"]
        .iter()
        .map(|n| (n.to_string(), std::fs::read(meta.join(n)).unwrap()))
        .collect();
    env.publish("1.1.0", 3.0, 3.0, 0);
    let (c, r, _) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}");
    env.assert_serving("1.1.0");
    // The attacker serves the older state, where 1.0.0 is the newest release.
    for (n, b) in &saved {
        std::fs::write(meta.join(n), b).unwrap();
    }
    expect_refusal(
        &env,
        &[],
        &["rollback refused", "timestamp version 1"],
        "1.1.0",
    );
}

fn expired_timestamp(env: &Env, ago_secs: i64) {
    let p = repo_meta(env, "timestamp.json");
    let mut t: Signed<Timestamp> = parse(&std::fs::read(&p).unwrap()).unwrap();
    let when = time::OffsetDateTime::now_utc() - time::Duration::seconds(ago_secs);
    t.signed.expires = when
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    t.signed.version += 1;
    let signed = sign(t.signed, &[&env.online_key("timestamp")]);
    std::fs::write(&p, serde_json::to_vec(&signed).unwrap()).unwrap();
}

#[test]
fn expired_metadata_replayed_is_refused_even_with_the_clock_set_back() {
    let env = Env::new();
    let (c, r, _) = env.update_json(&[]);
    assert_eq!(c, 0, "the agent accepts fresh metadata once: {r}");
    // A correctly signed timestamp that expired an hour ago (a frozen mirror).
    expired_timestamp(&env, 3600);
    expect_refusal(&env, &[], &["timestamp metadata expired"], "1.0.0");
    // The laptop's clock is 30 days behind: the expired timestamp would look fresh on
    // that clock, but the trusted time never goes below the last accepted check.
    expect_refusal(
        &env,
        &[("OUTPOST_CLOCK_OFFSET_SECS", "-2592000")],
        &["timestamp metadata expired"],
        "1.0.0",
    );
}

#[test]
fn a_clock_far_ahead_stops_updates_but_never_the_current_model() {
    let env = Env::new();
    env.publish("1.1.0", 3.0, 3.0, 0);
    // A year ahead: fresh metadata looks expired; the refusal names the clock.
    let ahead = [("OUTPOST_CLOCK_OFFSET_SECS", "31536000")];
    let msg = expect_refusal(&env, &ahead, &["expired", "clock may be wrong"], "1.0.0");
    assert!(msg.contains("keeps serving"), "{msg}");
    let (c, out, _) = env.run_env(&["models", "verify"], &ahead);
    assert_eq!(c, 0, "the verified model still loads and runs: {out}");
    // The refused run did not move the trusted time: with the clock fixed, the update goes on.
    let (c, r, _) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}");
    env.assert_serving("1.1.0");
}

#[test]
fn files_of_two_releases_mixed_are_refused() {
    let env = Env::new();
    let meta = env.repo().join("metadata");
    let old_snapshot = std::fs::read(meta.join("snapshot.json")).unwrap();
    env.publish("1.1.0", 3.0, 3.0, 0);
    // Metadata mix: the new timestamp with the old snapshot.
    std::fs::write(meta.join("snapshot.json"), &old_snapshot).unwrap();
    expect_refusal(
        &env,
        &[],
        &["snapshot metadata does not match what timestamp pins"],
        "1.0.0",
    );
    // File mix: the new release's head replaced by the old release's head.
    env.publish("1.2.0", 2.0, 2.0, 0);
    let (new_head, _) = env.server_file("head.onnx");
    let old_head = env.agent.join("models/colours-1.0.0/head.onnx");
    std::fs::copy(old_head, &new_head).unwrap();
    expect_refusal(&env, &[], &["sha256", "refused"], "1.0.0");
}

#[test]
fn a_file_larger_than_signed_is_cut_at_the_signed_length() {
    let env = Env::new();
    env.publish("1.1.0", 3.0, 3.0, 0);
    let (head, len) = env.server_file("head.onnx");
    // Endless data: the server answers 20 MB where the metadata signs `len` bytes.
    std::fs::write(&head, vec![0x41u8; 20 << 20]).unwrap();
    let (c, r, _) = env.update_json(&[]);
    assert_eq!(c, 1, "{r}");
    let msg = strings(&r, "refused").join("\n");
    assert!(msg.contains(&format!("{len} bytes with sha256")), "{msg}");
    assert!(
        r["bytes_downloaded"].as_u64().unwrap() < 1 << 20,
        "read no further than the signed length (plus one network chunk): {r}"
    );
    env.assert_serving("1.0.0");
}

#[test]
fn a_root_rotation_missed_offline_is_walked_one_version_at_a_time() {
    let env = Env::new();
    // While the laptop is away: root v2 rotates the timestamp key, v3 the targets and
    // snapshot keys (each signed by the root keys); the server signs with the new keys.
    let r2 = env.rotate("timestamp", 2, true);
    env.write_root(&r2);
    let r3 = env.rotate("targets", 2, true);
    env.write_root(&r3);
    let r4 = env.rotate("snapshot", 2, true);
    env.write_root(&r4);
    env.publish("1.1.0", 3.0, 3.0, 0);
    let (c, r, err) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}{err}");
    assert_eq!(r["root_version"], 4, "{r}");
    env.assert_serving("1.1.0");
    // A root that skips a version is never offered as the next one; a replayed v2 is old.
    let (c, r, _) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}");
    assert_eq!(r["root_version"], 4);
}
