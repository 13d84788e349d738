//! Interoperability with python-tuf, the reference implementation (PyPI `tuf` 7.0.0, in
//! `.venv-tuf/` from `scripts/fetch-tuf-conformance.sh`): a repository made and signed with
//! python-tuf's own API — an ECDSA P-256 root rotated to RSA-PSS + Ed25519 (threshold 2),
//! consistent snapshots, sha256 + sha512 target hashes, a model delegated to a team key —
//! served by Python's `http.server` in another process, is accepted by the agent's TUF
//! client over HTTP, and the files it downloads are the signed ones.
//!
//! The other way round: a real `outpost-server` process publishes, rotates a key and
//! withdraws a release; python-tuf's `ngclient` refreshes from its `/v1/tuf/` repository
//! at each step and downloads a bundle file, whose bytes are the published ones.
//!
//! Skipped with a message when the venv cannot be made, unless `OUTPOST_REQUIRE_TUF=1`
//! (set by scripts/test.sh).

mod common;

use outpost::update::tuf_client::{self, Downloaded};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python, or `None` (with a SKIP message) when it cannot be made.
fn python() -> Option<PathBuf> {
    let out = Command::new("bash")
        .arg(repo_dir().join("scripts/fetch-tuf-conformance.sh"))
        .output();
    let python = repo_dir().join(".venv-tuf/bin/python");
    match out {
        Ok(o) if o.status.success() && python.exists() => Some(python),
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).to_string(),
                Err(e) => e.to_string(),
            };
            assert!(
                !std::env::var("OUTPOST_REQUIRE_TUF").is_ok_and(|v| v == "1"),
                "python-tuf is required (OUTPOST_REQUIRE_TUF=1) but scripts/fetch-tuf-conformance.sh failed: {why}"
            );
            eprintln!(
                "SKIP: python-tuf venv unavailable ({why}); run scripts/fetch-tuf-conformance.sh"
            );
            None
        }
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(python: &Path, dir: &Path) -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(python)
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "http.server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, format!("http://127.0.0.1:{port}"))
}

#[tokio::test]
async fn a_repository_signed_by_python_tuf_is_accepted_over_http() {
    let Some(python) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let made = Command::new(&python)
        .arg(repo_dir().join("tests/fixtures/tuf_interop/make_repo.py"))
        .arg(&repo)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "make_repo.py: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let model_path = String::from_utf8(made.stdout).unwrap().trim().to_string();
    let (_server, url) = serve(&python, &repo);

    let meta = tmp.path().join("client/metadata");
    let targets = tmp.path().join("client/targets");
    let root = std::fs::read(repo.join("metadata/1.root.json")).unwrap();
    tuf_client::init(&meta, &root).unwrap();
    let names = vec![model_path.clone(), "README.txt".to_string()];
    let got = tuf_client::download(
        &meta,
        &format!("{url}/metadata/"),
        &names,
        &format!("{url}/targets/"),
        &targets,
    )
    .await
    .unwrap();
    assert!(matches!(got[0], Downloaded::Fetched(_)), "{got:?}");
    let Downloaded::Fetched(model_file) = &got[0] else {
        unreachable!()
    };
    assert_eq!(
        std::fs::read(model_file).unwrap(),
        b"a head signed by the land-cover team\n"
    );

    // The ECDSA root was rotated to RSA-PSS + Ed25519: the client now trusts version 2.
    let trusted: serde_json::Value =
        serde_json::from_slice(&std::fs::read(meta.join("root.json")).unwrap()).unwrap();
    assert_eq!(trusted["signed"]["version"], 2);
    // The delegated role is kept under its quoted name, byte for byte as served.
    assert_eq!(
        std::fs::read(meta.join("landcover-team.json")).unwrap(),
        std::fs::read(repo.join("metadata/1.landcover-team.json")).unwrap()
    );

    // A second run finds verified copies and downloads nothing again.
    let again = tuf_client::download(
        &meta,
        &format!("{url}/metadata/"),
        &names,
        &format!("{url}/targets/"),
        &targets,
    )
    .await
    .unwrap();
    assert!(
        again.iter().all(|d| matches!(d, Downloaded::Cached(_))),
        "{again:?}"
    );

    // A file the repository swaps under the same name is refused by its signed hashes.
    let on_disk = std::fs::read_dir(repo.join("targets/models/landcover"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&on_disk, b"a head signed by the land-cover tea!\n").unwrap();
    std::fs::remove_file(targets.join(outpost::trust::tuf::updater::quote(&model_path))).unwrap();
    let err = tuf_client::download(
        &meta,
        &format!("{url}/metadata/"),
        &names[..1],
        &format!("{url}/targets/"),
        &targets,
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), outpost::trust::tuf::TufErrorKind::Hash, "{err}");
}

