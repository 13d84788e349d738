//! The review page in a real browser: headless Chromium driven over WebDriver
//! (chromedriver), on a database filled by the real `outpost analyze` binary with tiny real
//! models. Every review action is made with the keyboard alone (WebDriver key actions, no
//! clicks); the test then checks the rows in SQLite and the counters on the page, and saves a
//! screenshot to target/review-screenshot.png.
//!
//! Needs Debian's `chromium` and `chromium-driver` packages (scripts/test.sh installs them);
//! fails with the fix when they are missing. `OUTPOST_CHROMEDRIVER` and `OUTPOST_CHROMIUM`
//! point elsewhere.
//!
//! The review server: when the `outpost` binary has a `review` subcommand, the test runs it
//! (`outpost review --listen 127.0.0.1:0 ...`, reading the page's URL from its first line of
//! output); otherwise it starts the same server in-process with `outpost::review`.

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use webdriver::Browser;

const ANNOTATOR: &str = "browser-tester";

// ---------------------------------------------------------------------------------------
// Fixture: bundles, inputs, the real `outpost analyze`

struct Env {
    _tmp: tempfile::TempDir,
    models: PathBuf,
    data: PathBuf,
}

fn pattern_tile(img: &mut image::RgbImage, x0: u32, base: [u8; 3]) {
    for y in 0..img.height() {
        for x in x0..x0 + 160 {
            // Fields and a road, so the overview looks like a scene and not a flat colour.
            let stripe = ((x / 12 + y / 20) % 3) as u8 * 14;
            let road = if (x + y) % 97 < 5 { 60 } else { 0 };
            let px = [
                base[0].saturating_add(stripe).saturating_add(road),
                base[1].saturating_add(stripe / 2).saturating_add(road),
                base[2].saturating_add(road),
            ];
            img.put_pixel(x, y, image::Rgb(px));
        }
    }
}

fn setup() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let models = root.join("models");
    common::make_image_bundle(&models.join("colours"), "colours", "1.0.0");
    common::make_text_bundle(&models.join("keywords"), "keywords", "1.0.0");
    std::fs::remove_file(models.join("keywords.vocab.txt")).ok();

    let inputs = root.join("inputs");
    let tiles = inputs.join("tiles");
    std::fs::create_dir_all(&tiles).unwrap();
    for (name, rgb) in [
        ("sure-red.png", [250, 10, 10]),
        ("red-or-green.png", [140, 128, 20]),
        ("greenish.png", [40, 200, 60]),
        ("blue.png", [20, 30, 220]),
        ("grey.png", [121, 119, 117]),
    ] {
        common::solid_png(&tiles.join(name), 16, 16, rgb);
    }
    // A scene larger than one item: cut into three 160 px tiles.
    let mut scene = image::RgbImage::new(480, 160);
    pattern_tile(&mut scene, 0, [150, 120, 40]);
    pattern_tile(&mut scene, 160, [70, 150, 50]);
    pattern_tile(&mut scene, 320, [60, 90, 170]);
    let scenes = inputs.join("scenes");
    std::fs::create_dir_all(&scenes).unwrap();
    scene.save(scenes.join("valley.png")).unwrap();

    let reports = inputs.join("reports");
    std::fs::create_dir_all(&reports).unwrap();
    std::fs::write(
        reports.join("messages.csv"),
        "id,message\n\
         1,We need water\n\
         2,\"The bridge is out, the road floods\"\n\
         3,food food food\n\
         4,we need water and food and help for the people here now\n\
         5,water is out\n",
    )
    .unwrap();

    let env = Env {
        _tmp: tmp,
        models,
        data: root.join("data"),
    };
    let o = Command::new(common::outpost_bin())
        .arg("--data-dir")
        .arg(&env.data)
        .arg("--models-dir")
        .arg(&env.models)
        .arg("--ort-lib")
        .arg(common::ort_lib())
        .args(["analyze", "--no-progress", "--tile-size", "160"])
        .arg(&inputs)
        .env_remove("OUTPOST_CONFIG")
        .output()
        .expect("outpost runs");
    assert!(
        o.status.success(),
        "outpost analyze failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    env
}

