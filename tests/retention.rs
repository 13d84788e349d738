//! Retention (issue 11, first part): `outpost purge` removes reviewed items whose decisions
//! the server acknowledged, and the bytes are really gone. Real agent binary with tiny real
//! models, a real `outpost-server` for the acknowledgements; the proof searches every file
//! under the data folder (database, WAL, shared memory) for the report's text, the tile's
//! bytes and the embedding's bytes.

mod common;

use common::{add_device, agent, ServerProcess};

#[test]
fn purge_removes_reviewed_synced_items_and_keeps_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    common::make_image_bundle(&root.join("models/colours"), "colours", "1.0.0");
    common::make_text_bundle(&root.join("models/reports"), "reports", "1.0.0");
    let inputs = root.join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    let secret = "ZULU-7 family of five trapped at the old mill need water";
    let other = "YANKEE-3 the bridge on route nine is down";
    let pending = "XRAY-5 clinic out of insulin since monday";
    std::fs::write(inputs.join("alpha.txt"), secret).unwrap();
    std::fs::write(inputs.join("bravo.txt"), other).unwrap();
    std::fs::write(inputs.join("charlie.txt"), pending).unwrap();
    common::solid_png(&inputs.join("t0.png"), 16, 16, [10, 200, 30]);
    let tile_bytes = std::fs::read(inputs.join("t0.png")).unwrap();
    let (code, out, err) = agent(
        root,
        &["analyze", inputs.to_str().unwrap(), "--no-progress"],
    );
    assert_eq!(code, 0, "{out}{err}");
    // The input folder is the user's; only the agent's own data folder is searched.
    std::fs::remove_dir_all(&inputs).unwrap();

    // Reviewed: alpha and the tile, then synced. bravo is never reviewed.
    let labels = root.join("labels.csv");
    std::fs::write(&labels, "source,label\nalpha.txt,water\nt0.png,green\n").unwrap();
    let (code, out, err) = agent(root, &["feedback", "import", labels.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let server = ServerProcess::start(&root.join("server"), common::free_port());
    let code_ = add_device(&root.join("server"), "laptop");
    let (code, out, err) = agent(root, &["enroll", &server.url, &code_]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = agent(root, &["sync"]);
    assert_eq!(code, 0, "{out}{err}");
    // charlie is reviewed after the sync: its decision waits in the outbox.
    std::fs::write(&labels, "source,label\ncharlie.txt,food\n").unwrap();
    let (code, out, err) = agent(root, &["feedback", "import", labels.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    drop(server);

    let data = root.join("data");
    let db = data.join("agent.db");
    let embedding: Vec<u8> = {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row(
            "SELECT p.embedding FROM predictions p JOIN items i USING (item_id)
             WHERE i.source LIKE '%alpha.txt'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert!(!common::files_containing(&data, secret.as_bytes()).is_empty());

    // A dry run deletes nothing; the default policy (30 days) keeps today's items.
    let (code, out, _) = agent(root, &["purge", "--dry-run", "--older-than-days", "0"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("would purge 2 reviewed and synced items"),
        "{out}"
    );
    assert!(
        out.contains("kept 1 reviewed items whose decisions are not synced"),
        "{out}"
    );
    let (_, out, _) = agent(root, &["purge"]);
    assert!(out.contains("purged 0 "), "{out}");
    assert!(!common::files_containing(&data, secret.as_bytes()).is_empty());

    let (code, out, err) = agent(root, &["purge", "--older-than-days", "0"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("purged 2 reviewed and synced items")
            && out.contains("(2 predictions, 2 decisions)"),
        "{out}"
    );
    for (what, needle) in [
        ("the report text", secret.as_bytes()),
        ("the tile", tile_bytes.as_slice()),
        ("the embedding", embedding.as_slice()),
    ] {
        let hits = common::files_containing(&data, needle);
        assert!(hits.is_empty(), "{what} is still in {hits:?}");
    }
    // Unreviewed and unsynced items stay, with their outbox.
    assert!(!common::files_containing(&data, other.as_bytes()).is_empty());
    assert!(!common::files_containing(&data, pending.as_bytes()).is_empty());
    assert_eq!(common::pending(root), 1, "the unsynced decision is kept");
    let (code, out, err) = agent(root, &["export", "--all", "--format", "csv"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("alpha.txt") && out.contains("bravo.txt"),
        "{out}"
    );
}

#[test]
fn a_revoked_device_wipes_synced_item_data_and_keeps_unsynced_decisions() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    common::make_text_bundle(&root.join("models/reports"), "reports", "1.0.0");
    let inputs = root.join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    let synced = "ZULU-7 family of five trapped at the old mill need water";
    let unreviewed = "YANKEE-3 the bridge on route nine is down";
    let unsynced = "XRAY-5 clinic out of insulin since monday";
    std::fs::write(inputs.join("alpha.txt"), synced).unwrap();
    std::fs::write(inputs.join("bravo.txt"), unreviewed).unwrap();
    std::fs::write(inputs.join("charlie.txt"), unsynced).unwrap();
    let (code, out, err) = agent(
        root,
        &["analyze", inputs.to_str().unwrap(), "--no-progress"],
    );
    assert_eq!(code, 0, "{out}{err}");
    std::fs::remove_dir_all(&inputs).unwrap();
    let server_data = root.join("server");
    let server = ServerProcess::start(&server_data, common::free_port());
    let code_ = add_device(&server_data, "stolen-laptop");
    let (code, out, err) = agent(root, &["enroll", &server.url, &code_]);
    assert_eq!(code, 0, "{out}{err}");
    let labels = root.join("labels.csv");
    std::fs::write(&labels, "source,label\nalpha.txt,water\n").unwrap();
    assert_eq!(
        agent(root, &["feedback", "import", labels.to_str().unwrap()]).0,
        0
    );
    let (code, out, err) = agent(root, &["sync"]);
    assert_eq!(code, 0, "{out}{err}");
    std::fs::write(&labels, "source,label\ncharlie.txt,food\n").unwrap();
    assert_eq!(
        agent(root, &["feedback", "import", labels.to_str().unwrap()]).0,
        0
    );

    assert!(root.join("data/device.key").is_file());
    // The operator revokes the laptop; its next sync is refused and it wipes (default policy).
    let (code, out, err) =
        common::server_cmd(&server_data, &["devices", "revoke", "stolen-laptop"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = agent(root, &["sync"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("revoked") && err.contains("wiped 2 items") && err.contains("kept 1 items"),
        "{err}"
    );
    let data = root.join("data");
    for text in [synced, unreviewed] {
        let hits = common::files_containing(&data, text.as_bytes());
        assert!(hits.is_empty(), "{text:?} is still in {hits:?}");
    }
    assert!(
        !common::files_containing(&data, unsynced.as_bytes()).is_empty(),
        "the decision that never reached the server is kept"
    );
    assert_eq!(common::pending(root), 1);
    assert!(!data.join("device.key").exists(), "the device key is wiped");
    let (_, out, _) = agent(root, &["status"]);
    assert!(out.contains("revoked by the server"), "{out}");
    drop(server);
}

#[test]
fn outpost_run_applies_the_retention_policy_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    common::make_text_bundle(&root.join("models/reports"), "reports", "1.0.0");
    let inputs = root.join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    let secret = "ZULU-7 family of five trapped at the old mill need water";
    std::fs::write(inputs.join("alpha.txt"), secret).unwrap();
    assert_eq!(
        agent(
            root,
            &["analyze", inputs.to_str().unwrap(), "--no-progress"]
        )
        .0,
        0
    );
    std::fs::remove_dir_all(&inputs).unwrap();
    let server_data = root.join("server");
    let server = ServerProcess::start(&server_data, common::free_port());
    let code_ = add_device(&server_data, "laptop");
    assert_eq!(agent(root, &["enroll", &server.url, &code_]).0, 0);
    let labels = root.join("labels.csv");
    std::fs::write(&labels, "source,label\nalpha.txt,water\n").unwrap();
    assert_eq!(
        agent(root, &["feedback", "import", labels.to_str().unwrap()]).0,
        0
    );

    // `outpost run` with a policy of 0 days, checked every second: it syncs the decision,
    // then purges the item on its own.
    let mut run = common::agent_cmd(root, &["run", "--listen", "127.0.0.1:0"])
        .env("OUTPOST__RETENTION__PURGE_AFTER_DAYS", "0")
        .env("OUTPOST__RETENTION__CHECK_INTERVAL_SECS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let data = root.join("data");
    let t = std::time::Instant::now();
    let gone = loop {
        if common::pending(root) == 0
            && common::files_containing(&data, secret.as_bytes()).is_empty()
        {
            break true;
        }
        if t.elapsed() > std::time::Duration::from_secs(20) {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let _ = run.kill();
    let _ = run.wait();
    assert!(
        gone,
        "the synced report was not purged by `outpost run` within 20 s"
    );
    drop(server);
}
