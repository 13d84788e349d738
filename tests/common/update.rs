//! Helpers of the over-the-air update tests: a real `outpost-server` with keys and a
//! published release, and a real enrolled agent that ships `colours` 1.0.0 and pins the
//! server's root. Bundles of other versions share the backbone (content addressing) and
//! differ in the head; each carries a golden case (a red tile) so validation is real.
#![allow(dead_code)]

use super::common;
use outpost::trust::tuf::sign::Ed25519Signer;
use outpost::trust::{sign, Root, Signed, SigningKey};
use std::path::{Path, PathBuf};

/// Softmax of `scale * emb`.
fn softmax(scale: f32, emb: [f32; 3]) -> Vec<f32> {
    let z: Vec<f32> = emb.iter().map(|e| (scale * e).exp()).collect();
    let s: f32 = z.iter().sum();
    z.iter().map(|v| v / s).collect()
}

/// A `colours` bundle whose head multiplies the embedding by `scale` (the shipped one: 10),
/// with a golden case that expects `golden_scale` (equal: validates; different: fails), and
/// optionally an extra file of `extra_bytes` pseudo-random bytes (a large download).
pub fn bundle(dir: &Path, version: &str, scale: f32, golden_scale: f32, extra_bytes: usize) {
    common::make_image_bundle(dir, "colours", version);
    let w: Vec<f32> = (0..9)
        .map(|i| if i % 4 == 0 { scale } else { 0.0 })
        .collect();
    std::fs::write(
        dir.join("head.onnx"),
        outpost::model::onnx_writer::linear_head(
            "embedding",
            "scores",
            3,
            3,
            &w,
            &[0.0; 3],
            outpost::model::onnx_writer::Activation::Softmax,
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("golden")).unwrap();
    common::solid_png(&dir.join("golden/red.png"), 16, 16, [255, 0, 0]);
    // Normalised red tile: (1 - 0.5) / 0.5 = 1, (0 - 0.5) / 0.5 = -1.
    let golden = serde_json::json!({
        "tolerance": 1e-4,
        "cases": [{ "image": "golden/red.png", "scores": softmax(golden_scale, [1.0, -1.0, -1.0]) }]
    });
    std::fs::write(
        dir.join("golden.json"),
        serde_json::to_vec_pretty(&golden).unwrap(),
    )
    .unwrap();
    if extra_bytes > 0 {
        let mut x = 0x2545F4914F6CDD1Du64 ^ scale.to_bits() as u64;
        let data: Vec<u8> = (0..extra_bytes)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(dir.join("extra.bin"), data).unwrap();
    }
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    m["golden"] = "golden.json".into();
    m["files"] = serde_json::to_value(outpost::model::bundle::hash_folder(dir).unwrap()).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
}

/// A root version made by hand ([`Env::rotate`]) and how many root keys sign it.
pub struct Rotated {
    /// In the repository's own format.
    pub root: Signed<Root>,
    /// Root keys signing it (in both formats).
    pub signers: usize,
}

/// A server with keys, a device and its agent.
pub struct Env {
    /// Keeps the folders.
    pub tmp: tempfile::TempDir,
    /// Server data folder.
    pub server_data: PathBuf,
    /// Offline root keys.
    pub root_keys: PathBuf,
    /// The running server.
    pub server: common::ServerProcess,
    /// The agent's folder (`data/`, `models/`, `root.json`).
    pub agent: PathBuf,
}

impl Env {
    /// Keys, `colours` 1.0.0 published (and shipped with the agent), agent enrolled. The
    /// agent pins root version 1 in the repository's format before TUF (as agents installed
    /// by earlier releases do): its first update moves it onto TUF.
    pub fn new() -> Env {
        Env::setup(
            |server_data, root_keys| {
                let (c, out, err) = common::server_cmd(
                    server_data,
                    &[
                        "keys",
                        "init",
                        "--root-keys-dir",
                        root_keys.to_str().unwrap(),
                    ],
                );
                assert_eq!(c, 0, "{out}{err}");
            },
            "metadata/1.root.json",
        )
    }

    /// [`Env::new`] with the server's keys made by `prepare(server data, root keys dir)`,
    /// and the agent pinning `pin` (a path in the server's repository folder).
    pub fn setup(prepare: impl FnOnce(&Path, &Path), pin: &str) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let server_data = tmp.path().join("server");
        let root_keys = tmp.path().join("offline-root-keys");
        prepare(&server_data, &root_keys);
        let agent = tmp.path().join("agent");
        let v1 = agent.join("models/colours-1.0.0");
        bundle(&v1, "1.0.0", 10.0, 10.0, 0);
        let env0 = Env {
            server: common::ServerProcess::start(&server_data, common::free_port()),
            tmp,
            server_data,
            root_keys,
            agent,
        };
        env0.publish_dir(&v1, &[]);
        // The operator hands the laptop the root (the pin), out of band.
        std::fs::copy(env0.repo().join(pin), env0.agent.join("root.json")).unwrap();
        let code = common::add_device(&env0.server_data, "laptop-1");
        let (c, out, err) = env0.run(&["enroll", &env0.server.url, &code]);
        assert_eq!(c, 0, "{out}{err}");
        env0
    }

    /// Builds a bundle of `version` in the temp folder and publishes it.
    pub fn publish(&self, version: &str, scale: f32, golden_scale: f32, extra: usize) -> PathBuf {
        let dir = self.tmp.path().join(format!("build/colours-{version}"));
        bundle(&dir, version, scale, golden_scale, extra);
        self.publish_dir(&dir, &[]);
        dir
    }

    /// Publishes a bundle folder.
    pub fn publish_dir(&self, dir: &Path, extra: &[&str]) {
        let mut args = vec!["models", "publish", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        let (c, out, err) = common::server_cmd(&self.server_data, &args);
        assert_eq!(c, 0, "{out}{err}");
    }

    /// An agent command with the pinned root configured.
    pub fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = common::agent_cmd(&self.agent, args);
        c.env("OUTPOST__UPDATE__ROOT", self.agent.join("root.json"));
        c
    }

    /// Runs an agent command: (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_env(args, &[])
    }

    /// Runs an agent command with extra environment.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let mut c = self.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into(),
            String::from_utf8_lossy(&o.stderr).into(),
        )
    }

    /// `outpost update --json`: (exit code, report or error as JSON, stderr).
    pub fn update_json(&self, env: &[(&str, &str)]) -> (i32, serde_json::Value, String) {
        let (c, out, err) = self.run_env(&["update", "--json"], env);
        let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
        (c, v, err)
    }

    /// The active version of `colours` on the agent.
    pub fn active(&self) -> Option<String> {
        std::fs::read_link(self.agent.join("data/models/colours/active"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    /// Asserts the agent still has a verified, loadable model and its golden outputs hold.
    pub fn assert_serving(&self, version: &str) {
        assert_eq!(self.active().as_deref(), Some(version));
        let (c, out, err) = self.run(&["models", "verify"]);
        assert_eq!(c, 0, "the active model verifies: {out}{err}");
        assert!(out.contains(&format!("colours@{version}")), "{out}");
    }

    /// The server repository folder.
    pub fn repo(&self) -> PathBuf {
        self.server_data.join("repo")
    }

    /// A published file's path on the server, by the bundle file name in the newest release.
    pub fn server_file(&self, name: &str) -> (PathBuf, u64) {
        let t: Signed<outpost::trust::Targets> = outpost::trust::parse(
            &std::fs::read(self.repo().join("metadata/targets.json")).unwrap(),
        )
        .unwrap();
        let rel = t.signed.releases.last().unwrap();
        let target = &rel.files[name];
        (
            self.repo().join("targets").join(target),
            t.signed.targets[target].length,
        )
    }

    /// The offline root keys.
    pub fn root_keys(&self) -> Vec<SigningKey> {
        let mut v: Vec<_> = std::fs::read_dir(&self.root_keys)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v.iter()
            .map(|p| SigningKey::from_pkcs8(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }

    /// An online key of the server.
    pub fn online_key(&self, role: &str) -> SigningKey {
        SigningKey::from_pkcs8(
            &std::fs::read(self.server_data.join(format!("keys/online/{role}.pk8"))).unwrap(),
        )
        .unwrap()
    }

    /// The server's current root.
    pub fn root(&self) -> Signed<Root> {
        outpost::trust::parse(&std::fs::read(self.repo().join("metadata/root.json")).unwrap())
            .unwrap()
    }

    /// Writes a new root version on the server in both formats, signed by the same root
    /// keys: the repository's own (`metadata/N.root.json`, `root.json`) and TUF's
    /// (`tuf/N.root.json`, `root.json`).
    pub fn write_root(&self, root: &Rotated) {
        let b = serde_json::to_vec_pretty(&root.root).unwrap();
        let meta = self.repo().join("metadata");
        let v = root.root.signed.version;
        std::fs::write(meta.join(format!("{v}.root.json")), &b).unwrap();
        std::fs::write(meta.join("root.json"), &b).unwrap();
        let signed = outpost::server::repository::tuf::root_signed(&root.root.signed);
        let keys: Vec<Ed25519Signer> = self
            .root_keys()
            .iter()
            .take(root.signers)
            .map(|k| Ed25519Signer::from_pkcs8(k.pkcs8()).unwrap())
            .collect();
        let refs: Vec<&Ed25519Signer> = keys.iter().collect();
        let b = outpost::trust::tuf::sign::sign(&signed, &refs).unwrap();
        std::fs::write(self.tuf(&format!("{v}.root.json")), &b).unwrap();
        std::fs::write(self.tuf("root.json"), &b).unwrap();
    }

    /// A file of the server's TUF repository.
    pub fn tuf(&self, name: &str) -> PathBuf {
        self.repo().join("tuf").join(name)
    }

    /// The `signed` part of a TUF document of the server.
    pub fn tuf_signed(&self, name: &str) -> serde_json::Value {
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.tuf(name)).unwrap()).unwrap();
        doc["signed"].clone()
    }

    /// Writes `signed` as the TUF document `name`, signed by `key`; returns its bytes.
    pub fn tuf_write(&self, name: &str, signed: &serde_json::Value, key: &SigningKey) -> Vec<u8> {
        let signer = Ed25519Signer::from_pkcs8(key.pkcs8()).unwrap();
        let b = outpost::trust::tuf::sign::sign(signed, &[&signer]).unwrap();
        std::fs::write(self.tuf(name), &b).unwrap();
        b
    }

    /// The file names of the TUF snapshot and targets the timestamp currently leads to.
    pub fn tuf_current(&self) -> (String, String) {
        let ts = self.tuf_signed("timestamp.json");
        let sv = ts["meta"]["snapshot.json"]["version"].as_u64().unwrap();
        let sn = self.tuf_signed(&format!("{sv}.snapshot.json"));
        let tv = sn["meta"]["targets.json"]["version"].as_u64().unwrap();
        (format!("{sv}.snapshot.json"), format!("{tv}.targets.json"))
    }

    /// Re-signs, with the server's online keys, the current TUF snapshot (same version) over
    /// the targets file as it is now, and a timestamp one version up over that snapshot: an
    /// attacker holding the snapshot and timestamp keys, or a test reaching past them.
    pub fn tuf_repin(&self) {
        let (sn_name, tg_name) = self.tuf_current();
        let tg = std::fs::read(self.tuf(&tg_name)).unwrap();
        let pin = |v: &serde_json::Value, b: &[u8]| {
            serde_json::json!({"version": v, "length": b.len(),
                "hashes": {"sha256": outpost::trust::tuf::hashes::sha256_hex(b)}})
        };
        let mut sn = self.tuf_signed(&sn_name);
        let tv = sn["meta"]["targets.json"]["version"].clone();
        sn["meta"]["targets.json"] = pin(&tv, &tg);
        let snb = self.tuf_write(&sn_name, &sn, &self.online_key("snapshot"));
        let mut ts = self.tuf_signed("timestamp.json");
        ts["version"] = (ts["version"].as_u64().unwrap() + 1).into();
        let sv = ts["meta"]["snapshot.json"]["version"].clone();
        ts["meta"]["snapshot.json"] = pin(&sv, &snb);
        self.tuf_write("timestamp.json", &ts, &self.online_key("timestamp"));
    }

    /// Root version `current + 1` where `role`'s key is replaced by a new one (written to the
    /// server's online keys when `install_key`), signed by `signers` of the root keys.
    pub fn rotate(&self, role: &str, signers: usize, install_key: bool) -> Rotated {
        let mut root = self.root().signed;
        let new = SigningKey::generate();
        let old = root.roles[role].keyids.clone();
        for k in &old {
            root.keys.remove(k);
        }
        root.keys.insert(new.key_id(), new.public());
        root.roles.get_mut(role).unwrap().keyids = vec![new.key_id()];
        root.version += 1;
        if install_key {
            std::fs::write(
                self.server_data.join(format!("keys/online/{role}.pk8")),
                new.pkcs8(),
            )
            .unwrap();
        }
        let keys = self.root_keys();
        let refs: Vec<&SigningKey> = keys.iter().take(signers).collect();
        Rotated {
            root: sign(root, &refs),
            signers,
        }
    }

    /// The agent's database.
    pub fn agent_db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.agent.join("data/agent.db")).unwrap()
    }

    /// Points the agent at another server URL (a proxy in front of the real one).
    pub fn point_at(&self, url: &str) {
        self.agent_db()
            .execute(
                "UPDATE agent_state SET value = ?1 WHERE key = 'server_url'",
                [url],
            )
            .unwrap();
    }

    /// The agent's own device id (from its enrollment).
    pub fn device_id(&self) -> String {
        self.agent_db()
            .query_row(
                "SELECT value FROM agent_state WHERE key = 'device_id'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// Exports `version` of `colours` to a USB update file; returns its path.
    pub fn export_usb(&self, version: &str) -> PathBuf {
        let out = self.tmp.path().join(format!("colours-{version}.update"));
        let (c, o, e) = common::server_cmd(
            &self.server_data,
            &[
                "models",
                "export-usb",
                "colours",
                version,
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(c, 0, "{o}{e}");
        out
    }

    /// `outpost-server devices list`.
    pub fn devices_list(&self) -> String {
        let (c, out, err) = common::server_cmd(&self.server_data, &["devices", "list"]);
        assert_eq!(c, 0, "{err}");
        out
    }
}

/// Reads the JSON string array `v[key]`.
pub fn strings(v: &serde_json::Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
