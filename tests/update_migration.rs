//! Moving agents onto TUF 1.0 metadata, with the real `outpost-server` and `outpost`:
//! an agent pinned to a TUF root updates; an agent and a server left by the release before
//! TUF (`tests/fixtures/legacy_release/`, made by that release's format: keys, roots v1-v2,
//! the agent's trusted root v2) move onto TUF through a TUF root signed by the trusted root
//! keys; a TUF root signed by anyone else is refused at that transition.

mod common;
#[path = "common/update.rs"]
mod upd;

use std::path::Path;
use upd::Env;

const FIXTURE: &str = "tests/fixtures/legacy_release";

fn copy_dir(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.unwrap();
        let dest = to.join(e.path().strip_prefix(from).unwrap());
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

fn server_ok(data: &Path, args: &[&str]) {
    let (c, out, err) = common::server_cmd(data, args);
    assert_eq!(c, 0, "outpost-server {args:?}: {out}{err}");
}

fn keys_init(data: &Path, keys: &Path) {
    server_ok(
        data,
        &["keys", "init", "--root-keys-dir", keys.to_str().unwrap()],
    );
}

#[test]
fn an_agent_pinned_to_a_tuf_root_updates() {
    let env = Env::setup(keys_init, "tuf/1.root.json");
    env.publish("1.1.0", 3.0, 3.0, 0);
    let (c, r, err) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}{err}");
    assert_eq!(r["root_version"], 1, "{r}");
    env.assert_serving("1.1.0");
    assert!(
        !env.agent.join("data/trust/root.json").exists(),
        "a TUF pin never reads the format before TUF"
    );
}

#[test]
fn an_agent_of_the_release_before_tuf_moves_onto_it_through_a_signed_transition() {
    let fixture = common::repo().join(FIXTURE);
    let env = Env::setup(
        |data, keys| {
            copy_dir(&fixture.join("server"), data);
            copy_dir(&fixture.join("offline-root-keys"), keys);
            assert!(
                !data.join("repo/tuf").exists(),
                "a repository from before TUF"
            );
            // The operator's one step: a key rotation signs root v3 in both formats.
            server_ok(
                data,
                &[
                    "keys",
                    "rotate",
                    "--root-keys-dir",
                    keys.to_str().unwrap(),
                    "--role",
                    "timestamp",
                ],
            );
        },
        "metadata/1.root.json",
    );
    // The agent as the release before TUF left it: it had walked to root v2.
    copy_dir(&fixture.join("agent/trust"), &env.agent.join("data/trust"));
    env.publish("1.1.0", 3.0, 3.0, 0);
    let (c, r, err) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}{err}");
    assert_eq!(r["root_version"], 3, "{r}");
    env.assert_serving("1.1.0");
    let tuf_root = env.agent.join("data/trust/tuf/root.json");
    assert_eq!(
        std::fs::read(&tuf_root).unwrap(),
        std::fs::read(env.tuf("3.root.json")).unwrap(),
        "the TUF root taken over is the server's v3, as received"
    );
    // From now on only TUF is read: the old format's metadata going away changes nothing.
    std::fs::remove_dir_all(env.repo().join("metadata")).unwrap();
    let (c, r, err) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}{err}");
    assert_eq!(r["root_version"], 3, "{r}");
}

#[test]
fn a_tuf_root_not_signed_by_the_trusted_root_keys_is_refused_at_the_transition() {
    let env = Env::new();
    // Someone controlling the server offers a TUF root v1 that is self-signed, valid TUF,
    // and signed by keys of their own.
    let mut signed = env.tuf_signed("1.root.json");
    let thief = outpost::trust::tuf::sign::Ed25519Signer::generate();
    signed["keys"][thief.key_id()] = thief.key().to_value();
    signed["roles"]["root"] = serde_json::json!({"keyids": [thief.key_id()], "threshold": 1});
    let forged = outpost::trust::tuf::sign::sign(&signed, &[&thief]).unwrap();
    std::fs::write(env.tuf("1.root.json"), forged).unwrap();
    env.publish("1.1.0", 3.0, 3.0, 0);
    let (c, r, err) = env.update_json(&[]);
    assert_eq!(c, 1, "{r}{err}");
    let msg = r["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("root metadata has 0 valid signature(s)") && msg.contains("2 needed"),
        "{msg}"
    );
    env.assert_serving("1.0.0");
    assert!(!env.agent.join("data/trust/tuf/root.json").exists());
}

/// Writes `tests/fixtures/legacy_release/` (run once, with `--ignored`, from a build whose
/// repository format before TUF is unchanged; the `tuf/` folder the newer server also
/// writes is removed, as the release before TUF never wrote it).
#[test]
#[ignore]
fn make_legacy_fixture() {
    let out = common::repo().join(FIXTURE);
    let _ = std::fs::remove_dir_all(&out);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let keys = out.join("offline-root-keys");
    keys_init(&data, &keys);
    let keys_arg = keys.to_str().unwrap();
    server_ok(
        &data,
        &[
            "keys",
            "rotate",
            "--root-keys-dir",
            keys_arg,
            "--role",
            "targets",
        ],
    );
    copy_dir(&data.join("keys"), &out.join("server/keys"));
    copy_dir(
        &data.join("repo/metadata"),
        &out.join("server/repo/metadata"),
    );
    let trust = out.join("agent/trust");
    std::fs::create_dir_all(&trust).unwrap();
    std::fs::copy(
        data.join("repo/metadata/2.root.json"),
        trust.join("root.json"),
    )
    .unwrap();
    std::fs::write(trust.join("time_floor"), "2026-12-04T21:00:00Z").unwrap();
}
