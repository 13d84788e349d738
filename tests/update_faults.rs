//! Faults during over-the-air updates, with the real binaries: a download cut off many
//! times resumes by range and moves each byte about once; kill -9 during a download and
//! during the switch leave a verified model serving and the update completes on the next
//! try; the long-running agent (`outpost run`) hot-swaps while classification requests are
//! in flight, none failing.

mod common;
#[path = "common/cut_proxy.rs"]
mod cut_proxy;
#[path = "common/update.rs"]
mod upd;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use upd::Env;

fn point_agent_at(env: &Env, url: &str) {
    env.agent_db()
        .execute(
            "UPDATE agent_state SET value = ?1 WHERE key = 'server_url'",
            [url],
        )
        .unwrap();
}

fn wait_for(path: &std::path::Path, secs: u64) {
    let t = Instant::now();
    while !path.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn partials(env: &Env) -> Vec<(String, u64)> {
    std::fs::read_dir(env.agent.join("data/models/.partial"))
        .map(|d| {
            d.map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().to_string(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_download_cut_off_many_times_resumes_and_completes() {
    let env = Env::new();
    // Two large files: one completed before the other is cut must not be fetched again.
    let dir = env.tmp.path().join("build/colours-1.1.0");
    upd::bundle(&dir, "1.1.0", 3.0, 3.0, 600_000);
    let second: Vec<u8> = (0..500_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("extra2.bin"), second).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    m["files"] = serde_json::to_value(outpost::model::bundle::hash_folder(&dir).unwrap()).unwrap();
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    env.publish_dir(&dir, &[]);
    let extra_len = env.server_file("extra.bin").1 + env.server_file("extra2.bin").1;
    let cut = Arc::new(cut_proxy::Cut::default());
    cut.cut_after.store(100_000, Ordering::Relaxed);
    let port = cut_proxy::start(env.server.port, cut.clone());
    point_agent_at(&env, &format!("http://127.0.0.1:{port}"));
    let mut attempts = 0;
    let mut received = 0u64;
    loop {
        attempts += 1;
        assert!(attempts <= 30, "the download never completed");
        let (c, r, err) = env.update_json(&[]);
        received += r["bytes_downloaded"].as_u64().unwrap_or(0);
        if c == 0 {
            break;
        }
        assert_eq!(r["interrupted"], true, "{r}{err}");
        if attempts == 1 {
            // Between tries the agent serves the model it has.
            env.assert_serving("1.0.0");
        }
    }
    env.assert_serving("1.1.0");
    let on_wire = cut.file_bytes.load(Ordering::Relaxed);
    let files: u64 = [
        "extra.bin",
        "extra2.bin",
        "head.onnx",
        "golden.json",
        "manifest.json",
    ]
    .iter()
    .map(|f| env.server_file(f).1)
    .sum();
    eprintln!(
        "{attempts} tries, {} cuts: {on_wire} bytes on the wire, {received} received, for {files} bytes of files",
        cut.cuts.load(Ordering::Relaxed)
    );
    assert!(attempts >= 10, "cut about {} times", extra_len / 100_000);
    assert!(cut.cuts.load(Ordering::Relaxed) >= 9);
    assert!(
        on_wire as f64 <= 1.05 * files as f64,
        "{on_wire} bytes moved for {files}"
    );
    assert!(partials(&env).is_empty(), "{:?}", partials(&env));
}

#[test]
fn kill_9_during_a_download_keeps_the_model_and_resumes() {
    let env = Env::new();
    env.publish("1.1.0", 3.0, 3.0, 4_000_000);
    let (_, extra_len) = env.server_file("extra.bin");
    let marker = env.agent.join("data/paused-at-download");
    let mut child = env
        .cmd(&["update"])
        .env("OUTPOST_UPDATE_PAUSE_AT", "download")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&marker, 60);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let p = partials(&env);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].1 >= extra_len / 2 && p[0].1 < extra_len,
        "half the file kept: {p:?}"
    );
    env.assert_serving("1.0.0");
    std::fs::remove_file(&marker).unwrap();
    let (c, r, err) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}{err}");
    let got = r["bytes_downloaded"].as_u64().unwrap();
    assert!(
        got < extra_len - p[0].1 + 100_000,
        "resumed, not restarted: {got} bytes after {} kept",
        p[0].1
    );
    env.assert_serving("1.1.0");
}

#[test]
fn kill_9_during_the_switch_leaves_a_verified_model_and_completes_later() {
    let env = Env::new();
    env.publish("1.1.0", 3.0, 3.0, 0);
    let marker = env.agent.join("data/paused-at-swap");
    let mut child = env
        .cmd(&["update"])
        .env("OUTPOST_UPDATE_PAUSE_AT", "swap")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&marker, 60);
    child.kill().unwrap();
    child.wait().unwrap();
    // Staged and committed, not yet switched: the old pointer stands, the new version is on disk.
    env.assert_serving("1.0.0");
    assert!(env
        .agent
        .join("data/models/colours/1.1.0/manifest.json")
        .is_file());
    std::fs::remove_file(&marker).unwrap();
    let (c, r, err) = env.update_json(&[]);
    assert_eq!(c, 0, "{r}{err}");
    assert_eq!(r["bytes_downloaded"], 0, "nothing fetched twice: {r}");
    env.assert_serving("1.1.0");
    assert!(
        !env.agent.join("data/models/.staging").exists()
            || std::fs::read_dir(env.agent.join("data/models/.staging"))
                .unwrap()
                .count()
                == 0
    );
}

