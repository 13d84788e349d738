//! `outpost analyze` end to end: the real binary, real ONNX Runtime, a real SQLite file,
//! tiny real models (see common/mod.rs), good and bad inputs side by side.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    models: PathBuf,
    data: PathBuf,
}

fn setup() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let models = root.join("models");
    common::make_image_bundle(&models.join("colours"), "colours", "1.0.0");
    common::make_text_bundle(&models.join("keywords"), "keywords", "1.0.0");
    std::fs::remove_file(models.join("keywords.vocab.txt")).ok();
    Env {
        _tmp: tmp,
        root: root.clone(),
        models,
        data: root.join("data"),
    }
}

fn outpost(env: &Env, args: &[&str]) -> std::process::Output {
    Command::new(common::outpost_bin())
        .arg("--data-dir")
        .arg(&env.data)
        .arg("--models-dir")
        .arg(&env.models)
        .arg("--ort-lib")
        .arg(common::ort_lib())
        .args(args)
        .env_remove("OUTPOST_CONFIG")
        .output()
        .expect("outpost runs")
}

fn db(env: &Env) -> rusqlite::Connection {
    rusqlite::Connection::open(env.data.join("agent.db")).unwrap()
}

fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn write_inputs(root: &Path) -> PathBuf {
    let inputs = root.join("inputs");
    let tiles = inputs.join("tiles");
    std::fs::create_dir_all(&tiles).unwrap();
    common::solid_png(&tiles.join("red.png"), 16, 16, [250, 10, 10]);
    common::solid_png(&tiles.join("green.png"), 16, 16, [10, 250, 10]);
    image::RgbImage::from_pixel(40, 40, image::Rgb([10, 10, 250]))
        .save(tiles.join("blue-40px.jpg"))
        .unwrap();
    // Bad inputs, each must be a failure with a reason, and the run must go on.
    std::fs::write(
        tiles.join("corrupt.png"),
        b"\x89PNG\r\n\x1a\n this is not really a png",
    )
    .unwrap();
    std::fs::write(tiles.join("empty.jpg"), b"").unwrap();
    let good = std::fs::read(tiles.join("red.png")).unwrap();
    std::fs::write(tiles.join("truncated.png"), &good[..good.len() / 2]).unwrap();
    std::fs::write(tiles.join("bomb.png"), png_header(100_000, 100_000)).unwrap();
    std::fs::write(tiles.join("notes.docx"), b"ignored").unwrap();
    std::fs::write(tiles.join(".hidden.png"), b"ignored").unwrap();

    let reports = inputs.join("reports");
    std::fs::create_dir_all(&reports).unwrap();
    std::fs::write(
        reports.join("messages.csv"),
        "id,message,genre\n1,We need water,direct\n2,\"The bridge is out, the road floods\",news\n3,,direct\n4,food food food,direct\n",
    )
    .unwrap();
    std::fs::write(
        reports.join("sms.jsonl"),
        "{\"text\": \"water water\"}\nnot json\n{\"other\": 1}\n",
    )
    .unwrap();
    std::fs::write(
        reports.join("field-note.md"),
        "# Note\nThe road is out near the bridge.\n",
    )
    .unwrap();
    std::fs::write(reports.join("latin1.txt"), b"caf\xe9 needs water").unwrap();
    inputs
}

