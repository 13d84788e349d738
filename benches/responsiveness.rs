//! `cargo bench --bench responsiveness`: does the review page stay responsive while the
//! agent analyses a large folder? Real processes: `outpost run` serves the page on loopback;
//! `outpost analyze` works through EuroSAT tiles and crisis reports into the same database;
//! a reviewer (this process, one keep-alive connection, like a browser tab) loops over what
//! the page asks for: the queue (50 entries), an item's detail, its content, the counters.
//!
//! Phases, each printed with p50 / p95 / p99 / max latency per endpoint and over all:
//! 1. **idle**: the page alone (the queue already holds a seed run of `SEED` tiles);
//! 2. **busy**: while `outpost analyze` runs on `TILES` tiles and `REPORTS` reports (the
//!    analysis rate is printed too, to show the page does not slow it down much).
//!
//! Goal (issue 19): p95 < 200 ms while busy. Options through the environment: `TILES`
//! (21600: all of EuroSAT), `REPORTS` (2000), `SEED` (500), `IDLE_SECS` (5), `THINK_MS`
//! (pause between requests, 20), `OUTPOST_ORT_LIB`, `OUTPOST_SHARED_DATA`. The load average
//! is printed before and after (the machine is shared: say what else ran).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

struct Agent {
    bin: PathBuf,
    data: PathBuf,
    models: PathBuf,
    ort: PathBuf,
    config: PathBuf,
}

impl Agent {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--models-dir")
            .arg(&self.models)
            .arg("--ort-lib")
            .arg(&self.ort)
            .args(args)
            .env_remove("OUTPOST_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    fn analyze(&self, inputs: &[PathBuf]) -> Child {
        let mut c = self.cmd(&["analyze", "--no-progress"]);
        c.args(inputs);
        c.spawn().expect("outpost analyze starts")
    }
}

/// Kills the child when dropped (the bench must not leave `outpost run` behind).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn finish(child: Child, what: &str) -> Duration {
    let t = Instant::now();
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Latencies of one phase, by endpoint.
#[derive(Default)]
struct Samples {
    by: std::collections::BTreeMap<&'static str, Vec<Duration>>,
    errors: usize,
}

impl Samples {
    fn print(&self, title: &str) {
        println!("\n== {title}");
        let all: Vec<Duration> = self.by.values().flatten().copied().collect();
        for (name, v) in &self.by {
            line(name, v);
        }
        line("all requests", &all);
        if self.errors > 0 {
            println!("  errors: {}", self.errors);
        }
    }
}

fn line(name: &str, v: &[Duration]) {
    let mut s = v.to_vec();
    s.sort();
    let p = |q: f64| {
        s.get(((s.len().max(1) - 1) as f64 * q).round() as usize)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    };
    println!(
        "  {name:<22} n {:>5}   p50 {:>7.1} ms   p95 {:>7.1} ms   p99 {:>7.1} ms   max {:>7.1} ms",
        s.len(),
        p(0.5),
        p(0.95),
        p(0.99),
        p(1.0)
    );
}

