//! Encryption at rest (issue 11): a lost or stolen laptop gives nothing away.
//!
//! Real agent binary, real SQLCipher files, tiny real ONNX models. The proof writes known
//! report texts, a tile and a label, stops the agent, and searches every file under the data
//! folder (database, WAL, shared memory, key file, a USB export of the outbox) for the plaintext and for the embedding's
//! bytes; a plain twin analysed the same way shows the search does find them when they are
//! there. Then: a wrong passphrase is refused and changes nothing; changing the passphrase
//! does not re-encrypt the database; the recovery key sets a new one; converting an existing
//! database keeps its data; `outpost run` starts locked and its review page unlocks it; the
//! systemd-creds mode unlocks unattended.

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use common::{add_device, agent_cmd, ServerProcess};
use std::path::{Path, PathBuf};
use std::process::Stdio;

const SECRET: &str = "ZULU-7 family of five trapped at the old mill need water";
const OTHER: &str = "YANKEE-3 the bridge on route nine is down";
const LABEL: &str = "zz-shelter-mill";
const PASS: &str = "river stone lantern";

/// An agent command with the passphrase file (if any) and no terminal on stdin.
fn agent(root: &Path, pass_file: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let mut c = agent_cmd(root, args);
    c.stdin(Stdio::null())
        .env_remove("OUTPOST_PASSPHRASE_FILE")
        .env("OUTPOST_KDF_MEMORY_KIB", "16384");
    if let Some(p) = pass_file {
        c.env("OUTPOST_PASSPHRASE_FILE", p);
    }
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

fn write_pass(root: &Path, name: &str, pass: &str) -> PathBuf {
    let p = root.join(name);
    std::fs::write(&p, format!("{pass}\n")).unwrap();
    p
}

/// Models, two reports and a tile in `root/inputs`; returns the tile's bytes.
fn set_up_agent(root: &Path) -> Vec<u8> {
    common::make_image_bundle(&root.join("models/colours"), "colours", "1.0.0");
    common::make_text_bundle(&root.join("models/reports"), "reports", "1.0.0");
    let inputs = root.join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::write(inputs.join("alpha.txt"), SECRET).unwrap();
    std::fs::write(inputs.join("bravo.txt"), OTHER).unwrap();
    common::solid_png(&inputs.join("t0.png"), 16, 16, [10, 200, 30]);
    std::fs::read(inputs.join("t0.png")).unwrap()
}

fn analyze_and_label(root: &Path, pass: Option<&Path>) {
    let inputs = root.join("inputs");
    let (code, out, err) = agent(
        root,
        pass,
        &["-vv", "analyze", inputs.to_str().unwrap(), "--no-progress"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !err.contains(SECRET) && !out.contains(SECRET),
        "the report text reached the log: {err}"
    );
    let labels = root.join("labels.csv");
    std::fs::write(
        &labels,
        format!("source,label\nalpha.txt,{LABEL}\nt0.png,green\n"),
    )
    .unwrap();
    let (code, out, err) = agent(
        root,
        pass,
        &[
            "-vv",
            "feedback",
            "import",
            labels.to_str().unwrap(),
            "--allow-new-labels",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains(SECRET), "{err}");
    std::fs::remove_file(&labels).unwrap();
}

fn encrypt(root: &Path, pass_file: &Path) -> String {
    let (code, out, err) = agent(
        root,
        None,
        &[
            "encrypt",
            "--passphrase",
            "--passphrase-file",
            pass_file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    out.lines()
        .find(|l| l.trim().len() == 79 && l.trim().matches('-').count() == 15)
        .unwrap_or_else(|| panic!("no recovery key in {out}"))
        .trim()
        .to_string()
}

/// sha256 of a file, hex (ring is already a dependency).
fn sha_of(path: &Path) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, &std::fs::read(path).unwrap()).as_ref())
}

/// An encrypted laptop with analysed and labelled items: (its root, the passphrase file).
fn encrypted_laptop(tmp: &Path) -> (PathBuf, PathBuf) {
    let root = tmp.join("laptop");
    set_up_agent(&root);
    let pass = write_pass(tmp, "pass.txt", PASS);
    encrypt(&root, &pass);
    analyze_and_label(&root, Some(&pass));
    (root, pass)
}

/// Kills the child process when dropped.
struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `outpost <command> --listen 127.0.0.1:PORT` with no passphrase and no terminal
/// (so it starts locked), and waits until it listens.
fn start_locked(root: &Path, command: &str) -> (Kill, u16) {
    let port = common::free_port();
    let child = agent_cmd(root, &[command, "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("OUTPOST_PASSPHRASE_FILE")
        .spawn()
        .unwrap();
    let child = Kill(child);
    let t = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed().as_secs() < 30,
            "outpost {command} did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    (child, port)
}

#[test]
fn a_stolen_encrypted_data_folder_gives_nothing_away() {
    let tmp = tempfile::tempdir().unwrap();
    // The plain twin: the same inputs, unencrypted. Its files do contain the secrets,
    // which shows that the search below would find them.
    let plain = tmp.path().join("plain");
    let tile = set_up_agent(&plain);
    analyze_and_label(&plain, None);
    let embedding: Vec<u8> = {
        let c = rusqlite::Connection::open(plain.join("data/agent.db")).unwrap();
        c.query_row(
            "SELECT p.embedding FROM predictions p JOIN items i USING (item_id)
             WHERE i.source LIKE '%alpha.txt'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let needles: [(&str, &[u8]); 5] = [
        ("the report text", SECRET.as_bytes()),
        ("the other report", OTHER.as_bytes()),
        ("the tile", tile.as_slice()),
        ("the label", LABEL.as_bytes()),
        ("the embedding", embedding.as_slice()),
    ];
    for (what, needle) in needles {
        assert!(
            !common::files_containing(&plain.join("data"), needle).is_empty(),
            "control: {what} should be in the plain folder"
        );
    }

    // The laptop: encrypted before anything is stored, then used as in the field,
    // including a sync to a real server and a USB export of the outbox.
    let root = tmp.path().join("laptop");
    set_up_agent(&root);
    let pass = write_pass(tmp.path(), "pass.txt", PASS);
    encrypt(&root, &pass);
    analyze_and_label(&root, Some(&pass));
    let server_data = tmp.path().join("server");
    let server = ServerProcess::start(&server_data, common::free_port());
    let code = add_device(&server_data, "laptop");
    let (c, out, err) = agent(&root, Some(&pass), &["-vv", "enroll", &server.url, &code]);
    assert_eq!(c, 0, "{out}{err}");
    // The outbox carried out on a USB stick is sealed too (written into the data folder
    // here so the search below covers it).
    let usb = root.join("data/outbox.feedback");
    let (c, out, err) = agent(
        &root,
        Some(&pass),
        &["feedback", "export", usb.to_str().unwrap()],
    );
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("sealed for the server"), "{out}");
    let (c, out, err) = agent(&root, Some(&pass), &["-vv", "sync"]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("sent 2 decisions"), "{out}");
    assert!(!err.contains(SECRET), "{err}");
    drop(server);
    std::fs::remove_dir_all(root.join("inputs")).unwrap();

    let data = root.join("data");
    for (what, needle) in needles {
        let hits = common::files_containing(&data, needle);
        assert!(hits.is_empty(), "{what} is readable in {hits:?}");
    }
    // The data is all there for the owner of the passphrase.
    let (c, out, err) = agent(&root, Some(&pass), &["export", "--all", "--format", "csv"]);
    assert_eq!(c, 0, "{err}");
    assert!(
        out.contains("alpha.txt") && out.contains("bravo.txt") && out.contains("t0.png"),
        "{out}"
    );
}

#[test]
fn a_wrong_passphrase_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("laptop");
    set_up_agent(&root);
    let pass = write_pass(tmp.path(), "pass.txt", PASS);
    let recovery = encrypt(&root, &pass);
    analyze_and_label(&root, Some(&pass));
    let db = root.join("data/agent.db");
    let before = sha_of(&db);

    let wrong = write_pass(tmp.path(), "wrong.txt", "river stone lanterns");
    let (c, out, err) = agent(&root, Some(&wrong), &["status"]);
    assert_eq!(c, 1, "{out}{err}");
    assert!(err.contains("wrong passphrase"), "{err}");
    // No passphrase and no terminal: refused, saying how to unlock.
    for args in [
        &["status"][..],
        &["export", "--all"][..],
        &["feedback", "list"][..],
        &["purge"][..],
    ] {
        let (c, out, err) = agent(&root, None, args);
        assert_eq!(c, 1, "{args:?}: {out}{err}");
        assert!(
            err.contains("encrypted and locked") && err.contains("OUTPOST_PASSPHRASE_FILE"),
            "{args:?}: {err}"
        );
        assert!(!out.contains("alpha.txt"), "{out}");
    }
    assert_eq!(sha_of(&db), before, "refused commands changed the database");
    let (c, out, err) = agent(&root, Some(&pass), &["status"]);
    assert_eq!(c, 0, "{err}");
    assert!(out.contains("feedback waiting to sync: 2"), "{out}");

    // Changing the passphrase rewraps the key only: the database file is not rewritten.
    let before = sha_of(&db);
    let new = write_pass(tmp.path(), "new.txt", "harbour kite meadow");
    let (c, out, err) = agent(
        &root,
        Some(&pass),
        &["passphrase", "--new-passphrase-file", new.to_str().unwrap()],
    );
    assert_eq!(c, 0, "{out}{err}");
    assert_eq!(sha_of(&db), before, "the database was re-encrypted");
    assert!(agent(&root, Some(&pass), &["status"])
        .2
        .contains("wrong passphrase"));
    assert_eq!(agent(&root, Some(&new), &["status"]).0, 0);

    // The passphrase is lost: the recovery key sets a new one.
    let rk = write_pass(tmp.path(), "recovery.txt", &recovery);
    let third = write_pass(tmp.path(), "third.txt", "copper gull window");
    let (c, out, err) = agent(
        &root,
        None,
        &[
            "passphrase",
            "--recovery-key",
            rk.to_str().unwrap(),
            "--new-passphrase-file",
            third.to_str().unwrap(),
        ],
    );
    assert_eq!(c, 0, "{out}{err}");
    let (c, out, err) = agent(&root, Some(&third), &["status"]);
    assert_eq!(c, 0, "{err}");
    assert!(out.contains("feedback waiting to sync: 2"), "{out}");
}

#[test]
fn encrypting_an_existing_database_keeps_its_data() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("laptop");
    set_up_agent(&root);
    analyze_and_label(&root, None);
    let (_, before, _) = agent(&root, None, &["export", "--all", "--format", "csv"]);
    assert!(before.contains("alpha.txt"));
    assert!(!common::files_containing(&root.join("data"), SECRET.as_bytes()).is_empty());
    let pass = write_pass(tmp.path(), "pass.txt", PASS);
    encrypt(&root, &pass);
    let (c, after, err) = agent(&root, Some(&pass), &["export", "--all", "--format", "csv"]);
    assert_eq!(c, 0, "{err}");
    assert_eq!(after, before, "the data changed in the conversion");
    let (_, out, _) = agent(&root, Some(&pass), &["status"]);
    assert!(out.contains("feedback waiting to sync: 2"), "{out}");
    let hits = common::files_containing(&root.join("data"), SECRET.as_bytes());
    assert!(hits.is_empty(), "plaintext left in {hits:?}");
    // Setting it up twice is refused.
    let (c, _, err) = agent(
        &root,
        None,
        &[
            "encrypt",
            "--passphrase",
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
    );
    assert_eq!(c, 1);
    assert!(err.contains("already set up"), "{err}");
}

fn http(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let req = match method {
            "POST" => c
                .post(url)
                .header("content-type", "application/json")
                .body(body.unwrap_or("{}").to_string()),
            _ => c.get(url),
        };
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

#[test]
fn outpost_run_starts_locked_and_its_review_page_unlocks_it() {
    let tmp = tempfile::tempdir().unwrap();
    encrypted_laptop(tmp.path());
    let (_child, port) = start_locked(&tmp.path().join("laptop"), "run");
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(
        http("GET", &format!("{base}/api/lock"), None),
        (200, r#"{"locked":true}"#.into())
    );
    for path in ["/api/queue", "/api/counters", "/api/filters"] {
        let (s, body) = http("GET", &format!("{base}{path}"), None);
        assert_eq!(s, 423, "{path}: {body}");
        assert!(body.contains("locked"), "{body}");
    }
    let (s, body) = http(
        "POST",
        &format!("{base}/api/unlock"),
        Some(r#"{"passphrase":"not it at all"}"#),
    );
    assert_eq!(s, 401, "{body}");
    assert!(body.contains("wrong passphrase"), "{body}");
    assert_eq!(http("GET", &format!("{base}/api/queue"), None).0, 423);
    let (s, body) = http(
        "POST",
        &format!("{base}/api/unlock"),
        Some(&format!(r#"{{"passphrase":"{PASS}"}}"#)),
    );
    assert_eq!(s, 200, "{body}");
    let (s, body) = http("GET", &format!("{base}/api/queue?reviewed=1"), None);
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("alpha.txt"), "{body}");
}

#[test]
fn systemd_creds_mode_unlocks_unattended() {
    let have = std::process::Command::new("systemd-creds")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    // The host key lives in /var/lib/systemd/credential.secret: root only.
    let root_user = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !have || !root_user {
        eprintln!(
            "SKIP: systemd-creds needs systemd 250+ and root (have: {have}, root: {root_user})"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("box");
    set_up_agent(&root);
    let (c, out, err) = agent(&root, None, &["encrypt", "--systemd-creds"]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(root.join("data/data-key.cred").is_file());
    analyze_and_label(&root, None);
    let hits = common::files_containing(&root.join("data"), SECRET.as_bytes());
    assert!(hits.is_empty(), "plaintext in {hits:?}");
    let (c, out, err) = agent(&root, None, &["status"]);
    assert_eq!(c, 0, "{err}");
    assert!(out.contains("feedback waiting to sync: 2"), "{out}");
    let (_, out, _) = agent(&root, None, &["doctor"]);
    assert!(
        out.contains("encrypted (SQLCipher); key kept by systemd-creds"),
        "{out}"
    );
    // A sealed key copied to another machine does not open: simulate with a damaged blob.
    let cred = root.join("data/data-key.cred");
    let mut b = std::fs::read(&cred).unwrap();
    let n = b.len();
    b[n / 2] ^= 0xff;
    std::fs::write(&cred, b).unwrap();
    let (c, _, err) = agent(&root, None, &["status"]);
    assert_eq!(c, 1);
    assert!(err.contains("systemd-creds decrypt failed"), "{err}");
}

/// The locked review page in a real browser (headless Chromium): the passphrase form shows
/// before anything else, a wrong passphrase is answered on the page, the right one opens
/// the queue.
#[test]
fn the_review_page_asks_for_the_passphrase_in_a_browser() {
    let tmp = tempfile::tempdir().unwrap();
    encrypted_laptop(tmp.path());
    let (_child, port) = start_locked(&tmp.path().join("laptop"), "review");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let b = webdriver::Browser::start().await;
        b.goto(&format!("http://127.0.0.1:{port}/")).await;
        let wait = |script: &'static str, what: &'static str| {
            let b = &b;
            async move {
                let t = std::time::Instant::now();
                loop {
                    if b.js(script).await == serde_json::Value::Bool(true) {
                        return;
                    }
                    assert!(t.elapsed().as_secs() < 20, "timed out waiting for {what}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        };
        wait(
            "return !document.getElementById('lock').hidden",
            "the passphrase form",
        )
        .await;
        assert_eq!(b.count("#queue li").await, 0, "items shown while locked");
        b.type_into("#passphrase", "not the passphrase").await;
        b.click("#unlock").await;
        wait(
            "return document.getElementById('unlock-error').textContent.includes('wrong passphrase')",
            "the wrong-passphrase message",
        )
        .await;
        assert!(!b.text("#lock-title").await.is_empty());
        b.type_into("#passphrase", PASS).await;
        b.click("#unlock").await;
        wait(
            "return document.getElementById('lock').hidden && document.body.dataset.ready === '1'",
            "the unlocked page",
        )
        .await;
        wait(
            "return document.querySelectorAll('#queue li').length > 0",
            "the queue",
        )
        .await;
    });
}

/// Revoked while encrypted: synced items are wiped, the unsynced decision stays, still
/// encrypted (the file is never written in the clear) and readable with the passphrase.
#[test]
fn a_revoked_encrypted_laptop_keeps_its_unsynced_outbox_encrypted() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, pass) = encrypted_laptop(tmp.path());
    let server_data = tmp.path().join("server");
    let server = ServerProcess::start(&server_data, common::free_port());
    let code = add_device(&server_data, "stolen");
    assert_eq!(
        agent(&root, Some(&pass), &["enroll", &server.url, &code]).0,
        0
    );
    let (c, out, err) = agent(&root, Some(&pass), &["sync"]);
    assert_eq!(c, 0, "{out}{err}");
    // bravo is labelled after the sync: its decision never reaches the server.
    let labels = root.join("labels.csv");
    std::fs::write(&labels, "source,label\nbravo.txt,bridge\n").unwrap();
    let (c, out, err) = agent(
        &root,
        Some(&pass),
        &[
            "feedback",
            "import",
            labels.to_str().unwrap(),
            "--allow-new-labels",
        ],
    );
    assert_eq!(c, 0, "{out}{err}");
    let (c, out, err) = common::server_cmd(&server_data, &["devices", "revoke", "stolen"]);
    assert_eq!(c, 0, "{out}{err}");
    let (c, out, err) = agent(&root, Some(&pass), &["sync"]);
    assert_eq!(c, 1, "{out}{err}");
    assert!(err.contains("kept 1 items"), "{err}");
    drop(server);
    let db = std::fs::read(root.join("data/agent.db")).unwrap();
    assert!(!db.windows(15).any(|w| w == b"SQLite format 3"));
    for needle in [SECRET.as_bytes(), OTHER.as_bytes()] {
        assert!(common::files_containing(&root.join("data"), needle).is_empty());
    }
    let (c, out, err) = agent(&root, Some(&pass), &["export", "--all", "--format", "csv"]);
    assert_eq!(c, 0, "{err}");
    assert!(
        out.contains("bravo.txt") && !out.contains("alpha.txt"),
        "{out}"
    );
}