fn red_png() -> String {
    use base64::Engine;
    let mut buf = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(16, 16, image::Rgb([255, 0, 0]))
        .write_to(&mut buf, image::ImageFormat::Png)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(buf.into_inner())
}

/// The red score of a `colours` bundle whose head scale is `scale`.
fn red_score(scale: f32) -> f32 {
    let a = scale.exp();
    let b = (-scale).exp();
    a / (a + 2.0 * b)
}

#[test]
fn the_running_agent_hot_swaps_with_requests_in_flight() {
    let env = Env::new();
    let port = common::free_port();
    let mut run = env
        .cmd(&["run", "--listen", &format!("127.0.0.1:{port}")])
        .env("OUTPOST__UPDATE__CHECK_INTERVAL_SECS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let serving = |http: reqwest::Client, base: String| async move {
        let r = http.get(format!("{base}/api/serving")).send().await.ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        v["models"]["colours"].as_str().map(str::to_string)
    };
    rt.block_on(async {
        let t = Instant::now();
        while serving(http.clone(), base.clone()).await.as_deref() != Some("1.0.0") {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "outpost run did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let image = red_png();
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (http, base, stop, image) =
                (http.clone(), base.clone(), stop.clone(), image.clone());
            rt.spawn(async move {
                let mut seen: Vec<(u16, String, f32)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = http
                        .post(format!("{base}/api/classify"))
                        .json(&serde_json::json!({ "model": "colours", "image_base64": image }))
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    let v: serde_json::Value = r.json().await.unwrap();
                    seen.push((
                        status,
                        v["version"].as_str().unwrap_or("").to_string(),
                        v["scores"][0].as_f64().unwrap_or(-1.0) as f32,
                    ));
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let published = Instant::now();
    env.publish("1.1.0", 3.0, 3.0, 0);
    rt.block_on(async {
        while serving(http.clone(), base.clone()).await.as_deref() != Some("1.1.0") {
            assert!(
                published.elapsed() < Duration::from_secs(60),
                "the update never reached the running agent"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    eprintln!(
        "publish -> serving the new model: {:.2} s",
        published.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let seen = rt.block_on(w).unwrap();
        total += seen.len();
        let mut on_new = false;
        for (status, version, red) in &seen {
            assert_eq!(*status, 200, "no request fails during the swap: {seen:?}");
            let scale = match version.as_str() {
                "1.0.0" => {
                    assert!(!on_new, "never back to the old model: {seen:?}");
                    10.0
                }
                "1.1.0" => {
                    on_new = true;
                    3.0
                }
                v => panic!("unexpected version {v}"),
            };
            assert!(
                (red - red_score(scale)).abs() < 1e-4,
                "each answer comes from one model: {version} {red}"
            );
        }
        assert!(on_new, "requests reached the new model");
    }
    assert!(total > 10, "{total} requests");
    let _ = run.kill();
    let _ = run.wait();
}
