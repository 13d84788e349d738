//! Updates bounded in memory and time, with the real binaries and a hostile network on
//! loopback (`tests/common/evil.rs`): a 300 MB answer is refused unread with the agent's
//! peak memory measured; a file dripped at a byte a second, or never answered, ends the try
//! within the configured stall period, keeps the partial file and resumes from it; a file
//! the server keeps ending short of its signed length becomes a refusal with the reason.

mod common;
#[path = "common/evil.rs"]
mod evil;
#[path = "common/update.rs"]
mod upd;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use upd::{strings, Env};

/// The hostile proxy in front of `env`'s server, the agent pointed at it; and its URL.
fn proxy(env: &Env) -> (Arc<evil::Evil>, String) {
    let e = Arc::new(evil::Evil::default());
    let url = format!(
        "http://127.0.0.1:{}",
        evil::start(env.server.port, e.clone())
    );
    env.point_at(&url);
    (e, url)
}

/// Runs `cmd` under `/usr/bin/time -v`: (exit code, stdout, stderr, peak RSS in KiB).
fn measured(cmd: std::process::Command) -> (i32, String, String, u64) {
    let mut t = std::process::Command::new("/usr/bin/time");
    t.arg("-v").arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    let o = t.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let rss = err
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {err}"));
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
        err,
        rss,
    )
}

/// Peak RSS allowed for an agent command facing a 300 MB answer (it reads at most 1 MiB
/// of it; the agent itself with ONNX Runtime loaded stays well under this).
const RSS_BOUND_KIB: u64 = 120 << 10;

#[test]
fn a_300_mb_answer_is_refused_unread_and_the_agent_stays_small() {
    let env = Env::new();
    let (e, url) = proxy(&env);
    // The answer to the device report is 300 MB (no length: it ends with the connection).
    e.huge.store(1, Ordering::Relaxed);
    let (c, out, err, rss) = measured(env.cmd(&["update", "--json"]));
    eprintln!("device report answer of 300 MB: exit {c}, peak RSS {rss} KiB");
    assert!(
        err.contains("answer to /v1/device/models is larger than 1048576 bytes"),
        "{out}{err}"
    );
    assert_eq!(
        c, 0,
        "the update check goes on with the verified group: {out}{err}"
    );
    assert!(rss < RSS_BOUND_KIB, "peak RSS {rss} KiB");
    // Every other answer is a 300 MB error body.
    e.huge.store(2, Ordering::Relaxed);
    let (c, out, err, rss) = measured(env.cmd(&["update", "--json"]));
    eprintln!("error bodies of 300 MB: exit {c}, peak RSS {rss} KiB");
    assert_eq!(c, 1, "{out}{err}");
    assert!(
        out.contains("error body is larger than 65536 bytes: refused without reading it"),
        "{out}"
    );
    assert!(rss < RSS_BOUND_KIB, "peak RSS {rss} KiB");
    // Enrollment answered with 300 MB.
    e.huge.store(3, Ordering::Relaxed);
    let code = common::add_device(&env.server_data, "laptop-2");
    let second = env.tmp.path().join("second");
    let (c, out, err, rss) = measured(common::agent_cmd(&second, &["enroll", &url, &code]));
    eprintln!("enrollment answer of 300 MB: exit {c}, peak RSS {rss} KiB");
    assert_ne!(c, 0);
    assert!(
        err.contains("enrollment answer is larger than 1048576 bytes"),
        "{out}{err}"
    );
    assert!(rss < RSS_BOUND_KIB, "peak RSS {rss} KiB");
    let written = e.huge_written.load(Ordering::Relaxed);
    eprintln!("bytes the proxy got rid of (3 to 5 answers, mostly into socket buffers): {written}");
    assert!(
        written < 3 * evil::HUGE / 4,
        "the agent stopped reading: {written}"
    );
}

