//! The review page's JSON API over HTTP, on a real SQLite file with predictions written
//! through the store (designed scores, so the expected queue order is known exactly) and the
//! manifests of real tiny bundles. No browser and no ONNX Runtime needed.

mod common;

use outpost::review::{ReviewOptions, ReviewServer};
use outpost::store::{NewItem, NewPrediction, Store};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    db: PathBuf,
    base: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn png(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
        .write_to(&mut buf, image::ImageFormat::Png)
        .unwrap();
    buf.into_inner()
}

struct Spec {
    id: &'static str,
    kind: &'static str,
    source: String,
    locator: Option<&'static str>,
    model: &'static str,
    scores: Vec<f32>,
    labels: Vec<&'static str>,
    text: &'static str,
}

/// Item ids in the order the queue must give them (certainty in brackets).
const EXPECTED_ORDER: [&str; 7] = [
    "txt-a",   // water 0.53 vs threshold 0.5 (0.03)
    "img-a",   // 0.50 vs 0.45 (0.05)
    "scene-1", // 0.42 vs 0.35 (0.07)
    "txt-b",   // food 0.75 vs 0.5 (0.25)
    "img-c",   // 0.60 vs 0.30 (0.30)
    "gone-1",  // 0.70 vs 0.20 (0.50)
    "img-b",   // 0.90 vs 0.05 (0.85)
];

fn specs(root: &Path) -> Vec<Spec> {
    let tiles = root.join("tiles").display().to_string();
    let scenes = root.join("scenes").display().to_string();
    let reports = root.join("reports").display().to_string();
    let img = |id, source: String, locator, scores: Vec<f32>, label| Spec {
        id,
        kind: "image",
        source,
        locator,
        model: "colours",
        scores,
        labels: vec![label],
        text: "",
    };
    vec![
        img(
            "img-a",
            format!("{tiles}/a.png"),
            None,
            vec![0.50, 0.45, 0.05],
            "red",
        ),
        img(
            "img-b",
            format!("{tiles}/b.png"),
            None,
            vec![0.90, 0.05, 0.05],
            "red",
        ),
        img(
            "img-c",
            format!("{tiles}/sub/c.png"),
            None,
            vec![0.30, 0.60, 0.10],
            "green",
        ),
        img(
            "scene-1",
            format!("{scenes}/scene.png"),
            Some("tile 32,0,32,32"),
            vec![0.42, 0.35, 0.23],
            "red",
        ),
        img(
            "gone-1",
            format!("{}/gone/old.png", root.display()),
            Some("tile 0,0,16,16"),
            vec![0.20, 0.70, 0.10],
            "green",
        ),
        Spec {
            id: "txt-a",
            kind: "text",
            source: format!("{reports}/messages.csv"),
            locator: Some("row 1"),
            model: "keywords",
            scores: vec![0.53, 0.10, 0.05],
            labels: vec!["water"],
            text: "We need water",
        },
        Spec {
            id: "txt-b",
            kind: "text",
            source: format!("{reports}/messages.csv"),
            locator: Some("row 2"),
            model: "keywords",
            scores: vec![0.90, 0.75, 0.02],
            labels: vec!["water", "food"],
            text: "water and food",
        },
    ]
}

