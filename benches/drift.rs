//! Drift detection on real data: how many items until unfamiliar input is flagged, and how
//! many false alarms over a long in-distribution run (src/drift.rs for the method).
//!
//! - Images: every EuroSAT tile in ../shared/data/eurosat, fed class by class (the hardest
//!   order for a detector that looks at the mix), then Hurricane Harvey tiles
//!   (../shared/data/damage) through the default land-cover model.
//! - Reports: every message of ../shared/data/crisis_text/messages.csv, then sentences
//!   that are clearly not crisis reports (this repository's own doc comments) through the
//!   default crisis-reports model, one report per batch as the agent runs them.
//!
//! Windows of 50 items with the default thresholds. Run: `cargo bench --bench drift`.

use outpost::drift::{verdict, DriftSettings, DriftState, Reference};
use outpost::model::pool::SessionOptions;
use outpost::model::{Bundle, LoadedModel};
use std::path::{Path, PathBuf};

fn load(repo: &Path, name: &str) -> (LoadedModel, Reference) {
    let b = Bundle::open(&repo.join("models").join(name)).expect("bundle");
    let r = Reference::from_bundle(&b).expect("reference");
    let opts = SessionOptions {
        intra_threads: 2,
        max_sessions: 1,
    };
    (LoadedModel::from_bundle(b, opts).expect("loads"), r)
}

fn image_novelty(model: &LoadedModel, r: &Reference, files: &[PathBuf]) -> Vec<f32> {
    let spec = model.manifest().image.clone().expect("image model");
    let (h, w) = (spec.height as usize, spec.width as usize);
    let mut out = Vec::new();
    for chunk in files.chunks(64) {
        let mut x = ndarray::Array4::<f32>::zeros((chunk.len(), 3, h, w));
        for (i, p) in chunk.iter().enumerate() {
            let rgb = image::open(p).expect("tile").to_rgb8();
            let mut slot = x.index_axis_mut(ndarray::Axis(0), i);
            outpost::infer::image::preprocess_into(&rgb, &spec, slot.as_slice_mut().unwrap());
        }
        let e = model.embed_images(x.view()).expect("embed");
        out.extend(
            e.rows()
                .into_iter()
                .map(|row| r.novelty(row.as_slice().unwrap())),
        );
    }
    out
}

fn text_novelty(model: &LoadedModel, r: &Reference, texts: &[String]) -> Vec<f32> {
    use outpost::infer::text::{encode, pad_batch, pad_id};
    let tok = model.tokenizer.as_ref().expect("tokenizer");
    texts
        .iter()
        .map(|t| {
            let enc = encode(tok, t).expect("tokenizes");
            let (ids, mask, types) = pad_batch(&[&enc], pad_id(tok));
            let e = model
                .embed_tokens(ids.view(), mask.view(), types.view())
                .expect("embed");
            r.novelty(e.row(0).as_slice().unwrap())
        })
        .collect()
}

/// (windows, false alarms (watch or drifted), drifted windows) over in-distribution scores,
/// and items until the first drifted window once the unfamiliar part starts.
fn report(name: &str, r: &Reference, known: &[f32], unknown: &[f32]) {
    let s = DriftSettings::default();
    let states = |v: &[f32]| -> Vec<DriftState> {
        v.chunks(s.window)
            .filter(|c| c.len() == s.window)
            .map(|c| {
                let novel = c.iter().filter(|&&n| n > r.threshold).count();
                verdict(novel as f64 / s.window as f64, &s)
            })
            .collect()
    };
    let k = states(known);
    let alarms = k.iter().filter(|&&x| x != DriftState::Ok).count();
    let drifted = k.iter().filter(|&&x| x == DriftState::Drifted).count();
    let rate = known.iter().filter(|&&n| n > r.threshold).count() as f64 / known.len() as f64;
    // The unfamiliar stream starts right after the last full in-distribution window.
    let u = states(unknown);
    let first_watch = u.iter().position(|&x| x != DriftState::Ok);
    let first_drift = u.iter().position(|&x| x == DriftState::Drifted);
    let urate = unknown.iter().filter(|&&n| n > r.threshold).count() as f64 / unknown.len() as f64;
    println!("{name}: novelty threshold {:.3}", r.threshold);
    println!(
        "  in distribution: {} items, {:.1}% above the threshold; {} windows, {alarms} false alarms (watch or drifted), {drifted} drifted",
        known.len(), 100.0 * rate, k.len()
    );
    println!(
        "  unfamiliar: {} items, {:.1}% above the threshold; flagged watch after {} items, drifted after {} items",
        unknown.len(),
        100.0 * urate,
        first_watch.map(|i| ((i + 1) * s.window).to_string()).unwrap_or("never".into()),
        first_drift.map(|i| ((i + 1) * s.window).to_string()).unwrap_or("never".into()),
    );
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("drift: run with `cargo bench --bench drift`");
        return;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = std::env::var_os("OUTPOST_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("../shared/data"));
    if !shared.is_dir() {
        println!("SKIP: no shared data at {}", shared.display());
        return;
    }
    outpost::model::runtime::init(None).expect("ONNX Runtime (scripts/fetch-onnxruntime.sh)");
    let limit: usize = std::env::var("DRIFT_BENCH_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);

    // Images.
    let (model, r) = load(&repo, "landcover");
    let mut eurosat = Vec::new();
    for class in files_in(&shared.join("eurosat")) {
        if class.is_dir() {
            eurosat.extend(files_in(&class));
        }
    }
    eurosat.truncate(limit);
    let damage: Vec<PathBuf> = files_in(&shared.join("damage/damage"))
        .into_iter()
        .chain(files_in(&shared.join("damage/no_damage")))
        .step_by(10)
        .take(1000)
        .collect();
    let t = std::time::Instant::now();
    let known = image_novelty(&model, &r, &eurosat);
    let unknown = image_novelty(&model, &r, &damage);
    report("landcover (EuroSAT, then Harvey)", &r, &known, &unknown);
    println!("  ({:.0} s)", t.elapsed().as_secs_f64());
    drop(model);

    // Reports.
    let (model, r) = load(&repo, "crisis-reports");
    let mut messages = Vec::new();
    let mut rd =
        csv::Reader::from_path(shared.join("crisis_text/messages.csv")).expect("messages.csv");
    for rec in rd.records().flatten() {
        if let Some(m) = rec.get(1) {
            messages.push(m.to_string());
        }
    }
    messages.truncate(limit);
    let mut other = Vec::new();
    for e in walkdir::WalkDir::new(repo.join("src")).sort_by_file_name() {
        let Ok(e) = e else { continue };
        if e.path().extension().and_then(|x| x.to_str()) != Some("rs") {
            continue;
        }
        for line in std::fs::read_to_string(e.path())
            .unwrap_or_default()
            .lines()
        {
            let l = line.trim_start();
            if let Some(text) = l.strip_prefix("/// ").or_else(|| l.strip_prefix("//! ")) {
                if text.len() > 40 {
                    other.push(text.to_string());
                }
            }
        }
    }
    other.truncate(500);
    let t = std::time::Instant::now();
    let known = text_novelty(&model, &r, &messages);
    let unknown = text_novelty(&model, &r, &other);
    report(
        "crisis-reports (messages, then source-code doc comments)",
        &r,
        &known,
        &unknown,
    );
    println!("  ({:.0} s)", t.elapsed().as_secs_f64());
}