fn db(env: &Env) -> rusqlite::Connection {
    rusqlite::Connection::open(env.data.join("agent.db")).unwrap()
}

fn count(env: &Env, sql: &str) -> i64 {
    db(env).query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Certainty of each (item, model) computed here, independently of the server: margin of
/// the two best scores (single-label) or smallest distance to the 0.5 threshold (the tiny
/// text model is multi-label with thresholds 0.5).
fn certainties(env: &Env) -> HashMap<(String, String), f64> {
    let conn = db(env);
    let mut st = conn
        .prepare("SELECT item_id, model_name, scores FROM predictions")
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .unwrap();
    let mut out = HashMap::new();
    for row in rows {
        let (item, model, scores) = row.unwrap();
        let mut s: Vec<f64> = serde_json::from_str(&scores).unwrap();
        let c = if model == "keywords" {
            s.iter()
                .map(|x| (x - 0.5).abs())
                .fold(f64::INFINITY, f64::min)
        } else {
            s.sort_by(|a, b| b.total_cmp(a));
            s[0] - s[1]
        };
        out.insert((item, model), c);
    }
    out
}

#[derive(Debug)]
struct FeedbackRow {
    feedback_id: String,
    item_id: String,
    action: String,
    labels: Vec<String>,
    new_labels: Vec<String>,
    annotator: String,
    state: String,
    include_content: bool,
    in_outbox: bool,
}

fn feedback_rows(env: &Env) -> Vec<FeedbackRow> {
    let conn = db(env);
    let mut st = conn
        .prepare(
            "SELECT f.feedback_id, f.item_id, f.action, f.labels, f.new_labels, f.annotator, f.state,
                    f.include_content, o.feedback_id IS NOT NULL
             FROM feedback f LEFT JOIN outbox o USING (feedback_id) ORDER BY f.created_at, f.rowid",
        )
        .unwrap();
    let rows = st
        .query_map([], |r| {
            let labels: String = r.get(3)?;
            let new_labels: String = r.get(4)?;
            Ok(FeedbackRow {
                feedback_id: r.get(0)?,
                item_id: r.get(1)?,
                action: r.get(2)?,
                labels: serde_json::from_str(&labels).unwrap(),
                new_labels: serde_json::from_str(&new_labels).unwrap(),
                annotator: r.get(5)?,
                state: r.get(6)?,
                include_content: r.get(7)?,
                in_outbox: r.get(8)?,
            })
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn predicted_labels(env: &Env, item: &str) -> Vec<String> {
    let s: String = db(env)
        .query_row(
            "SELECT labels FROM predictions WHERE item_id = ?1",
            [item],
            |r| r.get(0),
        )
        .unwrap();
    serde_json::from_str(&s).unwrap()
}

// ---------------------------------------------------------------------------------------
// The review server

enum Server {
    InProcess(Option<tokio::sync::oneshot::Sender<()>>),
    Binary(Child),
}

impl Drop for Server {
    fn drop(&mut self) {
        match self {
            Server::InProcess(stop) => {
                if let Some(s) = stop.take() {
                    let _ = s.send(());
                }
            }
            Server::Binary(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn binary_has_review() -> bool {
    Command::new(common::outpost_bin())
        .args(["review", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn start_server(env: &Env) -> (String, Server) {
    if binary_has_review() {
        let mut child = Command::new(common::outpost_bin())
            .arg("--data-dir")
            .arg(&env.data)
            .arg("--models-dir")
            .arg(&env.models)
            .args([
                "review",
                "--listen",
                "127.0.0.1:0",
                "--annotator",
                ANNOTATOR,
                "--include-content",
            ])
            .env_remove("OUTPOST_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("outpost review starts");
        let stdout = child.stdout.take().unwrap();
        let server = Server::Binary(child);
        let url = tokio::time::timeout(
            Duration::from_secs(15),
            tokio::task::spawn_blocking(move || {
                let mut lines = std::io::BufReader::new(stdout).lines();
                let line = lines.find_map(|l| l.ok().filter(|l| l.contains("http://")));
                // Keep draining so the server never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines {});
                line
            }),
        )
        .await
        .expect("`outpost review` printed its URL within 15 s")
        .unwrap()
        .expect("`outpost review` prints a line with its http:// URL");
        let start = url.find("http://").unwrap();
        let url = url[start..]
            .split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches('/')
            .to_string();
        eprintln!("review server: the outpost binary at {url}");
        (url, server)
    } else {
        eprintln!("review server: in-process (the outpost binary has no `review` subcommand yet)");
        let mut opts =
            outpost::review::ReviewOptions::new(env.data.join("agent.db"), env.models.clone());
        opts.listen = "127.0.0.1:0".parse().unwrap();
        opts.annotator = ANNOTATOR.into();
        opts.send_images = true;
        opts.send_reports = true;
        let server = outpost::review::ReviewServer::bind(opts).await.unwrap();
        let url = server.url().trim_end_matches('/').to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        (url, Server::InProcess(Some(tx)))
    }
}

// ---------------------------------------------------------------------------------------
// WebDriver

/// What the review test does with the shared WebDriver client: keyboard input and the
/// page's own state.
trait ReviewPage {
    async fn press(&self, keys: &[&str]);
    async fn key_actions(&self, actions: Vec<Value>);
    async fn type_text(&self, text: &str);
    async fn state(&self) -> PageState;
    async fn wait(&self, what: &str, ok: impl Fn(&PageState) -> bool) -> PageState;
    async fn go_to(&self, item: &str) -> PageState;
}

impl ReviewPage for Browser {
    /// Presses keys one after the other (each down then up), as a person would.
    async fn press(&self, keys: &[&str]) {
        let mut actions = Vec::new();
        for k in keys {
            actions.push(json!({"type": "keyDown", "value": k}));
            actions.push(json!({"type": "keyUp", "value": k}));
        }
        self.key_actions(actions).await;
    }

    async fn key_actions(&self, actions: Vec<Value>) {
        self.cmd(
            reqwest::Method::POST,
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        )
        .await;
        self.cmd(reqwest::Method::DELETE, "/actions", None).await;
    }

    async fn type_text(&self, text: &str) {
        let keys: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.press(&refs).await;
    }

    async fn state(&self) -> PageState {
        let v = self.js(STATE_JS).await;
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("page state {v}: {e}"))
    }

    /// Waits until the page is idle (loaded, not saving) and `ok` holds.
    async fn wait(&self, what: &str, ok: impl Fn(&PageState) -> bool) -> PageState {
        let t0 = Instant::now();
        loop {
            let s = self.state().await;
            if s.idle() && ok(&s) {
                return s;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                panic!("timed out waiting for {what}; page state: {s:#?}");
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }

    /// Moves the selection to an entry with j/k (arrows for single steps down, to use
    /// both).
    async fn go_to(&self, item: &str) -> PageState {
        for _ in 0..40 {
            let s = self.wait("page idle", |_| true).await;
            let cur = s.current_index();
            let target = s
                .queue
                .iter()
                .position(|q| q.item == item)
                .unwrap_or_else(|| panic!("{item} not in the queue: {s:#?}"));
            if cur == Some(target) && s.item == item {
                return s;
            }
            let key = match cur {
                Some(c) if target + 1 == c => "k",
                Some(c) if target == c + 1 => "\u{E015}", // ArrowDown
                Some(c) if target < c => "k",
                _ => "j",
            };
            self.press(&[key]).await;
            let before = cur;
            self.wait("the selection to move", |s| s.current_index() != before)
                .await;
        }
        panic!("could not reach {item}");
    }
}

const STATE_JS: &str = r#"
const b = document.body.dataset;
const cur = document.querySelector('#queue > li.current');
return {
  ready: b.ready === '1',
  saving: b.saving === '1',
  loading: b.loading === '1',
  item: b.item || '',
  current: cur ? cur.dataset.item : null,
  queue: [...document.querySelectorAll('#queue > li')].map(li => ({item: li.dataset.item, model: li.dataset.model, kind: li.dataset.kind})),
  labels: [...document.querySelectorAll('#labels > li')].map(li => ({label: li.dataset.label, key: li.dataset.key || null, predicted: li.classList.contains('predicted'), selected: li.classList.contains('selected')})),
  new_label_open: getComputedStyle(document.getElementById('new-label')).display !== 'none',
  focused: document.activeElement ? document.activeElement.id : '',
  counters: ['c-today', 'c-waiting', 'c-synced', 'c-last'].map(id => document.getElementById(id).textContent),
  status: document.getElementById('status').textContent,
  kind: document.getElementById('current').dataset.kind || '',
};
"#;

#[derive(Debug, Deserialize)]
struct QueueRow {
    item: String,
    model: String,
    kind: String,
}

#[derive(Debug, Deserialize)]
struct LabelRow {
    label: String,
    key: Option<String>,
    predicted: bool,
    selected: bool,
}

#[derive(Debug, Deserialize)]
struct PageState {
    ready: bool,
    saving: bool,
    loading: bool,
    item: String,
    current: Option<String>,
    queue: Vec<QueueRow>,
    labels: Vec<LabelRow>,
    new_label_open: bool,
    focused: String,
    counters: Vec<String>,
    status: String,
    kind: String,
}

impl PageState {
    fn idle(&self) -> bool {
        self.ready && !self.saving && !self.loading
    }
    fn current_index(&self) -> Option<usize> {
        let c = self.current.as_deref()?;
        self.queue.iter().position(|q| q.item == c)
    }
    fn first_of_kind(&self, kind: &str) -> String {
        self.queue
            .iter()
            .find(|q| q.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} item in the queue: {self:#?}"))
            .item
            .clone()
    }
}

async fn wait_db<T>(what: &str, f: impl Fn() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The scenario

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_page_by_keyboard_in_a_real_browser() {
    // Check the browser first: a missing package must fail loudly, before anything else.
    let browser = Browser::start().await;
    let env = setup();
    let total = count(&env, "SELECT COUNT(*) FROM predictions");
    assert_eq!(total, 13, "5 tiles + 3 scene tiles + 5 reports");
    let (url, _server) = start_server(&env).await;
    browser.goto(&format!("{url}/")).await;

    // The queue: every prediction, least confident first; the first one is selected.
    let s = browser
        .wait("the queue and first item", |s| {
            !s.queue.is_empty() && s.current.is_some() && s.item == s.queue[0].item
        })
        .await;
    assert_eq!(s.queue.len() as i64, total, "{s:#?}");
    let cert = certainties(&env);
    let shown: Vec<f64> = s
        .queue
        .iter()
        .map(|q| cert[&(q.item.clone(), q.model.clone())])
        .collect();
    for w in shown.windows(2) {
        assert!(
            w[0] <= w[1] + 1e-5,
            "queue not least-confident first: {shown:?}"
        );
    }
    assert!(shown[0] < 0.1, "the grey tile is nearly a tie: {shown:?}");
    assert_eq!(s.counters, ["0", "0", "0", "never"]);

    // Arrow keys and j/k move the selection.
    browser.press(&["\u{E015}"]).await; // ArrowDown
    let s2 = browser
        .wait("ArrowDown", |x| x.current_index() == Some(1))
        .await;
    assert_eq!(s2.item, s.queue[1].item);
    browser.press(&["k"]).await;
    browser
        .wait("k", |x| {
            x.current_index() == Some(0) && x.item == s.queue[0].item
        })
        .await;

    // 1. Confirm an image tile with c.
    let confirm_item = s.first_of_kind("image");
    browser.go_to(&confirm_item).await;
    browser.press(&["c"]).await;
    let s = browser
        .wait("the confirmed tile to leave the queue", |x| {
            !x.queue.iter().any(|q| q.item == confirm_item)
        })
        .await;
    assert_eq!(s.queue.len() as i64, total - 1);

    // 2. Correct the next tile with a number key: a label the model did not pick.
    let correct_item = s.first_of_kind("image");
    let s = browser.go_to(&correct_item).await;
    let other = s
        .labels
        .iter()
        .find(|l| !l.predicted && l.key.is_some())
        .unwrap_or_else(|| panic!("a label to correct with: {s:#?}"));
    let (correct_key, correct_label) = (other.key.clone().unwrap(), other.label.clone());
    browser.press(&[&correct_key]).await;
    browser
        .wait("the corrected tile to leave the queue", |x| {
            !x.queue.iter().any(|q| q.item == correct_item)
        })
        .await;

    // 3. A label the model does not know: n, type it, Enter.
    let s = browser.wait("idle", |_| true).await;
    let new_item = s.first_of_kind("image");
    browser.go_to(&new_item).await;
    browser.press(&["n"]).await;
    let s = browser
        .wait("the new-label box", |x| x.new_label_open)
        .await;
    assert_eq!(s.focused, "new-label-input");
    browser.type_text("flooded").await;
    browser.press(&["\u{E007}"]).await; // Enter
    browser
        .wait("the newly labelled tile to leave the queue", |x| {
            !x.new_label_open && !x.queue.iter().any(|q| q.item == new_item)
        })
        .await;

    // 4. A report: toggle two labels with 1 and 2, Enter saves.
    let s = browser.wait("idle", |_| true).await;
    let report = s.first_of_kind("text");
    let s = browser.go_to(&report).await;
    assert_eq!(s.kind, "text");
    let mut expected: BTreeSet<String> = s
        .labels
        .iter()
        .filter(|l| l.selected)
        .map(|l| l.label.clone())
        .collect();
    assert_eq!(
        expected,
        predicted_labels(&env, &report).into_iter().collect(),
        "the prediction is ticked to start with"
    );
    for key in ["1", "2"] {
        let l = s
            .labels
            .iter()
            .find(|l| l.key.as_deref() == Some(key))
            .unwrap();
        if !expected.remove(&l.label) {
            expected.insert(l.label.clone());
        }
    }
    browser.press(&["1", "2"]).await;
    browser
        .wait("labels 1 and 2 toggled", |x| {
            let sel: BTreeSet<String> = x
                .labels
                .iter()
                .filter(|l| l.selected)
                .map(|l| l.label.clone())
                .collect();
            sel == expected
        })
        .await;
    browser.press(&["\u{E007}"]).await;
    browser
        .wait("the report to leave the queue", |x| {
            !x.queue.iter().any(|q| q.item == report)
        })
        .await;

    // 5. Undo the report's decision with u: it comes back, selected.
    let rows = wait_db("four decisions", || {
        let r = feedback_rows(&env);
        (r.len() == 4).then_some(r)
    })
    .await;
    browser.press(&["u"]).await;
    browser
        .wait("the report back in the queue, selected", |x| {
            x.item == report && x.queue.iter().any(|q| q.item == report)
        })
        .await;

    // Rows in SQLite.
    let rows_after = wait_db("the undo", || {
        let r = feedback_rows(&env);
        (r.iter().filter(|f| f.state == "undone").count() == 1).then_some(r)
    })
    .await;
    assert_eq!(rows_after.len(), 4, "{rows_after:#?}");
    let by_item = |item: &str| {
        rows_after
            .iter()
            .find(|f| f.item_id == item)
            .unwrap_or_else(|| panic!("no feedback for {item}: {rows_after:#?}"))
    };
    let f = by_item(&confirm_item);
    assert_eq!(f.action, "confirm");
    assert_eq!(f.labels, predicted_labels(&env, &confirm_item));
    assert_eq!(f.state, "active");
    assert!(f.in_outbox);
    let f = by_item(&correct_item);
    assert_eq!(f.action, "correct");
    assert_eq!(f.labels, [correct_label.as_str()]);
    assert_ne!(f.labels, predicted_labels(&env, &correct_item));
    assert!(f.new_labels.is_empty());
    assert!(f.in_outbox && f.state == "active");
    let f = by_item(&new_item);
    assert_eq!(f.action, "correct");
    assert_eq!(f.labels, ["flooded"]);
    assert_eq!(f.new_labels, ["flooded"]);
    assert!(f.in_outbox && f.state == "active");
    let f = by_item(&report);
    assert_eq!(f.action, "correct");
    assert_eq!(
        f.labels.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "{f:?}"
    );
    assert!(f.new_labels.is_empty());
    assert_eq!(f.state, "undone");
    assert!(!f.in_outbox, "an undone decision leaves the outbox");
    assert_eq!(
        rows[3].feedback_id, f.feedback_id,
        "the last one was undone"
    );
    for f in &rows_after {
        assert_eq!(f.annotator, ANNOTATOR);
        assert!(f.include_content, "--include-content: {f:?}");
    }
    assert_eq!(count(&env, "SELECT COUNT(*) FROM outbox"), 3);

    // Counters on the page.
    browser
        .wait("counters 3 / 3 / 0 / never", |x| {
            x.counters == ["3", "3", "0", "never"]
        })
        .await;

    // A tile from the scene: its overview with the box; screenshot.
    let s = browser.wait("idle", |_| true).await;
    let scene_tile = s
        .queue
        .iter()
        .map(|q| q.item.clone())
        .find(|i| {
            db(&env)
                .query_row(
                    "SELECT locator LIKE 'tile %' FROM items WHERE item_id = ?1",
                    [i],
                    |r| r.get::<_, bool>(0),
                )
                .unwrap()
        })
        .expect("a scene tile in the queue");
    browser.go_to(&scene_tile).await;
    let t0 = Instant::now();
    loop {
        let v = browser
            .js(
                "const i = document.querySelector('.scene img'); const b = document.querySelector('.scene .scene-box');
                 return i && i.complete && i.naturalWidth > 0 && b ? [i.naturalWidth, i.naturalHeight, b.style.left, b.style.width] : null;",
            )
            .await;
        if let Some(a) = v.as_array() {
            assert_eq!(a[0], 480, "overview of the 480x160 scene: {v}");
            assert!(a[3].as_str().unwrap().starts_with("33.3"), "box width: {v}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "scene overview not shown"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tile_pixelated = browser
        .js("return getComputedStyle(document.querySelector('.tile img')).width")
        .await;
    assert_eq!(tile_pixelated, "256px");
    let png = browser.screenshot().await;
    let shot = common::repo().join("target/review-screenshot.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    std::fs::write(&shot, &png).unwrap();
    let img = image::load_from_memory(&png).expect("screenshot is a PNG");
    assert!(
        img.width() >= 1000,
        "screenshot {}x{}",
        img.width(),
        img.height()
    );
    eprintln!("screenshot: {}", shot.display());

    // Enter confirms a single-label tile; Ctrl+Z takes it back.
    browser.press(&["\u{E007}"]).await;
    browser
        .wait("the scene tile confirmed", |x| {
            !x.queue.iter().any(|q| q.item == scene_tile) && x.counters[0] == "4"
        })
        .await;
    browser
        .key_actions(vec![
            json!({"type": "keyDown", "value": "\u{E009}"}),
            json!({"type": "keyDown", "value": "z"}),
            json!({"type": "keyUp", "value": "z"}),
            json!({"type": "keyUp", "value": "\u{E009}"}),
        ])
        .await;
    let s = browser
        .wait("Ctrl+Z to bring the tile back", |x| {
            x.item == scene_tile && x.counters == ["3", "3", "0", "never"]
        })
        .await;
    assert!(s.status.contains("Undone"), "{}", s.status);
    assert_eq!(
        count(&env, "SELECT COUNT(*) FROM feedback WHERE state = 'undone'"),
        2
    );
    assert_eq!(count(&env, "SELECT COUNT(*) FROM outbox"), 3);
}