/// Spawns `outpost update --json` with `vars`; waits at most `secs` for it.
fn update_within(
    env: &Env,
    vars: &[(&str, &str)],
    secs: u64,
) -> (Duration, i32, serde_json::Value) {
    let mut cmd = env.cmd(&["update", "--json"]);
    cmd.envs(vars.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
            let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
            return (started.elapsed(), status.code().unwrap_or(-1), v);
        }
        if started.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the update was still running after {secs} s (it holds the update lock)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn partial_bytes(env: &Env) -> u64 {
    std::fs::read_dir(env.agent.join("data/models/.partial"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
                .map(|e| e.metadata().unwrap().len())
                .sum()
        })
        .unwrap_or(0)
}

/// Small bounds so the test is quick: 2 s stall periods, at least 1,000 bytes per second.
const QUICK: [(&str, &str); 2] = [
    ("OUTPOST__UPDATE__DOWNLOAD_STALL_SECS", "2"),
    ("OUTPOST__UPDATE__DOWNLOAD_MIN_BYTES_PER_SEC", "1000"),
];

#[test]
fn a_dripped_or_held_file_ends_the_try_resumably_and_the_old_model_serves() {
    let env = Env::new();
    env.publish("1.1.0", 3.0, 3.0, 50_000);
    let (e, _) = proxy(&env);
    // One byte a second.
    e.drip_ms.store(1000, Ordering::Relaxed);
    let (took, c, r) = update_within(&env, &QUICK, 30);
    eprintln!("dripped: the try ended after {took:?}: {r}");
    assert_eq!(c, 1, "{r}");
    assert_eq!(r["interrupted"], true, "{r}");
    assert!(
        strings(&r, "refused").join("\n").contains("was too slow"),
        "{r}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
    let kept = partial_bytes(&env);
    assert!(kept > 0, "the partial file is kept for a resume");
    env.assert_serving("1.0.0");
    // No answer at all.
    e.drip_ms.store(0, Ordering::Relaxed);
    e.hang.store(true, Ordering::Relaxed);
    let (took, c, r) = update_within(&env, &QUICK, 30);
    eprintln!("held: the try ended after {took:?}: {r}");
    assert_eq!(c, 1, "{r}");
    assert!(
        strings(&r, "refused")
            .join("\n")
            .contains("got no answer within 2 s"),
        "{r}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
    env.assert_serving("1.0.0");
    // The link is good again: the download resumes from the partial file and completes.
    e.hang.store(false, Ordering::Relaxed);
    let (_, c, r) = update_within(&env, &QUICK, 60);
    assert_eq!(c, 0, "{r}");
    env.assert_serving("1.1.0");
    let files: u64 = ["extra.bin", "head.onnx", "golden.json", "manifest.json"]
        .iter()
        .map(|f| env.server_file(f).1)
        .sum();
    assert_eq!(
        r["bytes_downloaded"].as_u64().unwrap(),
        files - kept,
        "resumed, not started over: {r}"
    );
}

#[test]
fn a_file_shorter_than_signed_becomes_a_refusal_with_the_reason() {
    let env = Env::new();
    env.publish("1.1.0", 3.0, 3.0, 200_000);
    let (extra, len) = env.server_file("extra.bin");
    let target = format!(
        "/v1/targets/sha256/{}",
        extra.file_name().unwrap().to_string_lossy()
    );
    // A body that ends cleanly (no length, connection closed) at 120,000 bytes, every time.
    let (e, _) = proxy(&env);
    *e.short.lock().unwrap() = Some((target, 120_000));
    for attempt in 1..=2 {
        let (c, r, _) = env.update_json(&[]);
        assert_eq!(c, 1, "{r}");
        assert_eq!(
            r["interrupted"], true,
            "try {attempt} looks like a cut: {r}"
        );
        let msg = strings(&r, "refused").join("\n");
        assert!(
            msg.contains(&format!("({attempt} of 3 tries at that length")),
            "{msg}"
        );
    }
    let (c, r, _) = env.update_json(&[]);
    assert_eq!(c, 1, "{r}");
    assert_eq!(r["interrupted"], false, "{r}");
    let msg = strings(&r, "refused").join("\n");
    assert!(
        msg.contains(&format!(
            "ended it at 120000 of {len} signed bytes 3 tries in a row"
        )),
        "{msg}"
    );
    env.assert_serving("1.0.0");
    assert!(
        env.devices_list().contains("refused 1.1.0"),
        "{}",
        env.devices_list()
    );

    // The server's own copy is short: its Content-Length contradicts the signed length.
    *e.short.lock().unwrap() = None;
    let _ = std::fs::remove_dir_all(env.agent.join("data/models/.partial"));
    let b = std::fs::read(&extra).unwrap();
    std::fs::write(&extra, &b[..150_000]).unwrap();
    let (c, r, _) = env.update_json(&[]);
    assert_eq!(c, 1, "{r}");
    assert_eq!(r["interrupted"], false, "refused at the first try: {r}");
    let msg = strings(&r, "refused").join("\n");
    assert!(
        msg.contains(&format!(
            "the server says the file is 150000 bytes, the signed metadata {len}"
        )),
        "{msg}"
    );
    env.assert_serving("1.0.0");
}
