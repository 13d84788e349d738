//! How well does the loop learn from a few field labels? Hurricane Harvey tiles
//! (../shared/data/damage), `damage` / `no_damage`, through the server's real training code
//! ([`outpost::server::training::head`]) on embeddings of the shipped land-cover backbone
//! (through ONNX Runtime), side by side in one run with the scikit-learn recipe on the very
//! same split and label draws (models/recipes/field_labels_baseline.py: frozen ImageNet
//! EfficientNet-Lite0 at 224 px + StandardScaler + LogisticRegression, run in the recipes'
//! venv, which `models/recipes/build.sh` creates from PyPI when it is missing).
//!
//! Tiles are split by location (0.01-degree cells of the coordinates in the file names, so
//! a building's damage/no_damage pair and its neighbours stay on one side): about 80% of the
//! cells are the pool field labels are drawn from, the rest is held out. For N = 50, 200 and
//! 1,000 labels (half of each class, 3 draws each) it prints, as medians:
//! - **loop before issue 18**: the labels squeezed into the 10-class land-cover softmax
//!   (base data + N, plain Adam);
//! - **extended model, fit**: the same with [`head::fit`] as the server retrains a model
//!   on base data plus feedback (standardised, balanced, configured L2, no cross-validation),
//!   and the land-cover accuracy on held-out base data;
//! - **new task, fit**: a two-label head of its own on the N labels ([`head::fit`]:
//!   standardised, balanced, L2 by 5-fold cross-validation, calibrated);
//! - **new task, fit + flips**: the same with the server's augmentation (the other 7
//!   flips and quarter turns of each labelled tile, [`outpost::server::training::augment`]);
//! - **sklearn recipe** on the same N labels.
//!
//! Set `OUTPOST_BASELINE=0` to skip the Python side. Run: `cargo bench --bench field_labels`
//! (under `cargo test` it only says how to run it).

use outpost::model::dataset::Dataset;
use outpost::model::pool::SessionOptions;
use outpost::model::{Bundle, LoadedModel};
use outpost::server::training::augment;
use outpost::server::training::evaluation::evaluate;
use outpost::server::training::head::{fit, train, FitOptions, TrainOptions};
use std::path::{Path, PathBuf};

const POOL_MAX: usize = 1600;
const HOLDOUT_MAX: usize = 600;
const DRAWS: u64 = 3;

fn cell_of(path: &Path) -> Option<(i64, i64)> {
    let stem = path.file_stem()?.to_str()?;
    let (lon, lat) = stem.split_once('_')?;
    let (lon, lat): (f64, f64) = (lon.parse().ok()?, lat.parse().ok()?);
    Some(((lon * 100.0).floor() as i64, (lat * 100.0).floor() as i64))
}

fn embed(model: &LoadedModel, files: &[(PathBuf, usize)]) -> Dataset {
    let spec = model.manifest().image.clone().expect("an image model");
    let (h, w) = (spec.height as usize, spec.width as usize);
    let mut d = Dataset {
        dim: model.manifest().backbone.embedding_dim,
        ..Default::default()
    };
    for chunk in files.chunks(64) {
        let mut x = ndarray::Array4::<f32>::zeros((chunk.len(), 3, h, w));
        for (i, (p, _)) in chunk.iter().enumerate() {
            let rgb = image::open(p).expect("a readable tile").to_rgb8();
            let mut slot = x.index_axis_mut(ndarray::Axis(0), i);
            outpost::infer::image::preprocess_into(&rgb, &spec, slot.as_slice_mut().unwrap());
        }
        let e = model.embed_images(x.view()).expect("embedding");
        for (row, (_, label)) in e.rows().into_iter().zip(chunk) {
            d.push(row.as_slice().unwrap(), vec![*label]);
        }
    }
    d
}

fn shuffled<T: Clone>(v: &[T], seed: u64) -> Vec<T> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = v.to_vec();
    for i in (1..out.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.swap(i, (x % (i as u64 + 1)) as usize);
    }
    out
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Labelled tiles: `(file, 0 damage | 1 no_damage)`.
type Tiles = Vec<(PathBuf, usize)>;

/// Files split by location cell into (pool, held-out).
fn split_by_place(shared: &Path) -> (Tiles, Tiles) {
    let (mut pool, mut held) = (Vec::new(), Vec::new());
    for (k, class) in ["damage", "no_damage"].iter().enumerate() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(shared.join("damage").join(class))
            .expect("damage folder")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files {
            let Some(cell) = cell_of(&f) else { continue };
            let h = outpost::hash::sha256_hex(format!("{cell:?}").as_bytes());
            let held_out = u8::from_str_radix(&h[..2], 16)
                .unwrap_or(0)
                .is_multiple_of(5);
            if held_out {
                held.push((f, k));
            } else {
                pool.push((f, k));
            }
        }
    }
    (
        shuffled(&pool, 1).into_iter().take(POOL_MAX).collect(),
        shuffled(&held, 2).into_iter().take(HOLDOUT_MAX).collect(),
    )
}

