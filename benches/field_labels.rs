//! How many field labels does a new class need? The default land-cover model learns two
//! labels it never saw, `damage` and `no_damage`, from Hurricane Harvey tiles
//! (../shared/data/damage), the way the server retrains: the bundle's base embeddings plus
//! N field decisions, softmax regression in Rust ([`outpost::server::training::head`]).
//!
//! Tiles are embedded with the real backbone through ONNX Runtime. They are split by
//! location (0.01-degree cells of the coordinates in the file names, so a building's
//! damage/no_damage pair and its neighbours stay on one side): 80% is the pool field labels
//! are drawn from, 20% is held out. For N = 50, 200 and 1,000 labels (3 draws each) it
//! prints the held-out accuracy on damage/no_damage (median), and the land-cover accuracy
//! on the held-out tenth of the base data, before and after.
//!
//! Run: `cargo bench --bench field_labels` (under `cargo test` it only says how to run it).

use outpost::model::dataset::Dataset;
use outpost::model::pool::SessionOptions;
use outpost::model::{Bundle, LoadedModel};
use outpost::server::training::evaluation::evaluate;
use outpost::server::training::head::{train, TrainOptions};
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

    // Files, split by location cell.
    let (mut pool, mut held) = (Vec::new(), Vec::new());
    for (k, class) in ["damage", "no_damage"].iter().enumerate() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(shared.join("damage").join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let Some(cell) = cell_of(&f) else { continue };
            let h = outpost::hash::sha256_hex(format!("{cell:?}").as_bytes());
            let label = known + k;
            if u8::from_str_radix(&h[..2], 16)
                .unwrap_or(0)
                .is_multiple_of(5)
            {
                held.push((f, label));
            } else {
                pool.push((f, label));
            }
        }
    }
    let pool: Vec<_> = shuffled(&pool, 1).into_iter().take(POOL_MAX).collect();
    let held: Vec<_> = shuffled(&held, 2).into_iter().take(HOLDOUT_MAX).collect();
    let t = std::time::Instant::now();
    let pool_set = embed(&model, &pool);
    let held_set = embed(&model, &held);
    println!(
        "embedded {} pool + {} held-out tiles in {:.1} s",
        pool_set.len(),
        held_set.len(),
        t.elapsed().as_secs_f64()
    );
    let damaged = held_set.y.iter().filter(|y| y[0] == known).count();
    println!(
        "held-out: {damaged} damage, {} no_damage (majority baseline {:.3})",
        held_set.len() - damaged,
        damaged.max(held_set.len() - damaged) as f64 / held_set.len() as f64
    );

    let (mut base_train, mut base_hold) = (
        Dataset {
            dim: base.dim,
            ..Default::default()
        },
        Dataset {
            dim: base.dim,
            ..Default::default()
        },
    );
    for i in 0..base.len() {
        let d = if i % 10 == 9 {
            &mut base_hold
        } else {
            &mut base_train
        };
        d.push(base.row(i), base.y[i].clone());
    }
    let labels = known + 2;
    println!("| field labels | held-out damage/no_damage accuracy (median of {DRAWS}) | land-cover accuracy on held-out base data | train s |");
    println!("|---|---|---|---|");
    for n in [50usize, 200, 1000] {
        let mut accs = Vec::new();
        let mut base_accs = Vec::new();
        let mut secs = Vec::new();
        for draw in 0..DRAWS {
            let order = shuffled(&(0..pool_set.len()).collect::<Vec<_>>(), 100 + draw);
            let mut d = base_train.clone();
            for &i in order.iter().take(n) {
                d.push(pool_set.row(i), pool_set.y[i].clone());
            }
            let t = std::time::Instant::now();
            let head = train(&d, labels, false, &TrainOptions::default());
            secs.push(t.elapsed().as_secs_f64());
            accs.push(evaluate(&head, &held_set, None).accuracy);
            base_accs.push(evaluate(&head, &base_hold, None).accuracy);
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "| {n} | {:.3} | {:.3} | {:.1} |",
            med(&mut accs),
            med(&mut base_accs),
            med(&mut secs)
        );
    }
}
