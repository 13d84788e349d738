//! Sync between real processes: `outpost-server serve` on loopback, the `outpost` agent
//! enrolling with a one-time code and pushing its outbox; exactly-once under re-delivery;
//! signed requests (replay, tampering, clock skew, revocation); the USB import path.

mod common;

use std::path::Path;

use common::{add_device, agent, server_cmd, ServerProcess};

fn start_server(data: &Path) -> ServerProcess {
    ServerProcess::start(data, common::free_port())
}

fn server_count(data: &Path) -> i64 {
    let c = rusqlite::Connection::open(data.join("server.db")).unwrap();
    c.query_row("SELECT COUNT(*) FROM feedback", [], |r| r.get(0))
        .unwrap()
}

/// An agent with 6 analysed tiles and feedback on each.
fn agent_with_feedback(root: &Path) {
    common::make_image_bundle(&root.join("models/colours"), "colours", "1.0.0");
    let tiles = root.join("tiles");
    std::fs::create_dir_all(&tiles).unwrap();
    let mut csv = String::from("source,label\n");
    for i in 0..6u8 {
        common::solid_png(&tiles.join(format!("t{i}.png")), 16, 16, [40 * i, 200, 10]);
        csv.push_str(&format!(
            "t{i}.png,{}\n",
            if i % 2 == 0 { "green" } else { "flooded" }
        ));
    }
    assert_eq!(
        agent(root, &["analyze", tiles.to_str().unwrap(), "--no-progress"]).0,
        0
    );
    std::fs::write(root.join("labels.csv"), csv).unwrap();
    let (code, out, err) = agent(
        root,
        &[
            "feedback",
            "import",
            "--allow-new-labels",
            root.join("labels.csv").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn enroll_push_exactly_once_and_revoke() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let server = start_server(&root.join("server"));
    let code = add_device(&server.data, "field-1");
    agent_with_feedback(&root.join("a"));
    let a = root.join("a");

    // Not enrolled yet: a clear error, nothing lost.
    let (c, _, err) = agent(&a, &["sync"]);
    assert_eq!(c, 1);
    assert!(err.contains("not enrolled"), "{err}");

    // A wrong code is refused; the right one works once.
    let (c, _, err) = agent(&a, &["enroll", &server.url, "AAAA-BBBB-CCCC-DDDD-EEEE"]);
    assert_eq!(c, 1);
    assert!(err.contains("enrollment code"), "{err}");
    let (c, out, err) = agent(&a, &["enroll", &server.url, &code.to_lowercase()]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("enrolled as field-1"), "{out}");
    let key = a.join("data/device.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let (c, _, _) = agent(&root.join("other"), &["enroll", &server.url, &code]);
    assert_eq!(c, 1, "a code works once");

    let (c, out, err) = agent(&a, &["sync"]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("sent 6 decisions"), "{out}");
    assert_eq!(server_count(&server.data), 6);
    let (_, out, _) = agent(&a, &["status"]);
    assert!(out.contains("waiting to sync: 0; synced: 6"), "{out}");

    // The acknowledgement got lost: the agent sends everything again; the server keeps one copy.
    rusqlite::Connection::open(a.join("data/agent.db"))
        .unwrap()
        .execute("UPDATE outbox SET acked_at = NULL", [])
        .unwrap();
    let (c, out, _) = agent(&a, &["sync"]);
    assert_eq!(c, 0);
    assert!(out.contains("6 were already on the server"), "{out}");
    assert_eq!(server_count(&server.data), 6);

    // A correction after sync travels and names what it replaces.
    let (c, out, err) = agent(&a, &["feedback", "give", "t0.png", "red"]);
    assert_eq!(c, 0, "{out}{err}");
    assert_eq!(agent(&a, &["sync"]).0, 0);
    let conn = rusqlite::Connection::open(server.data.join("server.db")).unwrap();
    let sup: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM feedback WHERE supersedes IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(sup, 1);

    // Revoked: refused from the next request; the outbox keeps its rows.
    let (c, _, _) = server_cmd(&server.data, &["devices", "revoke", "field-1"]);
    assert_eq!(c, 0);
    let (_, _, _) = agent(&a, &["feedback", "give", "t1.png", "blue"]);
    let (c, _, err) = agent(&a, &["sync"]);
    assert_eq!(c, 1);
    assert!(err.contains("revoked"), "{err}");
    let (_, out, _) = agent(&a, &["status"]);
    assert!(
        out.contains("waiting to sync: 1") && out.contains("last sync failed"),
        "{out}"
    );
}

#[test]
fn signed_requests_refuse_replay_tampering_skew_and_old_protocols() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let server = start_server(&root.join("server"));
    let code = add_device(&server.data, "field-2");
    let a = root.join("a");
    std::fs::create_dir_all(a.join("models")).unwrap();
    assert_eq!(agent(&a, &["enroll", &server.url, &code]).0, 0);
    let store = outpost::store::Store::open(&a.join("data/agent.db")).unwrap();
    let device_id = store.state("device_id").unwrap().unwrap();
    let key = outpost::identity::DeviceKey::load_or_create(&a.join("data/device.key")).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let body = zstd::bulk::compress(br#"{"protocol":1,"records":[]}"#, 3).unwrap();
        let send = |ts: i64, nonce: String, sig: String, body: Vec<u8>, proto: &'static str| {
            http.post(format!("{}/v1/feedback", server.url))
                .header("x-outpost-protocol", proto)
                .header("x-outpost-device", device_id.clone())
                .header("x-outpost-timestamp", ts.to_string())
                .header("x-outpost-nonce", nonce)
                .header("x-outpost-signature", sig)
                .body(body)
                .send()
        };
        let now = outpost::server::unix_now();
        let (ts, nonce, sig) = key.sign_request("POST", "/v1/feedback", &body, now);
        let ts: i64 = ts.parse().unwrap();
        let r = send(ts, nonce.clone(), sig.clone(), body.clone(), "1")
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // The same request again: a replay.
        let r = send(ts, nonce.clone(), sig.clone(), body.clone(), "1")
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        assert!(r.text().await.unwrap().contains("replayed"));
        // A different body under the old signature.
        let other = zstd::bulk::compress(br#"{"protocol":1,"records":[ ]}"#, 3).unwrap();
        let (ts2, nonce2, sig2) = key.sign_request("POST", "/v1/feedback", &body, now);
        let r = send(ts2.parse().unwrap(), nonce2, sig2, other, "1")
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.text().await.unwrap().contains("bad signature"));
        // A clock an hour off: refused, and the server says its time.
        let (ts3, nonce3, sig3) = key.sign_request("POST", "/v1/feedback", &body, now - 3600);
        let r = send(ts3.parse().unwrap(), nonce3, sig3, body.clone(), "1")
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let server_time: i64 = r.headers()["x-outpost-server-time"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((server_time - now).abs() < 60);
        // Another protocol version: a clear 426.
        let (ts4, nonce4, sig4) = key.sign_request("POST", "/v1/feedback", &body, now);
        let r = send(ts4.parse().unwrap(), nonce4, sig4, body.clone(), "2")
            .await
            .unwrap();
        assert_eq!(r.status(), 426);
        assert!(r.text().await.unwrap().contains("protocol"));
        // No signature at all.
        let r = http
            .post(format!("{}/v1/feedback", server.url))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    });
}

#[test]
fn a_usb_file_is_imported_once_however_often_it_is_carried() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let server_data = root.join("server");
    let code = add_device(&server_data, "field-3");
    let server = start_server(&server_data);
    let a = root.join("a");
    agent_with_feedback(&a);
    assert_eq!(agent(&a, &["enroll", &server.url, &code]).0, 0);
    drop(server); // the site has no network from here on
    let usb = root.join("outbox.feedback");
    let (c, out, err) = agent(&a, &["feedback", "export", usb.to_str().unwrap()]);
    assert_eq!(c, 0, "{out}{err}");
    // Sealed for this server: labels and embeddings are not readable on the stick.
    let text = std::fs::read_to_string(&usb).unwrap();
    assert!(text.starts_with("outpost-feedback 2\n"), "{text}");
    assert!(
        !text.contains("\"labels\"") && !text.contains("embedding_f16"),
        "{text}"
    );
    // Another server (another secret) cannot open it; nor can anyone who alters the header.
    let (c, _, err) = server_cmd(
        &root.join("other-server"),
        &["feedback", "import", usb.to_str().unwrap()],
    );
    assert_ne!(c, 0);
    assert!(err.contains("seal does not open"), "{err}");
    let altered = root.join("altered.feedback");
    std::fs::write(&altered, text.replacen("\"records\":6", "\"records\":5", 1)).unwrap();
    let (c, _, err) = server_cmd(
        &server_data,
        &["feedback", "import", altered.to_str().unwrap()],
    );
    assert_ne!(c, 0);
    assert!(err.contains("seal does not open"), "{err}");
    let (c, out, err) = server_cmd(&server_data, &["feedback", "import", usb.to_str().unwrap()]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("6 records, 6 new, 0 already stored"), "{out}");
    let (c, out, _) = server_cmd(&server_data, &["feedback", "import", usb.to_str().unwrap()]);
    assert_eq!(c, 0);
    assert!(out.contains("0 new, 6 already stored"), "{out}");
    assert_eq!(server_count(&server_data), 6);
}

#[test]
fn the_upload_rate_cap_is_respected() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let server = start_server(&root.join("server"));
    let code = add_device(&server.data, "field-4");
    let a = root.join("a");
    agent_with_feedback(&a);
    assert_eq!(agent(&a, &["enroll", &server.url, &code]).0, 0);
    let db = a.join("data/agent.db");
    let cap = 1_500u64; // bytes per second
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (report, secs) = rt.block_on(async {
        let client = {
            let store = outpost::store::Store::open(&db).unwrap();
            outpost::sync::SyncClient::from_store(&store, &a.join("data")).unwrap()
        };
        let t = std::time::Instant::now();
        let r = client.push_paced(&db, Some(cap)).await.unwrap();
        (r, t.elapsed().as_secs_f64())
    });
    assert_eq!(report.acked, 6);
    let floor = report.bytes_sent as f64 / cap as f64;
    assert!(
        floor > 0.2,
        "enough bytes to measure: {} bytes",
        report.bytes_sent
    );
    assert!(
        secs >= floor * 0.95,
        "{} bytes at {cap} B/s took {secs:.2} s (at least {floor:.2} s expected)",
        report.bytes_sent
    );
}