async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let models = root.join("models");
    common::make_image_bundle(&models.join("colours"), "colours", "1.0.0");
    common::make_text_bundle(&models.join("keywords"), "keywords", "1.0.0");
    std::fs::remove_file(models.join("keywords.vocab.txt")).ok();
    std::fs::create_dir_all(root.join("scenes")).unwrap();
    std::fs::write(root.join("scenes/scene.png"), png(64, 32, [30, 120, 40])).unwrap();

    let db = root.join("data/agent.db");
    let mut store = Store::open(&db).unwrap();
    let run = store.begin_run(&["fixture".into()]).unwrap();
    let mut items = Vec::new();
    let mut preds = Vec::new();
    for (n, s) in specs(&root).into_iter().enumerate() {
        let (content, ct) = if s.kind == "image" {
            (png(16, 16, [n as u8 * 30, 80, 120]), "image/png")
        } else {
            (s.text.as_bytes().to_vec(), "text/plain")
        };
        items.push(NewItem {
            item_id: s.id.into(),
            kind: s.kind,
            source: s.source.clone(),
            locator: s.locator.map(String::from),
            size: (s.kind == "image").then_some((16, 16)),
            geometry: None,
            content,
            content_type: ct,
        });
        let top = s
            .scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap();
        let names: &[&str] = if s.model == "colours" {
            &common::IMAGE_LABELS
        } else {
            &common::TEXT_LABELS
        };
        preds.push(NewPrediction {
            item_id: s.id.into(),
            model_name: s.model.into(),
            model_version: "1.0.0".into(),
            labels: s.labels.iter().map(|l| l.to_string()).collect(),
            top_label: names[top.0].into(),
            top_score: *top.1,
            scores: s.scores.clone(),
            embedding: vec![0.1; 3],
            truncated: false,
            preprocess_ms: 1.0,
            infer_ms: 1.0,
        });
    }
    store.save_batch(run, &items, &preds).unwrap();
    store.finish_run(run, items.len() as u64, 0, "ok").unwrap();
    // One prediction from an earlier day, for the date filter.
    store
        .conn()
        .execute(
            "UPDATE predictions SET created_at = '2025-01-02T10:00:00Z' WHERE item_id = 'img-b'",
            [],
        )
        .unwrap();
    drop(store);

    let mut opts = ReviewOptions::new(db.clone(), models);
    opts.listen = "127.0.0.1:0".parse().unwrap();
    opts.annotator = "api-tester".into();
    opts.send_images = true;
    let server = ReviewServer::bind(opts).await.unwrap();
    let base = server.url().trim_end_matches('/').to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    Fixture {
        _tmp: tmp,
        root,
        db,
        base,
        http: reqwest::Client::new(),
        stop: Some(tx),
    }
}

impl Fixture {
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&body).to_string() })),
        )
    }

    async fn post_raw(&self, path: &str, content_type: &str, body: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Content-Type", content_type)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v = r.json::<Value>().await.unwrap_or(Value::Null);
        (status, v)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.post_raw(path, "application/json", &body.to_string())
            .await
    }

    fn count(&self, sql: &str) -> i64 {
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }
}

