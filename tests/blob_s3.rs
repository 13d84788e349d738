//! The model repository in S3-compatible storage, with real processes: `moto_server` (moto's
//! S3 server from PyPI, installed by `scripts/fetch-moto.sh` into `.venv-moto/`) on a free
//! loopback port, a bucket, and two `outpost-server serve` processes on one PostgreSQL schema
//! and that bucket, each with its own data folder. A release published by the command line
//! configured like process A is downloaded from process B over HTTP and verified like an
//! agent does (signatures from the pinned root, every file's sha256 and length); a change made
//! through B's configuration is what A serves. No key ever reaches the bucket.
//!
//! Library-level, on the same moto bucket: of several writers that find the timestamp due at
//! once, exactly one re-signs it (put-if-absent on S3; then under the PostgreSQL lease), and
//! two processes publishing different models at once both land (nothing lost).
//!
//! Skipped with a message when moto cannot be installed, unless `OUTPOST_REQUIRE_S3=1`
//! (`scripts/test.sh` sets it), which makes that a failure; PostgreSQL likewise
//! (`OUTPOST_REQUIRE_POSTGRES`).

mod common;

use common::{server_cmd, ServerProcess};
use outpost::server::repository::blob::{BlobStore, BlobStoreConfig};
use outpost::server::repository::{self, Repository};
use outpost::trust::client::TrustedState;
use outpost::trust::{verify_target, Targets};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const BUCKET: &str = "outpost-test";

