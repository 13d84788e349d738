//! Attacks on over-the-air updates, each its own test, with the real `outpost-server` and
//! `outpost` binaries: the server's repository is altered the way an attacker who controls
//! the server or the network would. In every case the agent refuses, says what and why,
//! records it (and reports it to the server), and keeps serving a verified model.
//!
//! A man in the middle (a proxy on loopback rewriting the answer to the device report)
//! cannot choose the release: not another group's, not a staged rollout the device is not
//! in, not an older version. USB files get the same targeting rules and a staleness bound.

mod common;
#[path = "common/evil.rs"]
mod evil;
#[path = "common/update.rs"]
mod upd;

use outpost::trust::rollout_bucket;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
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
    // Targets signed by a key root does not list, pinned by a snapshot and timestamp
    // re-signed with the real keys (so the signature check is the one that refuses).
    let (_, tg) = env.tuf_current();
    let signed = env.tuf_signed(&tg);
    env.tuf_write(&tg, &signed, &outpost::trust::SigningKey::generate());
    env.tuf_repin();
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
    let (c, r, _) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}");
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
    // Online once: the agent is on TUF; the next root comes through the TUF root walk.
    let (c, r, _) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}");
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
    let saved = std::fs::read(env.tuf("timestamp.json")).unwrap();
    env.publish("1.1.0", 3.0, 3.0, 0);
    let (c, r, _) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}");
    env.assert_serving("1.1.0");
    // The attacker serves the older state, where 1.0.0 is the newest release.
    std::fs::write(env.tuf("timestamp.json"), saved).unwrap();
    expect_refusal(
        &env,
        &[],
        &["timestamp version 1 refused", "older than the trusted 2"],
        "1.1.0",
    );
}

