//! A minimal writer for ONNX model files (protobuf), enough for small graphs: the heads
//! that the server retrains (Gemm + Softmax or Sigmoid) and the tiny models the tests build.
//!
//! ONNX files are protobuf messages (`onnx.proto`, proto2). Pulling in a protobuf code
//! generator and the 1,000-line schema for the handful of fields a head needs would cost
//! more than these hundred lines; the field numbers below are those of `onnx.proto`.
//! Every file written here is checked by loading it in ONNX Runtime in the tests.

/// Element types used here (`TensorProto.DataType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    /// float32
    Float = 1,
    /// int64
    Int64 = 7,
}

/// A node attribute.
#[derive(Debug, Clone)]
pub enum Attr {
    /// A float.
    Float(f32),
    /// An integer.
    Int(i64),
    /// A list of integers.
    Ints(Vec<i64>),
}

/// One operator in the graph.
#[derive(Debug, Clone)]
pub struct Node {
    /// Operator type, such as `Gemm`.
    pub op_type: String,
    /// Input value names.
    pub inputs: Vec<String>,
    /// Output value names.
    pub outputs: Vec<String>,
    /// Attributes by name.
    pub attrs: Vec<(String, Attr)>,
}

impl Node {
    /// A node without attributes.
    pub fn new(op: &str, inputs: &[&str], outputs: &[&str]) -> Node {
        Node {
            op_type: op.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            attrs: Vec::new(),
        }
    }
    /// Adds an attribute.
    pub fn attr(mut self, name: &str, a: Attr) -> Node {
        self.attrs.push((name.into(), a));
        self
    }
}

/// A dimension of a graph input or output: fixed, or named (dynamic, such as the batch).
#[derive(Debug, Clone)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A symbolic size.
    Named(String),
}

/// A graph: nodes, float32 constants, inputs and outputs.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// Graph name.
    pub name: String,
    /// Operators in topological order.
    pub nodes: Vec<Node>,
    /// Constants: (name, shape, float32 values).
    pub initializers: Vec<(String, Vec<i64>, Vec<f32>)>,
    /// Integer constants: (name, shape, int64 values), such as axes.
    pub int_initializers: Vec<(String, Vec<i64>, Vec<i64>)>,
    /// Graph inputs: (name, element type, shape).
    pub inputs: Vec<(String, ElemType, Vec<Dim>)>,
    /// Graph outputs: (name, element type, shape).
    pub outputs: Vec<(String, ElemType, Vec<Dim>)>,
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, ((field as u64) << 3) | wire as u64);
}
fn int_field(out: &mut Vec<u8>, field: u32, v: i64) {
    key(out, field, 0);
    varint(out, v as u64);
}
fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}
fn float_field(out: &mut Vec<u8>, field: u32, f: f32) {
    key(out, field, 5);
    out.extend_from_slice(&f.to_le_bytes());
}

