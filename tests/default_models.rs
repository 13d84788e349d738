//! The committed default bundles: they verify, load in ONNX Runtime through the agent's own
//! code, and reproduce the golden outputs their recipes computed in Python; the text
//! tokenizer gives the reference tokenizer's ids; the land-cover model is right on real
//! EuroSAT tiles decoded from JPEG by the agent.

mod common;

use outpost::model::{pool::SessionOptions, LoadedModel};

fn load(name: &str) -> LoadedModel {
    common::init_ort();
    let dir = common::repo().join("models").join(name);
    LoadedModel::load(
        &dir,
        SessionOptions {
            intra_threads: 2,
            max_sessions: 1,
        },
    )
    .unwrap_or_else(|e| panic!("default bundle {name}: {e}"))
}

fn check_golden(name: &str) {
    let model = load(name);
    let report = outpost::infer::golden::check(&model)
        .unwrap()
        .unwrap_or_else(|| panic!("{name} has no golden cases"));
    assert!(
        report.cases >= 4,
        "{name}: only {} golden cases",
        report.cases
    );
    assert!(report.passed(), "{name}: {:?}", report.failures);
    eprintln!(
        "{name}: {} golden cases, max |difference| {:.2e} (tolerance {:.0e})",
        report.cases, report.max_abs_diff, report.tolerance
    );
}

#[test]
fn landcover_reproduces_its_golden_outputs() {
    check_golden("landcover");
}

#[test]
fn crisis_reports_reproduces_its_golden_outputs() {
    check_golden("crisis-reports");
}

#[test]
fn the_rust_tokenizer_gives_the_reference_ids() {
    let fixture: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::repo().join("tests/fixtures/tokenizer_ids.json")).unwrap(),
    )
    .unwrap();
    let path = common::repo().join(fixture["tokenizer"].as_str().unwrap());
    let max_length = fixture["max_length"].as_u64().unwrap() as usize;
    let tok = outpost::infer::text::load_tokenizer(&path, max_length).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let mut long = false;
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<i64> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let got = outpost::infer::text::encode(&tok, text).unwrap();
        assert_eq!(got.ids, want, "ids differ for {text:?}");
        long |= got.truncated;
    }
    assert!(long, "the fixture has a report longer than max_length");
}

#[test]
fn landcover_is_right_on_real_eurosat_tiles() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let model = load("landcover");
    let spec = model.manifest().image.clone().unwrap();
    let files = outpost::bench::sample_images(&data.join("eurosat"), 100);
    let mut right = 0;
    for f in &files {
        let r = outpost::infer::image::decode(f, &Default::default()).unwrap();
        let mut x =
            ndarray::Array4::<f32>::zeros((1, 3, spec.height as usize, spec.width as usize));
        outpost::infer::image::preprocess_into(&r.rgb, &spec, x.as_slice_mut().unwrap());
        let scores = model
            .score(model.embed_images(x.view()).unwrap().view())
            .unwrap();
        let top = model.decide(&scores.row(0).to_vec())[0];
        let class = f.parent().unwrap().file_name().unwrap().to_str().unwrap();
        right += usize::from(model.manifest().labels[top] == class);
    }
    // Most of these tiles were in the training split; this checks the agent's decode and
    // preprocessing agree with training, not the model's accuracy (see models/README.md).
    assert!(right >= 95, "{right}/100 right");
}
