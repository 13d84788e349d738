//! Sync over a bad link: several agents queue feedback while the server is down; the server
//! comes back behind a proxy that cuts requests, truncates responses, answers 503, delays
//! and repeats requests; the server is killed -9 mid-run and restarted; an agent is killed
//! -9 mid-sync. In the end the server holds exactly the union of all feedback, once each,
//! and every outbox is empty.

mod common;

#[path = "common/proxy.rs"]
mod proxy;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{add_device, agent, agent_cmd, pending, ServerProcess};

fn outbox_ids(root: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open(root.join("data/agent.db")).unwrap();
    let mut st = c.prepare("SELECT feedback_id FROM outbox").unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn every_item_arrives_exactly_once_through_a_faulty_link() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let server_data = root.join("server");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = ServerProcess::start(&server_data, port);

    // Three agents, each enrolled, each with 30 decisions queued.
    let agents: Vec<PathBuf> = (0..3).map(|i| root.join(format!("agent{i}"))).collect();
    for (i, a) in agents.iter().enumerate() {
        common::make_image_bundle(&a.join("models/colours"), "colours", "1.0.0");
        let tiles = a.join("tiles");
        std::fs::create_dir_all(&tiles).unwrap();
        let mut csv = String::from("source,label\n");
        for t in 0..30u8 {
            common::solid_png(
                &tiles.join(format!("t{t}.png")),
                16,
                16,
                [t * 8, i as u8 * 60, 100],
            );
            csv.push_str(&format!(
                "t{t}.png,{}\n",
                ["red", "green", "blue", "flooded"][t as usize % 4]
            ));
        }
        assert_eq!(
            agent(a, &["analyze", tiles.to_str().unwrap(), "--no-progress"]).0,
            0
        );
        std::fs::write(a.join("labels.csv"), csv).unwrap();
        assert_eq!(
            agent(
                a,
                &[
                    "feedback",
                    "import",
                    "--allow-new-labels",
                    a.join("labels.csv").to_str().unwrap()
                ]
            )
            .0,
            0
        );
        let code = add_device(&server_data, &format!("field-{i}"));
        let (c, out, err) = agent(a, &["enroll", &format!("http://127.0.0.1:{port}"), &code]);
        assert_eq!(c, 0, "{out}{err}");
    }

    // The server goes away; syncing fails clearly and loses nothing.
    server.kill();
    let (c, _, err) = agent(&agents[0], &["sync"]);
    assert_eq!(c, 1);
    assert!(err.contains("unreachable"), "{err}");
    assert_eq!(pending(&agents[0]), 30);

    // It comes back behind the faulty proxy.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stats = Arc::new(proxy::Stats::default());
    let proxy_port = rt.block_on(proxy::start(port, 7, stats.clone()));
    for a in &agents {
        rusqlite::Connection::open(a.join("data/agent.db"))
            .unwrap()
            .execute(
                "UPDATE agent_state SET value = ?1 WHERE key = 'server_url'",
                [format!("http://127.0.0.1:{proxy_port}")],
            )
            .unwrap();
    }
    let mut server = ServerProcess::start(&server_data, port);
    // Small batches, so there are many requests for the proxy to break.
    let mut rounds = 0;
    while agents.iter().any(|a| pending(a) > 0) {
        rounds += 1;
        assert!(
            rounds < 200,
            "outboxes did not drain: {:?}",
            agents.iter().map(|a| pending(a)).collect::<Vec<_>>()
        );
        if rounds == 3 {
            // kill -9 the server while an agent is uploading (one record per batch, so an
            // ingest is in flight), and bring it back.
            let mut uploading = agent_cmd(&agents[2], &["sync"])
                .env("OUTPOST_SYNC_BATCH", "1")
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(120));
            server.kill();
            let _ = uploading.wait();
            server = ServerProcess::start(&server_data, port);
        }
        if rounds == 4 {
            // kill -9 an agent in the middle of a sync.
            let mut child = agent_cmd(&agents[1], &["sync"])
                .env("OUTPOST_SYNC_BATCH", "3")
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(150));
            let _ = child.kill();
            let _ = child.wait();
        }
        for a in &agents {
            let _ = agent_cmd(a, &["sync"])
                .env("OUTPOST_SYNC_BATCH", "4")
                .output()
                .unwrap();
        }
    }
    server.kill();

    let conn = rusqlite::Connection::open(server_data.join("server.db")).unwrap();
    let mut on_server: Vec<String> = conn
        .prepare("SELECT feedback_id FROM feedback")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    on_server.sort();
    let mut union: Vec<String> = agents.iter().flat_map(|a| outbox_ids(a)).collect();
    union.sort();
    assert_eq!(union.len(), 90);
    assert_eq!(
        on_server, union,
        "the server holds exactly the union of the outboxes"
    );
    let counts: Vec<u64> = stats
        .counts
        .iter()
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    eprintln!("rounds {rounds}; proxy pass/cut/truncate/503/delay/repeat = {counts:?}");
    assert!(
        counts[1] > 0 && counts[2] > 0 && counts[3] > 0 && counts[5] > 0,
        "every fault happened: {counts:?}"
    );
}
