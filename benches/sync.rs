//! Sync benchmark: report feedback items (384-d embedding, no raw text: the default for
//! reports) pushed by a real agent client to a real server over loopback HTTP.
//! Prints items per second (median of rounds) and bytes on the wire per item.
//!
//! Run: `cargo bench --bench sync` (under `cargo test` it only says how to run it).

use outpost::server::store::SqliteServerStore;
use outpost::server::AppState;
use outpost::store::feedback::{LabelSpace, NewFeedback};
use outpost::store::{NewItem, NewPrediction, Store};
use std::sync::Arc;
use std::time::Instant;

const ITEMS: usize = 5000;
const ROUNDS: usize = 3;

fn seed_agent(db: &std::path::Path, round: usize) {
    let mut store = Store::open(db).unwrap();
    store
        .conn()
        .pragma_update(None, "synchronous", "NORMAL")
        .unwrap(); // seeding speed only
    let run = store.begin_run(&["bench".into()]).unwrap();
    let labels: Vec<String> = (0..35).map(|i| format!("category_{i}")).collect();
    let mut items = Vec::new();
    let mut preds = Vec::new();
    for i in 0..ITEMS {
        let id = outpost::hash::sha256_hex(format!("report {round} {i}").as_bytes());
        // Embedding-like values: a unit vector of pseudo-random components (real sentence
        // embeddings are just as incompressible; a regular pattern would flatter zstd).
        let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ round as u64;
        let mut emb: Vec<f32> = (0..384)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 20_001) as f32 / 10_000.0 - 1.0
            })
            .collect();
        let norm = emb.iter().map(|v| v * v).sum::<f32>().sqrt();
        emb.iter_mut().for_each(|v| *v /= norm);
        items.push(NewItem {
            item_id: id.clone(),
            kind: "text",
            source: "reports.csv".into(),
            locator: Some(format!("row {i}")),
            size: None,
            geometry: None,
            content: format!("report number {i}: we need water and shelter").into_bytes(),
            content_type: "text/plain",
        });
        preds.push(NewPrediction {
            item_id: id,
            model_name: "crisis-reports".into(),
            model_version: "1.0.0".into(),
            labels: vec!["category_1".into()],
            top_label: "category_1".into(),
            top_score: 0.7,
            scores: vec![0.1; 35],
            embedding: emb,
            truncated: false,
            preprocess_ms: 0.0,
            infer_ms: 0.0,
        });
    }
    store.save_batch(run, &items, &preds).unwrap();
    let space = LabelSpace {
        labels: labels.clone(),
        multi_label: true,
    };
    for (i, it) in items.iter().enumerate() {
        store
            .give_feedback(
                &NewFeedback {
                    item_id: it.item_id.clone(),
                    model_name: "crisis-reports".into(),
                    labels: vec![labels[i % 35].clone(), labels[(i + 3) % 35].clone()],
                    annotator: "bench".into(),
                    include_content: false,
                    declared_new: Vec::new(),
                },
                &space,
            )
            .unwrap();
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("sync benchmark: run it with `cargo bench --bench sync`");
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rates = Vec::new();
    let mut per_item = Vec::new();
    for round in 0..ROUNDS {
        let tmp = tempfile::tempdir().unwrap();
        let server_store =
            Arc::new(SqliteServerStore::open(&tmp.path().join("server/server.db")).unwrap());
        let code = "BENCH-CODE-0000-0000-0000";
        let hash = outpost::hash::sha256_hex(outpost::server::normalise_code(code).as_bytes());
        use outpost::server::store::{DeviceStore, FeedbackStore};
        server_store
            .add_device(
                &format!("bench-{round}"),
                "default",
                &hash,
                "2999-01-01T00:00:00Z",
            )
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = AppState::new(server_store.clone(), None);
        rt.spawn(async move { axum::serve(listener, outpost::server::router(state)).await });
        let data = tmp.path().join("agent");
        let db = data.join("agent.db");
        seed_agent(&db, round);
        rt.block_on(outpost::sync::enroll(&db, &data, &url, code))
            .unwrap();
        let t = Instant::now();
        let report = rt.block_on(outpost::sync::sync_once(&db, &data)).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(report.acked, ITEMS);
        assert_eq!(server_store.feedback_count().unwrap() as usize, ITEMS);
        rates.push(ITEMS as f64 / secs);
        per_item.push(report.bytes_sent as f64 / ITEMS as f64);
        println!(
            "round {round}: {ITEMS} items in {secs:.2} s = {:.0} items/s; {:.0} bytes/item compressed body ({} batches)",
            ITEMS as f64 / secs,
            report.bytes_sent as f64 / ITEMS as f64,
            report.batches
        );
    }
    rates.sort_by(f64::total_cmp);
    per_item.sort_by(f64::total_cmp);
    println!(
        "median: {:.0} items/s, {:.0} bytes/item on the wire (report item, 384-d f16 embedding, no raw text; target <= 1024)",
        rates[ROUNDS / 2],
        per_item[ROUNDS / 2]
    );
}
