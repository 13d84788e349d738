//! Drift monitoring through the real CLI, on real data: the default land-cover model sees
//! EuroSAT tiles (class by class: a changing label mix is not drift) and stays "ok", then
//! Hurricane Harvey tiles and is flagged "drifted" within one window of 50; the same for
//! reports (disaster messages, then text that is clearly not a crisis report). `outpost
//! status` names the state, since when and the likely cause; unfamiliar items go to the
//! front of the review queue. Report windows are broken down by language, on the agent and
//! in the server's drift view.

mod common;

use common::agent;
use std::path::Path;

fn link_model(root: &Path, name: &str) {
    std::fs::create_dir_all(root.join("models")).unwrap();
    std::os::unix::fs::symlink(
        common::repo().join("models").join(name),
        root.join("models").join(name),
    )
    .unwrap();
}

fn status(root: &Path) -> serde_json::Value {
    let (c, out, err) = agent(root, &["status", "--json"]);
    assert_eq!(c, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

fn model_drift<'a>(s: &'a serde_json::Value, model: &str) -> &'a serde_json::Value {
    s["drift"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["model_name"] == model)
        .unwrap_or_else(|| panic!("no drift for {model}: {s}"))
}

#[test]
fn landcover_flags_flood_tiles_but_not_a_change_of_class() {
    let Some(shared) = common::shared_data() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    link_model(root, "landcover");
    // 300 EuroSAT tiles, 30 per class, in class order.
    let euro = root.join("eurosat");
    std::fs::create_dir_all(&euro).unwrap();
    let mut classes: Vec<_> = std::fs::read_dir(shared.join("eurosat"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    for (ci, class) in classes.iter().enumerate() {
        let mut files: Vec<_> = std::fs::read_dir(class)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for (i, f) in files.iter().rev().take(30).enumerate() {
            std::fs::copy(
                f,
                euro.join(format!(
                    "{ci:02}-{i:02}.{}",
                    f.extension().unwrap().to_str().unwrap()
                )),
            )
            .unwrap();
        }
    }
    let (c, out, err) = agent(root, &["analyze", euro.to_str().unwrap(), "--no-progress"]);
    assert_eq!(c, 0, "{out}{err}");
    let s = status(root);
    let d = model_drift(&s, "landcover");
    assert_eq!(d["windows"], 6, "{d}");
    assert_eq!(
        d["state"], "ok",
        "EuroSAT is what the model was trained on: {d}"
    );
    assert!(
        d["last_alert"].is_null(),
        "no false alarm in 6 windows: {d}"
    );

    // Flood tiles from another sensor and another continent.
    let harvey = root.join("harvey-flood");
    std::fs::create_dir_all(&harvey).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(shared.join("damage/damage"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files.iter().step_by(50).take(50) {
        std::fs::copy(f, harvey.join(f.file_name().unwrap())).unwrap();
    }
    let (c, out, err) = agent(
        root,
        &["analyze", harvey.to_str().unwrap(), "--no-progress"],
    );
    assert_eq!(c, 0, "{out}{err}");
    assert!(
        err.contains("drift landcover: DRIFTED"),
        "analyze warns: {err}"
    );
    let s = status(root);
    let d = model_drift(&s, "landcover");
    assert_eq!(
        d["state"], "drifted",
        "flagged within one window of 50: {d}"
    );
    let folders = d["last_alert"]["novel_folders"].to_string();
    assert!(
        folders.contains("harvey-flood"),
        "the cause names the folder: {folders}"
    );
    let (_, text, _) = agent(root, &["status"]);
    assert!(
        text.contains("DRIFTED since") && text.contains("likely cause"),
        "{text}"
    );

    // Unfamiliar items lead the review queue.
    let c = rusqlite::Connection::open(root.join("data/agent.db")).unwrap();
    let flagged: i64 = c
        .query_row("SELECT COUNT(*) FROM predictions p JOIN items i USING (item_id) WHERE p.drift_priority = 1 AND i.source LIKE '%harvey-flood%'", [], |r| r.get(0))
        .unwrap();
    assert!(flagged >= 25, "{flagged}");
    let store = outpost::store::Store::open(&root.join("data/agent.db")).unwrap();
    let page = store
        .review_queue(&Default::default(), &|_, _| None, 0, 5)
        .unwrap();
    assert!(page
        .entries
        .iter()
        .all(|e| e.unfamiliar && e.source.contains("harvey-flood")));

    // The summaries travel with sync; the server shows them per device and per group.
    let data = root.join("server");
    let server = common::ServerProcess::start(&data, common::free_port());
    let code = common::add_device(&data, "field-1");
    assert_eq!(agent(root, &["enroll", &server.url, &code]).0, 0);
    let (c, out, err) = agent(root, &["sync"]);
    assert_eq!(c, 0, "{out}{err}");
    let (c, out, err) = common::server_cmd(&data, &["drift"]);
    assert_eq!(c, 0, "{err}");
    assert!(
        out.contains("field-1") && out.contains("DRIFTED") && out.contains("harvey-flood"),
        "{out}"
    );
    assert!(
        out.contains("group north / landcover: 0 ok, 0 watch, 1 drifted"),
        "{out}"
    );
    // Sending again stores nothing twice.
    assert_eq!(agent(root, &["sync"]).0, 0);
    let n: i64 = rusqlite::Connection::open(data.join("server.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM drift_windows", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 7);
}

#[test]
fn crisis_reports_flag_text_that_is_not_a_crisis_report() {
    let Some(shared) = common::shared_data() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    link_model(root, "crisis-reports");
    let mut rd = csv::Reader::from_path(shared.join("crisis_text/messages.csv")).unwrap();
    std::fs::create_dir_all(root.join("reports")).unwrap();
    let path = root.join("reports/messages.csv");
    let mut w = csv::Writer::from_path(&path).unwrap();
    w.write_record(["message"]).unwrap();
    for rec in rd.records().flatten().step_by(40).take(200) {
        w.write_record([&rec[1]]).unwrap();
    }
    w.flush().unwrap();
    let (c, out, err) = agent(root, &["analyze", path.to_str().unwrap(), "--no-progress"]);
    assert_eq!(c, 0, "{out}{err}");
    let s = status(root);
    let d = model_drift(&s, "crisis-reports");
    assert_eq!(d["windows"], 4, "{d}");
    assert_eq!(d["state"], "ok", "{d}");
    // Each window is broken down by language: these are English messages, mostly read as such.
    let langs = d["latest"]["languages"].as_array().unwrap();
    assert_eq!(
        langs
            .iter()
            .map(|l| l["items"].as_u64().unwrap())
            .sum::<u64>(),
        50,
        "{d}"
    );
    assert_eq!(langs[0]["language"], "eng", "most items first: {d}");
    assert!(langs[0]["items"].as_u64().unwrap() >= 35, "{d}");

    // Sentences about software, not disasters: this crate's own doc comments.
    std::fs::create_dir_all(root.join("manuals")).unwrap();
    let path = root.join("manuals/notes.csv");
    let mut w = csv::Writer::from_path(&path).unwrap();
    w.write_record(["message"]).unwrap();
    let mut n = 0;
    for f in [
        "src/drift.rs",
        "src/server/training/mod.rs",
        "src/trust/mod.rs",
        "src/model/bundle.rs",
        "src/analyze.rs",
    ] {
        for l in std::fs::read_to_string(common::repo().join(f))
            .unwrap()
            .lines()
        {
            let l = l.trim_start();
            if let Some(t) = l.strip_prefix("/// ").or_else(|| l.strip_prefix("//! ")) {
                if t.len() > 40 && n < 50 {
                    w.write_record([t]).unwrap();
                    n += 1;
                }
            }
        }
    }
    assert_eq!(n, 50);
    w.flush().unwrap();
    let (c, out, err) = agent(root, &["analyze", path.to_str().unwrap(), "--no-progress"]);
    assert_eq!(c, 0, "{out}{err}");
    let s = status(root);
    let d = model_drift(&s, "crisis-reports");
    assert_ne!(d["state"], "ok", "flagged within one window of 50: {d}");
    let (_, text, _) = agent(root, &["status"]);
    assert!(text.contains("latest window by language: eng"), "{text}");

    // The breakdown travels with sync and the server's drift view shows it.
    let data = root.join("server");
    let server = common::ServerProcess::start(&data, common::free_port());
    let code = common::add_device(&data, "field-2");
    assert_eq!(agent(root, &["enroll", &server.url, &code]).0, 0);
    let (c, out, err) = agent(root, &["sync"]);
    assert_eq!(c, 0, "{out}{err}");
    let (c, out, err) = common::server_cmd(&data, &["drift"]);
    assert_eq!(c, 0, "{err}");
    assert!(
        out.contains("field-2") && out.contains("by language: eng"),
        "{out}"
    );
}
