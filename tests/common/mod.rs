//! Helpers shared by the integration tests: tiny but real model bundles written with the
//! agent's own ONNX writer and loaded by real ONNX Runtime, the runtime library of this
//! checkout, and the shared data folder.
#![allow(dead_code)]

use outpost::model::manifest::{
    BackboneSpec, ChannelOrder, FileEntry, HeadSpec, ImageSpec, Manifest, ResizeRule, Task,
    TextSpec,
};
use outpost::model::onnx_writer::{self, Activation, Attr, Dim, ElemType, Graph, Node};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The ONNX Runtime library fetched by scripts/fetch-onnxruntime.sh; panics with the fix.
pub fn ort_lib() -> PathBuf {
    let p = std::env::var_os("OUTPOST_ORT_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".ort/libonnxruntime.so.1.31.1"));
    assert!(
        p.is_file(),
        "ONNX Runtime library missing at {}: run `bash scripts/setup.sh` first",
        p.display()
    );
    p
}

/// Loads ONNX Runtime in this test process.
pub fn init_ort() {
    outpost::model::runtime::init(Some(&ort_lib())).expect("ONNX Runtime loads");
}

/// Whether tests that need the shared data must fail rather than skip without it
/// (`OUTPOST_REQUIRE_SHARED_DATA=1`, set by `scripts/test.sh`, so CI cannot pass by skipping).
pub fn shared_data_required() -> bool {
    std::env::var("OUTPOST_REQUIRE_SHARED_DATA").is_ok_and(|v| v == "1")
}

/// Skips (None, with a message) or, under `OUTPOST_REQUIRE_SHARED_DATA=1`, fails.
fn missing_shared(what: String) -> Option<PathBuf> {
    assert!(
        !shared_data_required(),
        "{what}, and OUTPOST_REQUIRE_SHARED_DATA=1 makes that a failure: point \
         OUTPOST_SHARED_DATA at the shared data folder, or run with OUTPOST_REQUIRE_SHARED_DATA=0 \
         to skip these tests"
    );
    eprintln!("SKIP: {what} (set OUTPOST_SHARED_DATA)");
    None
}

/// ../shared/data (or `OUTPOST_SHARED_DATA`), or None: tests that need it skip with a
/// message, or fail under `OUTPOST_REQUIRE_SHARED_DATA=1`.
pub fn shared_data() -> Option<PathBuf> {
    let p = std::env::var_os("OUTPOST_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data"));
    if p.is_dir() {
        Some(p)
    } else {
        missing_shared(format!("shared data not found at {}", p.display()))
    }
}

/// A folder inside the shared data (`damage/damage`), or None as [`shared_data`] says.
pub fn shared_subdir(rel: &str) -> Option<PathBuf> {
    let root = shared_data()?;
    let p = root.join(rel);
    if p.is_dir() {
        Some(p)
    } else {
        missing_shared(format!("{} has no {rel}", root.display()))
    }
}

/// The path of the built `outpost` binary.
pub fn outpost_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_outpost"))
}

/// Labels of the tiny image model: which channel is brightest.
pub const IMAGE_LABELS: [&str; 3] = ["red", "green", "blue"];

/// Head weights of the tiny image model: scores = softmax(10 * mean channel values).
pub fn tiny_image_head() -> (Vec<f32>, Vec<f32>) {
    let mut w = vec![0.0f32; 9];
    for i in 0..3 {
        w[i * 3 + i] = 10.0;
    }
    (w, vec![0.0; 3])
}

fn write_manifest(dir: &Path, mut m: Manifest) -> Manifest {
    m.files = outpost::model::bundle::hash_folder(dir).expect("hash bundle");
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    m
}