/// A PNG that claims to be width x height: only the signature and IHDR (a decompression bomb
/// is caught from the header, before anything is allocated).
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(b"IHDR");
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let crc = crc32(&ihdr);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&ihdr);
    out.extend_from_slice(&crc.to_be_bytes());
    // One tiny IDAT (a stored zlib block holding a single zero byte), so decoders reach the
    // point where they would allocate the image.
    let mut idat = b"IDAT".to_vec();
    idat.extend_from_slice(&[
        0x78, 0x01, 0x01, 0x01, 0x00, 0xfe, 0xff, 0x00, 0x00, 0x01, 0x00, 0x01,
    ]);
    out.extend_from_slice(&((idat.len() - 4) as u32).to_be_bytes());
    out.extend_from_slice(&idat);
    out.extend_from_slice(&crc32(&idat).to_be_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn analyze_stores_everything_reports_bad_inputs_and_does_not_duplicate_on_rerun() {
    let env = setup();
    let inputs = write_inputs(&env.root);
    let out_json = env.root.join("out.json");
    let args = [
        "analyze",
        inputs.to_str().unwrap(),
        "--no-progress",
        "--out",
        out_json.to_str().unwrap(),
    ];
    let o = outpost(&env, &args);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(3),
        "partial failure exit code\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // Every bad input is named with a reason.
    for (file, words) in [
        ("corrupt.png", "cannot decode"),
        ("empty.jpg", "empty"),
        ("truncated.png", "cannot decode"),
        ("bomb.png", "over the limit"),
        ("latin1.txt", "UTF-8"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("{file} not in summary:\n{stdout}"));
        assert!(line.contains(words), "{file}: {line}");
    }
    assert!(
        stdout.contains("messages.csv (row 4)") && stdout.contains("the report is empty"),
        "{stdout}"
    );
    assert!(stdout.contains("sms.jsonl (line 2)"), "{stdout}");

    let conn = db(&env);
    assert_eq!(
        count(&conn, "SELECT COUNT(*) FROM items WHERE kind = 'image'"),
        3
    );
    // 3 CSV rows, 1 JSON line, 1 Markdown file.
    assert_eq!(
        count(&conn, "SELECT COUNT(*) FROM items WHERE kind = 'text'"),
        5
    );
    let label = |src: &str| -> String {
        conn.query_row(
            "SELECT p.top_label FROM predictions p JOIN items i USING (item_id) WHERE i.source LIKE ?1",
            [format!("%{src}")],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(label("red.png"), "red");
    assert_eq!(label("green.png"), "green");
    assert_eq!(label("blue-40px.jpg"), "blue");
    let labels: String = conn
        .query_row(
            "SELECT p.labels FROM predictions p JOIN items i USING (item_id) WHERE i.locator = 'row 3'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(labels, "[\"infrastructure\"]");
    // Embeddings are stored as f16: 2 bytes per dimension.
    let emb_len: i64 = count(&conn, "SELECT length(embedding) FROM predictions p JOIN items i USING (item_id) WHERE i.source LIKE '%red.png'");
    assert_eq!(emb_len, 3 * 2);
    let codes: Vec<String> = conn
        .prepare("SELECT code FROM failures ORDER BY code")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for c in ["corrupt", "empty", "not-utf8", "too-many-pixels"] {
        assert!(codes.iter().any(|x| x == c), "{c} missing from {codes:?}");
    }
    assert_eq!(
        count(
            &conn,
            "SELECT status = 'partial' FROM runs WHERE run_id = 1"
        ),
        1
    );

    // The JSON export holds one object per prediction, with every label's score.
    let exported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_json).unwrap()).unwrap();
    let arr = exported.as_array().unwrap();
    assert_eq!(arr.len(), 8);
    let red = arr
        .iter()
        .find(|r| r["source"].as_str().unwrap().ends_with("red.png"))
        .unwrap();
    assert!(red["scores"]["red"].as_f64().unwrap() > 0.99);

    // A second run finds everything already analysed and adds no rows.
    let o = outpost(&env, &args[..3]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("8 items were already analysed"), "{stdout}");
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM items"), 8);
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM predictions"), 8);
    // --force analyses again, still without duplicates.
    let o = outpost(
        &env,
        &[
            "analyze",
            inputs.to_str().unwrap(),
            "--no-progress",
            "--force",
        ],
    );
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM predictions"), 8);
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM runs"), 3);
}

#[test]
fn a_georeferenced_scene_becomes_a_geojson_layer_on_the_right_spot() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let env = setup();
    let scene = data.join("geotiff/RGB.byte.tif");
    let out = env.root.join("scene.geojson");
    let o = outpost(
        &env,
        &[
            "analyze",
            scene.to_str().unwrap(),
            "--no-progress",
            "--tile-size",
            "64",
            "--format",
            "geojson",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let fc: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(fc["type"], "FeatureCollection");
    let features = fc["features"].as_array().unwrap();
    // 791x718 at 64 px: 13 x 12 = 156 tiles, minus the nodata border tiles.
    let skipped: usize = stdout
        .lines()
        .find(|l| l.contains("scene tiles skipped"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(skipped > 0, "the black border is skipped: {stdout}");
    assert_eq!(features.len() + skipped, 156);
    // Every vertex lies inside the scene's WGS84 footprint from rasterio.
    for f in features {
        assert_eq!(f["geometry"]["type"], "Polygon");
        for p in f["geometry"]["coordinates"][0].as_array().unwrap() {
            let (lon, lat) = (p[0].as_f64().unwrap(), p[1].as_f64().unwrap());
            assert!(
                (-78.9587..=-76.5749).contains(&lon) && (23.5649..=25.5509).contains(&lat),
                "{lon},{lat}"
            );
        }
        assert!(f["properties"]["top_label"].is_string());
        assert!(f["properties"]["score_red"].is_number());
    }
    // CSV export of the same run carries WKT for QGIS.
    let o = outpost(&env, &["export", "--format", "csv"]);
    let csv = String::from_utf8_lossy(&o.stdout);
    assert!(csv.lines().next().unwrap().contains("wkt"));
    assert!(
        csv.contains("POLYGON ((-"),
        "{}",
        &csv[..csv.len().min(500)]
    );
}

#[test]
fn a_missing_runtime_library_is_a_clear_error_not_a_panic() {
    let env = setup();
    let o = Command::new(common::outpost_bin())
        .args([
            "--data-dir",
            env.data.to_str().unwrap(),
            "--models-dir",
            env.models.to_str().unwrap(),
        ])
        .args([
            "--ort-lib",
            "/nonexistent/libonnxruntime.so.1.31.1",
            "analyze",
            ".",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/libonnxruntime.so.1.31.1")
            && stderr.contains("scripts/setup.sh"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_tampered_bundle_is_skipped_with_its_reason_and_the_others_still_run() {
    let env = setup();
    std::fs::write(env.models.join("keywords/head.onnx"), b"tampered").unwrap();
    let tiles = env.root.join("t");
    std::fs::create_dir_all(&tiles).unwrap();
    common::solid_png(&tiles.join("red.png"), 16, 16, [250, 10, 10]);
    // Tiles only: the report bundle is not needed, so it is not even opened.
    let o = outpost(&env, &["analyze", tiles.to_str().unwrap(), "--no-progress"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    // With a report too, the tampered bundle is refused with its reason and the tile still runs.
    std::fs::write(tiles.join("r.txt"), "we need water").unwrap();
    let o = outpost(
        &env,
        &[
            "analyze",
            tiles.to_str().unwrap(),
            "--no-progress",
            "--force",
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("keywords")
            && stderr.contains("head.onnx")
            && stderr.contains("does not match"),
        "{stderr}"
    );
    assert_eq!(
        count(
            &db(&env),
            "SELECT count(*) FROM predictions WHERE model_name = 'colours'"
        ),
        1,
        "{stderr}"
    );
}

/// Reports of a batch-independent backbone run in length-sorted batches (the keyword model of
/// common/mod.rs is float, and says so in its manifest); every report gets the scores it gets
/// alone (`analyze.text_batch_size = 1`). A bundle that does not declare it runs one report
/// at a time whatever the setting.
#[test]
fn reports_are_batched_only_for_batch_independent_backbones_and_score_as_if_alone() {
    let env = setup();
    let words = [
        "water", "food", "help", "please", "we", "need", "the", "road",
    ];
    let mut csv = String::from("message\n");
    for i in 0..150usize {
        let n = 1 + (i * 7) % 23; // lengths 1..23 words, interleaved
        let text: Vec<&str> = (0..n).map(|k| words[(i + k * 3) % words.len()]).collect();
        csv.push_str(&format!("{} report {i}\n", text.join(" ")));
    }
    let path = env.root.join("reports.csv");
    std::fs::write(&path, csv).unwrap();
    let scores = |batch: &str| {
        let _ = std::fs::remove_dir_all(&env.data);
        let o = Command::new(common::outpost_bin())
            .arg("--data-dir")
            .arg(&env.data)
            .arg("--models-dir")
            .arg(&env.models)
            .arg("--ort-lib")
            .arg(common::ort_lib())
            .args(["analyze", "--no-progress", path.to_str().unwrap()])
            .env_remove("OUTPOST_CONFIG")
            .env("OUTPOST__ANALYZE__TEXT_BATCH_SIZE", batch)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let conn = db(&env);
        let mut st = conn
            .prepare("SELECT item_id, scores FROM predictions ORDER BY item_id")
            .unwrap();
        let rows: Vec<(String, Vec<f32>)> = st
            .query_map([], |r| {
                let s: String = r.get(1)?;
                Ok((r.get(0)?, serde_json::from_str(&s).unwrap()))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows
    };
    let alone = scores("1");
    let batched = scores("32");
    assert_eq!(alone.len(), 150);
    assert_eq!(batched.len(), 150);
    for ((ia, a), (ib, b)) in alone.iter().zip(&batched) {
        assert_eq!(ia, ib);
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{ia}: {a:?} alone, {b:?} in a batch");
        }
    }

    common::init_ort();
    let opts = outpost::model::pool::SessionOptions::default();
    let dir = env.models.join("keywords");
    let m = std::sync::Arc::new(outpost::model::LoadedModel::load(&dir, opts).unwrap());
    assert_eq!(outpost::analyze::report_batch_size(&[m], 32), 32);
    let manifest = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["backbone"]
        .as_object_mut()
        .unwrap()
        .remove("batch_independent");
    std::fs::write(&manifest, serde_json::to_vec(&v).unwrap()).unwrap();
    let m = std::sync::Arc::new(outpost::model::LoadedModel::load(&dir, opts).unwrap());
    assert_eq!(outpost::analyze::report_batch_size(&[m], 32), 1);
}
