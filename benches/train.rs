//! Head retraining time: 20,000 items of 1,280-d embeddings (the land-cover backbone) and
//! 12 labels (10 EuroSAT classes + 2 field classes), softmax regression, default settings;
//! and 20,000 items of 384-d embeddings with 35 labels, one-vs-rest. Median of 3 runs.
//!
//! Run: `cargo bench --bench train`.

use outpost::model::dataset::Dataset;
use outpost::server::training::evaluation::evaluate;
use outpost::server::training::head::{fit, train, FitOptions, TrainOptions};
use std::time::Instant;

fn rng(seed: u64) -> impl FnMut() -> f32 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 20_001) as f32 / 10_000.0 - 1.0
    }
}

/// Points around fixed class centres (the same centres for training and held-out sets).
fn synthetic(n: usize, dim: usize, labels: usize, multi: bool, seed: u64) -> Dataset {
    let mut c = rng(99);
    let centres: Vec<Vec<f32>> = (0..labels)
        .map(|_| (0..dim).map(|_| c()).collect())
        .collect();
    let mut next = rng(seed);
    let mut d = Dataset {
        dim,
        ..Default::default()
    };
    for i in 0..n {
        let c = i % labels;
        let mut y = vec![c];
        let mut e: Vec<f32> = centres[c].iter().map(|v| v + 1.5 * next()).collect();
        if multi {
            let c2 = (i * 7 + 3) % labels;
            if c2 != c {
                y.push(c2);
                e.iter_mut().zip(&centres[c2]).for_each(|(a, b)| *a += b);
            }
        }
        let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt();
        e.iter_mut().for_each(|v| *v /= norm);
        d.push(&e, y);
    }
    d
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("train benchmark: run it with `cargo bench --bench train`");
        return;
    }
    for (name, dim, labels, multi) in [
        ("landcover-like", 1280, 12, false),
        ("crisis-like", 384, 35, true),
    ] {
        let data = synthetic(20_000, dim, labels, multi, 11);
        let held = synthetic(2_000, dim, labels, multi, 12);
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..3 {
            let t = Instant::now();
            let h = train(&data, labels, multi, &TrainOptions::default());
            times.push(t.elapsed().as_secs_f64());
            last = Some(h);
        }
        // The server's path for a model retrained on base data plus feedback: head::fit
        // (standardised, balanced, no cross-validation at this size).
        let t = Instant::now();
        let o = FitOptions {
            cv_max_rows: 0,
            ..Default::default()
        };
        let (fitted, _) = fit(&data, labels, multi, &o);
        let fit_secs = t.elapsed().as_secs_f64();
        let fe = evaluate(&fitted, &held, None);
        println!(
            "{name}: head::fit as the server runs it: {fit_secs:.2} s; held-out accuracy {:.3}",
            fe.accuracy
        );
        times.sort_by(f64::total_cmp);
        let e = evaluate(last.as_ref().unwrap(), &held, None);
        println!(
            "{name}: 20000 x {dim}-d, {labels} labels{}: median {:.2} s (runs {:?}); held-out accuracy {:.3}, macro-F1 {:.3}",
            if multi { " (multi-label)" } else { "" },
            times[1],
            times.iter().map(|t| format!("{t:.2}")).collect::<Vec<_>>(),
            e.accuracy,
            e.macro_f1
        );
    }
}
