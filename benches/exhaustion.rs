//! Unauthenticated exhaustion of a real `outpost-server serve` process over loopback:
//! 1,000 half-open connections (half of them send half a request head, half send nothing)
//! plus 100 oversized unauthenticated requests (16 MiB declared and sent, no signature, 50 in
//! flight). Prints the server's memory (VmRSS and its peak VmHWM, from /proc/PID/status) and
//! the sockets it holds (from /proc/PID/fd) over time, until the header timeout has closed
//! the half-open connections.
//!
//! Run: `cargo bench --bench exhaustion` (under `cargo test` it only says how to run it).
//! Two configurations are measured: the shipped defaults (`[http]` in config/server.toml),
//! and the per-peer connection limit lifted (as behind a reverse proxy, or an attacker with
//! many addresses), where only the timeouts protect the server. `OUTPOST_BENCH_SERVER=PATH`
//! measures another `outpost-server` binary (an older build, for comparison); its config is
//! then not passed (an older server does not know `[http]`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HALF_OPEN: usize = 1000;
const OVERSIZED: usize = 100;
const IN_FLIGHT: usize = 50;
const BODY: usize = 16 << 20;

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|l| l.to_string_lossy().starts_with("socket:"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// One oversized unauthenticated request: the head, then the whole body as fast as the
/// server takes it, then its answer. Returns whether the server answered before the body
/// was all sent (it refused it unread).
fn oversized(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return true;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(60)));
    let head = format!("POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY}\r\n\r\n");
    if s.write_all(head.as_bytes()).is_err() {
        return true;
    }
    let chunk = vec![b'x'; 64 << 10];
    let mut sent = 0;
    while sent < BODY {
        if s.write_all(&chunk).is_err() {
            return true;
        }
        sent += chunk.len();
    }
    let mut buf = [0u8; 256];
    let _ = s.read(&mut buf);
    false
}

struct Outcome {
    base_rss: u64,
    peak_rss: u64,
    end_rss: u64,
    base_sockets: usize,
    peak_sockets: usize,
    end_sockets: usize,
    refused_unread: usize,
    closed_after: Option<f64>,
}

fn run(label: &str, server_bin: Option<&Path>, http: &str) -> Outcome {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let config = tmp.path().join("server.toml");
    std::fs::write(&config, http).unwrap();
    let port = common::free_port();
    let mut cmd = std::process::Command::new(
        server_bin
            .map(Path::to_path_buf)
            .unwrap_or_else(common::server_bin),
    );
    if server_bin.is_none() {
        cmd.arg("--config").arg(&config);
    }
    let mut child = cmd
        .args(["--data-dir", data.to_str().unwrap(), "serve", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("outpost-server starts");
    let pid = child.id();
    let up = (0..400).any(|_| {
        std::thread::sleep(Duration::from_millis(25));
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "the server did not start");
    std::thread::sleep(Duration::from_millis(500));
    let base_rss = status_kb(pid, "VmRSS:");
    let base_sockets = sockets(pid);
    println!("\n== {label}");
    println!(
        "  before: RSS {:.1} MiB, {base_sockets} sockets",
        mib(base_rss)
    );

    let started = Instant::now();
    let mut half_open = Vec::with_capacity(HALF_OPEN);
    for i in 0..HALF_OPEN {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            if i % 2 == 0 {
                let _ = s.write_all(b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\n");
            }
            half_open.push(s);
        }
    }
    let refused_unread = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (refused, next) = (refused_unread.clone(), next.clone());
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::SeqCst) < OVERSIZED {
                    if oversized(port) {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    let mut peak_sockets = 0;
    let mut closed_after = None;
    println!(
        "  {:>6} {:>10} {:>10} {:>8}",
        "t (s)", "RSS MiB", "peak MiB", "sockets"
    );
    let deadline = started + Duration::from_secs(40);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1000));
        let n = sockets(pid);
        peak_sockets = peak_sockets.max(n);
        println!(
            "  {:>6.1} {:>10.1} {:>10.1} {:>8}",
            started.elapsed().as_secs_f64(),
            mib(status_kb(pid, "VmRSS:")),
            mib(status_kb(pid, "VmHWM:")),
            n
        );
        let done = senders.iter().all(|t| t.is_finished());
        if done && n <= base_sockets + 2 {
            closed_after = Some(started.elapsed().as_secs_f64());
            break;
        }
    }
    for t in senders {
        let _ = t.join();
    }
    let out = Outcome {
        base_rss,
        peak_rss: status_kb(pid, "VmHWM:"),
        end_rss: status_kb(pid, "VmRSS:"),
        base_sockets,
        peak_sockets,
        end_sockets: sockets(pid),
        refused_unread: refused_unread.load(Ordering::SeqCst),
        closed_after,
    };
    drop(half_open);
    let _ = child.kill();
    let _ = child.wait();
    out
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("exhaustion benchmark: run it with `cargo bench --bench exhaustion`");
        return;
    }
    let other: Option<PathBuf> = std::env::var_os("OUTPOST_BENCH_SERVER").map(PathBuf::from);
    let runs: Vec<(&str, &str)> = if other.is_some() {
        vec![("the server at OUTPOST_BENCH_SERVER", "")]
    } else {
        vec![
            ("shipped defaults ([http] as in config/server.toml)", ""),
            (
                "per-peer limit lifted (max_connections_per_peer = 0, max_connections = 0)",
                "[http]\nmax_connections_per_peer = 0\nmax_connections = 0\n",
            ),
        ]
    };
    println!(
        "{HALF_OPEN} half-open connections + {OVERSIZED} unauthenticated POSTs of {} MiB ({IN_FLIGHT} in flight), loopback",
        BODY >> 20
    );
    for (label, http) in runs {
        let o = run(label, other.as_deref(), http);
        println!(
            "  summary: RSS {:.1} MiB before, {:.1} MiB peak, {:.1} MiB after; sockets {} before, {} peak, {} after; {} of {OVERSIZED} oversized refused before their body was sent; {}",
            mib(o.base_rss),
            mib(o.peak_rss),
            mib(o.end_rss),
            o.base_sockets,
            o.peak_sockets,
            o.end_sockets,
            o.refused_unread,
            match o.closed_after {
                Some(s) => format!("all connections closed by the server {s:.0} s after they opened"),
                None => "connections still held after 40 s".into(),
            }
        );
    }
}
