//! Load benchmark of the scaled-out server: simulated field agents (each a real agent
//! database with an outbox, the library's real signed sync client) syncing at once, with
//! backoff, against two `outpost-server serve` processes on one PostgreSQL database, over
//! loopback. Reports throughput, p50 and p99 latency of a sync, errors, and whether every
//! item arrived exactly once.
//!
//! Run: `cargo bench --bench load` (under `cargo test` it only says how to run it). Needs
//! PostgreSQL (`$OUTPOST_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`).
//! Bounded: `OUTPOST_LOAD_AGENTS` (1000), `OUTPOST_LOAD_ITEMS` per agent (20),
//! `OUTPOST_LOAD_ROUNDS` (3), `OUTPOST_LOAD_SECS` per round (120).

#[path = "../tests/common/mod.rs"]
mod common;

use outpost::server::store::{DeviceStore, PostgresServerStore};
use outpost::sync::LoopOptions;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// What one simulated agent saw.
struct AgentResult {
    /// Duration of each successful sync (all of its outbox).
    latencies: Vec<Duration>,
    /// Failed attempts (each followed by a backoff).
    errors: usize,
    /// Records the servers acknowledged as new for this agent.
    new: usize,
    /// The agent gave up at the deadline with records still pending.
    timed_out: bool,
}