/// One reviewer's loop until `done()` says stop.
async fn reviewer(base: &str, think: Duration, mut done: impl FnMut() -> bool) -> Samples {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut s = Samples::default();
    let mut k = 0usize;
    while !done() {
        let t = Instant::now();
        let queue = client
            .get(format!("{base}/api/queue?limit=50"))
            .send()
            .await
            .and_then(|r| r.error_for_status());
        let ids: Vec<String> = match queue {
            Ok(r) => match r.json::<serde_json::Value>().await {
                Ok(v) => v["entries"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|e| e["item_id"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                Err(_) => {
                    s.errors += 1;
                    Vec::new()
                }
            },
            Err(_) => {
                s.errors += 1;
                Vec::new()
            }
        };
        s.by.entry("GET /api/queue").or_default().push(t.elapsed());
        tokio::time::sleep(think).await;
        if let Some(id) = ids.get(k % ids.len().max(1)) {
            for (name, path) in [
                ("GET /api/items/ID", format!("/api/items/{id}")),
                ("GET .../content", format!("/api/items/{id}/content")),
                ("GET /api/counters", "/api/counters".to_string()),
            ] {
                let t = Instant::now();
                let ok = match client.get(format!("{base}{path}")).send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                s.by.entry(name).or_default().push(t.elapsed());
                if !ok {
                    s.errors += 1;
                }
                tokio::time::sleep(think).await;
            }
        }
        k += 1;
    }
    s
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("responsiveness benchmark: run it with `cargo bench --bench responsiveness`");
        return;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = std::env::var_os("OUTPOST_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("../shared/data"));
    let (eurosat, messages) = (
        shared.join("eurosat"),
        shared.join("crisis_text/messages.csv"),
    );
    if !eurosat.is_dir() || !messages.is_file() {
        eprintln!(
            "SKIP: the responsiveness bench needs {} and {}",
            eurosat.display(),
            messages.display()
        );
        return;
    }
    let work = std::env::temp_dir().join(format!("outpost-bench-resp-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work folder");
    let agent = Agent {
        bin: PathBuf::from(env!("CARGO_BIN_EXE_outpost")),
        data: work.join("data"),
        models: repo.join("models"),
        ort: std::env::var_os("OUTPOST_ORT_LIB")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join(".ort/libonnxruntime.so.1.31.1")),
        config: work.join("agent.toml"),
    };
    std::fs::write(&agent.config, "").expect("config");
    let tiles = outpost::bench::sample_images(&eurosat, env_usize("TILES", 21_600));
    let seed_n = env_usize("SEED", 500).min(tiles.len());
    let reports_csv = work.join("reports.csv");
    let reports =
        outpost::bench::sample_reports(&messages, env_usize("REPORTS", 2000)).expect("messages");
    outpost::bench::write_reports_csv(&reports_csv, &reports).expect("csv");
    println!(
        "responsiveness bench: {} logical CPUs, load average at start {}",
        outpost::bench::machine_threads(),
        loadavg()
    );

    // A seed run, so the queue has items before the page is measured.
    finish(agent.analyze(&tiles[..seed_n]), "seed analyze");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let run = Guard(
        agent
            .cmd(&["run", "--listen", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::null())
            .spawn()
            .expect("outpost run starts"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    wait_ready(&rt, &base);
    let think = Duration::from_millis(env_usize("THINK_MS", 20) as u64);
    let idle_for = Duration::from_secs(env_usize("IDLE_SECS", 5) as u64);
    let t = Instant::now();
    let idle = rt.block_on(reviewer(&base, think, || t.elapsed() > idle_for));
    idle.print(&format!(
        "idle: the review page alone ({seed_n} items in the queue), load average {}",
        loadavg()
    ));

    let rest = &tiles[seed_n..];
    let mut inputs: Vec<PathBuf> = rest.to_vec();
    inputs.push(reports_csv.clone());
    let before = loadavg();
    let started = Instant::now();
    let mut child = Some(agent.analyze(&inputs));
    let mut exited: Option<Duration> = None;
    let busy = rt.block_on(reviewer(&base, think, || {
        if exited.is_none() {
            if let Some(c) = child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    exited = Some(started.elapsed());
                }
            }
        }
        exited.is_some()
    }));
    let secs = exited.unwrap_or_else(|| started.elapsed()).as_secs_f64();
    if let Some(c) = child.take() {
        finish(c, "outpost analyze");
    }
    busy.print(&format!(
        "busy: while `outpost analyze` stores {} tiles and {} reports ({:.1} s, {:.0} items/s), load average before {before}, after {}",
        rest.len(),
        reports.len(),
        secs,
        (rest.len() + reports.len()) as f64 / secs,
        loadavg()
    ));
    let p95 = {
        let mut all: Vec<Duration> = busy.by.values().flatten().copied().collect();
        all.sort();
        all.get(((all.len().max(1) - 1) as f64 * 0.95).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "\ngoal p95 < 200 ms while busy: {} (p95 {:.1} ms)",
        if p95 < Duration::from_millis(200) {
            "met"
        } else {
            "NOT met"
        },
        p95.as_secs_f64() * 1000.0
    );
    drop(run);
    let _ = std::fs::remove_dir_all(&work);
}

fn wait_ready(rt: &tokio::runtime::Runtime, base: &str) {
    let t = Instant::now();
    loop {
        let ok = rt.block_on(async {
            reqwest::get(format!("{base}/api/session"))
                .await
                .is_ok_and(|r| r.status().is_success())
        });
        if ok {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "outpost run did not answer on {base} within 120 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
