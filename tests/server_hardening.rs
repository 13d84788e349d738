//! What an enrolled device, or anyone who can reach the port, can do to a real
//! `outpost-server serve` process (issue 22, "the server trusts enrolled devices too much"):
//! - a device cannot supersede (cancel) another device's decisions, on SQLite and PostgreSQL;
//! - a malformed record is refused with a 400 naming the field, one case per field, and
//!   nothing of its batch is stored;
//! - errors carry a machine-readable `code`; non-hex nonces are refused;
//! - half-open connections are closed after the header timeout, connections beyond the
//!   per-peer limit are closed at once, and an oversized unauthenticated body is refused
//!   before it is read.

mod common;

use common::ServerProcess;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A device enrolled with the server through the agent's own enrollment code path.
struct Device {
    id: String,
    key: ring::signature::Ed25519KeyPair,
}

fn enroll(server: &ServerProcess, extra: &[&str], root: &Path, name: &str) -> Device {
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["devices", "add", "--name", name]);
    let (code, out, err) = common::server_cmd(&server.data, &args);
    assert_eq!(code, 0, "{out}{err}");
    let code = out
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 24 && l.matches('-').count() == 4)
        .unwrap()
        .to_string();
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("agent.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt
        .block_on(outpost::sync::enroll(&db, &dir, &server.url, &code))
        .unwrap();
    let pkcs8 = std::fs::read(outpost::sync::key_path(&dir)).unwrap();
    Device {
        id: r.device_id,
        key: ring::signature::Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap(),
    }
}

/// POSTs `body` to `path`, signed by `dev` with `nonce`: (status, JSON body).
fn post_raw(
    server: &ServerProcess,
    dev: &Device,
    path: &str,
    body: Vec<u8>,
    nonce: &str,
) -> (u16, Value) {
    let ts = outpost::server::unix_now();
    let payload = outpost::protocol::signing_payload("POST", path, &body, ts, nonce);
    let sig = outpost::protocol::b64(dev.key.sign(&payload).as_ref());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", server.url))
            .header("x-outpost-protocol", "1")
            .header("x-outpost-device", &dev.id)
            .header("x-outpost-timestamp", ts.to_string())
            .header("x-outpost-nonce", nonce)
            .header("x-outpost-signature", sig)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    })
}

fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Sends a feedback batch of `records` from `dev`.
fn upload(server: &ServerProcess, dev: &Device, records: Vec<Value>) -> (u16, Value) {
    let json = serde_json::to_vec(&json!({"protocol": 1, "records": records})).unwrap();
    let body = zstd::bulk::compress(&json, 3).unwrap();
    post_raw(server, dev, "/v1/feedback", body, &nonce())
}

/// A valid record, as an agent writes it.
fn record(item: &str, label: &str) -> Value {
    json!({
        "feedback_id": uuid::Uuid::new_v4().to_string(),
        "item_id": outpost::hash::sha256_hex(item.as_bytes()),
        "kind": "image",
        "model_name": "colours",
        "model_version": "1.0.0",
        "action": "correct",
        "labels": [label],
        "new_labels": [],
        "annotator": "amina",
        "created_at": "2026-11-30T10:00:00Z",
        "supersedes": null,
        "embedding_f16": outpost::protocol::b64(&[0, 60, 0, 60]),
        "content": null,
        "content_type": null,
    })
}

fn id(r: &Value) -> String {
    r["feedback_id"].as_str().unwrap().to_string()
}

