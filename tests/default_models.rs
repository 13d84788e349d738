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

/// A statically quantised report backbone (fixed activation scales) gives a report the same
/// scores alone and padded into a batch of other reports. Ignored while the shipped bundle is
/// crisis-reports 1.1.0: its dynamic int8 backbone moves scores by up to 0.073 here. The 2.0
/// candidate of `models/recipes/crisis_reports_ml.py` passes it (max difference 0); see
/// models/README.md. Run with `cargo test --test default_models -- --ignored`.
#[test]
#[ignore = "crisis-reports 1.1.0 is dynamically quantised; passes on the static 2.0 candidate"]
fn crisis_report_scores_do_not_depend_on_batch_neighbours() {
    use outpost::infer::text::{encode, load_tokenizer, pad_batch, pad_id};
    let model = load("crisis-reports");
    let spec = model.manifest().text.clone().unwrap();
    let dir = common::repo().join("models/crisis-reports");
    let tok = load_tokenizer(&dir.join(&spec.tokenizer), spec.max_length).unwrap();
    let reports = [
        "We need water and food in Carrefour, please help!",
        "Mwen bezwen manje ak dlo pou fanmi m, nou nan lari a depi tranbleman tè a.",
        "Nous avons besoin d'eau potable à Léogâne, les enfants sont malades depuis trois jours.",
        "Necesitamos agua potable y comida en el refugio.",
        "نحتاج إلى مياه الشرب والطعام والأدوية في المخيم",
        "help",
        "The bridge on Route Nationale 2 collapsed after the aftershock, so trucks with water, \
         rice, tarpaulins and medical kits cannot reach Petit-Goave; families sleep outside.",
    ];
    let encs: Vec<_> = reports.iter().map(|r| encode(&tok, r).unwrap()).collect();
    let pad = pad_id(&tok);
    let scores_of = |batch: &[&outpost::infer::text::Encoded]| {
        let (ids, mask, types) = pad_batch(batch, pad);
        let emb = model
            .embed_tokens(ids.view(), mask.view(), types.view())
            .unwrap();
        model.score(emb.view()).unwrap()
    };
    let all: Vec<_> = encs.iter().collect();
    let together = scores_of(&all);
    let mut reversed = all.clone();
    reversed.reverse();
    let backwards = scores_of(&reversed);
    let mut max_diff = 0f32;
    for (i, e) in encs.iter().enumerate() {
        let alone = scores_of(&[e]);
        for (j, &a) in alone.row(0).iter().enumerate() {
            max_diff = max_diff
                .max((a - together[(i, j)]).abs())
                .max((a - backwards[(encs.len() - 1 - i, j)]).abs());
        }
    }
    eprintln!("crisis-reports: max |alone - in a batch| {max_diff:.2e}");
    assert!(
        max_diff < 1e-5,
        "scores change with batch neighbours: {max_diff}"
    );
}
