//! Bundles: verification refuses damaged bundles with the file's name; models written by the
//! agent's ONNX writer load in real ONNX Runtime and compute what they should; the session
//! pool serves concurrent callers.

mod common;

use outpost::model::{pool::SessionOptions, Bundle, BundleError, LoadedModel};
use std::sync::Arc;

fn opts() -> SessionOptions {
    SessionOptions {
        intra_threads: 1,
        max_sessions: 2,
    }
}

#[test]
fn tampered_or_missing_files_are_refused_with_their_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    common::make_image_bundle(&dir, "tiny", "1.0.0");
    Bundle::open(&dir).expect("fresh bundle verifies");

    // One flipped byte in the head.
    let head = dir.join("head.onnx");
    let mut bytes = std::fs::read(&head).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&head, &bytes).unwrap();
    let err = Bundle::open(&dir).unwrap_err();
    assert!(
        matches!(err, BundleError::Mismatch { ref file, .. } if file == "head.onnx"),
        "{err}"
    );
    assert!(err.to_string().contains("sha256"), "{err}");

    // A truncated file is caught by its size.
    bytes.truncate(10);
    std::fs::write(&head, &bytes).unwrap();
    let err = Bundle::open(&dir).unwrap_err();
    assert!(err.to_string().contains("size"), "{err}");

    std::fs::remove_file(&head).unwrap();
    let err = Bundle::open(&dir).unwrap_err();
    assert!(
        matches!(err, BundleError::MissingFile { ref file, .. } if file == "head.onnx"),
        "{err}"
    );
}

#[test]
fn inconsistent_manifests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    let m = common::make_image_bundle(&dir, "tiny", "1.0.0");
    let write = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = serde_json::to_value(&m).unwrap();
        f(&mut v);
        std::fs::write(dir.join("manifest.json"), v.to_string()).unwrap();
    };
    write(&|v| v["version"] = "1.0".into());
    assert!(Bundle::open(&dir)
        .unwrap_err()
        .to_string()
        .contains("semantic version"));
    write(&|v| v["format"] = 99.into());
    assert!(Bundle::open(&dir)
        .unwrap_err()
        .to_string()
        .contains("format 99"));
    write(&|v| {
        v["files"].as_object_mut().unwrap().insert(
            "../escape".into(),
            serde_json::json!({"sha256": "00", "size": 1}),
        );
    });
    assert!(Bundle::open(&dir)
        .unwrap_err()
        .to_string()
        .contains("relative path"));
    std::fs::write(dir.join("manifest.json"), "{ not json").unwrap();
    assert!(matches!(
        Bundle::open(&dir).unwrap_err(),
        BundleError::Parse { .. }
    ));
}

#[test]
fn a_manifest_naming_a_missing_output_is_a_clear_error() {
    common::init_ort();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    let mut m = common::make_image_bundle(&dir, "tiny", "1.0.0");
    m.backbone.output = "features".into();
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let err = LoadedModel::load(&dir, opts()).err().expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("\"features\"") && msg.contains("embedding"),
        "{msg}"
    );
}

#[test]
fn written_models_run_in_onnx_runtime_and_compute_the_formula() {
    common::init_ort();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    common::make_image_bundle(&dir, "tiny", "1.0.0");
    let model = LoadedModel::load(&dir, opts()).unwrap();
    // A batch of 2 images: channel means 0.9/0.1/0.2 and -0.5/0.3/0.7 (normalised units).
    let mut x = ndarray::Array4::<f32>::zeros((2, 3, 16, 16));
    for (b, means) in [[0.9f32, 0.1, 0.2], [-0.5, 0.3, 0.7]].iter().enumerate() {
        for (c, &m) in means.iter().enumerate() {
            x.slice_mut(ndarray::s![b, c, .., ..]).fill(m);
        }
    }
    let emb = model.embed_images(x.view()).unwrap();
    assert_eq!(emb.shape(), &[2, 3]);
    assert!((emb[(1, 2)] - 0.7).abs() < 1e-6);
    let scores = model.score(emb.view()).unwrap();
    for b in 0..2 {
        let e: Vec<f32> = (0..3).map(|c| (emb[(b, c)] * 10.0).exp()).collect();
        let sum: f32 = e.iter().sum();
        for c in 0..3 {
            assert!((scores[(b, c)] - e[c] / sum).abs() < 1e-5);
        }
    }
    assert_eq!(model.decide(&scores.row(0).to_vec()), vec![0]);
    assert_eq!(model.decide(&scores.row(1).to_vec()), vec![2]);
}

#[test]
fn text_model_pools_over_the_mask_so_padding_changes_nothing() {
    common::init_ort();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("text");
    common::make_text_bundle(&dir, "tiny-text", "1.0.0");
    let model = LoadedModel::load(&dir, opts()).unwrap();
    let tok = model.tokenizer.as_ref().unwrap();
    let a = outpost::infer::text::encode(tok, "We need water").unwrap();
    let b = outpost::infer::text::encode(tok, "the bridge is out, the road floods").unwrap();
    assert_eq!(a.ids, vec![2, 8, 7, 4, 3], "[CLS] we need water [SEP]");
    let pad = outpost::infer::text::pad_id(tok);
    let (ids, mask, types) = outpost::infer::text::pad_batch(&[&a, &b], pad);
    let both = model
        .embed_tokens(ids.view(), mask.view(), types.view())
        .unwrap();
    let (ids, mask, types) = outpost::infer::text::pad_batch(&[&a], pad);
    let alone = model
        .embed_tokens(ids.view(), mask.view(), types.view())
        .unwrap();
    for c in 0..both.shape()[1] {
        assert!((both[(0, c)] - alone[(0, c)]).abs() < 1e-6);
    }
    let scores = model.score(both.view()).unwrap();
    let labels = |row: usize| -> Vec<&str> {
        model
            .decide(&scores.row(row).to_vec())
            .into_iter()
            .map(|i| common::TEXT_LABELS[i])
            .collect()
    };
    assert_eq!(labels(0), vec!["water"]);
    assert_eq!(labels(1), vec!["infrastructure"]);
}

#[test]
fn the_session_pool_serves_concurrent_callers() {
    common::init_ort();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    common::make_image_bundle(&dir, "tiny", "1.0.0");
    let model = Arc::new(
        LoadedModel::load(
            &dir,
            SessionOptions {
                intra_threads: 1,
                max_sessions: 3,
            },
        )
        .unwrap(),
    );
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let m = model.clone();
            std::thread::spawn(move || {
                let x = ndarray::Array4::<f32>::from_elem((4, 3, 16, 16), i as f32 * 0.1);
                for _ in 0..20 {
                    let e = m.embed_images(x.view()).unwrap();
                    assert!((e[(3, 1)] - i as f32 * 0.1).abs() < 1e-6);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
