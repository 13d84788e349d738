//! The whole loop (issue 9), smaller than the README's demonstration but with every real
//! part: a server with its embedded defaults; an agent enrolls; the server goes away; the
//! agent analyses real Hurricane Harvey tiles offline and a reviewer labels some of them with
//! labels the default model does not know (damage / no_damage); the server returns; the
//! agent syncs; the server retrains, evaluates, signs and publishes; the agent verifies,
//! swaps and re-analyses. Accuracy before and after is measured on tiles that were not used
//! for feedback, and every step is timed.
//!
//! CI runs it with 30 feedback and 30 evaluation tiles per class. The README's
//! demonstration runs the same story bigger:
//! `OUTPOST_LOOP_TILES=150 cargo test --release --test loop_e2e -- --nocapture`.

mod common;

use common::{add_device, server_cmd, ServerProcess};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn cell(p: &Path) -> String {
    // `<lon>_<lat>.jpeg`: 0.01-degree cells keep neighbours (and damage/no_damage pairs) together.
    let s = p.file_stem().unwrap().to_str().unwrap();
    let (lon, lat) = s.split_once('_').unwrap_or((s, "0"));
    let f = |v: &str| (v.parse::<f64>().unwrap_or(0.0) * 100.0).floor() as i64;
    format!("{}:{}", f(lon), f(lat))
}

fn accuracy(db: &Path, version: &str) -> (f64, usize) {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c
        .prepare(
            "SELECT i.source, p.top_label FROM predictions p JOIN items i USING (item_id)
             WHERE p.model_name = 'landcover' AND p.model_version = ?1 AND i.source LIKE '%/eval/%'",
        )
        .unwrap();
    let rows: Vec<(String, String)> = st
        .query_map([version], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let right = rows
        .iter()
        .filter(|(src, label)| {
            let name = Path::new(src).file_name().unwrap().to_str().unwrap();
            name.starts_with(&format!("{label}-"))
        })
        .count();
    (right as f64 / rows.len().max(1) as f64, rows.len())
}

#[test]
fn offline_analysis_feedback_retrain_publish_update_and_reanalyse() {
    let Some(shared) = common::shared_data() else {
        return;
    };
    if !shared.join("damage/damage").is_dir() {
        eprintln!("SKIP: no damage tiles");
        return;
    }
    let per_class: usize = std::env::var("OUTPOST_LOOP_TILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .clamp(5, 300);
    let mut steps: Vec<(&str, f64)> = Vec::new();
    let mut t = Instant::now();
    let mut step = |name: &'static str, t: &mut Instant| {
        steps.push((name, t.elapsed().as_secs_f64()));
        *t = Instant::now();
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("server");
    let cfg = root.join("server.toml");
    std::fs::write(
        &cfg,
        "[training]\nauto_train_after = 0\nchannel = \"stable\"\nepochs = 20\n",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let (code, out, err) = server_cmd(
        &data,
        &[
            "keys",
            "init",
            "--root-keys-dir",
            root.join("keys").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let landcover = common::repo().join("models/landcover");
    let (code, out, err) = server_cmd(&data, &["models", "publish", landcover.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let port = common::free_port();
    let server = ServerProcess::start_with(&data, port, &["--config", c]);

    // The agent ships landcover 1.0.0 and pins the root it was handed.
    let a = root.join("agent");
    std::fs::create_dir_all(a.join("models")).unwrap();
    std::os::unix::fs::symlink(&landcover, a.join("models/landcover")).unwrap();
    std::fs::copy(data.join("repo/metadata/1.root.json"), a.join("root.json")).unwrap();
    let pin = [("OUTPOST__UPDATE__ROOT", a.join("root.json"))];
    let run = |args: &[&str]| {
        let o = common::agent_cmd(&a, args)
            .envs(pin.iter().map(|(k, v)| (*k, v.as_os_str())))
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let code_ = add_device(&data, "laptop-1");
    let (code, out, err) = run(&["enroll", &server.url, &code_]);
    assert_eq!(code, 0, "{out}{err}");
    step("server up, keys, publish 1.0.0, enroll", &mut t);

    // The server goes away.
    server.kill();

    // Offline: feedback tiles, and evaluation tiles from other places.
    let (fb, ev) = (a.join("tiles/feedback"), a.join("tiles/eval"));
    std::fs::create_dir_all(&fb).unwrap();
    std::fs::create_dir_all(&ev).unwrap();
    let mut labels = String::from("source,label\n");
    for class in ["damage", "no_damage"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(shared.join("damage").join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let (mut n_fb, mut n_ev) = (0, 0);
        for f in files.iter().step_by(if per_class > 100 { 2 } else { 7 }) {
            let to_eval =
                outpost::hash::sha256_hex(cell(f).as_bytes()).starts_with(['0', '1', '2', '3']);
            if to_eval && n_ev < per_class {
                std::fs::copy(f, ev.join(format!("{class}-{n_ev}.jpeg"))).unwrap();
                n_ev += 1;
            } else if !to_eval && n_fb < per_class {
                let name = format!("{class}-{n_fb}.jpeg");
                std::fs::copy(f, fb.join(&name)).unwrap();
                labels.push_str(&format!("{name},{class}\n"));
                n_fb += 1;
            }
        }
        assert_eq!((n_fb, n_ev), (per_class, per_class));
    }
    let (code, out, err) = run(&[
        "analyze",
        a.join("tiles").to_str().unwrap(),
        "--no-progress",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    step("offline: analyse the tiles", &mut t);
    std::fs::write(a.join("labels.csv"), labels).unwrap();
    let (code, out, err) = run(&[
        "feedback",
        "import",
        "--allow-new-labels",
        a.join("labels.csv").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run(&["sync"]);
    assert_ne!(code, 0, "the server is away: {err}");
    assert_eq!(
        common::pending(&a),
        2 * per_class as i64,
        "nothing lost while offline"
    );
    step("offline: labels given, sync refused", &mut t);

    // The server returns; the agent syncs; the server retrains and publishes.
    let server = ServerProcess::start_with(&data, port, &["--config", c]);
    let (code, out, err) = run(&["sync"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(common::pending(&a), 0);
    step("server back, sync", &mut t);
    let (code, out, err) = server_cmd(&data, &["--config", c, "train", "landcover"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("published"), "{out}");
    step("retrain, evaluate, sign, publish 1.1.0", &mut t);

    // The agent verifies and swaps, then analyses again.
    let (code, out, err) = run(&["update"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&["models", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1.1.0"), "{out}");
    step("agent: verify, stage, golden check, swap", &mut t);
    let (code, out, err) = run(&["analyze", ev.to_str().unwrap(), "--no-progress"]);
    assert_eq!(code, 0, "{out}{err}");
    step("agent: re-analyse the evaluation tiles", &mut t);

    let db = a.join("data/agent.db");
    let (before, n0) = accuracy(&db, "1.0.0");
    let (after, n1) = accuracy(&db, "1.1.0");
    eprintln!("accuracy on {n1} tiles not used for feedback: before {before:.3} (1.0.0 does not know damage/no_damage), after {after:.3} (1.1.0)");
    for (name, s) in &steps {
        eprintln!("  {s:>6.1} s  {name}");
    }
    assert_eq!((n0, n1), (2 * per_class, 2 * per_class));
    assert_eq!(before, 0.0);
    assert!(after >= 0.65, "after {after} (chance: 0.5; the split of labels into train and held-out varies with the random feedback ids)");
    drop(server);
}