/// Runs `ngclient_read.py`: what python-tuf's client verified, or its refusal.
fn ngclient(
    python: &Path,
    server: &str,
    client: &Path,
    root: &Path,
    paths: &[&str],
) -> serde_json::Value {
    let out = Command::new(python)
        .arg(repo_dir().join("tests/fixtures/tuf_interop/ngclient_read.py"))
        .arg(format!("{server}/v1/tuf/metadata/"))
        .arg(format!("{server}/v1/tuf/targets/"))
        .arg(client)
        .arg(root)
        .args(paths)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ngclient refused the server's repository: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn server_ok(data: &Path, args: &[&str]) {
    let (c, out, err) = common::server_cmd(data, args);
    assert_eq!(c, 0, "outpost-server {args:?}: {out}{err}");
}

#[test]
fn python_tufs_ngclient_reads_the_servers_repository_through_rotation_and_withdrawal() {
    let Some(python) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let root_keys = tmp.path().join("offline-root-keys");
    let root_keys_arg = root_keys.to_str().unwrap();
    server_ok(&data, &["keys", "init", "--root-keys-dir", root_keys_arg]);
    let v1 = tmp.path().join("colours-1.0.0");
    common::make_image_bundle(&v1, "colours", "1.0.0");
    let v1_arg = v1.to_str().unwrap();
    server_ok(
        &data,
        &[
            "models",
            "publish",
            v1_arg,
            "--group",
            "north",
            "--percent",
            "20",
        ],
    );
    let server = common::ServerProcess::start(&data, common::free_port());

    // The operator's pin: the first TUF root, handed over out of band.
    let root = tmp.path().join("pinned-root.json");
    std::fs::copy(data.join("repo/tuf/1.root.json"), &root).unwrap();
    let client = tmp.path().join("ngclient");
    let head = "models/colours/1.0.0/head.onnx";
    let manifest = "models/colours/1.0.0/manifest.json";
    let got = ngclient(&python, &server.url, &client, &root, &[head, manifest]);
    let file = got["targets"][head]["file"].as_str().unwrap();
    assert_eq!(
        std::fs::read(file).unwrap(),
        std::fs::read(v1.join("head.onnx")).unwrap(),
        "ngclient downloaded the published head"
    );
    let release = &got["targets"][manifest]["custom"]["outpost"];
    assert_eq!(release["model"], "colours");
    assert_eq!(release["files"]["head.onnx"], head);
    assert_eq!(
        release["rollouts"],
        serde_json::json!([{"channel": "stable", "groups": ["north"], "percent": 20, "withdrawn": false}])
    );

    // Only the snapshot key rotated (root v2), then a new release: ngclient walks to root
    // v2 and recovers from the key change on its own (TUF 5.3.11).
    server_ok(
        &data,
        &[
            "keys",
            "rotate",
            "--root-keys-dir",
            root_keys_arg,
            "--role",
            "snapshot",
        ],
    );
    let v2 = tmp.path().join("colours-1.1.0");
    common::make_image_bundle(&v2, "colours", "1.1.0");
    server_ok(&data, &["models", "publish", v2.to_str().unwrap()]);
    server_ok(&data, &["models", "withdraw", "colours", "1.0.0"]);
    let head2 = "models/colours/1.1.0/head.onnx";
    let got = ngclient(&python, &server.url, &client, &root, &[head2, manifest]);
    assert_eq!(got["root_version"], 2, "{got}");
    let file = got["targets"][head2]["file"].as_str().unwrap();
    assert_eq!(
        std::fs::read(file).unwrap(),
        std::fs::read(v2.join("head.onnx")).unwrap()
    );
    assert_eq!(
        got["targets"][manifest]["custom"]["outpost"]["rollouts"][0]["withdrawn"], true,
        "the withdrawal is signed in targets custom"
    );

    // The agent's own TUF client reads the same repository.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let meta = tmp.path().join("agent/metadata");
    tuf_client::init(&meta, &std::fs::read(&root).unwrap()).unwrap();
    let got = rt
        .block_on(tuf_client::download(
            &meta,
            &format!("{}/v1/tuf/metadata/", server.url),
            &[head2.to_string()],
            &format!("{}/v1/tuf/targets/", server.url),
            &tmp.path().join("agent/targets"),
        ))
        .unwrap();
    let Downloaded::Fetched(f) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(
        std::fs::read(f).unwrap(),
        std::fs::read(v2.join("head.onnx")).unwrap()
    );
}