fn ids(v: &Value) -> Vec<String> {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["item_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_is_least_confident_first_and_filters_work() {
    let f = fixture().await;
    let (s, q) = f.get("/api/queue").await;
    assert_eq!(s, StatusCode::OK, "{q}");
    assert_eq!(ids(&q), EXPECTED_ORDER, "{q:#}");
    assert_eq!(q["total"], 7);
    let first = &q["entries"][0];
    assert_eq!(first["multi_label"], true);
    assert!((first["certainty"].as_f64().unwrap() - 0.03).abs() < 1e-4);
    assert_eq!(first["snippet"], "We need water");

    let (_, q) = f.get("/api/queue?model=keywords").await;
    assert_eq!(ids(&q), ["txt-a", "txt-b"]);
    let (_, q) = f.get("/api/queue?label=green").await;
    assert_eq!(ids(&q), ["img-c", "gone-1"]);
    let (_, q) = f.get("/api/queue?label=food").await;
    assert_eq!(ids(&q), ["txt-b"]);
    let folder = f.root.join("tiles").display().to_string();
    let (_, q) = f
        .get(&format!("/api/queue?folder={}", urlencode(&folder)))
        .await;
    assert_eq!(ids(&q), ["img-a", "img-c", "img-b"]);
    let (_, q) = f
        .get(&format!("/api/queue?folder={}/sub/", urlencode(&folder)))
        .await;
    assert_eq!(ids(&q), ["img-c"]);
    let (_, q) = f.get("/api/queue?kind=text").await;
    assert_eq!(ids(&q), ["txt-a", "txt-b"]);
    let (_, q) = f.get("/api/queue?to=2025-12-31").await;
    assert_eq!(ids(&q), ["img-b"]);
    let (_, q) = f.get("/api/queue?from=2026-01-01").await;
    assert!(!ids(&q).contains(&"img-b".to_string()));
    let (_, q) = f.get("/api/queue?offset=2&limit=2").await;
    assert_eq!(ids(&q), ["scene-1", "txt-b"]);
    assert_eq!(q["total"], 7);

    let (s, facets) = f.get("/api/filters").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(facets["models"], json!(["colours", "keywords"]));
    assert!(facets["folders"]
        .as_array()
        .unwrap()
        .contains(&json!(folder)));
    assert_eq!(facets["first_day"], "2025-01-02");

    // A decided item leaves the queue, and comes back with reviewed=1.
    let (s, r) = f
        .post(
            "/api/feedback",
            json!({"item_id": "img-a", "model_name": "colours", "confirm": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let (_, q) = f.get("/api/queue").await;
    assert!(!ids(&q).contains(&"img-a".to_string()));
    let (_, q) = f.get("/api/queue?reviewed=1").await;
    assert_eq!(ids(&q), EXPECTED_ORDER);
    assert_eq!(q["entries"][1]["reviewed_labels"], json!(["red"]));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_clear_json_errors_and_write_nothing() {
    let f = fixture().await;
    let cases: Vec<(&str, &str, &str, StatusCode, &str)> = vec![
        (
            "/api/feedback",
            "application/json",
            "{\"item_id\": \"img-a\", ",
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        (
            "/api/feedback",
            "application/json",
            "{\"item_id\": \"img-a\", \"labels\": [\"red\"]}",
            StatusCode::BAD_REQUEST,
            "model_name",
        ),
        (
            "/api/feedback",
            "application/json",
            "{\"item_id\": \"img-a\", \"model_name\": \"colours\"}",
            StatusCode::BAD_REQUEST,
            "labels",
        ),
        (
            "/api/feedback",
            "application/json",
            "{\"item_id\": \"img-a\", \"model_name\": \"colours\", \"labels\": \"red\"}",
            StatusCode::BAD_REQUEST,
            "invalid request",
        ),
        (
            "/api/feedback",
            "application/json",
            "{\"item_id\": \"img-a\", \"model_name\": \"colours\", \"labels\": [\"red\"], \"extra\": 1}",
            StatusCode::BAD_REQUEST,
            "extra",
        ),
        (
            "/api/feedback",
            "text/plain",
            "{\"item_id\": \"img-a\", \"model_name\": \"colours\", \"labels\": [\"red\"]}",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        (
            "/api/feedback",
            "application/json",
            "{\"item_id\": \"nope\", \"model_name\": \"colours\", \"labels\": [\"red\"]}",
            StatusCode::NOT_FOUND,
            "no item nope",
        ),
        (
            "/api/feedback",
            "application/json",
            "{\"item_id\": \"img-a\", \"model_name\": \"keywords\", \"labels\": [\"water\"]}",
            StatusCode::NOT_FOUND,
            "has no prediction from model keywords",
        ),
        (
            "/api/feedback",
            "application/json",
            "{\"item_id\": \"img-a\", \"model_name\": \"colours\", \"labels\": [\"\"]}",
            StatusCode::BAD_REQUEST,
            "invalid label",
        ),
        (
            "/api/feedback",
            "application/json",
            "{\"item_id\": \"img-a\", \"model_name\": \"colours\", \"labels\": [\"a\\nb\"]}",
            StatusCode::BAD_REQUEST,
            "invalid label",
        ),
        (
            "/api/feedback",
            "application/json",
            "{\"item_id\": \"img-a\", \"model_name\": \"colours\", \"labels\": []}",
            StatusCode::BAD_REQUEST,
            "at least one label",
        ),
        (
            "/api/feedback",
            "application/json",
            "{\"item_id\": \"img-a\", \"model_name\": \"colours\", \"labels\": [\"red\", \"green\"]}",
            StatusCode::BAD_REQUEST,
            "one label per item",
        ),
        (
            "/api/feedback",
            "application/json",
            "{\"item_id\": \"img-a\", \"model_name\": \"colours\", \"labels\": [\"red\"], \"confirm\": true}",
            StatusCode::BAD_REQUEST,
            "not both",
        ),
        (
            "/api/undo",
            "application/json",
            "{\"feedback_id\": \"00000000-0000-0000-0000-000000000000\"}",
            StatusCode::NOT_FOUND,
            "no feedback",
        ),
        (
            "/api/undo",
            "application/json",
            "[]",
            StatusCode::BAD_REQUEST,
            "invalid request",
        ),
    ];
    for (path, ct, body, status, words) in cases {
        let (s, v) = f.post_raw(path, ct, body).await;
        assert_eq!(s, status, "{path} {body}: {v}");
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {v}"));
        assert!(
            msg.contains(words),
            "{body}: {msg:?} should mention {words:?}"
        );
    }

    // A model that is not installed: labels cannot be checked.
    let models = f.root.join("models");
    std::fs::rename(models.join("colours"), f.root.join("colours-away")).unwrap();
    let (s, v) = f
        .post(
            "/api/feedback",
            json!({"item_id": "img-a", "model_name": "colours", "labels": ["red"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("not installed"),
        "{v}"
    );
    std::fs::rename(f.root.join("colours-away"), models.join("colours")).unwrap();

    // Query parameters.
    for (q, words) in [
        ("/api/queue?from=yesterday", "YYYY-MM-DD"),
        ("/api/queue?limit=0", "limit"),
        ("/api/queue?limit=ten", "whole number"),
        ("/api/queue?kind=audio", "image or text"),
        ("/api/queue?colour=red", "unknown queue parameter"),
    ] {
        let (s, v) = f.get(q).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        assert!(v["error"].as_str().unwrap().contains(words), "{q}: {v}");
    }
    for p in [
        "/api/items/nope",
        "/api/items/nope/content",
        "/api/items/nope/scene",
        "/api/nothing-here",
    ] {
        let (s, v) = f.get(p).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{p}: {v}");
        assert!(v["error"].is_string(), "{p}: {v}");
    }

    // DNS rebinding and cross-site posts.
    let r = f
        .http
        .get(format!("{}/api/counters", f.base))
        .header("Host", "attacker.example:1234")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("DNS rebinding"),
        "{v}"
    );
    let r = f
        .http
        .get(format!("{}/", f.base))
        .header("Host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = f
        .http
        .post(format!("{}/api/feedback", f.base))
        .header("Content-Type", "application/json")
        .header("Origin", "http://attacker.example")
        .body(json!({"item_id": "img-a", "model_name": "colours", "labels": ["red"]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    assert_eq!(f.count("SELECT COUNT(*) FROM feedback"), 0);
    assert_eq!(f.count("SELECT COUNT(*) FROM outbox"), 0);

    // localhost by name works.
    let port = f.base.rsplit(':').next().unwrap();
    let r = f
        .http
        .get(format!("{}/api/counters", f.base))
        .header("Host", format!("localhost:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_undo_content_and_scene() {
    let f = fixture().await;
    // Page and assets are served.
    let r = f.http.get(format!("{}/", f.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("Outpost review"));
    for p in ["/app.js", "/style.css"] {
        let r = f.http.get(format!("{}{p}", f.base)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{p}");
    }

    // Item detail: label names and scores from the manifest, scene box, no history yet.
    let (s, d) = f.get("/api/items/scene-1").await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["kind"], "image");
    let p = &d["predictions"][0];
    assert_eq!(p["label_names"], json!(["red", "green", "blue"]));
    assert_eq!(p["multi_label"], false);
    assert_eq!(p["installed"], true);
    assert_eq!(d["scene"]["available"], true);
    assert_eq!(d["scene"]["width"], 64);
    assert_eq!(d["scene"]["tile"], json!([32, 0, 32, 32]));
    let r = f
        .http
        .get(format!("{}/api/items/scene-1/scene", f.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "image/png");
    let img = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (64, 32));

    let (_, d) = f.get("/api/items/gone-1").await;
    assert_eq!(d["scene"]["available"], false);
    assert!(d["scene"]["reason"]
        .as_str()
        .unwrap()
        .contains("no longer on this machine"));
    let (s, v) = f.get("/api/items/gone-1/scene").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().unwrap().contains("no longer"), "{v}");
    let (s, _) = f.get("/api/items/img-a/scene").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a whole image has no scene");

    let (_, d) = f.get("/api/items/txt-b").await;
    assert_eq!(d["text"], "water and food");
    assert_eq!(d["predictions"][0]["multi_label"], true);
    assert_eq!(d["predictions"][0]["thresholds"], json!([0.5, 0.5, 0.5]));
    assert!(d["scene"].is_null());

    // Content with its stored type.
    let r = f
        .http
        .get(format!("{}/api/items/txt-a/content", f.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "We need water");
    let r = f
        .http
        .get(format!("{}/api/items/img-a/content", f.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(
        image::load_from_memory(&r.bytes().await.unwrap())
            .unwrap()
            .width(),
        16
    );

    // Confirm, correct, a new label, a multi-label correction.
    let give = |item: &str, model: &str, labels: Value| json!({"item_id": item, "model_name": model, "labels": labels});
    let (s, r) = f
        .post(
            "/api/feedback",
            json!({"item_id": "img-a", "model_name": "colours", "confirm": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["feedback"]["action"], "confirm");
    assert_eq!(r["feedback"]["labels"], json!(["red"]));
    assert_eq!(r["feedback"]["annotator"], "api-tester");
    assert_eq!(r["feedback"]["include_content"], true);
    assert_eq!(r["counters"]["reviewed_today"], 1);
    let (_, r) = f
        .post("/api/feedback", give("img-c", "colours", json!(["blue"])))
        .await;
    assert_eq!(r["feedback"]["action"], "correct");
    // An unknown label not declared as new is refused (a typo guard), and nothing is written.
    let (s, r) = f
        .post(
            "/api/feedback",
            give("img-b", "colours", json!(["flooded"])),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("mark the label as new"),
        "{r}"
    );
    let (_, r) = f
        .post(
            "/api/feedback",
            json!({"item_id": "img-b", "model_name": "colours", "labels": ["flooded"], "new_labels": ["flooded"]}),
        )
        .await;
    assert_eq!(r["feedback"]["new_labels"], json!(["flooded"]));
    let flooded = r["feedback"]["feedback_id"].as_str().unwrap().to_string();
    let (s, r) = f
        .post(
            "/api/feedback",
            give("txt-b", "keywords", json!(["food", "infrastructure"])),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["feedback"]["action"], "correct");
    assert_eq!(
        r["feedback"]["include_content"], false,
        "reports are not sent unless asked"
    );
    assert_eq!(r["counters"]["waiting_to_sync"], 4);

    // Undo: the newest undoable decision is offered; undoing twice is a conflict.
    let (_, u) = f.get("/api/feedback/undoable").await;
    let last = u["feedback"]["feedback_id"].as_str().unwrap().to_string();
    assert_eq!(u["feedback"]["item_id"], "txt-b");
    let (s, r) = f.post("/api/undo", json!({"feedback_id": last})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["item_id"], "txt-b");
    assert!(r["restored"].is_null());
    assert_eq!(r["counters"]["waiting_to_sync"], 3);
    let (s, r) = f.post("/api/undo", json!({"feedback_id": last})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{r}");
    // An acknowledged decision cannot be undone.
    {
        let mut store = Store::open(&f.db).unwrap();
        store.ack_outbox(std::slice::from_ref(&flooded)).unwrap();
    }
    let (s, r) = f.post("/api/undo", json!({"feedback_id": flooded})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{r}");
    assert!(r["error"].as_str().unwrap().contains("already sent"), "{r}");
    let (_, c) = f.get("/api/counters").await;
    assert_eq!(c["synced"], 1);
    assert_eq!(c["waiting_to_sync"], 2);
    assert!(c["last_sync"].is_null());

    // History on the item.
    let (_, d) = f.get("/api/items/txt-b").await;
    assert_eq!(d["feedback"][0]["state"], "undone");
    let (_, q) = f.get("/api/queue").await;
    assert_eq!(ids(&q), ["txt-a", "scene-1", "txt-b", "gone-1"]);
}
