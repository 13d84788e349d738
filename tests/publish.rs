//! Publishing: `outpost-server keys init` and `models publish` produce metadata that an
//! agent's trusted state accepts from the pinned root; files are content-addressed, so a
//! head-only update adds only the head and manifest; versions only go up; the server
//! serves metadata and files over HTTP, with resumable ranges.

mod common;

use outpost::trust::client::TrustedState;
use outpost::trust::{parse, verify_target, Targets};

#[test]
fn published_releases_verify_against_the_pinned_root_and_resume_by_range() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let offline = tmp.path().join("usb-root-keys");
    let (c, out, err) = common::server_cmd(
        &data,
        &["keys", "init", "--root-keys-dir", offline.to_str().unwrap()],
    );
    assert_eq!(c, 0, "{out}{err}");
    assert_eq!(
        std::fs::read_dir(&offline).unwrap().count(),
        3,
        "root keys go to the offline folder"
    );
    assert!(!data.join("keys/root-0.pk8").exists());
    let (c, _, err) = common::server_cmd(
        &data,
        &["keys", "init", "--root-keys-dir", offline.to_str().unwrap()],
    );
    assert_eq!(c, 1, "a second init is refused");
    assert!(err.contains("initialised"), "{err}");

    let v1 = tmp.path().join("colours-1.0.0");
    common::make_image_bundle(&v1, "colours", "1.0.0");
    let (c, out, err) = common::server_cmd(
        &data,
        &[
            "models",
            "publish",
            v1.to_str().unwrap(),
            "--group",
            "north",
        ],
    );
    assert_eq!(c, 0, "{out}{err}");
    let (c, _, err) = common::server_cmd(&data, &["models", "publish", v1.to_str().unwrap()]);
    assert_eq!(c, 1);
    assert!(err.contains("versions only go up"), "{err}");

    // v1.0.1 changes only the head: content addressing stores just the head and manifest.
    let v2 = tmp.path().join("colours-1.0.1");
    common::make_image_bundle(&v2, "colours", "1.0.1");
    let head = outpost::model::onnx_writer::linear_head(
        "embedding",
        "scores",
        3,
        3,
        &[5.0, 0., 0., 0., 5.0, 0., 0., 0., 5.0],
        &[0.0; 3],
        outpost::model::onnx_writer::Activation::Softmax,
    );
    std::fs::write(v2.join("head.onnx"), head).unwrap();
    let mut m = outpost::model::bundle::read_manifest(&v2).unwrap_or_else(|_| {
        serde_json::from_slice(&std::fs::read(v2.join("manifest.json")).unwrap()).unwrap()
    });
    m.files = outpost::model::bundle::hash_folder(&v2).unwrap();
    std::fs::write(v2.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let files_before = std::fs::read_dir(data.join("repo/targets/sha256"))
        .unwrap()
        .count();
    let (c, out, err) = common::server_cmd(
        &data,
        &[
            "models",
            "publish",
            v2.to_str().unwrap(),
            "--channel",
            "stable",
        ],
    );
    assert_eq!(c, 0, "{out}{err}");
    let files_after = std::fs::read_dir(data.join("repo/targets/sha256"))
        .unwrap()
        .count();
    assert_eq!(
        files_after - files_before,
        2,
        "only head.onnx and manifest.json are new"
    );

    // Fetch over HTTP and verify like an agent, from the pinned root.
    let server = common::ServerProcess::start(&data, common::free_port());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let get = |path: String| {
            let http = http.clone();
            let url = format!("{}{path}", server.url);
            async move {
                http.get(url)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
                    .to_vec()
            }
        };
        let root = std::fs::read(data.join("repo/metadata/root.json")).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let mut state = TrustedState::from_pinned_root(&root, now).unwrap();
        state
            .update_timestamp(&get("/v1/metadata/timestamp.json".into()).await, now)
            .unwrap();
        state
            .update_snapshot(&get("/v1/metadata/snapshot.json".into()).await, now)
            .unwrap();
        let tb = get("/v1/metadata/targets.json".into()).await;
        state.update_targets(&tb, now).unwrap();
        let targets = parse::<Targets>(&tb).unwrap().signed;
        assert_eq!(targets.releases.len(), 2);
        assert_eq!(targets.releases[0].groups, vec!["north".to_string()]);
        let rel = &targets.releases[1];
        assert_eq!(rel.version, "1.0.1");
        let head_path = &rel.files["head.onnx"];
        let entry = &targets.targets[head_path];
        let hash = head_path.trim_start_matches("sha256/");
        let full = get(format!("/v1/targets/sha256/{hash}")).await;
        verify_target(head_path, entry, &full).unwrap();
        // Resume from byte 10.
        let r = http
            .get(format!("{}/v1/targets/sha256/{hash}", server.url))
            .header("range", "bytes=10-")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        let tail = r.bytes().await.unwrap();
        assert_eq!(&full[10..], &tail[..]);
        // Path tricks are refused.
        let r = http
            .get(format!("{}/v1/metadata/..%2Fkeys", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    });
}