fn expired_timestamp(env: &Env, ago_secs: i64) {
    let mut t = env.tuf_signed("timestamp.json");
    let when = time::OffsetDateTime::now_utc() - time::Duration::seconds(ago_secs);
    t["expires"] = outpost::trust::tuf::metadata::format_expires(when).into();
    t["version"] = (t["version"].as_u64().unwrap() + 1).into();
    env.tuf_write("timestamp.json", &t, &env.online_key("timestamp"));
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
    let old_snapshot = std::fs::read(env.tuf("1.snapshot.json")).unwrap();
    env.publish("1.1.0", 3.0, 3.0, 0);
    // Metadata mix: the new timestamp with the old snapshot.
    let (sn, _) = env.tuf_current();
    std::fs::write(env.tuf(&sn), &old_snapshot).unwrap();
    expect_refusal(
        &env,
        &[],
        &["snapshot.json", "signed metadata says"],
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
    let (c, r, _) = env.update_json(&[]);
    assert_eq!(c, 0, "online once: {r}");
    // While the laptop is away: root v2 rotates the timestamp key, v3 the targets and
    // v4 the snapshot key (each signed by the root keys); the server signs with the new keys.
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

/// A man in the middle in front of `env`'s server, with the agent pointed at it.
fn mitm(env: &Env) -> Arc<evil::Evil> {
    let e = Arc::new(evil::Evil::default());
    let port = evil::start(env.server.port, e.clone());
    env.point_at(&format!("http://127.0.0.1:{port}"));
    e
}

fn set_rewrite(e: &evil::Evil, f: impl Fn(&mut serde_json::Value) + Send + Sync + 'static) {
    *e.rewrite.lock().unwrap() = Some(Box::new(f));
}

/// Publishes `colours` `version` (a new head) with extra `models publish` arguments.
fn publish_with(env: &Env, version: &str, scale: f32, args: &[&str]) {
    let dir = env.tmp.path().join(format!("build/colours-{version}"));
    upd::bundle(&dir, version, scale, scale, 0);
    env.publish_dir(&dir, args);
}

fn server(env: &Env, args: &[&str]) {
    let (c, out, err) = common::server_cmd(&env.server_data, args);
    assert_eq!(c, 0, "{out}{err}");
}

#[test]
fn a_man_in_the_middle_cannot_move_the_device_to_another_group() {
    let env = Env::new();
    // One check on a clean link: the group (north) is confirmed by a signed answer.
    let (c, r, err) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}{err}");
    publish_with(&env, "1.1.0", 3.0, &["--group", "south"]);
    let e = mitm(&env);
    // The plain answer says south (what moved the agent before); the signed one too.
    set_rewrite(&e, |v| {
        v["group"] = "south".into();
        if let Some(a) = v.get_mut("assignment") {
            a["signed"]["group"] = "south".into();
        }
    });
    expect_refusal(
        &env,
        &[],
        &[
            "answer to the device report was not used",
            "not signed by the trusted timestamp key",
            "group stays \"north\"",
        ],
        "1.0.0",
    );
    // No signed assignment at all.
    set_rewrite(&e, |v| {
        v["group"] = "south".into();
        v.as_object_mut().unwrap().remove("assignment");
    });
    expect_refusal(&env, &[], &["carries no signed assignment"], "1.0.0");
    // A genuine assignment from an earlier exchange, replayed.
    let kept: Arc<Mutex<Option<serde_json::Value>>> = Arc::default();
    let k = kept.clone();
    set_rewrite(&e, move |v| {
        let mut k = k.lock().unwrap();
        match k.as_ref() {
            Some(old) => v["assignment"] = old.clone(),
            None => *k = v.get("assignment").cloned(),
        }
    });
    let _ = env.update_json(&[]);
    assert!(
        kept.lock().unwrap().is_some(),
        "a signed assignment was captured"
    );
    expect_refusal(&env, &[], &["answers another report (replayed)"], "1.0.0");
    assert!(e.rewritten.load(Ordering::Relaxed) >= 4);
    assert!(
        env.devices_list().contains("not used"),
        "{}",
        env.devices_list()
    );
}

#[test]
fn a_man_in_the_middle_cannot_put_the_device_into_a_staged_rollout() {
    // A device outside the first 1% (a fresh device id is, 99 times in 100).
    let env = (0..5)
        .map(|_| Env::new())
        .find(|e| rollout_bucket("colours", &e.device_id()) >= 1)
        .unwrap();
    publish_with(&env, "1.1.0", 3.0, &["--percent", "1"]);
    let fake = (0..)
        .map(|i| format!("fake-{i}"))
        .find(|d| rollout_bucket("colours", d) == 0)
        .unwrap();
    let e = mitm(&env);
    // The answer names a device id inside the 1% (what put the agent in the rollout before).
    let f = fake.clone();
    set_rewrite(&e, move |v| v["device_id"] = f.clone().into());
    let (c, r, err) = env.update_json(&[]);
    assert!(e.rewritten.load(Ordering::Relaxed) >= 1);
    assert!(strings(&r, "installed").is_empty(), "{r}{err}");
    assert_eq!(c, 0, "the plain device id is simply not used: {r}");
    env.assert_serving("1.0.0");
    // The signed device id rewritten as well: the answer is refused.
    set_rewrite(&e, move |v| {
        v["device_id"] = fake.clone().into();
        v["assignment"]["signed"]["device_id"] = fake.clone().into();
    });
    expect_refusal(&env, &[], &["was not used"], "1.0.0");
}

#[test]
fn a_man_in_the_middle_cannot_downgrade_and_updates_never_go_down_unless_withdrawn() {
    let env = Env::new();
    // 1.1.0 for this device's group; 1.0.0 (published by Env) for every group.
    publish_with(&env, "1.1.0", 3.0, &["--group", "north"]);
    let (c, r, err) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}{err}");
    env.assert_serving("1.1.0");
    let e = mitm(&env);
    // The answer moves the device to a group 1.1.0 is not for (what forced 1.1.0 -> 1.0.0).
    set_rewrite(&e, |v| v["group"] = "south".into());
    let (c, r, err) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}{err}");
    assert!(strings(&r, "installed").is_empty(), "{r}");
    env.assert_serving("1.1.0");
    // The operator narrows 1.1.0 to another group (signed): the device still keeps it.
    server(
        &env,
        &[
            "models",
            "stage",
            "colours",
            "1.1.0",
            "--group",
            "south",
            "--percent",
            "100",
        ],
    );
    let (c, r, err) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}{err}");
    assert!(strings(&r, "installed").is_empty(), "{r}");
    let kept = strings(&r, "unchanged").join("\n");
    assert!(kept.contains("never goes down"), "{kept}");
    env.assert_serving("1.1.0");
    // The operator withdraws 1.1.0 (signed): now the device moves off it.
    server(&env, &["models", "withdraw", "colours", "1.1.0"]);
    let (c, r, err) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}{err}");
    assert_eq!(strings(&r, "installed"), vec!["colours@1.0.0"], "{r}");
    env.assert_serving("1.0.0");
}

