//! `outpost run`: the review page and the background sync loop in one long-running process.
//! The server is down at first (the loop backs off); it comes up and the outbox drains by
//! itself; a decision made on the review page is pushed at once, not at the next idle check.

mod common;

use std::io::{BufRead, BufReader};

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use common::{add_device, agent_cmd as agent, pending, ServerProcess};

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn run_syncs_when_the_server_returns_and_right_after_a_review_decision() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let a = root.join("agent");
    let server_data = root.join("server");
    common::make_image_bundle(&a.join("models/colours"), "colours", "1.0.0");
    let tiles = a.join("tiles");
    std::fs::create_dir_all(&tiles).unwrap();
    for i in 0..4u8 {
        common::solid_png(&tiles.join(format!("t{i}.png")), 16, 16, [60 * i, 200, 30]);
    }
    assert!(
        agent(&a, &["analyze", tiles.to_str().unwrap(), "--no-progress"])
            .status()
            .unwrap()
            .success()
    );
    let port = common::free_port();
    let code = add_device(&server_data, "f");
    {
        let _server = ServerProcess::start(&server_data, port);
        assert!(
            agent(&a, &["enroll", &format!("http://127.0.0.1:{port}"), &code])
                .status()
                .unwrap()
                .success()
        );
    }
    // Two decisions queued while the server is down.
    for t in ["t0.png", "t1.png"] {
        assert!(agent(&a, &["feedback", "give", t, "green"])
            .status()
            .unwrap()
            .success());
    }

    let mut run = agent(
        &a,
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--idle-check-secs",
            "30",
            "--max-backoff-secs",
            "1",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let stdout = run.stdout.take().unwrap();
    let _run = Kill(run);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("the page's URL")
        .trim_end_matches('/')
        .to_string();

    // The server is down: the loop backs off; nothing is lost.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(pending(&a), 2);
    let _server = ServerProcess::start(&server_data, port);
    wait_until(
        "the outbox to drain once the server is back",
        Duration::from_secs(15),
        || pending(&a) == 0,
    );

    // A decision on the review page wakes the loop: synced long before the 30 s idle check.
    let item: String = rusqlite::Connection::open(a.join("data/agent.db"))
        .unwrap()
        .query_row(
            "SELECT item_id FROM items WHERE source LIKE '%t3.png'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{url}/api/feedback"))
            .json(&serde_json::json!({"item_id": item, "model_name": "colours", "labels": ["flooded"], "new_labels": ["flooded"]}))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(status.is_success(), "{status}");
    let t = Instant::now();
    wait_until(
        "the review decision to sync",
        Duration::from_secs(10),
        || pending(&a) == 0,
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    let on_server: i64 = rusqlite::Connection::open(server_data.join("server.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM feedback", [], |r| r.get(0))
        .unwrap();
    assert_eq!(on_server, 3);
}
