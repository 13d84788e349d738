//! A head retrained in Rust and written as ONNX by the agent's own writer reproduces, in
//! real ONNX Runtime, the scores computed in Rust.

mod common;

use ort::value::TensorRef;
use outpost::model::dataset::Dataset;
use outpost::model::pool::{build_session, SessionOptions};
use outpost::server::training::head::{train, TrainOptions};

fn run_onnx(bytes: &[u8], x: &[f32], rows: usize, dim: usize) -> Vec<f32> {
    common::init_ort();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("head.onnx");
    std::fs::write(&path, bytes).unwrap();
    let mut s = build_session(
        &path,
        &SessionOptions {
            intra_threads: 1,
            max_sessions: 1,
        },
    )
    .unwrap();
    let input = ndarray::ArrayView2::from_shape((rows, dim), x).unwrap();
    let out = s
        .run(ort::inputs!["embedding" => TensorRef::from_array_view(input).unwrap()])
        .unwrap();
    out["scores"]
        .try_extract_tensor::<f32>()
        .unwrap()
        .1
        .to_vec()
}

#[test]
fn exported_heads_match_rust_scores_in_onnx_runtime() {
    for multi_label in [false, true] {
        let dim = 16;
        let mut data = Dataset {
            dim,
            ..Default::default()
        };
        for i in 0..300 {
            let x: Vec<f32> = (0..dim)
                .map(|j| (((i * 7 + j * 13) % 23) as f32 / 23.0) - 0.5)
                .collect();
            let y = if multi_label {
                vec![i % 4, (i + 1) % 4]
            } else {
                vec![i % 4]
            };
            data.push(&x, y);
        }
        let head = train(
            &data,
            4,
            multi_label,
            &TrainOptions {
                epochs: 5,
                ..Default::default()
            },
        );
        let onnx = run_onnx(
            &head.to_onnx("embedding", "scores"),
            &data.x[..50 * dim],
            50,
            dim,
        );
        for i in 0..50 {
            let rust = head.scores(data.row(i));
            for k in 0..4 {
                let d = (rust[k] - onnx[i * 4 + k]).abs();
                assert!(
                    d < 1e-5,
                    "multi_label={multi_label} row {i} label {k}: rust {} onnx {}",
                    rust[k],
                    onnx[i * 4 + k]
                );
            }
        }
    }
}
