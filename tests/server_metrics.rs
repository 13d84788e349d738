//! `/metrics` and `/v1/health` of a real `outpost-server serve` process, scraped over HTTP
//! after a real agent client synced to it.

mod common;

use common::ServerProcess;
use std::path::Path;

/// The value of the sample `name` (with its labels exactly as written), if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn get(url: &str) -> (u16, String, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::get(url).await.unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (status, ct, r.text().await.unwrap())
    })
}

fn sync_items(server: &ServerProcess, data: &Path, extra: &[&str], root: &Path, n: usize) {
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["devices", "add", "--name", "laptop"]);
    let (code, out, err) = common::server_cmd(data, &args);
    assert_eq!(code, 0, "{out}{err}");
    let code = out
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 24 && l.matches('-').count() == 4)
        .unwrap()
        .to_string();
    let db = root.join("agent.db");
    common::seed_feedback(&db, n, "metrics");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(outpost::sync::enroll(&db, root, &server.url, &code))
        .unwrap();
    let r = rt.block_on(outpost::sync::sync_once(&db, root)).unwrap();
    assert_eq!(r.acked, n);
    // The same batch again (a retry after a lost answer): acknowledged as duplicates.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("UPDATE outbox SET acked_at = NULL", [])
        .unwrap();
    let r = rt.block_on(outpost::sync::sync_once(&db, root)).unwrap();
    assert_eq!(r.duplicates, n);
}

#[test]
fn metrics_count_requests_batches_records_and_the_deployment() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = ServerProcess::start(&data, common::free_port());
    sync_items(&server, &data, &[], &tmp.path().join("agent"), 250);

    let (status, ct, body) = get(&format!("{}/v1/health", server.url));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""store":"ok""#), "{body}");
    let (status, ct_m, text) = get(&format!("{}/metrics", server.url));
    assert_eq!(status, 200);
    assert!(ct.starts_with("application/json"), "{ct}");
    assert!(ct_m.starts_with("text/plain; version=0.0.4"), "{ct_m}");
    // 250 records at 200 per batch: 2 batches per sync, two syncs.
    assert_eq!(
        sample(&text, "outpost_sync_batches_total"),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"outpost_sync_records_total{result="new"}"#),
        Some(250.0)
    );
    assert_eq!(
        sample(&text, r#"outpost_sync_records_total{result="duplicate"}"#),
        Some(250.0)
    );
    assert_eq!(
        sample(&text, r#"outpost_ingest_lag_seconds_count{via="http"}"#),
        Some(250.0),
        "one lag per new record"
    );
    assert_eq!(
        sample(
            &text,
            r#"outpost_http_requests_total{method="POST",route="/v1/feedback",status="200"}"#
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"outpost_http_requests_total{method="GET",route="/v1/health",status="200"}"#
        ),
        Some(1.0)
    );
    assert!(text.contains("outpost_http_request_duration_seconds_bucket{route=\"/v1/feedback\""));
    assert_eq!(sample(&text, "outpost_feedback_stored"), Some(250.0));
    assert_eq!(sample(&text, "outpost_devices_enrolled"), Some(1.0));
    assert_eq!(sample(&text, "outpost_store_up"), Some(1.0));
}

/// On PostgreSQL: two processes report the same deployment-wide numbers, and a process
/// whose database lost its tables answers 503 to the load balancer's health check.
#[test]
fn health_is_503_when_the_store_is_gone() {
    let Some(schema) = common::pg_schema() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let extra = ["--database-url", schema.url.as_str()];
    let s1 = ServerProcess::start_with(&data, common::free_port(), &extra);
    let s2 = ServerProcess::start_with(&data, common::free_port(), &extra);
    sync_items(&s1, &data, &extra, &tmp.path().join("agent"), 30);
    let (_, _, t2) = get(&format!("{}/metrics", s2.url));
    assert_eq!(sample(&t2, "outpost_feedback_stored"), Some(30.0), "{t2}");
    assert_eq!(
        sample(&t2, "outpost_sync_batches_total"),
        Some(0.0),
        "process-local"
    );
    let (status, _, _) = get(&format!("{}/v1/health", s2.url));
    assert_eq!(status, 200);
    schema
        .client()
        .batch_execute(&format!("DROP SCHEMA {} CASCADE", schema.name))
        .unwrap();
    let (status, _, body) = get(&format!("{}/v1/health", s2.url));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("unavailable"), "{body}");
    let (_, _, t2) = get(&format!("{}/metrics", s2.url));
    assert_eq!(sample(&t2, "outpost_store_up"), Some(0.0));
}
