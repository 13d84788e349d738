//! `outpost feedback`: give, list, undo, bulk import from CSV, and the checksummed USB
//! export, through the real binary on a real database.

mod common;

use std::path::PathBuf;

fn run(root: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let o = common::agent_cmd(root, args)
        .env("OUTPOST__FEEDBACK__ANNOTATOR", "amina")
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn give_list_undo_import_and_usb_export() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    common::make_image_bundle(&root.join("models/colours"), "colours", "1.0.0");
    let tiles: PathBuf = root.join("tiles");
    std::fs::create_dir_all(&tiles).unwrap();
    for (name, rgb) in [
        ("a", [250, 10, 10]),
        ("b", [10, 250, 10]),
        ("c", [10, 10, 250]),
        ("d", [200, 10, 10]),
    ] {
        common::solid_png(&tiles.join(format!("{name}.png")), 16, 16, rgb);
    }
    let (code, out, err) = run(root, &["analyze", tiles.to_str().unwrap(), "--no-progress"]);
    assert_eq!(code, 0, "{out}{err}");

    // By source file name; a label the model does not know is kept as a new label.
    let (code, _, err) = run(root, &["feedback", "give", "a.png", "flooded"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("not a label of model colours") && err.contains("--new"),
        "{err}"
    );
    let (code, out, err) = run(root, &["feedback", "give", "a.png", "flooded", "--new"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("correct") && out.contains("new: flooded") && out.contains("amina"),
        "{out}"
    );
    let id = out.split_whitespace().next().unwrap().to_string();
    let (code, out, _) = run(root, &["feedback", "give", "b.png", "green"]);
    assert_eq!(code, 0);
    assert!(out.contains("confirm"), "{out}");
    let (code, _, err) = run(root, &["feedback", "give", "b.png", "green", "red"]);
    assert_eq!(code, 1);
    assert!(err.contains("one label per item"), "{err}");

    let (_, out, _) = run(root, &["feedback", "list"]);
    assert!(
        out.starts_with("2 waiting to sync, 0 synced, 2 reviewed today"),
        "{out}"
    );
    let (code, out, _) = run(root, &["feedback", "undo", &id]);
    assert_eq!(code, 0, "{out}");
    let (_, out, _) = run(root, &["feedback", "list", "--pending"]);
    assert!(out.starts_with("1 waiting to sync"), "{out}");

    // Bulk import: good rows land, bad rows are named and refused.
    let csv = root.join("labels.csv");
    std::fs::write(
        &csv,
        "source,label\nc.png,blue\nd.png,red\nmissing.png,red\nc.png,\n",
    )
    .unwrap();
    let (code, out, err) = run(root, &["feedback", "import", csv.to_str().unwrap()]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("imported 2 decisions") && out.contains("2 rows refused"),
        "{out}"
    );
    assert!(
        err.contains("row 4") && err.contains("missing.png") && err.contains("row 5"),
        "{err}"
    );

    // USB export: the pending outbox, checksummed; a damaged copy is detected.
    let usb = root.join("outbox.feedback");
    let (code, out, _) = run(root, &["feedback", "export", usb.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let (header, records) = outpost::store::usb::read(&usb).unwrap();
    assert_eq!(header.records, 3);
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r.embedding().unwrap().len() == 3));
    assert!(
        records.iter().all(|r| r.content.is_some()),
        "tiles travel by default"
    );
    let text = std::fs::read_to_string(&usb).unwrap();
    std::fs::write(&usb, text.replacen("\"blue\"", "\"bleu\"", 1)).unwrap();
    let err = outpost::store::usb::read(&usb).unwrap_err().to_string();
    assert!(err.contains("damaged") && err.contains("checksum"), "{err}");
    std::fs::write(&usb, &text[..text.len() - 20]).unwrap();
    assert!(outpost::store::usb::read(&usb).is_err());
}