fn acked(v: &Value) -> Vec<String> {
    v["acked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

fn training_ids(url: Option<&str>, data: &Path) -> Vec<String> {
    let store = outpost::server::store::open(url, data).unwrap();
    store
        .training_feedback("colours")
        .unwrap()
        .into_iter()
        .map(|r| r.feedback_id)
        .collect()
}

/// The `supersedes` column of a stored record, read straight from the server's database.
fn stored_supersedes(url: Option<&str>, data: &Path, feedback_id: &str) -> Option<String> {
    let q = "SELECT supersedes FROM feedback WHERE feedback_id = ";
    match url {
        None => rusqlite::Connection::open(data.join("server.db"))
            .unwrap()
            .query_row(&format!("{q}?1"), [feedback_id], |r| r.get(0))
            .unwrap(),
        Some(u) => postgres::Client::connect(u, postgres::NoTls)
            .unwrap()
            .query_one(&format!("{q}$1"), &[&feedback_id])
            .unwrap()
            .get(0),
    }
}

/// laptop-2 names laptop-1's decision in `supersedes`: the record is acknowledged (its
/// outbox drains) but laptop-1's decision stays in the training set; laptop-1 superseding its
/// own decision still replaces it.
fn supersession_is_per_device(extra: &[&str], url: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = ServerProcess::start_with(&data, common::free_port(), extra);
    let one = enroll(&server, extra, tmp.path(), "laptop-1");
    let two = enroll(&server, extra, tmp.path(), "laptop-2");

    let a = record("tile a", "flooded");
    let (status, ack) = upload(&server, &one, vec![a.clone()]);
    assert_eq!(status, 200, "{ack}");
    let mut b = record("tile b", "green");
    b["supersedes"] = json!(id(&a));
    let (status, ack) = upload(&server, &two, vec![b.clone()]);
    assert_eq!(status, 200, "{ack}");
    assert_eq!(
        acked(&ack),
        vec![id(&b)],
        "acknowledged, so laptop-2's outbox drains"
    );
    assert_eq!(
        stored_supersedes(url, &data, &id(&b)),
        None,
        "the server stored laptop-2's claim on laptop-1's decision"
    );
    let t = training_ids(url, &data);
    assert!(
        t.contains(&id(&a)),
        "laptop-2 cancelled laptop-1's decision: {t:?}"
    );
    assert!(t.contains(&id(&b)), "{t:?}");
    let text = get_text(&format!("{}/metrics", server.url));
    assert!(
        text.contains(r#"outpost_ingest_refusals_total{reason="foreign_supersedes"} 1"#),
        "{text}"
    );

    // Its own decision a device may replace.
    let mut c = record("tile a", "green");
    c["supersedes"] = json!(id(&a));
    c["created_at"] = json!("2026-11-30T11:00:00Z");
    assert_eq!(upload(&server, &one, vec![c.clone()]).0, 200);
    let t = training_ids(url, &data);
    assert!(!t.contains(&id(&a)), "{t:?}");
    assert!(t.contains(&id(&c)) && t.contains(&id(&b)), "{t:?}");
}

fn get_text(url: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { reqwest::get(url).await.unwrap().text().await.unwrap() })
}

#[test]
fn a_device_cannot_supersede_another_devices_decision_on_sqlite() {
    supersession_is_per_device(&[], None);
}

#[test]
fn a_device_cannot_supersede_another_devices_decision_on_postgres() {
    let Some(schema) = common::pg_schema() else {
        return;
    };
    supersession_is_per_device(&["--database-url", &schema.url], Some(&schema.url));
}

fn server_feedback_count(data: &Path) -> i64 {
    let c = rusqlite::Connection::open(data.join("server.db")).unwrap();
    c.query_row("SELECT COUNT(*) FROM feedback", [], |r| r.get(0))
        .unwrap()
}

/// One malformed field per case: the batch (a valid record, then the bad one) is refused
/// with 400, `code` `invalid_record`, the field's path and the record's id; nothing of it is
/// stored.
#[test]
fn a_malformed_record_is_refused_with_the_field_named() {
    type Case = (&'static str, fn(&mut Value));
    let cases: &[Case] = &[
        ("kind", |r| r["kind"] = json!("video")),
        ("action", |r| r["action"] = json!("delete")),
        ("created_at", |r| r["created_at"] = json!("yesterday")),
        ("annotator", |r| r["annotator"] = json!("a".repeat(1 << 20))),
        ("labels", |r| {
            r["labels"] = json!((0..100_000).map(|i| format!("l{i}")).collect::<Vec<_>>())
        }),
        ("labels", |r| r["labels"] = json!([])),
        ("labels", |r| r["labels"] = json!(["x".repeat(1000)])),
        ("labels", |r| r["labels"] = json!(["flooded", "flooded"])),
        ("labels[0]", |r| r["labels"] = json!([42])),
        ("new_labels", |r| r["new_labels"] = json!(["ghost"])),
        ("feedback_id", |r| r["feedback_id"] = json!("not-a-uuid")),
        ("item_id", |r| r["item_id"] = json!("../../etc/passwd")),
        ("model_name", |r| r["model_name"] = json!("Colours!")),
        ("model_version", |r| r["model_version"] = json!("latest")),
        ("supersedes", |r| r["supersedes"] = json!("yesterday's")),
        ("embedding_f16", |r| r["embedding_f16"] = json!("***")),
        ("embedding_f16", |r| {
            r["embedding_f16"] = json!(outpost::protocol::b64(&vec![0u8; 1 << 20]))
        }),
        ("content", |r| {
            r["content"] = json!("***");
            r["content_type"] = json!("image/png");
        }),
        ("content_type", |r| {
            r["content"] = json!(outpost::protocol::b64(b"png"))
        }),
        ("annotator", |r| r["annotator"] = json!("a\u{0}b")),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = ServerProcess::start(&data, common::free_port());
    let dev = enroll(&server, &[], tmp.path(), "laptop-1");
    for &(field, spoil) in cases {
        let mut bad = record("tile bad", "flooded");
        spoil(&mut bad);
        let (status, body) = upload(&server, &dev, vec![record("tile ok", "green"), bad.clone()]);
        assert_eq!(status, 400, "{field}: {body}");
        assert_eq!(body["code"], "invalid_record", "{field}: {body}");
        assert_eq!(body["field"], format!("records[1].{field}"), "{body}");
        assert!(body["error"].as_str().unwrap().contains(field), "{body}");
        if uuid::Uuid::parse_str(bad["feedback_id"].as_str().unwrap_or("")).is_ok() {
            assert_eq!(body["feedback_id"], bad["feedback_id"], "{body}");
        }
        assert_eq!(
            server_feedback_count(&data),
            0,
            "{field}: something was stored"
        );
    }
    // Too many records in one batch.
    let many: Vec<Value> = (0..1001)
        .map(|i| record(&format!("t{i}"), "green"))
        .collect();
    let (status, body) = upload(&server, &dev, many);
    assert_eq!(
        (status, body["field"].clone()),
        (400, json!("records")),
        "{body}"
    );
    // The harness is right: the same valid record is stored.
    let (status, body) = upload(&server, &dev, vec![record("tile ok", "green")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(server_feedback_count(&data), 1);
}

/// A decision answering a model version the server published may only give that
/// release's labels, or labels it flags as new; for a version the server never published
/// the label set is unknown and only the structural rules apply.
#[test]
fn labels_must_belong_to_the_published_release_or_be_flagged_new() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let offline = tmp.path().join("offline");
    let (c, out, err) = common::server_cmd(
        &data,
        &["keys", "init", "--root-keys-dir", offline.to_str().unwrap()],
    );
    assert_eq!(c, 0, "{out}{err}");
    let bundle = tmp.path().join("colours");
    common::make_image_bundle(&bundle, "colours", "1.0.0");
    let (c, out, err) = common::server_cmd(&data, &["models", "publish", bundle.to_str().unwrap()]);
    assert_eq!(c, 0, "{out}{err}");
    let server = ServerProcess::start(&data, common::free_port());
    let dev = enroll(&server, &[], tmp.path(), "laptop");

    let (status, body) = upload(&server, &dev, vec![record("tile a", "purple")]);
    assert_eq!(
        (status, body["field"].clone(), body["code"].clone()),
        (400, json!("records[0].labels"), json!("invalid_record")),
        "{body}"
    );
    assert!(body["error"].as_str().unwrap().contains("purple"), "{body}");
    assert_eq!(server_feedback_count(&data), 0);

    let mut flagged = record("tile b", "purple");
    flagged["new_labels"] = json!(["purple"]);
    let mut unpublished = record("tile c", "purple");
    unpublished["model_version"] = json!("9.9.9");
    let known = record("tile d", "green");
    let (status, body) = upload(&server, &dev, vec![flagged, unpublished, known]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(server_feedback_count(&data), 3);
}

/// Every error has a `code` beside its text; a revoked device's is `revoked`; a non-hex
/// nonce is refused.
#[test]
fn errors_carry_a_code_and_nonces_must_be_hex() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = ServerProcess::start(&data, common::free_port());
    let dev = enroll(&server, &[], tmp.path(), "laptop-1");
    let empty = zstd::bulk::compress(br#"{"protocol":1,"records":[]}"#, 3).unwrap();
    let (status, body) = post_raw(&server, &dev, "/v1/feedback", empty.clone(), &nonce());
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_raw(
        &server,
        &dev,
        "/v1/feedback",
        empty.clone(),
        "zzzzzzzzzzzzzzzzzzzz",
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "unauthorized", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("bad nonce"),
        "{body}"
    );
    let (status, body) = post_raw(
        &server,
        &dev,
        "/v1/feedback",
        b"not zstd".to_vec(),
        &nonce(),
    );
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!("bad_request")),
        "{body}"
    );
    let (code, out, err) = common::server_cmd(&data, &["devices", "revoke", "laptop-1"]);
    assert_eq!(code, 0, "{out}{err}");
    let (status, body) = post_raw(&server, &dev, "/v1/feedback", empty, &nonce());
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "revoked", "{body}");
    assert_eq!(
        body["error"],
        outpost::protocol::REVOKED_MESSAGE,
        "old agents read the text"
    );
}

/// A server whose `[http]` timeouts and limits are small, for the tests below.
fn limited_server(tmp: &Path, per_peer: usize) -> (ServerProcess, PathBuf) {
    let config = tmp.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nheader_read_timeout_secs = 1\nbody_read_timeout_secs = 2\nmax_connections_per_peer = {per_peer}\n"
        ),
    )
    .unwrap();
    let data = tmp.join("server");
    let server = ServerProcess::start_with(
        &data,
        common::free_port(),
        &["--config", config.to_str().unwrap()],
    );
    (server, data)
}

/// Sockets the server process holds open.
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|l| l.to_string_lossy().starts_with("socket:"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

/// Whether the server closed `s` (EOF or reset) within `wait`.
fn closed_within(s: &mut std::net::TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a 408 or 400 before the close
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn half_open_connections_are_closed_after_the_header_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, _) = limited_server(tmp.path(), 0);
    let before = open_sockets(server.pid());
    let mut conns: Vec<std::net::TcpStream> = (0..50)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
            if i % 2 == 0 {
                // Half a request head, never finished.
                s.write_all(b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
            }
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let held = open_sockets(server.pid());
    assert!(
        held >= before + 45,
        "the server holds the connections: {before} -> {held}"
    );
    let started = Instant::now();
    for s in &mut conns {
        assert!(
            closed_within(
                s,
                Duration::from_secs(5)
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(100))
            ),
            "a half-open connection was still open {:?} after a 1 s header timeout",
            started.elapsed()
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = open_sockets(server.pid());
    assert!(after <= before + 2, "sockets {before} -> {held} -> {after}");
}

#[test]
fn connections_beyond_the_per_peer_limit_are_closed_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, _) = limited_server(tmp.path(), 5);
    // The start-up probe's connection must be gone first.
    std::thread::sleep(Duration::from_millis(300));
    let mut conns: Vec<std::net::TcpStream> = (0..10)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap())
        .collect();
    // Well within the 1 s header timeout that later closes the admitted ones too.
    std::thread::sleep(Duration::from_millis(150));
    let closed = conns
        .iter_mut()
        .filter_map(|s| closed_within(s, Duration::from_millis(20)).then_some(()))
        .count();
    assert_eq!(closed, 5, "5 of 10 connections are over the limit of 5");
}

