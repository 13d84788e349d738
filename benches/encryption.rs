//! What encryption at rest costs: `analyze` and the review page on a plain database and on a
//! SQLCipher one, side by side in one process, rounds alternating so machine noise hits
//! both alike. Reports the median of the per-round ratios encrypted / plain (1.0 = free).
//!
//! - **analyze**: the shipped models on EuroSAT tiles and crisis reports from
//!   `../shared/data`, from disk into a fresh database (decode, infer, store).
//! - **review page**: a real `ReviewServer` on each database and a reviewer's session over
//!   loopback HTTP: the queue, then each item's detail and content, then a decision on a
//!   quarter of them (each decision is a synchronous commit).
//!
//! Run: `OUTPOST_ORT_LIB=... cargo bench --bench encryption` (options through env:
//! `ROUNDS`, default 5; `TILES`, default 512; `REPORTS`, default 500).

use outpost::analyze::{self, AnalyzeOptions, ModelSet};
use outpost::config::AgentConfig;
use outpost::model::{self, runtime, Task};
use outpost::review::{ReviewOptions, ReviewServer};
use outpost::store::vault::{self, KeyMode};
use outpost::store::Store;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    }
}

/// Removes the database (and WAL) so each round starts from nothing.
fn fresh(db: &Path) {
    for ext in ["db", "db-wal", "db-shm"] {
        let _ = std::fs::remove_file(db.with_extension(ext));
    }
}

/// Items per second of one `analyze` into `db`.
fn analyze_round(cfg: &AgentConfig, set: &ModelSet, inputs: &[PathBuf], db: &Path) -> f64 {
    fresh(db);
    let mut store = Store::open(db).expect("open");
    let mut opts = AnalyzeOptions::from_config(cfg, inputs.to_vec());
    opts.progress = false;
    opts.force = true;
    let t = Instant::now();
    let s = analyze::analyze(&mut store, set, &opts, Arc::new(AtomicBool::new(false)))
        .expect("analyze");
    assert!(s.failures.is_empty(), "{:?}", s.failures.first());
    (s.image_items + s.text_items) as f64 / t.elapsed().as_secs_f64()
}

