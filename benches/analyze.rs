//! `cargo bench --bench analyze`: `outpost analyze` against the strongest simple alternatives,
//! side by side in one run, rounds alternating so machine noise hits every contender alike.
//!
//! - **outpost**: the release `outpost analyze` binary as a whole process (load both default
//!   models, walk, decode, tokenize, infer, store into a fresh SQLite file).
//! - **python**: `../shared/bench/pipeline.py`, the script a user would write (Pillow or
//!   tokenizers + onnxruntime with 2 threads + sqlite3) on the same bundles, as a whole process,
//!   in a venv made by `scripts/fetch-bench-venv.sh` (pinned versions from PyPI).
//! - **raw**: bare ONNX Runtime sessions in this process on tensors prepared before the clock
//!   (the ceiling), in the best configuration a search finds here (threads, batch, spinning,
//!   graph optimisation, memory pattern; every trial is printed).
//!
//! Workloads: EuroSAT tiles (one file each), crisis reports (one CSV), and a folder of large
//! images (mosaics of EuroSAT tiles, cut into tiles by analyze; the Python script does not tile,
//! so it sits that one out) plus a GeoTIFF scene. Each workload also runs pinned to one core
//! (`taskset -c 0`): a laptop whose other core is busy. Printed: medians of items/s, medians
//! of the per-round ratios, peak resident memory of each child process (VmHWM), and the load
//! average before and after (the machine is shared: say what else ran).
//!
//! Options through the environment: `ROUNDS` (5), `TILES` (5400), `REPORTS` (2000),
//! `RAW_TILES` (2048, tiles in the raw search and rounds), `NO_PYTHON=1`, `NO_SINGLE=1`,
//! `INTRA_THREADS` (the agent's `runtime.intra_threads`; default: the agent's default),
//! `ONLY` (`tiles`, `reports` or `large`), `BASELINE_BIN` (another `outpost` binary, e.g. a
//! copy from before a change, run as one more contender for an A/B in the same rounds),
//! `MODELS_DIR` (another models folder, e.g. a candidate bundle; default the repository's
//! `models/`), `OUTPOST_ORT_LIB`, `OUTPOST_SHARED_DATA`.

use outpost::bench::{self as b, RawSearch, RawSessions};
use outpost::infer::text;
use outpost::model::{self, runtime, LoadedModel, Task};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Wall time and peak resident memory of one child process.
struct Run {
    secs: f64,
    peak_mib: f64,
}