/// Draws of N pool rows, half of each class (3 per N).
fn draws(pool: &[(PathBuf, usize)], sizes: &[usize]) -> Vec<(usize, Vec<Vec<usize>>)> {
    sizes
        .iter()
        .map(|&n| {
            let d = (0..DRAWS)
                .map(|draw| {
                    let order = shuffled(&(0..pool.len()).collect::<Vec<_>>(), 100 + draw);
                    let mut picked = Vec::new();
                    for class in 0..2 {
                        let want = if class == 0 { n / 2 } else { n - n / 2 };
                        picked.extend(order.iter().filter(|&&i| pool[i].1 == class).take(want));
                    }
                    picked
                })
                .collect();
            (n, d)
        })
        .collect()
}

/// Runs the scikit-learn recipe on the same files and draws; `None` (and why) if it cannot.
fn baseline(
    repo: &Path,
    pool: &[(PathBuf, usize)],
    held: &[(PathBuf, usize)],
    draws: &[(usize, Vec<Vec<usize>>)],
) -> Result<serde_json::Value, String> {
    if std::env::var("OUTPOST_BASELINE").as_deref() == Ok("0") {
        return Err("OUTPOST_BASELINE=0".into());
    }
    let files: Vec<String> = pool
        .iter()
        .chain(held)
        .map(|(p, _)| p.display().to_string())
        .collect();
    let labels: Vec<usize> = pool.iter().chain(held).map(|(_, l)| *l).collect();
    let held_idx: Vec<usize> = (pool.len()..pool.len() + held.len()).collect();
    let draws: serde_json::Map<String, serde_json::Value> = draws
        .iter()
        .map(|(n, d)| (n.to_string(), serde_json::json!(d)))
        .collect();
    let spec = serde_json::json!({"images": {"files": files, "labels": labels, "held": held_idx, "draws": draws}});
    let dir = tempfile_dir();
    let (spec_path, out_path) = (dir.join("spec.json"), dir.join("out.json"));
    std::fs::write(&spec_path, spec.to_string()).map_err(|e| e.to_string())?;
    let status = std::process::Command::new(repo.join("models/recipes/build.sh"))
        .arg("field-labels-baseline")
        .arg("--spec")
        .arg(&spec_path)
        .arg("--out")
        .arg(&out_path)
        .status()
        .map_err(|e| format!("cannot run models/recipes/build.sh: {e}"))?;
    if !status.success() {
        return Err(format!("the recipe failed ({status})"));
    }
    let text = std::fs::read_to_string(&out_path).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("outpost-field-labels-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("a scratch folder");
    d
}

fn split_base(base: &Dataset) -> (Dataset, Dataset) {
    let empty = || Dataset {
        dim: base.dim,
        ..Default::default()
    };
    let (mut train_set, mut hold) = (empty(), empty());
    for i in 0..base.len() {
        let d = if i % 10 == 9 {
            &mut hold
        } else {
            &mut train_set
        };
        d.push(base.row(i), base.y[i].clone());
    }
    (train_set, hold)
}

/// `data`'s rows `rows`, labels shifted by `offset`.
fn pick(data: &Dataset, rows: &[usize], offset: usize, into: &mut Dataset) {
    for &i in rows {
        into.push(data.row(i), data.y[i].iter().map(|y| y + offset).collect());
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("field_labels: run with `cargo bench --bench field_labels`");
        return;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = std::env::var_os("OUTPOST_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("../shared/data"));
    if !shared.join("damage/damage").is_dir() {
        println!("SKIP: no damage tiles under {}", shared.display());
        return;
    }
    outpost::model::runtime::init(None).expect("ONNX Runtime (run scripts/fetch-onnxruntime.sh)");
    let bundle = Bundle::open(&repo.join("models/landcover")).expect("models/landcover");
    let base = outpost::model::base_data::read(&bundle).expect("base data");
    let known = bundle.manifest.labels.len();
    let model = LoadedModel::from_bundle(
        bundle,
        SessionOptions {
            intra_threads: 2,
            max_sessions: 1,
        },
    )
    .expect("loads");
    let (pool, held) = split_by_place(&shared);
    let t = std::time::Instant::now();
    let pool_set = embed(&model, &pool);
    let held_set = embed(&model, &held);
    println!(
        "embedded {} pool + {} held-out tiles (64 px, land-cover backbone) in {:.1} s",
        pool_set.len(),
        held_set.len(),
        t.elapsed().as_secs_f64()
    );
    let damaged = held_set.y.iter().filter(|y| y[0] == 0).count();
    println!(
        "held-out: {damaged} damage, {} no_damage (majority baseline {:.3})",
        held_set.len() - damaged,
        damaged.max(held_set.len() - damaged) as f64 / held_set.len() as f64
    );
    let t = std::time::Instant::now();
    let tiles: Vec<(image::RgbImage, Vec<usize>, usize)> = pool
        .iter()
        .enumerate()
        .map(|(i, (p, l))| (image::open(p).expect("a tile").to_rgb8(), vec![*l], i))
        .collect();
    let mut views = Dataset {
        dim: pool_set.dim,
        ..Default::default()
    };
    let mut view_of = Vec::new();
    augment::add_views(&model, &tiles, &mut views, &mut view_of).expect("views");
    drop(tiles);
    println!(
        "embedded the other 7 views of the pool tiles ({} rows) in {:.1} s",
        views.len(),
        t.elapsed().as_secs_f64()
    );
    let draws = draws(&pool, &[50, 200, 1000]);
    let t = std::time::Instant::now();
    let py = baseline(&repo, &pool, &held, &draws);
    let py_secs = t.elapsed().as_secs_f64();
    let (base_train, base_hold) = split_base(&base);
    let mut held_ext = Dataset {
        dim: held_set.dim,
        ..Default::default()
    };
    pick(
        &held_set,
        &(0..held_set.len()).collect::<Vec<_>>(),
        known,
        &mut held_ext,
    );
    println!(
        "land-cover accuracy of the shipped head on held-out base data: {:.3}",
        shipped_accuracy(&model, &base_hold)
    );
    println!("| field labels | loop before (10-class softmax + 2) | extended model, fit | land-cover acc. after (fit) | new task, fit | new task, fit + flips | sklearn recipe (Lite0 224 px + LR) | fit s / with flips s |");
    println!("|---|---|---|---|---|---|---|---|");
    for (n, ds) in &draws {
        let (mut before, mut ext, mut lc, mut task, mut secs) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut flips, mut flip_secs) = (vec![], vec![]);
        for rows in ds {
            let mut d = base_train.clone();
            pick(&pool_set, rows, known, &mut d);
            let old = train(&d, known + 2, false, &TrainOptions::default());
            before.push(evaluate(&old, &held_ext, None).accuracy);
            // As the server retrains a model on base data plus feedback: no CV.
            let o = FitOptions {
                cv_max_rows: 0,
                ..Default::default()
            };
            let (h, _) = fit(&d, known + 2, false, &o);
            ext.push(evaluate(&h, &held_ext, None).accuracy);
            lc.push(evaluate(&h, &base_hold, None).accuracy);
            let mut only = Dataset {
                dim: pool_set.dim,
                ..Default::default()
            };
            pick(&pool_set, rows, 0, &mut only);
            let t = std::time::Instant::now();
            let (h, _) = fit(&only, 2, false, &FitOptions::default());
            secs.push(t.elapsed().as_secs_f64());
            task.push(evaluate(&h, &held_set, None).accuracy);
            let mut groups: Vec<usize> = (0..only.len()).collect();
            let slot: std::collections::HashMap<usize, usize> =
                rows.iter().enumerate().map(|(k, &i)| (i, k)).collect();
            for (v, g) in view_of.iter().enumerate() {
                if let Some(&k) = slot.get(g) {
                    only.push(views.row(v), views.y[v].clone());
                    groups.push(k);
                }
            }
            let t = std::time::Instant::now();
            let o = FitOptions {
                groups: Some(groups),
                ..Default::default()
            };
            let (h, _) = fit(&only, 2, false, &o);
            flip_secs.push(t.elapsed().as_secs_f64());
            flips.push(evaluate(&h, &held_set, None).accuracy);
        }
        let mut sk: Vec<f64> = py
            .as_ref()
            .ok()
            .and_then(|v| v["images"][n.to_string()].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|x| x.as_f64())
            .collect();
        println!(
            "| {n} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {:.2} / {:.2} |",
            median(&mut before),
            median(&mut ext),
            median(&mut lc),
            median(&mut task),
            median(&mut flips),
            if sk.is_empty() {
                "-".to_string()
            } else {
                format!("{:.3}", median(&mut sk))
            },
            median(&mut secs),
            median(&mut flip_secs)
        );
    }
    match &py {
        Ok(_) => println!("sklearn recipe: {py_secs:.0} s including feature extraction (models/recipes/field_labels_baseline.py)"),
        Err(e) => println!("sklearn recipe not run: {e}"),
    }
}

/// Accuracy of the bundle's own head (through ONNX Runtime) on `data`.
fn shipped_accuracy(model: &LoadedModel, data: &Dataset) -> f64 {
    let x = ndarray::ArrayView2::from_shape((data.len(), data.dim), &data.x).expect("rows");
    let s = model.score(x).expect("scores");
    let right = s
        .rows()
        .into_iter()
        .zip(&data.y)
        .filter(|(r, y)| {
            let top = (0..r.len()).max_by(|&a, &b| r[a].total_cmp(&r[b]));
            top == y.first().copied()
        })
        .count();
    right as f64 / data.len().max(1) as f64
}