/// A tiny image bundle: backbone = per-channel mean of the normalised image (3-d
/// embedding), head = softmax over 10x the embedding. Input 16x16, mean 0.5, std 0.5.
pub fn make_image_bundle(dir: &Path, name: &str, version: &str) -> Manifest {
    std::fs::create_dir_all(dir).unwrap();
    let batch = Dim::Named("batch".into());
    let backbone = Graph {
        name: "backbone".into(),
        nodes: vec![
            Node::new("GlobalAveragePool", &["image"], &["pooled"]),
            Node::new("Flatten", &["pooled"], &["embedding"]).attr("axis", Attr::Int(1)),
        ],
        initializers: vec![],
        inputs: vec![(
            "image".into(),
            ElemType::Float,
            vec![batch.clone(), Dim::Fixed(3), Dim::Fixed(16), Dim::Fixed(16)],
        )],
        outputs: vec![(
            "embedding".into(),
            ElemType::Float,
            vec![batch, Dim::Fixed(3)],
        )],
        ..Default::default()
    };
    std::fs::write(
        dir.join("backbone.onnx"),
        onnx_writer::encode_model(&backbone, "outpost-tests"),
    )
    .unwrap();
    let (w, b) = tiny_image_head();
    std::fs::write(
        dir.join("head.onnx"),
        onnx_writer::linear_head("embedding", "scores", 3, 3, &w, &b, Activation::Softmax),
    )
    .unwrap();
    write_manifest(
        dir,
        Manifest {
            format: 1,
            name: name.into(),
            version: version.into(),
            task: Task::ImageClassification,
            multi_label: false,
            description: "test model: brightest channel".into(),
            backbone: BackboneSpec {
                file: "backbone.onnx".into(),
                output: "embedding".into(),
                embedding_dim: 3,
                batch_independent: false,
            },
            head: HeadSpec {
                file: "head.onnx".into(),
                input: "embedding".into(),
                output: "scores".into(),
            },
            labels: IMAGE_LABELS.iter().map(|s| s.to_string()).collect(),
            thresholds: None,
            image: Some(ImageSpec {
                input: "image".into(),
                height: 16,
                width: 16,
                channel_order: ChannelOrder::Rgb,
                mean: [0.5; 3],
                std: [0.5; 3],
                resize: ResizeRule::Bilinear,
            }),
            text: None,
            golden: None,
            reference_stats: None,
            base_data: None,
            files: BTreeMap::<String, FileEntry>::new(),
        },
    )
}

/// Vocabulary of the tiny text model.
pub const TEXT_VOCAB: [&str; 16] = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "water", "food", "help", "need", "we", "the", "bridge",
    "flood", "##s", "road", "is", "out",
];
/// Labels of the tiny text model.
pub const TEXT_LABELS: [&str; 3] = ["water", "food", "infrastructure"];