async fn agent(dir: PathBuf, start_after: Duration, deadline: Instant) -> AgentResult {
    // The bench's backoff is shorter than the field default (5 s to 10 min) so a round stays
    // bounded; the shape (exponential, full jitter) is the agent's own.
    let opts = LoopOptions {
        min_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(5),
        ..LoopOptions::default()
    };
    tokio::time::sleep(start_after).await;
    let db = dir.join("agent.db");
    let mut out = AgentResult {
        latencies: Vec::new(),
        errors: 0,
        new: 0,
        timed_out: false,
    };
    let mut failures = 0;
    loop {
        if Instant::now() > deadline {
            out.timed_out = true;
            return out;
        }
        let t = Instant::now();
        match outpost::sync::sync_once(&db, &dir).await {
            Ok(r) if r.refused.is_empty() => {
                out.latencies.push(t.elapsed());
                out.new += r.acked - r.duplicates;
                return out;
            }
            Ok(r) => {
                eprintln!("refused: {:?}", r.refused.first());
                out.errors += 1;
                return out;
            }
            Err(e) => {
                if out.errors < 3 {
                    eprintln!("sync error (retrying with backoff): {e}");
                }
                out.errors += 1;
                failures += 1;
                tokio::time::sleep(outpost::sync::backoff(&opts, failures)).await;
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn scrape(url: &str, rt: &tokio::runtime::Runtime) -> String {
    rt.block_on(async { reqwest::get(format!("{url}/metrics")).await?.text().await })
        .unwrap_or_default()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// One round's numbers.
struct Round {
    items_per_sec: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
    exactly_once: bool,
}

fn round(n: usize, agents: usize, items: usize, secs: u64, work: &Path) -> Option<Round> {
    let schema = common::pg_schema()?;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir_in(work).unwrap();
    // A thousand agents on one loopback address: the per-peer connection limit (there for
    // the field, where a peer is an office) is lifted, as behind a reverse proxy.
    let config = tmp.path().join("server.toml");
    std::fs::write(
        &config,
        "[http]\nmax_connections_per_peer = 0\nmax_connections = 0\n",
    )
    .unwrap();
    let extra = [
        "--database-url",
        schema.url.as_str(),
        "--config",
        config.to_str().unwrap(),
    ];
    let s1 = common::ServerProcess::start_with(&tmp.path().join("s1"), common::free_port(), &extra);
    let s2 = common::ServerProcess::start_with(&tmp.path().join("s2"), common::free_port(), &extra);

    // Devices and their agents: registered straight in the store (the operator's
    // `devices add`), enrolled over HTTP, half through each server.
    let t = Instant::now();
    let admin = PostgresServerStore::open(&schema.url).unwrap();
    let mut dirs = Vec::new();
    let mut expected = 0;
    for i in 0..agents {
        let code = format!("LOAD-{n:04}-{i:04}-0000-0000");
        let hash = outpost::hash::sha256_hex(outpost::server::normalise_code(&code).as_bytes());
        admin
            .add_device(&format!("agent-{i}"), "load", &hash, "2999-01-01T00:00:00Z")
            .unwrap();
        let dir = tmp.path().join(format!("agent-{i}"));
        common::seed_feedback(
            &dir.join("agent.db"),
            items,
            &format!("round {n} agent {i}"),
        );
        expected += items;
        let url = if i % 2 == 0 { &s1.url } else { &s2.url };
        rt.block_on(outpost::sync::enroll(
            &dir.join("agent.db"),
            &dir,
            url,
            &code,
        ))
        .unwrap();
        dirs.push(dir);
    }
    eprintln!(
        "round {n}: {agents} agents with {items} items each set up in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // The network comes back: every agent syncs within the same second.
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let results: Vec<AgentResult> = rt.block_on(async {
        let tasks: Vec<_> = dirs
            .into_iter()
            .enumerate()
            .map(|(i, dir)| {
                let jitter = Duration::from_millis((i as u64 * 7919) % 1000);
                tokio::spawn(agent(dir, jitter, deadline))
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let wall = start.elapsed().as_secs_f64();

    let mut lat: Vec<Duration> = results.iter().flat_map(|r| r.latencies.clone()).collect();
    lat.sort();
    let errors: usize = results.iter().map(|r| r.errors).sum();
    let timed_out = results.iter().filter(|r| r.timed_out).count();
    let new: usize = results.iter().map(|r| r.new).sum();
    let (rows, distinct): (i64, i64) = {
        let row = schema
            .client()
            .query_one(
                "SELECT COUNT(*), COUNT(DISTINCT feedback_id) FROM feedback",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let exactly_once =
        rows as usize == expected && distinct == rows && new == expected && timed_out == 0;
    let (m1, m2) = (scrape(&s1.url, &rt), scrape(&s2.url, &rt));
    let b1 = metric(&m1, "outpost_sync_batches_total");
    let b2 = metric(&m2, "outpost_sync_batches_total");
    let r = Round {
        items_per_sec: expected as f64 / wall,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        errors,
        exactly_once,
    };
    println!(
        "round {n}: {expected} items from {agents} agents in {wall:.2} s = {:.0} items/s; sync p50 {:.0} ms, p99 {:.0} ms; {errors} failed attempts, {timed_out} agents out of time; stored {rows} rows ({distinct} distinct), {new} acknowledged as new: exactly once {}; batches per server {b1:.0} / {b2:.0}",
        r.items_per_sec,
        r.p50.as_secs_f64() * 1000.0,
        r.p99.as_secs_f64() * 1000.0,
        if exactly_once { "yes" } else { "NO" }
    );
    drop((s1, s2));
    Some(r)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("load benchmark: run it with `cargo bench --bench load` (needs PostgreSQL)");
        return;
    }
    let agents = env_usize("OUTPOST_LOAD_AGENTS", 1000);
    let items = env_usize("OUTPOST_LOAD_ITEMS", 20);
    let rounds = env_usize("OUTPOST_LOAD_ROUNDS", 3);
    let secs = env_usize("OUTPOST_LOAD_SECS", 120) as u64;
    // Agent databases on tmpfs when there is one: the bench measures the server, not the
    // fsyncs of a thousand simulated laptops sharing one disk.
    let shm = Path::new("/dev/shm");
    let work = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let mut done: Vec<Round> = Vec::new();
    for n in 0..rounds {
        match round(n, agents, items, secs, &work) {
            Some(r) => done.push(r),
            None => return,
        }
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let all_once = done.iter().all(|r| r.exactly_once);
    println!(
        "median of {} rounds: {:.0} items/s, sync p50 {:.0} ms, p99 {:.0} ms, {} failed attempts in total, every item exactly once: {}",
        done.len(),
        med(done.iter().map(|r| r.items_per_sec).collect()),
        med(done.iter().map(|r| r.p50.as_secs_f64() * 1000.0).collect()),
        med(done.iter().map(|r| r.p99.as_secs_f64() * 1000.0).collect()),
        done.iter().map(|r| r.errors).sum::<usize>(),
        if all_once { "yes" } else { "NO" }
    );
    if !all_once {
        std::process::exit(1);
    }
}
