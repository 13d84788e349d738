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

/// ../shared/data, or None (tests that need it skip with a message).
pub fn shared_data() -> Option<PathBuf> {
    let p = std::env::var_os("OUTPOST_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data"));
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: shared data not found at {} (set OUTPOST_SHARED_DATA)",
            p.display()
        );
        None
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