/// A `moto_server` process, killed when dropped.
struct Moto {
    child: std::process::Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto_server from `scripts/fetch-moto.sh` (installs it once), or `None` with a SKIP message.
fn moto_bin() -> Option<PathBuf> {
    let out = std::process::Command::new("bash")
        .arg(common::repo().join("scripts/fetch-moto.sh"))
        .output();
    let problem = match out {
        Ok(o) if o.status.success() => {
            let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string());
            if p.is_file() {
                return Some(p);
            }
            format!(
                "scripts/fetch-moto.sh printed no moto_server path ({})",
                p.display()
            )
        }
        Ok(o) => format!(
            "scripts/fetch-moto.sh failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("cannot run bash scripts/fetch-moto.sh: {e}"),
    };
    if std::env::var("OUTPOST_REQUIRE_S3").as_deref() == Ok("1") {
        panic!("moto (S3 test server) is required (OUTPOST_REQUIRE_S3=1): {problem}");
    }
    eprintln!("SKIP: {problem}; the S3 blob store tests need moto from PyPI");
    None
}

/// One HTTP/1.1 request to moto (it accepts unsigned requests): (status, body).
fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// moto_server on a free port with the test bucket.
fn start_moto() -> Option<Moto> {
    let bin = moto_bin()?;
    let port = common::free_port();
    let child = std::process::Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start moto_server");
    let moto = Moto { child, port };
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let (status, body) = http(port, "PUT", &format!("/{BUCKET}"));
            assert_eq!(status, 200, "create bucket: {body}");
            return Some(moto);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("moto_server did not start on port {port}");
}

fn s3_config(moto: &Moto, prefix: &str) -> BlobStoreConfig {
    BlobStoreConfig {
        url: Some(format!("s3://{BUCKET}/{prefix}")),
        endpoint: Some(format!("http://127.0.0.1:{}", moto.port)),
        region: Some("us-east-1".into()),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        allow_http: true,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Vec<u8> {
    let r = http.get(url).send().await.unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.bytes().await.unwrap().to_vec()
}

/// What an agent would install from `server`: metadata verified from `root`, then every
/// file of `model` `version` downloaded and checked against the signed sha256 and length.
async fn download_verified(server: &str, root: &[u8], model: &str, version: &str) -> Targets {
    let http = reqwest::Client::new();
    let now = time::OffsetDateTime::now_utc();
    let meta = |f: &str| format!("{server}/v1/metadata/{f}");
    let mut st = TrustedState::from_pinned_root(root, now).unwrap();
    st.update_timestamp(&get(&http, &meta("timestamp.json")).await, now)
        .unwrap();
    st.update_snapshot(&get(&http, &meta("snapshot.json")).await, now)
        .unwrap();
    st.update_targets(&get(&http, &meta("targets.json")).await, now)
        .unwrap();
    let targets = st.targets.unwrap().signed;
    let release = targets
        .releases
        .iter()
        .find(|r| r.model == model && r.version == version)
        .unwrap_or_else(|| panic!("{server} serves no {model} {version}"));
    for target in release.files.values() {
        let bytes = get(&http, &format!("{server}/v1/{}", target_path(target))).await;
        verify_target(target, &targets.targets[target], &bytes).unwrap();
    }
    targets
}

fn target_path(target: &str) -> String {
    format!("targets/{target}")
}

#[test]
fn two_server_processes_share_one_s3_repository() {
    let Some(moto) = start_moto() else { return };
    let Some(pg) = common::pg_schema() else {
        return;
    };
    let t0 = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (data_a, data_b) = (root.join("a"), root.join("b"));
    let config = root.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = {:?}\nort_lib = {:?}\n[training]\nauto_train_after = 0\ndrift_train_after = 0\n\
             [blob_store]\nurl = \"s3://{BUCKET}/fleet\"\nendpoint = \"http://127.0.0.1:{}\"\n\
             region = \"us-east-1\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\nallow_http = true\n",
            pg.url,
            common::ort_lib(),
            moto.port
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let cmd = |data: &Path, args: &[&str]| {
        let mut all = vec!["--config", cfg];
        all.extend_from_slice(args);
        let (code, out, err) = server_cmd(data, &all);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        out
    };

    // Keys: created on A; the online keys are copied to B's data folder (each machine keeps
    // them locally, mode 0600); root metadata goes to the bucket.
    cmd(
        &data_a,
        &[
            "keys",
            "init",
            "--root-keys-dir",
            root.join("offline").to_str().unwrap(),
        ],
    );
    copy_dir(&data_a.join("keys/online"), &data_b.join("keys/online"));

    let a = ServerProcess::start_with(&data_a, common::free_port(), &["--config", cfg]);
    let b = ServerProcess::start_with(&data_b, common::free_port(), &["--config", cfg]);

    // Publish through A's configuration (a separate process, as an operator would).
    let bundle = root.join("colours-1.0.0");
    common::make_image_bundle(&bundle, "colours", "1.0.0");
    let out = cmd(
        &data_a,
        &[
            "models",
            "publish",
            bundle.to_str().unwrap(),
            "--channel",
            "stable",
        ],
    );
    assert!(out.contains("targets version"), "{out}");
    for d in [&data_a, &data_b] {
        assert!(
            !d.join("repo").exists(),
            "{}: the repository is in the bucket, not on the machine",
            d.display()
        );
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        // The pinned root, as the operator hands it over; both processes serve the same.
        let pinned = get(&http, &format!("{}/v1/metadata/1.root.json", a.url)).await;
        assert_eq!(
            pinned,
            get(&http, &format!("{}/v1/metadata/1.root.json", b.url)).await
        );
        // B never published anything: it serves what A's side put in the bucket.
        let targets = download_verified(&b.url, &pinned, "colours", "1.0.0").await;
        assert!(!targets.releases[0].withdrawn);

        // A resumed download from B: Range from an offset, and past the end.
        let (target, entry) = targets
            .targets
            .iter()
            .max_by_key(|(_, e)| e.length)
            .unwrap();
        let whole = get(&http, &format!("{}/v1/{}", b.url, target_path(target))).await;
        let r = http
            .get(format!("{}/v1/{}", b.url, target_path(target)))
            .header("range", "bytes=100-")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes 100-{}/{}", entry.length - 1, entry.length).as_str()
        );
        assert_eq!(r.bytes().await.unwrap().as_ref(), &whole[100..]);
        let r = http
            .get(format!("{}/v1/{}", b.url, target_path(target)))
            .header("range", format!("bytes={}-", entry.length))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 416);
        let r = http
            .get(format!("{}/v1/targets/sha256/{}", b.url, "0".repeat(64)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    });

    // The other way round: withdrawn through B's configuration, A serves it withdrawn.
    cmd(&data_b, &["models", "withdraw", "colours", "1.0.0"]);
    rt.block_on(async {
        let pinned = get(
            &reqwest::Client::new(),
            &format!("{}/v1/metadata/1.root.json", a.url),
        )
        .await;
        let targets = download_verified(&a.url, &pinned, "colours", "1.0.0").await;
        assert!(targets.releases[0].withdrawn, "A serves B's change");
        assert_eq!(targets.version, 2);
    });

    // What the bucket holds: the repository under the prefix, no key of any kind.
    let (status, listing) = http(moto.port, "GET", &format!("/{BUCKET}?list-type=2"));
    assert_eq!(status, 200, "{listing}");
    for expected in [
        "fleet/metadata/root.json",
        "fleet/metadata/1.root.json",
        "fleet/metadata/2.targets.json",
        "fleet/metadata/timestamp.json",
        "fleet/targets/sha256/",
    ] {
        assert!(listing.contains(expected), "{expected} missing: {listing}");
    }
    assert!(
        !listing.contains(".pk8") && !listing.contains("keys/"),
        "keys in the bucket: {listing}"
    );
    drop((a, b));
    eprintln!("two processes on one S3 repository: {:?}", t0.elapsed());
}

/// A repository in the moto bucket under `prefix`, signed with the keys of `data`.
fn s3_repo(moto: &Moto, prefix: &str, data: &Path) -> Repository {
    Repository::new(
        BlobStore::open(&s3_config(moto, prefix), data).unwrap(),
        data,
    )
}

fn timestamp_versions(repo: &Repository) -> Vec<u64> {
    (1..20u64)
        .filter(|v| {
            repo.blobs()
                .exists(&format!("metadata/{v}.timestamp.json"))
                .unwrap()
        })
        .collect()
}

/// Every writer finds the timestamp due at the same moment; exactly one re-signs it.
fn race_refresh(repos: Vec<Repository>) -> usize {
    // Published 2 s ago with a day to live: due for a margin of a day less one second; once
    // re-signed (a full day again) it is fresh for the others.
    let margin = time::Duration::hours(24) - time::Duration::seconds(1);
    let barrier = Arc::new(std::sync::Barrier::new(repos.len()));
    let threads: Vec<_> = repos
        .into_iter()
        .map(|r| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                repository::refresh_timestamp(&r, margin).unwrap()
            })
        })
        .collect();
    threads
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .count()
}

