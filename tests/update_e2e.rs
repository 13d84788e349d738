//! Over-the-air updates end to end, with the real `outpost-server` and `outpost` binaries:
//! a head-only update moves only the head and manifest; the agent switches, lists, rolls
//! back, pins and unpins; a release that fails its golden cases is refused; a failed
//! post-swap health check rolls back by itself; the server shows per device which version
//! runs and which failed; a USB update file installs on an agent with no network.

mod common;
#[path = "common/update.rs"]
mod upd;

use upd::{strings, Env};

#[test]
fn head_only_update_switch_rollback_pin_and_reports() {
    let env = Env::new();
    // Nothing newer than the shipped 1.0.0: the shipped bundle becomes the first installed one.
    let (c, r, err) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}{err}");
    assert_eq!(env.active().as_deref(), Some("1.0.0"));
    assert_eq!(r["bytes_downloaded"], 0);

    // 1.1.0 changes only the head (and its golden outputs): the backbone does not travel.
    env.publish("1.1.0", 8.0, 8.0, 0);
    let (c, r, err) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}{err}");
    assert_eq!(strings(&r, "installed"), vec!["colours@1.1.0"]);
    let (head, head_len) = env.server_file("head.onnx");
    let (_, manifest_len) = env.server_file("manifest.json");
    let (_, golden_len) = env.server_file("golden.json");
    assert!(head.is_file());
    assert_eq!(
        r["bytes_downloaded"].as_u64().unwrap(),
        head_len + manifest_len + golden_len,
        "{r}"
    );
    assert_eq!(r["files_fetched"], 3, "{r}");
    assert!(r["files_cached"].as_u64().unwrap() >= 2, "{r}");
    env.assert_serving("1.1.0");
    let (_, list, _) = env.run(&["models", "list"]);
    assert!(list.contains("active 1.1.0"), "{list}");
    assert!(
        list.contains("1.0.0, 1.1.0"),
        "the previous version stays: {list}"
    );
    assert!(
        env.devices_list().contains("runs 1.1.0"),
        "{}",
        env.devices_list()
    );

    // Rollback by hand, then pin: updates leave a pinned model alone.
    let (c, out, err) = env.run(&["models", "rollback", "colours"]);
    assert_eq!(c, 0, "{out}{err}");
    env.assert_serving("1.0.0");
    let (c, out, err) = env.run(&["models", "pin", "colours", "1.0.0"]);
    assert_eq!(c, 0, "{out}{err}");
    let (c, r, err) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}{err}");
    assert!(strings(&r, "installed").is_empty(), "{r}");
    assert!(strings(&r, "unchanged")[0].contains("pinned"), "{r}");
    env.assert_serving("1.0.0");
    let (c, _, _) = env.run(&["models", "pin", "colours", "9.9.9"]);
    assert_ne!(c, 0, "pinning a version that is not installed is refused");
    let (c, out, err) = env.run(&["models", "unpin", "colours"]);
    assert_eq!(c, 0, "{out}{err}");
    // 1.1.0 was rolled back by hand: it is not retried on its own; 1.2.0 is.
    let (_, r, _) = env.update_json(&[]);
    assert!(strings(&r, "installed").is_empty(), "{r}");
    env.assert_serving("1.0.0");

    // A release whose golden outputs do not reproduce is refused before any switch.
    env.publish("1.2.0", 1.0, 2.0, 0);
    let (c, r, _) = env.update_json(&[]);
    assert_eq!(c, 1, "{r}");
    let refused = strings(&r, "refused").join("\n");
    assert!(refused.contains("1.2.0 failed validation"), "{refused}");
    assert!(
        refused.contains("golden outputs not reproduced"),
        "{refused}"
    );
    env.assert_serving("1.0.0");
    assert!(
        !env.agent.join("data/models/colours/1.2.0").exists(),
        "a refused release is not installed"
    );

    // A release that validates but fails the health check after the switch rolls back.
    env.publish("1.3.0", 2.0, 2.0, 0);
    let (c, r, _) = env.update_json(&[("OUTPOST_FAULT_HEALTH", "colours@1.3.0")]);
    assert_eq!(c, 1, "{r}");
    let rb = strings(&r, "rolled_back").join("\n");
    assert!(rb.contains("colours@1.3.0"), "{r}");
    assert!(rb.contains("back on 1.0.0"), "{r}");
    env.assert_serving("1.0.0");
    let events: Vec<(String, String, i64)> = {
        let db = env.agent_db();
        let mut st = db
            .prepare("SELECT kind, COALESCE(version, ''), reported FROM model_events WHERE kind IN ('refused', 'rolled_back') ORDER BY event_id")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(
        events.iter().all(|e| e.2 == 1),
        "every failure reached the server: {events:?}"
    );
    let devices = env.devices_list();
    assert!(devices.contains("runs 1.0.0"), "{devices}");
    assert!(devices.contains("refused 1.2.0"), "{devices}");
    assert!(devices.contains("rolled_back 1.3.0"), "{devices}");

    // 1.4.0 is fine and installs.
    env.publish("1.4.0", 1.5, 1.5, 0);
    let (c, r, _) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}");
    env.assert_serving("1.4.0");
}

#[test]
fn usb_update_file_installs_without_network_and_is_verified() {
    let env = Env::new();
    env.publish("1.1.0", 8.0, 8.0, 0);
    let usb = env.tmp.path().join("colours-1.1.0.update");
    let (c, out, err) = common::server_cmd(
        &env.server_data,
        &[
            "models",
            "export-usb",
            "colours",
            "1.1.0",
            "--out",
            usb.to_str().unwrap(),
        ],
    );
    assert_eq!(c, 0, "{out}{err}");

    // A second laptop that never saw the network: shipped 1.0.0 and the pinned root only.
    let offline = env.tmp.path().join("offline-agent");
    upd::bundle(
        &offline.join("models/colours-1.0.0"),
        "1.0.0",
        10.0,
        10.0,
        0,
    );
    let run = |args: &[&str]| {
        let o = common::agent_cmd(&offline, args)
            .env("OUTPOST__UPDATE__ROOT", env.agent.join("root.json"))
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    // A damaged file is refused and nothing changes.
    let mut bytes = std::fs::read(&usb).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0xff;
    let bad = env.tmp.path().join("damaged.update");
    std::fs::write(&bad, &bytes).unwrap();
    let (c, out, _) = run(&["models", "install", bad.to_str().unwrap()]);
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("refused"), "{out}");
    assert!(out.contains("sha256"), "{out}");
    let (_, list, _) = run(&["models", "list"]);
    assert!(list.contains("active 1.0.0"), "{list}");

    let (c, out, err) = run(&["models", "install", usb.to_str().unwrap()]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("switched to colours@1.1.0"), "{out}");
    let (_, list, _) = run(&["models", "list"]);
    assert!(list.contains("active 1.1.0"), "{list}");
    let (c, out, _) = run(&["models", "verify"]);
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("colours@1.1.0"), "{out}");

    // The same file signed for another root is refused: here, an agent pinned to a foreign root.
    let foreign = env.tmp.path().join("foreign");
    let (c, _, _) = common::server_cmd(
        &foreign,
        &[
            "keys",
            "init",
            "--root-keys-dir",
            foreign.join("k").to_str().unwrap(),
        ],
    );
    assert_eq!(c, 0);
    let o = common::agent_cmd(
        &env.tmp.path().join("third"),
        &["models", "install", usb.to_str().unwrap()],
    )
    .env(
        "OUTPOST__UPDATE__ROOT",
        foreign.join("repo/metadata/root.json"),
    )
    .output()
    .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("valid signature"), "{out}");
}