/// The documented key rotation procedure (README, "Keys"), through the real CLI: rotate the
/// online keys, then replace the root keys; an agent that pinned root v1 and was offline
/// through both walks the chain and trusts the new metadata; metadata signed with a
/// rotated-out key is refused; too few root keys cannot sign a rotation; the timestamp is
/// re-signed when it nears expiry.
#[test]
fn key_rotation_through_the_cli_and_an_agent_that_missed_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let offline = tmp.path().join("root-keys");
    let o = offline.to_str().unwrap();
    let (c, out, err) = common::server_cmd(&data, &["keys", "init", "--root-keys-dir", o]);
    assert_eq!(c, 0, "{out}{err}");
    let v1 = tmp.path().join("colours-1.0.0");
    common::make_image_bundle(&v1, "colours", "1.0.0");
    let (c, out, err) = common::server_cmd(&data, &["models", "publish", v1.to_str().unwrap()]);
    assert_eq!(c, 0, "{out}{err}");
    let meta = data.join("repo/metadata");
    let read = |f: &str| std::fs::read(meta.join(f)).unwrap();
    let pinned = read("1.root.json");
    let old_targets_key = std::fs::read(data.join("keys/online/targets.pk8")).unwrap();

    // Only one of the three root keys at hand: refused (threshold 2), nothing written.
    let one = tmp.path().join("one-key");
    std::fs::create_dir_all(&one).unwrap();
    std::fs::copy(offline.join("root-0.pk8"), one.join("root-0.pk8")).unwrap();
    let (c, _, err) = common::server_cmd(
        &data,
        &[
            "keys",
            "rotate",
            "--root-keys-dir",
            one.to_str().unwrap(),
            "--role",
            "targets",
        ],
    );
    assert_eq!(c, 1);
    assert!(
        err.contains("1 of the current root keys; 2 are needed"),
        "{err}"
    );
    assert!(!meta.join("2.root.json").exists());

    // Rotation 1: new targets and timestamp keys. Rotation 2: new root keys (2 of 2).
    let (c, out, err) = common::server_cmd(
        &data,
        &[
            "keys",
            "rotate",
            "--root-keys-dir",
            o,
            "--role",
            "targets",
            "--role",
            "timestamp",
        ],
    );
    assert_eq!(c, 0, "{out}{err}");
    assert_ne!(
        std::fs::read(data.join("keys/online/targets.pk8")).unwrap(),
        old_targets_key
    );
    let (c, out, err) = common::server_cmd(
        &data,
        &[
            "keys",
            "rotate",
            "--root-keys-dir",
            o,
            "--new-root-keys",
            "2",
            "--threshold",
            "2",
        ],
    );
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("root metadata v3"), "{out}");
    assert!(offline.join("root-v3-0.pk8").exists() && offline.join("root-v3-1.pk8").exists());

    // The agent that pinned v1 catches up root by root, then trusts the re-signed chain.
    let now = time::OffsetDateTime::now_utc();
    let mut state = TrustedState::from_pinned_root(&pinned, now).unwrap();
    let skip = state.update_root(&read("3.root.json")).unwrap_err();
    assert!(skip.to_string().contains("one by one"), "{skip}");
    state.update_root(&read("2.root.json")).unwrap();
    state.update_root(&read("3.root.json")).unwrap();
    state.check_root(now).unwrap();
    state
        .update_timestamp(&read("timestamp.json"), now)
        .unwrap();
    state.update_snapshot(&read("snapshot.json"), now).unwrap();
    state.update_targets(&read("targets.json"), now).unwrap();
    assert_eq!(state.targets.as_ref().unwrap().signed.releases.len(), 1);

    // Targets signed by the rotated-out key are refused by an agent on the new root.
    // (The current targets, re-signed with the old key: only the key differs.)
    let current = parse::<Targets>(&read("targets.json")).unwrap().signed;
    let old_key = outpost::trust::SigningKey::from_pkcs8(&old_targets_key).unwrap();
    let forged = serde_json::to_vec(&outpost::trust::sign(current, &[&old_key])).unwrap();
    let mut fresh = TrustedState::from_pinned_root(&read("3.root.json"), now).unwrap();
    fresh
        .update_timestamp(&read("timestamp.json"), now)
        .unwrap();
    fresh.update_snapshot(&read("snapshot.json"), now).unwrap();
    let e = fresh.update_targets(&forged, now).unwrap_err();
    assert!(e.to_string().contains("valid signature"), "{e}");

    // A fresh timestamp is left alone; one near expiry is re-signed with a new version.
    let repo = outpost::server::repository::Repository::local(&data).unwrap();
    assert_eq!(
        outpost::server::repository::refresh_timestamp(&repo, time::Duration::hours(12)).unwrap(),
        None
    );
    let before = parse::<outpost::trust::Timestamp>(&read("timestamp.json")).unwrap();
    let v = outpost::server::repository::refresh_timestamp(&repo, time::Duration::hours(48))
        .unwrap()
        .expect("re-signed");
    assert_eq!(v, before.signed.version + 1);
    state
        .update_timestamp(&read("timestamp.json"), now)
        .unwrap();

    let (_, audit, _) = common::server_cmd(&data, &["audit"]);
    assert_eq!(audit.matches("keys rotate").count(), 2, "{audit}");
}