/// Requests per second of a reviewer's session against a review server on `db`.
async fn review_round(db: &Path, models_dir: &Path, items: usize) -> f64 {
    let mut o = ReviewOptions::new(db.to_path_buf(), models_dir.to_path_buf());
    o.listen = "127.0.0.1:0".parse().expect("addr");
    let server = ReviewServer::bind(o).await.expect("bind");
    let base = server.url();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    let c = reqwest::Client::new();
    let t = Instant::now();
    let mut requests = 0usize;
    let q: serde_json::Value = c
        .get(format!("{base}api/queue?limit={items}"))
        .send()
        .await
        .expect("queue")
        .json()
        .await
        .expect("json");
    requests += 1;
    let list = q["entries"].as_array().cloned().unwrap_or_default();
    for (i, it) in list.iter().enumerate() {
        let id = it["item_id"].as_str().unwrap_or_default();
        let model = it["model_name"].as_str().unwrap_or_default();
        let top = it["top_label"].as_str().unwrap_or_default();
        let r = c
            .get(format!("{base}api/items/{id}"))
            .send()
            .await
            .expect("item");
        assert!(r.status().is_success());
        let _ = r.bytes().await;
        let r = c
            .get(format!("{base}api/items/{id}/content"))
            .send()
            .await
            .expect("content");
        let _ = r.bytes().await;
        requests += 2;
        if i % 4 == 0 {
            let r = c
                .post(format!("{base}api/feedback"))
                .json(&serde_json::json!({"item_id": id, "model_name": model, "labels": [top]}))
                .send()
                .await
                .expect("feedback");
            assert!(
                r.status().is_success(),
                "{}",
                r.text().await.unwrap_or_default()
            );
            requests += 1;
        }
    }
    let rate = requests as f64 / t.elapsed().as_secs_f64();
    let _ = tx.send(());
    let _ = handle.await;
    rate
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("encryption benchmark: run it with `cargo bench --bench encryption`");
        return;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = std::env::var_os("OUTPOST_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("../shared/data"));
    if !shared.join("eurosat").is_dir() || !shared.join("crisis_text/messages.csv").is_file() {
        println!(
            "SKIP: no shared data at {} (set OUTPOST_SHARED_DATA)",
            shared.display()
        );
        return;
    }
    let rounds = env_usize("ROUNDS", 5);
    let tiles = env_usize("TILES", 512);
    let reports = env_usize("REPORTS", 500);
    let work = tempfile::tempdir().expect("tempdir");
    let cfg = AgentConfig {
        models_dir: Some(repo.join("models")),
        ..Default::default()
    };
    runtime::init(
        std::env::var_os("OUTPOST_ORT_LIB")
            .map(PathBuf::from)
            .as_deref(),
    )
    .expect("ONNX Runtime (set OUTPOST_ORT_LIB)");
    let (models, failed) = model::load_all(&repo.join("models"), cfg.session_options());
    assert!(failed.is_empty(), "{failed:?}");
    let mut set = ModelSet::default();
    for m in models {
        match m.task() {
            Task::ImageClassification => set.image.push(m),
            Task::TextClassification => set.text.push(m),
        }
    }
    // Inputs: a balanced sample of tiles, and the first reports as one CSV.
    let mut inputs = outpost::bench::sample_images(&shared.join("eurosat"), tiles);
    let texts = outpost::bench::sample_reports(&shared.join("crisis_text/messages.csv"), reports)
        .expect("reports");
    let csv_path = work.path().join("reports.csv");
    {
        let mut w = csv::Writer::from_path(&csv_path).expect("csv");
        w.write_record(["id", "message"]).expect("csv");
        for (i, r) in texts.iter().enumerate() {
            w.write_record([i.to_string().as_str(), r.as_str()])
                .expect("csv");
        }
        w.flush().expect("csv");
    }
    inputs.push(csv_path);

    let plain_dir = work.path().join("plain");
    let enc_dir = work.path().join("encrypted");
    std::fs::create_dir_all(&plain_dir).expect("dir");
    vault::set_up(&enc_dir, KeyMode::Passphrase, Some("benchmark passphrase")).expect("vault");
    let (plain_db, enc_db) = (plain_dir.join("agent.db"), enc_dir.join("agent.db"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let review_items = 200;
    let (mut a_ratio, mut r_ratio) = (Vec::new(), Vec::new());
    let (mut a_plain, mut a_enc, mut r_plain, mut r_enc) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    println!(
        "encryption cost: {} tiles + {} reports per analyze round, {review_items} items per review round, {rounds} rounds",
        inputs.len() - 1,
        texts.len()
    );
    for round in 0..rounds {
        // Alternate which side goes first.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let (mut ap, mut ae) = (0.0, 0.0);
        for enc in order {
            let db = if enc { &enc_db } else { &plain_db };
            let v = analyze_round(&cfg, &set, &inputs, db);
            if enc {
                ae = v
            } else {
                ap = v
            }
        }
        let (mut rp, mut re) = (0.0, 0.0);
        for enc in order {
            let db = if enc { &enc_db } else { &plain_db };
            let v = rt.block_on(review_round(db, &repo.join("models"), review_items));
            if enc {
                re = v
            } else {
                rp = v
            }
        }
        println!(
            "round {}: analyze {ap:.0} vs {ae:.0} items/s ({:.3}); review {rp:.0} vs {re:.0} requests/s ({:.3})",
            round + 1,
            ae / ap,
            re / rp
        );
        a_plain.push(ap);
        a_enc.push(ae);
        r_plain.push(rp);
        r_enc.push(re);
        a_ratio.push(ae / ap);
        r_ratio.push(re / rp);
    }
    println!();
    println!("| median of {rounds} rounds | plain | encrypted | encrypted / plain |");
    println!("|---|---|---|---|");
    println!(
        "| analyze, items/s | {:.0} | {:.0} | {:.3} |",
        median(&a_plain),
        median(&a_enc),
        median(&a_ratio)
    );
    println!(
        "| review page, requests/s | {:.0} | {:.0} | {:.3} |",
        median(&r_plain),
        median(&r_enc),
        median(&r_ratio)
    );
}