/// A tiny multi-label text bundle: a WordPiece tokenizer, a backbone that mean-pools a
/// one-hot embedding table over the attention mask, and a sigmoid head that fires on the
/// words "water", "food", and "bridge"/"road".
pub fn make_text_bundle(dir: &Path, name: &str, version: &str) -> Manifest {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::bert::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;
    std::fs::create_dir_all(dir).unwrap();
    let vocab_file = dir.with_extension("vocab.txt");
    std::fs::write(&vocab_file, TEXT_VOCAB.join("\n")).unwrap();
    let wp = WordPiece::from_file(&vocab_file.to_string_lossy())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(wp);
    let _ = tok.with_normalizer(Some(BertNormalizer::default()));
    let _ = tok.with_pre_tokenizer(Some(BertPreTokenizer));
    let _ = tok.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), 3),
        ("[CLS]".into(), 2),
    )));
    tok.save(dir.join("tokenizer.json"), false).unwrap();

    let v = TEXT_VOCAB.len();
    let d = v; // one-hot embedding
    let mut table = vec![0.0f32; v * d];
    for i in 0..v {
        table[i * d + i] = 1.0;
    }
    let batch = Dim::Named("batch".into());
    let tokens = Dim::Named("tokens".into());
    let g = Graph {
        name: "backbone".into(),
        nodes: vec![
            Node::new("Gather", &["table", "input_ids"], &["emb"]).attr("axis", Attr::Int(0)),
            Node::new("Cast", &["attention_mask"], &["maskf"]).attr("to", Attr::Int(1)),
            Node::new("Unsqueeze", &["maskf", "axis2"], &["mask3"]),
            Node::new("Mul", &["emb", "mask3"], &["masked"]),
            Node::new("ReduceSum", &["masked", "axis1"], &["summed"])
                .attr("keepdims", Attr::Int(0)),
            Node::new("ReduceSum", &["mask3", "axis1"], &["count"]).attr("keepdims", Attr::Int(0)),
            Node::new("Div", &["summed", "count"], &["embedding"]),
        ],
        initializers: vec![("table".into(), vec![v as i64, d as i64], table)],
        inputs: vec![
            (
                "input_ids".into(),
                ElemType::Int64,
                vec![batch.clone(), tokens.clone()],
            ),
            (
                "attention_mask".into(),
                ElemType::Int64,
                vec![batch.clone(), tokens.clone()],
            ),
            (
                "token_type_ids".into(),
                ElemType::Int64,
                vec![batch.clone(), tokens],
            ),
        ],
        outputs: vec![(
            "embedding".into(),
            ElemType::Float,
            vec![batch, Dim::Fixed(d as i64)],
        )],
        int_initializers: vec![
            ("axis1".into(), vec![1], vec![1]),
            ("axis2".into(), vec![1], vec![2]),
        ],
    };
    std::fs::write(
        dir.join("backbone.onnx"),
        onnx_writer::encode_model(&g, "outpost-tests"),
    )
    .unwrap();
    // Head: label k fires when its words make up a good part of the report.
    let mut w = vec![0.0f32; 3 * d];
    let idx = |word: &str| TEXT_VOCAB.iter().position(|w| *w == word).unwrap();
    w[idx("water")] = 20.0;
    w[d + idx("food")] = 20.0;
    w[2 * d + idx("bridge")] = 20.0;
    w[2 * d + idx("road")] = 20.0;
    let b = vec![-2.0f32; 3];
    std::fs::write(
        dir.join("head.onnx"),
        onnx_writer::linear_head("embedding", "scores", d, 3, &w, &b, Activation::Sigmoid),
    )
    .unwrap();
    write_manifest(
        dir,
        Manifest {
            format: 1,
            name: name.into(),
            version: version.into(),
            task: Task::TextClassification,
            multi_label: true,
            description: "test model: keyword categories".into(),
            backbone: BackboneSpec {
                file: "backbone.onnx".into(),
                output: "embedding".into(),
                embedding_dim: d,
                // A float network: each report's row is computed on its own.
                batch_independent: true,
            },
            head: HeadSpec {
                file: "head.onnx".into(),
                input: "embedding".into(),
                output: "scores".into(),
            },
            labels: TEXT_LABELS.iter().map(|s| s.to_string()).collect(),
            thresholds: Some(vec![0.5; 3]),
            image: None,
            text: Some(TextSpec {
                tokenizer: "tokenizer.json".into(),
                max_length: 16,
                input_ids: "input_ids".into(),
                attention_mask: "attention_mask".into(),
                token_type_ids: Some("token_type_ids".into()),
            }),
            golden: None,
            reference_stats: None,
            base_data: None,
            files: BTreeMap::new(),
        },
    )
}

/// Writes a solid-colour PNG.
pub fn solid_png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
        .save(path)
        .unwrap();
}

/// The path of the built `outpost-server` binary.
pub fn server_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_outpost-server"))
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An `outpost-server serve` process, killed when dropped.
pub struct ServerProcess {
    child: std::process::Child,
    /// Its port.
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its data folder.
    pub data: PathBuf,
}

impl ServerProcess {
    /// Starts the server on `port` and waits until it accepts connections.
    pub fn start(data: &Path, port: u16) -> ServerProcess {
        ServerProcess::start_with(data, port, &[])
    }