#[test]
fn timestamp_is_resigned_once_and_concurrent_publishes_both_land_on_s3() {
    let Some(moto) = start_moto() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let first = s3_repo(&moto, "once", &data);
    repository::init_keys(&first, &tmp.path().join("offline"), 1, 1).unwrap();
    let bundle = tmp.path().join("colours");
    common::make_image_bundle(&bundle, "colours", "1.0.0");
    repository::publish(&first, &bundle, "stable", &[], 100).unwrap();
    assert_eq!(timestamp_versions(&first), vec![1]);
    std::thread::sleep(Duration::from_secs(2));

    // Without a database: six writers, each with its own S3 client; put-if-absent of
    // metadata/2.timestamp.json lets exactly one through.
    let repos = (0..6).map(|_| s3_repo(&moto, "once", &data)).collect();
    assert_eq!(race_refresh(repos), 1, "re-signed exactly once");
    assert_eq!(timestamp_versions(&first), vec![1, 2]);
    // A put-if-absent that finds the object says so, and leaves it alone.
    let before = first.blobs().get("metadata/2.timestamp.json").unwrap();
    assert!(!first
        .blobs()
        .put_new("metadata/2.timestamp.json", b"other".to_vec())
        .unwrap());
    assert_eq!(
        first.blobs().get("metadata/2.timestamp.json").unwrap(),
        before
    );

    // With the PostgreSQL lease (as the serving processes run it).
    let Some(pg) = common::pg_schema() else {
        return;
    };
    let store = outpost::server::store::open(Some(&pg.url), &data).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let repos = (0..6)
        .map(|_| s3_repo(&moto, "once", &data).with_lock(store.clone()))
        .collect();
    assert_eq!(
        race_refresh(repos),
        1,
        "re-signed exactly once under the lease"
    );
    assert_eq!(timestamp_versions(&first), vec![1, 2, 3]);

    // Two processes publish two different models at the same moment: both releases are in
    // the final targets (the lease serialises them; neither overwrites the other's).
    let (red, blue) = (tmp.path().join("red"), tmp.path().join("blue"));
    common::make_image_bundle(&red, "red", "1.0.0");
    common::make_image_bundle(&blue, "blue", "1.0.0");
    let threads: Vec<_> = [red, blue]
        .into_iter()
        .map(|b| {
            let repo = s3_repo(&moto, "once", &data).with_lock(store.clone());
            std::thread::spawn(move || repository::publish(&repo, &b, "stable", &[], 100).unwrap())
        })
        .collect();
    let mut versions: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    versions.sort();
    assert_eq!(versions, vec![2, 3]);
    let targets = repository::current_targets(&first).unwrap();
    let mut models: Vec<&str> = targets.releases.iter().map(|r| r.model.as_str()).collect();
    models.sort();
    assert_eq!(models, vec!["blue", "colours", "red"]);

    // A process that wrote metadata/6.timestamp.json and died before timestamp.json: under
    // the lease that version is skipped, so the timestamp does not stay stale for ever.
    assert_eq!(timestamp_versions(&first), vec![1, 2, 3, 4, 5]);
    assert!(first
        .blobs()
        .put_new(
            "metadata/6.timestamp.json",
            b"left by a dead process".to_vec()
        )
        .unwrap());
    let locked = s3_repo(&moto, "once", &data).with_lock(store.clone());
    let v = repository::refresh_timestamp(&locked, time::Duration::hours(48)).unwrap();
    assert_eq!(v, Some(7));
}
