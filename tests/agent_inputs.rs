//! Nothing the agent is given is left out silently (issue 22), and the first things a user
//! meets at the terminal behave: every place a georeferenced tile was seen reaches the
//! export, symbolic links are followed (broken links and loops are named), a truncated
//! JPEG, a special file, a CSV with an unclosed quote and binary junk named as text are
//! failures with a reason, feedback import accepts the path in either form, a closed pipe
//! is not a panic, a missing terminal is said, logs carry colour only on a terminal, and
//! the review page opens on a fresh data folder. Real binaries, real pipes, real ONNX
//! Runtime, tiny real models; every input is made by the test.

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn setup() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    common::make_image_bundle(&root.join("models/colours"), "colours", "1.0.0");
    common::make_text_bundle(&root.join("models/keywords"), "keywords", "1.0.0");
    std::fs::remove_file(root.join("models/keywords.vocab.txt")).ok();
    (tmp, root)
}

fn run(root: &Path, args: &[&str]) -> (i32, String, String) {
    common::agent(root, args)
}

fn db(root: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(root.join("data/agent.db")).unwrap()
}

fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// `outpost analyze PATH --json-summary`: asserts the exit code, returns the summary and
/// the output (for messages).
fn analyze_json(root: &Path, path: &Path, want_code: i32) -> (serde_json::Value, String) {
    let (code, out, err) = run(
        root,
        &[
            "analyze",
            path.to_str().unwrap(),
            "--no-progress",
            "--json-summary",
        ],
    );
    assert_eq!(code, want_code, "{out}{err}");
    (summary(&out), out)
}