/// Runs `cmd` to the end; panics with its output if it fails (a bench must not pass quietly).
fn run(cmd: &mut Command) -> Run {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let t = Instant::now();
    let mut child = cmd.spawn().expect("the contender starts");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    // Peak memory: the child's own high-water mark (VmHWM), read every 5 ms until it exits.
    // (wait4's ru_maxrss is no use here: a forked child inherits this process's mark.)
    let pid = child.id();
    let hwm = std::thread::spawn(move || {
        let mut peak = 0.0f64;
        while let Some(v) = vm_hwm_mib(pid) {
            peak = peak.max(v);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        peak
    });
    let st = child.wait().expect("wait");
    let secs = t.elapsed().as_secs_f64();
    let stderr = err.join().unwrap_or_default();
    assert!(st.success(), "{cmd:?} failed ({st}):\n{stderr}");
    Run {
        secs,
        peak_mib: hwm.join().unwrap_or(0.0),
    }
}

/// VmHWM of a live process in MiB; None once it has exited.
fn vm_hwm_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

struct Setup {
    models: PathBuf,
    outpost: PathBuf,
    baseline: Option<PathBuf>,
    ort: PathBuf,
    python: Option<PathBuf>,
    pipeline: PathBuf,
    work: PathBuf,
    single: bool,
}

impl Setup {
    /// `outpost analyze` on `inputs` into a fresh data folder, optionally on one core.
    fn outpost(&self, inputs: &[PathBuf], one_core: bool) -> Command {
        self.outpost_bin(&self.outpost, inputs, one_core)
    }

    fn outpost_bin(&self, bin: &Path, inputs: &[PathBuf], one_core: bool) -> Command {
        let data = self.work.join("outpost-data");
        let _ = std::fs::remove_dir_all(&data);
        let mut c = self.pinned(one_core, bin);
        c.arg("--config")
            .arg(self.work.join("agent.toml"))
            .arg("--data-dir")
            .arg(&data)
            .arg("--models-dir")
            .arg(&self.models)
            .arg("--ort-lib")
            .arg(&self.ort)
            .args(["analyze", "--force", "--no-progress"])
            .args(inputs)
            .env_remove("OUTPOST_CONFIG");
        c
    }

    /// `pipeline.py KIND BUNDLE DB ARGS...`.
    fn python(&self, kind: &str, bundle: &str, args: &[PathBuf], one_core: bool) -> Command {
        let py = self.python.as_ref().expect("python venv");
        let mut c = self.pinned(one_core, py);
        c.arg(&self.pipeline)
            .arg(kind)
            .arg(self.models.join(bundle))
            .arg(self.work.join("python.db"))
            .args(args);
        c
    }

    fn pinned(&self, one_core: bool, program: &Path) -> Command {
        if one_core {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }
}

fn print_search(what: &str, s: &RawSearch) {
    println!("raw ONNX Runtime search ({what}), each trial best of 2 passes:");
    for t in &s.trials {
        println!("    {t}");
    }
    println!("  best: {}", s.best);
}

/// The fastest one-thread trial of a search (the single-core raw figure).
fn best_single(s: &RawSearch) -> b::RawTrial {
    s.trials
        .iter()
        .filter(|t| t.tuning.intra_threads == 1)
        .copied()
        .max_by(|a, b| a.per_sec.total_cmp(&b.per_sec))
        .unwrap_or(s.best)
}

/// Alternating rounds of every contender of one workload; prints medians and ratios.
fn rounds(
    title: &str,
    items: usize,
    rounds: usize,
    mut raw: impl FnMut() -> f64,
    contenders: &mut [(&str, &mut dyn FnMut() -> Run)],
) {
    println!(
        "\n== {title}: {items} items x {rounds} rounds, load average before {}",
        loadavg()
    );
    let mut raw_rates = Vec::new();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    let mut peaks: Vec<f64> = vec![0.0; contenders.len()];
    for _ in 0..rounds {
        raw_rates.push(raw());
        for (i, (_, f)) in contenders.iter_mut().enumerate() {
            let r = f();
            rates[i].push(items as f64 / r.secs);
            peaks[i] = peaks[i].max(r.peak_mib);
        }
    }
    println!(
        "  {:<34} {:>10.0}/s",
        "raw ONNX Runtime (best)",
        median(&raw_rates)
    );
    for (i, (name, _)) in contenders.iter().enumerate() {
        println!(
            "  {:<34} {:>10.0}/s   peak RSS {:>6.0} MiB",
            name,
            median(&rates[i]),
            peaks[i]
        );
    }
    let ratio =
        |a: &[f64], b: &[f64]| median(&a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>());
    if let Some(first) = rates.first() {
        println!(
            "  ratio {} / raw: {:.2}",
            contenders[0].0,
            ratio(first, &raw_rates)
        );
        for (i, (name, _)) in contenders.iter().enumerate().skip(1) {
            println!(
                "  ratio {} / {}: {:.2}",
                contenders[0].0,
                name,
                ratio(first, &rates[i])
            );
        }
    }
    println!("  load average after {}", loadavg());
}

fn main() {
    // `cargo test --all-targets` runs benches without `--bench`: say how to run it, and stop.
    if !std::env::args().any(|a| a == "--bench") {
        println!("analyze benchmark: run it with `cargo bench --bench analyze`");
        return;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = std::env::var_os("OUTPOST_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("../shared/data"));
    let eurosat = shared.join("eurosat");
    let messages = shared.join("crisis_text/messages.csv");
    if !eurosat.is_dir() || !messages.is_file() {
        eprintln!(
            "SKIP: the analyze bench needs {} and {}",
            eurosat.display(),
            messages.display()
        );
        return;
    }
    let ort = std::env::var_os("OUTPOST_ORT_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".ort/libonnxruntime.so.1.31.1"));
    runtime::init(Some(&ort)).expect("ONNX Runtime loads (set OUTPOST_ORT_LIB)");
    let work = std::env::temp_dir().join(format!("outpost-bench-analyze-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work folder");
    // The agent's defaults, explicitly (no user config file leaks in).
    // `INTRA_THREADS=N` measures another thread setting without rebuilding.
    let config = match std::env::var("INTRA_THREADS") {
        Ok(n) => format!("[runtime]\nintra_threads = {}\n", n.trim()),
        Err(_) => String::new(),
    };
    std::fs::write(work.join("agent.toml"), config).expect("config");
    let python = if std::env::var("NO_PYTHON").is_ok_and(|v| v == "1") {
        None
    } else {
        let out = Command::new("bash")
            .arg(repo.join("scripts/fetch-bench-venv.sh"))
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "scripts/fetch-bench-venv.sh failed (set NO_PYTHON=1 to skip the Python pipeline):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    };
    let models_dir = std::env::var_os("MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("models"));
    let setup = Setup {
        outpost: PathBuf::from(env!("CARGO_BIN_EXE_outpost")),
        baseline: std::env::var_os("BASELINE_BIN").map(PathBuf::from),
        pipeline: shared.join("../bench/pipeline.py"),
        models: models_dir.clone(),
        ort,
        python,
        work: work.clone(),
        single: !std::env::var("NO_SINGLE").is_ok_and(|v| v == "1"),
    };
    let n_rounds = env_usize("ROUNDS", 5).max(1);
    println!(
        "analyze bench: {} logical CPUs, load average at start {} (other engineers may be building); models {}",
        b::machine_threads(),
        loadavg(),
        models_dir.display()
    );
    let opts = model::pool::SessionOptions::default();
    let (models, failed) = model::load_all(&models_dir, opts);
    assert!(failed.is_empty(), "default bundles load: {failed:?}");
    let image = models
        .iter()
        .find(|m| m.task() == Task::ImageClassification)
        .expect("land-cover bundle")
        .clone();
    let textm = models
        .iter()
        .find(|m| m.task() == Task::TextClassification)
        .expect("crisis-reports bundle")
        .clone();
    tiles(&setup, &image, &eurosat, n_rounds);
    reports(&setup, &textm, &messages, n_rounds);
    large_images(
        &setup,
        &image,
        &eurosat,
        &shared.join("geotiff/RGB.byte.tif"),
        n_rounds,
    );
    let _ = std::fs::remove_dir_all(&work);
}

fn tiles(setup: &Setup, model: &Arc<LoadedModel>, eurosat: &Path, n_rounds: usize) {
    let files = b::sample_images(eurosat, env_usize("TILES", 5400));
    let raw_files = &files[..env_usize("RAW_TILES", 2048).min(files.len())];
    let t = b::preprocessed_tiles(model, raw_files).expect("tiles decode");
    let search = b::search_raw(b::machine_threads(), &[32, 64, 128], |tu, bs| {
        b::raw_image_rate(model, &t, tu, bs)
    })
    .expect("raw search");
    print_search("land-cover tiles", &search);
    println!(
        "  the agent's Classifier path on the same tensors (batch {}): {:.0}/s",
        search.best.batch,
        b::classifier_image_rate(model, &t, search.best.batch).expect("classifier")
    );
    for one_core in [false, true] {
        if one_core && !setup.single {
            continue;
        }
        let trial = if one_core {
            best_single(&search)
        } else {
            search.best
        };
        let mut raw_s = RawSessions::open(model, &trial.tuning).expect("raw sessions");
        let n = raw_files.len();
        let mut raw = || {
            let t0 = Instant::now();
            raw_s.run_images(&t, trial.batch).expect("raw");
            n as f64 / t0.elapsed().as_secs_f64()
        };
        let mut o = || run(&mut setup.outpost(&files, one_core));
        let mut p = || run(&mut setup.python("images", "landcover", &files, one_core));
        let mut a = || {
            let bin = setup.baseline.as_deref().expect("baseline");
            run(&mut setup.outpost_bin(bin, &files, one_core))
        };
        let mut contenders: Vec<(&str, &mut dyn FnMut() -> Run)> =
            vec![("outpost analyze", &mut o)];
        if setup.python.is_some() {
            contenders.push(("python pipeline.py", &mut p));
        }
        if setup.baseline.is_some() {
            contenders.push(("outpost baseline (BASELINE_BIN)", &mut a));
        }
        let title = format!(
            "EuroSAT tiles{}",
            if one_core {
                ", one core (taskset -c 0)"
            } else {
                ""
            }
        );
        rounds(&title, files.len(), n_rounds, &mut raw, &mut contenders);
    }
}

fn reports(setup: &Setup, model: &Arc<LoadedModel>, messages: &Path, n_rounds: usize) {
    let n = env_usize("REPORTS", 2000);
    let mut rdr = csv::Reader::from_path(messages).expect("messages.csv");
    let col = rdr
        .headers()
        .expect("header")
        .iter()
        .position(|h| h == "message")
        .expect("a message column");
    let msgs: Vec<String> = rdr
        .records()
        .filter_map(Result::ok)
        .filter_map(|r| r.get(col).map(str::to_string))
        .take(n)
        .collect();
    let csv_path = setup.work.join("reports.csv");
    b::write_reports_csv(&csv_path, &msgs).expect("csv");
    let tok = model.tokenizer.as_ref().expect("tokenizer");
    let encs: Vec<text::Encoded> = msgs
        .iter()
        .map(|m| text::encode(tok, m).expect("tokenizes"))
        .collect();
    let sample: Vec<text::Encoded> = encs.iter().step_by(4).cloned().collect();
    let search = b::search_raw(b::machine_threads(), &[1, 8, 32, 64], |tu, bs| {
        b::raw_text_rate(model, &sample, tu, bs)
    })
    .expect("raw search");
    print_search("crisis reports, every 4th report", &search);
    println!(
        "  {} backbone batch_independent: {}; the agent runs reports in batches of {}",
        model.id(),
        model.manifest().backbone.batch_independent,
        outpost::analyze::report_batch_size(
            std::slice::from_ref(model),
            outpost::config::AgentConfig::default()
                .analyze
                .text_batch_size
        )
    );
    for one_core in [false, true] {
        if one_core && !setup.single {
            continue;
        }
        let trial = if one_core {
            best_single(&search)
        } else {
            search.best
        };
        let batches = b::token_batches(&encs, text::pad_id(tok), trial.batch);
        let mut raw_s = RawSessions::open(model, &trial.tuning).expect("raw sessions");
        let mut raw = || {
            let t0 = Instant::now();
            raw_s.run_tokens(&batches).expect("raw");
            encs.len() as f64 / t0.elapsed().as_secs_f64()
        };
        let inputs = [csv_path.clone()];
        let mut o = || run(&mut setup.outpost(&inputs, one_core));
        let mut p = || run(&mut setup.python("texts", "crisis-reports", &inputs, one_core));
        let mut a = || {
            let bin = setup.baseline.as_deref().expect("baseline");
            run(&mut setup.outpost_bin(bin, &inputs, one_core))
        };
        let mut contenders: Vec<(&str, &mut dyn FnMut() -> Run)> =
            vec![("outpost analyze", &mut o)];
        if setup.python.is_some() {
            contenders.push(("python pipeline.py", &mut p));
        }
        if setup.baseline.is_some() {
            contenders.push(("outpost baseline (BASELINE_BIN)", &mut a));
        }
        let title = format!(
            "crisis reports{}",
            if one_core {
                ", one core (taskset -c 0)"
            } else {
                ""
            }
        );
        rounds(&title, msgs.len(), n_rounds, &mut raw, &mut contenders);
    }
}

/// A folder of large images (mosaics of 24x24 EuroSAT tiles, 1536 px square, PNG) and a
/// GeoTIFF scene, cut into model-sized tiles by analyze. The Python script does not tile.
fn large_images(setup: &Setup, model: &Arc<LoadedModel>, eurosat: &Path, scene: &Path, n: usize) {
    let dir = setup.work.join("large");
    std::fs::create_dir_all(&dir).expect("folder");
    let per_side = 24u32;
    let count = 6usize;
    let files = b::sample_images(eurosat, per_side as usize * per_side as usize * count);
    let mut tiles_total = 0usize;
    for (k, chunk) in files.chunks((per_side * per_side) as usize).enumerate() {
        let mut mosaic = image::RgbImage::new(per_side * 64, per_side * 64);
        for (i, f) in chunk.iter().enumerate() {
            let t = image::open(f).expect("tile").to_rgb8();
            let (x, y) = ((i as u32 % per_side) * 64, (i as u32 / per_side) * 64);
            image::imageops::replace(&mut mosaic, &t, x as i64, y as i64);
        }
        mosaic
            .save(dir.join(format!("mosaic-{k}.png")))
            .expect("png");
        tiles_total += chunk.len();
    }
    let raw_files = &files[..1024.min(files.len())];
    let t = b::preprocessed_tiles(model, raw_files).expect("tiles");
    let search = b::search_raw(b::machine_threads(), &[64], |tu, bs| {
        b::raw_image_rate(model, &t, tu, bs)
    })
    .expect("raw search");
    let mut raw_s = RawSessions::open(model, &search.best.tuning).expect("raw sessions");
    let mut raw = || {
        let t0 = Instant::now();
        raw_s.run_images(&t, search.best.batch).expect("raw");
        raw_files.len() as f64 / t0.elapsed().as_secs_f64()
    };
    let inputs = [dir.clone()];
    let mut o = || run(&mut setup.outpost(&inputs, false));
    rounds(
        &format!("{count} large images ({}px PNG), tiles", per_side * 64),
        tiles_total,
        n,
        &mut raw,
        &mut [("outpost analyze", &mut o)],
    );
    if scene.is_file() {
        let (w, h) = image::image_dimensions(scene).expect("scene size");
        let scene_tiles = (w.div_ceil(64) * h.div_ceil(64)) as usize;
        let inputs = [scene.to_path_buf()];
        let mut o = || run(&mut setup.outpost(&inputs, false));
        rounds(
            &format!(
                "GeoTIFF scene {} ({w}x{h}, at most {scene_tiles} tiles; nodata tiles are skipped, start-up dominates)",
                scene.display()
            ),
            scene_tiles,
            n,
            &mut raw,
            &mut [("outpost analyze", &mut o)],
        );
    }
}