    /// Starts the server with extra global arguments (`--config FILE`).
    pub fn start_with(data: &Path, port: u16, extra: &[&str]) -> ServerProcess {
        let mut child = std::process::Command::new(server_bin())
            .args(extra)
            .args([
                "--data-dir",
                data.to_str().unwrap(),
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return ServerProcess {
                    child,
                    port,
                    url: format!("http://127.0.0.1:{port}"),
                    data: data.to_path_buf(),
                };
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("outpost-server did not start on port {port}");
    }

    /// The process id (for /proc/PID/status and /proc/PID/fd).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// kill -9, then wait.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs an `outpost-server` admin command: (exit code, stdout, stderr).
pub fn server_cmd(data: &Path, args: &[&str]) -> (i32, String, String) {
    let o = std::process::Command::new(server_bin())
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// Registers a device and returns its one-time enrollment code.
pub fn add_device(data: &Path, name: &str) -> String {
    let (code, out, err) = server_cmd(
        data,
        &["devices", "add", "--name", name, "--group", "north"],
    );
    assert_eq!(code, 0, "{out}{err}");
    out.lines()
        .map(str::trim)
        .find(|l| l.len() == 24 && l.matches('-').count() == 4)
        .unwrap_or_else(|| panic!("no enrollment code in {out}"))
        .to_string()
}

/// An `outpost` command for the agent living in `root` (`root/data`, `root/models`).
pub fn agent_cmd(root: &Path, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(outpost_bin());
    c.arg("--data-dir")
        .arg(root.join("data"))
        .arg("--models-dir")
        .arg(root.join("models"))
        .arg("--ort-lib")
        .arg(ort_lib())
        .args(args)
        .env_remove("OUTPOST_CONFIG");
    c
}

/// Runs an agent command: (exit code, stdout, stderr).
pub fn agent(root: &Path, args: &[&str]) -> (i32, String, String) {
    let o = agent_cmd(root, args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// Feedback waiting in an agent's outbox.
pub fn pending(root: &Path) -> i64 {
    let c = rusqlite::Connection::open(root.join("data/agent.db")).unwrap();
    c.query_row(
        "SELECT COUNT(*) FROM outbox WHERE acked_at IS NULL",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// A fresh schema in the test PostgreSQL database, dropped with everything in it when this
/// value is dropped. `url` points the server at it (`search_path`).
pub struct PgSchema {
    /// `postgres://...?options=-csearch_path%3D<schema>`.
    pub url: String,
    /// The schema's name.
    pub name: String,
    admin: String,
}

/// PostgreSQL for the tests: `$OUTPOST_TEST_POSTGRES` or
/// `postgres://postgres@127.0.0.1:5432/test`. Creates a schema `t_<random>`; `None` (with a
/// SKIP message) when PostgreSQL is unreachable, unless `OUTPOST_REQUIRE_POSTGRES=1`, which
/// makes that a failure (CI sets it: there PostgreSQL must be running).
pub fn pg_schema() -> Option<PgSchema> {
    let admin = std::env::var("OUTPOST_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut client = match postgres::Client::connect(&admin, postgres::NoTls) {
        Ok(c) => c,
        Err(e) => {
            if std::env::var("OUTPOST_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("PostgreSQL at {admin} is required (OUTPOST_REQUIRE_POSTGRES=1): {e}. Start it, point OUTPOST_TEST_POSTGRES at one, or run with OUTPOST_REQUIRE_POSTGRES=0 to skip these tests");
            }
            eprintln!("SKIP: PostgreSQL not reachable at {admin} ({e}); set OUTPOST_TEST_POSTGRES");
            return None;
        }
    };
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE SCHEMA {name}"))
        .expect("create test schema");
    let sep = if admin.contains('?') { '&' } else { '?' };
    Some(PgSchema {
        url: format!("{admin}{sep}options=-csearch_path%3D{name}"),
        name,
        admin,
    })
}

impl PgSchema {
    /// A direct connection into the schema (for checks the store does not offer).
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("connect to test schema")
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}

/// Fills the agent database `db` with `n` report items, a prediction each and one pending
/// feedback decision each (in the outbox, ready to sync). `salt` makes the items distinct
/// between agents. Embeddings are 384 pseudo-random float values, as real ones are.
pub fn seed_feedback(db: &Path, n: usize, salt: &str) {
    use outpost::store::feedback::{LabelSpace, NewFeedback};
    use outpost::store::{NewItem, NewPrediction, Store};
    let mut store = Store::open(db).unwrap();
    let run = store.begin_run(&["test".into()]).unwrap();
    let labels: Vec<String> = (0..8).map(|i| format!("category_{i}")).collect();
    let mut items = Vec::new();
    let mut preds = Vec::new();
    for i in 0..n {
        let id = outpost::hash::sha256_hex(format!("{salt} report {i}").as_bytes());
        let mut x = outpost::hash::sha256_hex(id.as_bytes())
            .bytes()
            .fold(1u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64));
        let emb: Vec<f32> = (0..384)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 20_001) as f32 / 10_000.0 - 1.0
            })
            .collect();
        items.push(NewItem {
            item_id: id.clone(),
            kind: "text",
            source: "reports.csv".into(),
            locator: Some(format!("row {i}")),
            size: None,
            geometry: None,
            content: format!("{salt} report {i}: we need water").into_bytes(),
            content_type: "text/plain",
        });
        preds.push(NewPrediction {
            item_id: id,
            model_name: "crisis-reports".into(),
            model_version: "1.0.0".into(),
            labels: vec!["category_1".into()],
            top_label: "category_1".into(),
            top_score: 0.7,
            scores: vec![0.1; 8],
            embedding: emb,
            truncated: false,
            preprocess_ms: 0.0,
            infer_ms: 0.0,
        });
    }
    store.save_batch(run, &items, &preds).unwrap();
    let space = LabelSpace {
        labels: labels.clone(),
        multi_label: true,
    };
    for (i, it) in items.iter().enumerate() {
        store
            .give_feedback(
                &NewFeedback {
                    item_id: it.item_id.clone(),
                    model_name: "crisis-reports".into(),
                    labels: vec![labels[i % 8].clone()],
                    annotator: "test".into(),
                    include_content: false,
                    declared_new: Vec::new(),
                },
                &space,
            )
            .unwrap();
    }
}

/// The feedback ids waiting in an agent's outbox.
pub fn outbox_ids(db: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c
        .prepare("SELECT feedback_id FROM outbox ORDER BY 1")
        .unwrap();
    let ids = st
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<Vec<String>, _>>()
        .unwrap();
    ids
}

/// The tiny image bundle with base training data: embeddings near each colour's corner.
pub fn bundle_with_base_data(dir: &Path) {
    make_image_bundle(dir, "colours", "1.0.0");
    let mut emb = Vec::new();
    let mut labels = Vec::new();
    for class in 0..3u8 {
        for i in 0..40 {
            let jitter = ((i * 7 % 11) as f32 - 5.0) / 50.0;
            for c in 0..3u8 {
                let v = if c == class {
                    0.8 + jitter
                } else {
                    -0.8 - jitter
                };
                emb.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
            labels.push(class);
        }
    }
    use safetensors::tensor::TensorView;
    let bytes = safetensors::tensor::serialize(
        [
            (
                "embeddings",
                TensorView::new(safetensors::Dtype::F16, vec![120, 3], &emb).unwrap(),
            ),
            (
                "labels",
                TensorView::new(safetensors::Dtype::U8, vec![120], &labels).unwrap(),
            ),
        ],
        None,
    )
    .unwrap();
    std::fs::write(dir.join("base_data.safetensors"), bytes).unwrap();
    let mut m = outpost::model::bundle::read_manifest(dir).unwrap();
    m.base_data = Some("base_data.safetensors".into());
    m.files = outpost::model::bundle::hash_folder(dir).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
}

/// Every file under `dir` that contains `needle` (the "stolen laptop" searches).
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for e in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if !e.file_type().is_file() {
            continue;
        }
        let bytes = std::fs::read(e.path()).unwrap_or_default();
        if bytes.windows(needle.len()).any(|w| w == needle) {
            hits.push(e.path().display().to_string());
        }
    }
    hits
}