fn summary(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn failures_with(s: &serde_json::Value, code: &str) -> Vec<serde_json::Value> {
    s["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == code)
        .cloned()
        .collect()
}

/// A north-up GeoTIFF in EPSG:4326 with `deg` degrees per pixel, top-left at (lon, lat).
fn write_geotiff(path: &Path, pixels: &image::RgbImage, lon: f64, lat: f64, deg: f64) {
    use tiff::encoder::{colortype::RGB8, TiffEncoder};
    use tiff::tags::Tag;
    let mut enc = TiffEncoder::new(std::fs::File::create(path).unwrap()).unwrap();
    let (w, h) = pixels.dimensions();
    let mut img = enc.new_image::<RGB8>(w, h).unwrap();
    let e = img.encoder();
    e.write_tag(Tag::ModelPixelScaleTag, &[deg, deg, 0.0][..])
        .unwrap();
    e.write_tag(Tag::ModelTiepointTag, &[0.0, 0.0, 0.0, lon, lat, 0.0][..])
        .unwrap();
    // GeoKey directory 1.1.0 with 3 keys: geographic model, PixelIsArea, EPSG:4326.
    let keys: [u16; 16] = [1, 1, 0, 3, 1024, 0, 1, 2, 1025, 0, 1, 1, 2048, 0, 1, 4326];
    e.write_tag(Tag::GeoKeyDirectoryTag, &keys[..]).unwrap();
    img.write_data(pixels.as_raw()).unwrap();
}

/// 128 x 128: a red, a green and two identical blue ("water") quadrants.
fn quadrants() -> image::RgbImage {
    image::RgbImage::from_fn(128, 128, |x, y| match (x / 64, y / 64) {
        (0, 0) => image::Rgb([240, 20, 20]),
        (1, 0) => image::Rgb([20, 240, 20]),
        _ => image::Rgb([20, 20, 240]),
    })
}

#[test]
fn tiles_with_the_same_pixels_in_different_places_keep_every_footprint() {
    let (_tmp, root) = setup();
    let scenes = root.join("scenes");
    std::fs::create_dir_all(&scenes).unwrap();
    let px = quadrants();
    write_geotiff(&scenes.join("a.tif"), &px, 30.0, 10.0, 0.01);
    // The same scene acquired again, 4.5 degrees (about 500 km) further east.
    write_geotiff(&scenes.join("b.tif"), &px, 34.5, 10.0, 0.01);
    let gj = root.join("out.geojson");
    let (code, out, err) = run(
        &root,
        &[
            "analyze",
            scenes.to_str().unwrap(),
            "--no-progress",
            "--tile-size",
            "64",
            "--json-summary",
            "--out",
            gj.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let s = summary(&out);
    // 3 different tiles (red, green, water), seen in 8 places over the two files.
    assert_eq!(s["image_items"], 3, "{out}");
    assert_eq!(s["already_analysed"], 0, "{out}");
    assert_eq!(s["sightings"], 8, "{out}");
    let fc: serde_json::Value = serde_json::from_slice(&std::fs::read(&gj).unwrap()).unwrap();
    let features = fc["features"].as_array().unwrap();
    assert_eq!(features.len(), 8, "one feature per place seen");
    let mut west: Vec<f64> = features
        .iter()
        .map(|f| f["geometry"]["coordinates"][0][0][0].as_f64().unwrap())
        .collect();
    west.sort_by(f64::total_cmp);
    let expect = [30.0, 30.0, 30.64, 30.64, 34.5, 34.5, 35.14, 35.14];
    for (got, want) in west.iter().zip(expect) {
        assert!((got - want).abs() < 1e-6, "{west:?}");
    }
    // Analysing again finds every item done and keeps the 8 places, no more.
    let (code, out, err) = run(
        &root,
        &[
            "analyze",
            scenes.to_str().unwrap(),
            "--no-progress",
            "--tile-size",
            "64",
            "--json-summary",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let s = summary(&out);
    assert_eq!(
        (s["image_items"].as_u64(), s["sightings"].as_u64()),
        (Some(0), Some(8))
    );
    assert_eq!(s["already_analysed"], 3, "{out}");
    let conn = db(&root);
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM items"), 3);
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM item_sightings"), 8);
}

#[test]
fn a_database_from_before_sightings_migrates_without_loss() {
    use outpost::store::migrate::{migrate_with, MIGRATIONS};
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("agent.db");
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        migrate_with(&mut conn, &MIGRATIONS[..4]).unwrap();
        conn.execute_batch(
            "INSERT INTO runs (run_id, started_at, inputs) VALUES (7, '2026-01-01T00:00:00Z', '[]');
             INSERT INTO items (item_id, kind, source, locator, geometry, first_seen, last_seen)
               VALUES ('aa', 'image', '/scenes/a.tif', 'tile 0,0,64,64',
                       '{\"type\":\"Polygon\",\"coordinates\":[[[1,2],[3,2],[3,0],[1,0],[1,2]]]}',
                       '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z'),
                      ('bb', 'text', 'notes/r.md', NULL, NULL, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z');
             INSERT INTO predictions (item_id, model_name, model_version, run_id, labels, top_label,
                                      top_score, scores, embedding, created_at)
               VALUES ('aa', 'colours', '1.0.0', 7, '[\"red\"]', 'red', 0.9, '[0.9,0.05,0.05]', X'', '2026-01-01T00:00:00Z'),
                      ('bb', 'keywords', '1.0.0', 7, '[\"water\"]', 'water', 0.8, '[0.8,0.2]', X'', '2026-01-01T00:00:00Z');",
        )
        .unwrap();
    }
    let store = outpost::store::Store::open(&path).unwrap();
    let places: Vec<(String, String, i64)> = store
        .conn()
        .prepare("SELECT item_id, source, last_run_id FROM item_sightings ORDER BY item_id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        places,
        [
            ("aa".to_string(), "/scenes/a.tif".to_string(), 7),
            ("bb".to_string(), "notes/r.md".to_string(), 7)
        ],
        "each old item keeps its place, seen by run 7"
    );
    let rows = outpost::export::load_rows(
        &store,
        &outpost::export::ExportFilter {
            run_id: Some(7),
            model_name: None,
        },
        &|_, _| None,
    )
    .unwrap();
    assert_eq!(
        rows.len(),
        2,
        "both old items are still exported with run 7"
    );
    let tile = rows.iter().find(|r| r.item_id == "aa").unwrap();
    assert_eq!(tile.source, "/scenes/a.tif");
    assert_eq!(tile.locator.as_deref(), Some("tile 0,0,64,64"));
    assert_eq!(tile.geometry.as_ref().unwrap()["type"], "Polygon");
    let report = rows.iter().find(|r| r.item_id == "bb").unwrap();
    assert_eq!(
        (report.source.as_str(), report.geometry.is_none()),
        ("notes/r.md", true)
    );
}

#[cfg(unix)]
#[test]
fn symbolic_links_are_followed_and_broken_links_and_loops_are_named() {
    let (_tmp, root) = setup();
    let elsewhere = root.join("elsewhere");
    let folder = root.join("inputs");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    common::solid_png(&elsewhere.join("red.png"), 16, 16, [250, 10, 10]);
    common::solid_png(&elsewhere.join("green.png"), 16, 16, [10, 250, 10]);
    let link = |a: &Path, b: PathBuf| std::os::unix::fs::symlink(a, b);
    link(&elsewhere.join("red.png"), folder.join("red.png")).unwrap();
    link(&elsewhere, folder.join("more")).unwrap(); // a linked folder
    link(&root.join("gone.png"), folder.join("broken.png")).unwrap();
    link(&folder, folder.join("sub/loop")).unwrap(); // points back up
    let (code, out, err) = run(
        &root,
        &[
            "analyze",
            folder.to_str().unwrap(),
            "--no-progress",
            "--json-summary",
        ],
    );
    assert_eq!(code, 3, "partial: two links could not be read\n{out}{err}");
    let s = summary(&out);
    // red.png reached twice (direct link and linked folder) is one file, read once.
    assert_eq!(s["image_items"], 2, "{out}");
    assert_eq!(s["files"], 2, "{out}");
    let broken = failures_with(&s, "broken-link");
    assert_eq!(broken.len(), 1, "{out}");
    assert!(broken[0]["source"]
        .as_str()
        .unwrap()
        .ends_with("broken.png"));
    assert!(
        broken[0]["reason"].as_str().unwrap().contains("gone.png"),
        "{out}"
    );
    let loops = failures_with(&s, "link-loop");
    assert_eq!(loops.len(), 1, "{out}");
    assert!(
        loops[0]["source"].as_str().unwrap().ends_with("sub/loop"),
        "{out}"
    );
}

#[test]
fn a_truncated_jpeg_is_a_failure_not_a_classification() {
    let (_tmp, root) = setup();
    let dir = root.join("photos");
    std::fs::create_dir_all(&dir).unwrap();
    let img = image::RgbImage::from_fn(96, 96, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 5 % 256) as u8,
            ((x + y) * 3 % 256) as u8,
        ])
    });
    img.save(dir.join("whole.jpg")).unwrap();
    let bytes = std::fs::read(dir.join("whole.jpg")).unwrap();
    std::fs::write(dir.join("cut.jpg"), &bytes[..bytes.len() / 3]).unwrap();
    let (s, out) = analyze_json(&root, &dir, 3);
    assert_eq!(s["image_items"], 1, "only the whole JPEG: {out}");
    let f = failures_with(&s, "truncated");
    assert_eq!(f.len(), 1, "{out}");
    assert!(f[0]["source"].as_str().unwrap().ends_with("cut.jpg"));
    assert!(
        f[0]["reason"].as_str().unwrap().contains("truncated"),
        "{out}"
    );
}

#[cfg(unix)]
#[test]
fn a_fifo_is_named_as_what_it_is() {
    let (_tmp, root) = setup();
    let fifo = root.join("pipe.jpg");
    let ok = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(ok.success());
    let (s, out) = analyze_json(&root, &fifo, 1);
    let f = failures_with(&s, "not-a-file");
    assert_eq!(f.len(), 1, "{out}");
    let reason = f[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("named pipe") && reason.contains("only regular files and folders"),
        "{reason}"
    );
}

#[test]
fn broken_csv_quoting_and_binary_text_are_refused_with_where() {
    let (_tmp, root) = setup();
    let dir = root.join("reports");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("messages.csv"),
        "id,message\n1,We need water\n2,\"The bridge is out\n3,food is short\n4,roads flooded\n",
    )
    .unwrap();
    std::fs::write(dir.join("blank.md"), vec![0u8; 4096]).unwrap();
    let mut junk = b"PK\x03\x04".to_vec();
    junk.extend((0..2000u32).map(|i| (i * 37 % 32) as u8));
    std::fs::write(dir.join("archive.txt"), junk).unwrap();
    let (s, out) = analyze_json(&root, &dir, 3);
    assert_eq!(s["text_items"], 1, "only row 2 (line 2) is whole: {out}");
    let quote = failures_with(&s, "unclosed-quote");
    assert_eq!(quote.len(), 1, "{out}");
    assert_eq!(quote[0]["locator"], "row 3", "{out}");
    assert!(
        quote[0]["reason"].as_str().unwrap().contains("line 3"),
        "{out}"
    );
    let binary = failures_with(&s, "not-text");
    let names: Vec<&str> = binary
        .iter()
        .map(|f| f["source"].as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    assert_eq!(names, ["archive.txt", "blank.md"], "{out}");
}

#[test]
fn sources_are_canonical_and_feedback_import_takes_either_form() {
    let (_tmp, root) = setup();
    let tiles = root.join("tiles");
    std::fs::create_dir_all(&tiles).unwrap();
    common::solid_png(&tiles.join("a.png"), 16, 16, [250, 10, 10]);
    common::solid_png(&tiles.join("b.png"), 16, 16, [10, 250, 10]);
    // Analysed by a relative path, from the data root.
    let o = common::agent_cmd(&root, &["analyze", "tiles/./", "--no-progress"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let conn = db(&root);
    let sources: Vec<String> = conn
        .prepare("SELECT source FROM items ORDER BY source")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let abs = |n: &str| tiles.join(n).display().to_string();
    assert_eq!(sources, [abs("a.png"), abs("b.png")]);
    // An old row stored as typed (relative) still matches an absolute path.
    conn.execute(
        "UPDATE item_sightings SET source = 'tiles/b.png' WHERE source = ?1",
        [abs("b.png")],
    )
    .unwrap();
    conn.execute(
        "UPDATE items SET source = 'tiles/b.png' WHERE source = ?1",
        [abs("b.png")],
    )
    .unwrap();
    let csv = root.join("labels.csv");
    std::fs::write(
        &csv,
        format!(
            "source,label\n{},red\n{},green\n",
            abs("a.png"),
            abs("b.png")
        ),
    )
    .unwrap();
    let (code, out, err) = run(&root, &["feedback", "import", csv.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("imported 2 decisions"), "{out}");
    // And a relative path, from another working folder, matches a canonical row.
    let csv2 = root.join("labels2.csv");
    std::fs::write(&csv2, "source,label\n../tiles/a.png,blue\n").unwrap();
    let o = common::agent_cmd(&root, &["feedback", "import", csv2.to_str().unwrap()])
        .current_dir(root.join("models"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("imported 1 decisions"), "{o:?}");
    // Analysed again: the old row's place, stored as typed, is the canonical one; it is
    // not kept twice.
    let (code, out, err) = run(
        &root,
        &["analyze", tiles.to_str().unwrap(), "--no-progress"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let places: Vec<String> = conn
        .prepare("SELECT source FROM item_sightings ORDER BY source")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(places, [abs("a.png"), abs("b.png")]);
}

/// Spawns the agent with stdout on a pipe whose reader is already gone.
fn closed_pipe(root: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = common::agent_cmd(root, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // like `| head -1` after its line: the reader goes away
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap().code(), err)
}

#[test]
fn a_closed_pipe_on_stdout_is_not_a_panic() {
    let (_tmp, root) = setup();
    let tiles = root.join("tiles");
    std::fs::create_dir_all(&tiles).unwrap();
    for i in 0..40u8 {
        common::solid_png(&tiles.join(format!("t{i}.png")), 16, 16, [i * 6, 10, 200]);
    }
    let t = tiles.to_str().unwrap();
    for args in [
        &["analyze", t, "--no-progress", "--format", "csv"][..],
        &["status", "--json"][..],
        &["models", "verify"][..],
        &["export", "--format", "json"][..],
    ] {
        let (code, err) = closed_pipe(&root, args);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(code, Some(0), "{args:?}: {err}");
    }
    // The analysis finished and was stored although nobody read its output.
    assert_eq!(count(&db(&root), "SELECT COUNT(*) FROM predictions"), 40);
}

#[cfg(unix)]
#[test]
fn a_passphrase_without_a_terminal_names_the_file_option() {
    let (_tmp, root) = setup();
    // setsid: a new session with no controlling terminal, as under cron or a service.
    let o = Command::new("setsid")
        .arg("-w")
        .arg(common::outpost_bin())
        .arg("--data-dir")
        .arg(root.join("data"))
        .args(["encrypt", "--passphrase"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no terminal") && err.contains("--passphrase-file"),
        "{err}"
    );
    assert!(!root.join("data/data-key.json").exists());
}

#[test]
fn logs_to_a_pipe_carry_no_colour() {
    let (_tmp, root) = setup();
    let tiles = root.join("tiles");
    std::fs::create_dir_all(&tiles).unwrap();
    std::fs::write(tiles.join("corrupt.png"), b"\x89PNG\r\n\x1a\n not a png").unwrap();
    let o = common::agent_cmd(
        &root,
        &["-v", "analyze", tiles.to_str().unwrap(), "--no-progress"],
    )
    .env_remove("NO_COLOR")
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("WARN"), "a warning is logged: {err}");
    assert!(!o.stderr.contains(&0x1b), "no ANSI escape: {err:?}");
    let o = Command::new(common::server_bin())
        .arg("--data-dir")
        .arg(root.join("server"))
        .args(["-v", "devices", "list"])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(!o.stderr.is_empty(), "the server logs something: {o:?}");
    assert!(!o.stderr.contains(&0x1b), "no ANSI escape: {o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_on_a_fresh_data_folder_serves_a_page_that_says_what_to_do() {
    let browser = webdriver::Browser::start().await;
    let (_tmp, root) = setup();
    let mut child = common::agent_cmd(&root, &["review", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) else {
        let _ = child.kill();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        panic!("no review page: {line} {err}");
    };
    let queue = reqwest::get(format!("{url}api/queue")).await.unwrap();
    let status = queue.status().as_u16();
    let q: serde_json::Value = queue.json().await.unwrap();
    browser.goto(url).await;
    let t0 = std::time::Instant::now();
    let shown = loop {
        let v = browser
            .js("const f = document.getElementById('fresh'); return f && !f.hidden ? f.innerText : null")
            .await;
        if let Some(t) = v.as_str() {
            break t.to_string();
        }
        assert!(
            t0.elapsed().as_secs() < 20,
            "the fresh-folder message never showed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let empty_hidden = browser
        .js("return document.getElementById('empty').hidden")
        .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200, "{q}");
    assert_eq!(
        (q["analysed"].as_u64(), q["total"].as_u64()),
        (Some(0), Some(0)),
        "{q}"
    );
    assert!(
        shown.contains("Nothing analysed yet") && shown.contains("outpost analyze"),
        "{shown}"
    );
    assert_eq!(
        empty_hidden,
        serde_json::json!(true),
        "not the 'all reviewed' message"
    );
}
