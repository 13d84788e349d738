//! Helpers of the over-the-air update tests: a real `outpost-server` with keys and a
//! published release, and a real enrolled agent that ships `colours` 1.0.0 and pins the
//! server's root. Bundles of other versions share the backbone (content addressing) and
//! differ in the head; each carries a golden case (a red tile) so validation is real.
#![allow(dead_code)]

use super::common;
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
    /// Keys, `colours` 1.0.0 published (and shipped with the agent), agent enrolled.
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let server_data = tmp.path().join("server");
        let root_keys = tmp.path().join("offline-root-keys");
        let (c, out, err) = common::server_cmd(
            &server_data,
            &[
                "keys",
                "init",
                "--root-keys-dir",
                root_keys.to_str().unwrap(),
            ],
        );
        assert_eq!(c, 0, "{out}{err}");
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
        std::fs::copy(
            env0.server_data.join("repo/metadata/1.root.json"),
            env0.agent.join("root.json"),
        )
        .unwrap();
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

    /// Writes a new root version on the server (as `N.root.json` and `root.json`).
    pub fn write_root(&self, root: &Signed<Root>) {
        let b = serde_json::to_vec_pretty(root).unwrap();
        let meta = self.repo().join("metadata");
        std::fs::write(meta.join(format!("{}.root.json", root.signed.version)), &b).unwrap();
        std::fs::write(meta.join("root.json"), &b).unwrap();
    }

    /// Root version `current + 1` where `role`'s key is replaced by a new one (written to the
    /// server's online keys when `install_key`), signed by `signers` of the root keys.
    pub fn rotate(&self, role: &str, signers: usize, install_key: bool) -> Signed<Root> {
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
        sign(root, &refs)
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