/// Sends the head of a POST declaring `length` bytes and `sent` bytes of its body, then
/// waits for an answer: (status line, seconds to it). The rest of the body is never sent.
fn partial_post(port: u16, head_extra: &str, length: usize, sent: usize) -> (String, f64) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let started = Instant::now();
    write!(
        s,
        "POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{head_extra}\r\n"
    )
    .unwrap();
    s.write_all(&vec![b'x'; sent]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    (
        text.lines().next().unwrap_or("").to_string(),
        started.elapsed().as_secs_f64(),
    )
}

#[test]
fn an_oversized_unauthenticated_body_is_refused_without_being_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, _) = limited_server(tmp.path(), 0);
    let rss = |pid: u32| {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
    };
    let before = rss(server.pid());
    // 16 MiB declared (the feedback limit), 256 KiB sent: answered at once, unread.
    for _ in 0..20 {
        let (status, secs) = partial_post(server.port, "", 16 << 20, 256 << 10);
        assert!(status.contains(" 401 "), "{status:?}");
        assert!(
            secs < 1.5,
            "answered only after {secs} s: the body was waited for"
        );
    }
    // Signed headers of an unknown device: also refused before the body.
    let (status, _) = partial_post(
        server.port,
        "x-outpost-device: nobody\r\nx-outpost-timestamp: 0\r\nx-outpost-nonce: 00112233445566778899\r\nx-outpost-signature: AA==\r\n",
        16 << 20,
        1024,
    );
    assert!(status.contains(" 401 "), "{status:?}");
    let after = rss(server.pid());
    assert!(
        after < before + 32 * 1024,
        "server memory grew from {before} kB to {after} kB"
    );
}