fn install_usb(
    env: &Env,
    file: &std::path::Path,
    extra: &[&str],
    vars: &[(&str, &str)],
) -> (i32, String, String) {
    let mut args = vec!["models", "install", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    env.run_env(&args, vars)
}

#[test]
fn a_usb_file_installs_only_a_release_meant_for_this_device() {
    let env = Env::new();
    let (c, r, err) = env.update_json(&[]);
    assert_eq!(c, 0, "the group is confirmed once online: {r}{err}");
    let refused = |version: &str, words: &[&str]| {
        let (c, out, err) = install_usb(&env, &env.export_usb(version), &[], &[]);
        assert_eq!(c, 1, "{version} refused: {out}{err}");
        for w in words {
            assert!(out.contains(w), "{w:?} in {out}");
        }
        env.assert_serving("1.0.0");
    };
    publish_with(&env, "1.1.0", 3.0, &["--channel", "canary"]);
    refused(
        "1.1.0",
        &[
            "is on channel canary; this agent follows stable",
            "not for this device",
        ],
    );
    publish_with(&env, "1.2.0", 2.0, &["--group", "south"]);
    refused(
        "1.2.0",
        &["is for groups [\"south\"]; this device is in \"north\""],
    );
    let bucket = rollout_bucket("colours", &env.device_id()).to_string();
    publish_with(&env, "1.3.0", 1.5, &["--percent", &bucket]);
    refused("1.3.0", &["this device is not among them"]);
    // One meant for it installs.
    publish_with(&env, "1.4.0", 4.0, &[]);
    let (c, out, err) = install_usb(&env, &env.export_usb("1.4.0"), &[], &[]);
    assert_eq!(c, 0, "{out}{err}");
    env.assert_serving("1.4.0");
}

#[test]
fn a_stale_usb_file_is_refused_unless_the_operator_overrides_it_aloud() {
    let env = Env::new();
    env.publish("1.1.0", 8.0, 8.0, 0);
    let file = env.export_usb("1.1.0");
    // The stick arrives 9 days later: its timestamp (valid 1 day) expired 8 days ago.
    let later = [("OUTPOST_CLOCK_OFFSET_SECS", "777600")];
    let (c, out, err) = install_usb(&env, &file, &[], &later);
    assert_eq!(c, 1, "{out}{err}");
    for w in [
        "signed timestamp expired 8.0 days ago",
        "more than the 7.0 days allowed",
        "--allow-stale",
    ] {
        assert!(out.contains(w), "{w:?} in {out}");
    }
    env.assert_serving("1.0.0");
    // The operator overrides it: said aloud, recorded, reported.
    let (c, out, err) = install_usb(&env, &file, &["--allow-stale"], &later);
    assert_eq!(c, 0, "{out}{err}");
    assert!(err.contains("WARNING: stale update file"), "{err}");
    assert!(out.contains("switched to colours@1.1.0"), "{out}");
    env.assert_serving("1.1.0");
    let (n, reason): (i64, String) = env
        .agent_db()
        .query_row(
            "SELECT COUNT(*), MAX(reason) FROM model_events WHERE kind = 'override' AND version = '1.1.0'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(n, 1, "one override recorded");
    assert!(reason.contains("--allow-stale"), "{reason}");
    let _ = env.update_json(&[]);
    assert!(
        env.devices_list().contains("override 1.1.0"),
        "{}",
        env.devices_list()
    );
    // Within the bound (2 days past expiry) a file installs without any override.
    env.publish("1.2.0", 2.0, 2.0, 0);
    let file = env.export_usb("1.2.0");
    let (c, out, err) = install_usb(&env, &file, &[], &[("OUTPOST_CLOCK_OFFSET_SECS", "259200")]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(!err.contains("WARNING"), "{err}");
    env.assert_serving("1.2.0");
}