fn value_info(name: &str, t: ElemType, dims: &[Dim]) -> Vec<u8> {
    let mut shape = Vec::new();
    for d in dims {
        let mut dim = Vec::new();
        match d {
            Dim::Fixed(v) => int_field(&mut dim, 1, *v),
            Dim::Named(s) => bytes_field(&mut dim, 2, s.as_bytes()),
        }
        bytes_field(&mut shape, 1, &dim);
    }
    let mut tensor = Vec::new();
    int_field(&mut tensor, 1, t as i64);
    bytes_field(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    bytes_field(&mut ty, 1, &tensor);
    let mut vi = Vec::new();
    bytes_field(&mut vi, 1, name.as_bytes());
    bytes_field(&mut vi, 2, &ty);
    vi
}

fn tensor(name: &str, dims: &[i64], elem: ElemType, raw: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    for d in dims {
        int_field(&mut t, 1, *d);
    }
    int_field(&mut t, 2, elem as i64);
    bytes_field(&mut t, 8, name.as_bytes());
    bytes_field(&mut t, 9, raw);
    t
}

fn node(n: &Node) -> Vec<u8> {
    let mut out = Vec::new();
    for i in &n.inputs {
        bytes_field(&mut out, 1, i.as_bytes());
    }
    for o in &n.outputs {
        bytes_field(&mut out, 2, o.as_bytes());
    }
    bytes_field(&mut out, 4, n.op_type.as_bytes());
    for (name, a) in &n.attrs {
        let mut at = Vec::new();
        bytes_field(&mut at, 1, name.as_bytes());
        match a {
            Attr::Float(f) => {
                float_field(&mut at, 2, *f);
                int_field(&mut at, 20, 1);
            }
            Attr::Int(i) => {
                int_field(&mut at, 3, *i);
                int_field(&mut at, 20, 2);
            }
            Attr::Ints(v) => {
                for i in v {
                    int_field(&mut at, 8, *i);
                }
                int_field(&mut at, 20, 7);
            }
        }
        bytes_field(&mut out, 5, &at);
    }
    out
}

/// Serialises a model: IR version 8, default-domain opset 17.
pub fn encode_model(g: &Graph, producer: &str) -> Vec<u8> {
    let mut graph = Vec::new();
    for n in &g.nodes {
        bytes_field(&mut graph, 1, &node(n));
    }
    bytes_field(&mut graph, 2, g.name.as_bytes());
    for (name, dims, values) in &g.initializers {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        bytes_field(&mut graph, 5, &tensor(name, dims, ElemType::Float, &raw));
    }
    for (name, dims, values) in &g.int_initializers {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        bytes_field(&mut graph, 5, &tensor(name, dims, ElemType::Int64, &raw));
    }
    for (name, t, dims) in &g.inputs {
        bytes_field(&mut graph, 11, &value_info(name, *t, dims));
    }
    for (name, t, dims) in &g.outputs {
        bytes_field(&mut graph, 12, &value_info(name, *t, dims));
    }
    let mut model = Vec::new();
    int_field(&mut model, 1, 8); // ir_version
    bytes_field(&mut model, 2, producer.as_bytes());
    bytes_field(&mut model, 3, env!("CARGO_PKG_VERSION").as_bytes());
    bytes_field(&mut model, 7, &graph);
    let mut opset = Vec::new();
    bytes_field(&mut opset, 1, b"");
    int_field(&mut opset, 2, 17);
    bytes_field(&mut model, 8, &opset);
    model
}

/// Final activation of a linear head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// One label per item.
    Softmax,
    /// Independent labels.
    Sigmoid,
}

/// A linear head `act(x W^T + b)`: `weights` is `[labels, dim]` row-major.
pub fn linear_head(
    input: &str,
    output: &str,
    dim: usize,
    labels: usize,
    weights: &[f32],
    bias: &[f32],
    act: Activation,
) -> Vec<u8> {
    assert_eq!(weights.len(), dim * labels, "weights must be [labels, dim]");
    assert_eq!(bias.len(), labels, "one bias per label");
    let batch = Dim::Named("batch".into());
    let g = Graph {
        name: "head".into(),
        nodes: vec![
            Node::new("Gemm", &[input, "W", "b"], &["logits"]).attr("transB", Attr::Int(1)),
            match act {
                Activation::Softmax => {
                    Node::new("Softmax", &["logits"], &[output]).attr("axis", Attr::Int(-1))
                }
                Activation::Sigmoid => Node::new("Sigmoid", &["logits"], &[output]),
            },
        ],
        initializers: vec![
            (
                "W".into(),
                vec![labels as i64, dim as i64],
                weights.to_vec(),
            ),
            ("b".into(), vec![labels as i64], bias.to_vec()),
        ],
        int_initializers: vec![],
        inputs: vec![(
            input.into(),
            ElemType::Float,
            vec![batch.clone(), Dim::Fixed(dim as i64)],
        )],
        outputs: vec![(
            output.into(),
            ElemType::Float,
            vec![batch, Dim::Fixed(labels as i64)],
        )],
    };
    encode_model(&g, "outpost")
}