#[test]
fn an_enrolled_device_gets_413_for_a_body_over_the_limit_and_408_for_a_stalled_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, _) = limited_server(tmp.path(), 0);
    let dev = enroll(&server, &[], tmp.path(), "laptop-1");
    let signed = |length: usize| {
        let ts = outpost::server::unix_now();
        let n = nonce();
        let payload = outpost::protocol::signing_payload("POST", "/v1/feedback", b"", ts, &n);
        let sig = outpost::protocol::b64(dev.key.sign(&payload).as_ref());
        let head = format!(
            "x-outpost-device: {}\r\nx-outpost-timestamp: {ts}\r\nx-outpost-nonce: {n}\r\nx-outpost-signature: {sig}\r\n",
            dev.id
        );
        partial_post(server.port, &head, length, 1024)
    };
    let (status, secs) = signed(17 << 20);
    assert!(status.contains(" 413 "), "{status:?}");
    assert!(secs < 1.5, "{secs}");
    // Within the limit but never finished: the body timeout (2 s) answers.
    let (status, secs) = signed(1 << 20);
    assert!(status.contains(" 408 "), "{status:?}");
    assert!((1.5..4.5).contains(&secs), "{secs}");
}

/// A real agent whose outbox holds one record the server refuses: the agent sets that one
/// aside (kept, reported) and the rest of its outbox is synced, instead of the whole batch
/// being retried forever.
#[test]
fn the_agent_sets_aside_a_refused_record_and_syncs_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = ServerProcess::start(&data, common::free_port());
    let (code, out, err) = common::server_cmd(&data, &["devices", "add", "--name", "laptop-1"]);
    assert_eq!(code, 0, "{out}{err}");
    let code = out
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 24 && l.matches('-').count() == 4)
        .unwrap()
        .to_string();
    let dir = tmp.path().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("agent.db");
    common::seed_feedback(&db, 5, "aside");
    let bad = common::outbox_ids(&db)[2].clone();
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE feedback SET created_at = 'yesterday' WHERE feedback_id = ?1",
            [&bad],
        )
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(outpost::sync::enroll(&db, &dir, &server.url, &code))
        .unwrap();
    let r = rt.block_on(outpost::sync::sync_once(&db, &dir)).unwrap();
    assert_eq!(r.acked, 4, "{r:?}");
    assert_eq!(r.refused.len(), 1, "{r:?}");
    assert_eq!(r.refused[0].feedback_id, bad);
    assert!(r.refused[0].reason.contains("created_at"), "{r:?}");
    assert_eq!(server_feedback_count(&data), 4);
    let pending: Vec<String> = rusqlite::Connection::open(&db)
        .unwrap()
        .prepare("SELECT feedback_id FROM outbox WHERE acked_at IS NULL")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        pending,
        [bad],
        "the refused record alone stays in the outbox"
    );
}

/// `/metrics` needs no sign-in, so by default only this machine gets it: a request that came
/// through a proxy is refused, and the config can switch it off.
#[test]
fn metrics_are_served_to_this_machine_only_by_default() {
    let get = |url: String, forwarded: bool| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut req = reqwest::Client::new().get(url);
            if forwarded {
                req = req.header("x-forwarded-for", "203.0.113.9");
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        })
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("s1"), common::free_port());
    assert_eq!(get(format!("{}/metrics", server.url), false).0, 200);
    let (status, body) = get(format!("{}/metrics", server.url), true);
    assert_eq!(
        (status, body["code"].clone()),
        (403, json!("forbidden")),
        "{body}"
    );
    let config = tmp.path().join("off.toml");
    std::fs::write(&config, "[http]\nmetrics = \"off\"\n").unwrap();
    let off = ServerProcess::start_with(
        &tmp.path().join("s2"),
        common::free_port(),
        &["--config", config.to_str().unwrap()],
    );
    assert_eq!(get(format!("{}/metrics", off.url), false).0, 404);
}
