//! A program: the one description of a computation that every backend executes with its
//! own ops and autograd. JSON on disk (`parity-report run FILE`), this data type in memory.
//!
//! ```json
//! { "format": "backprop-parity/program", "version": 1,
//!   "inputs": [ { "name": "x", "shape": [2, 3], "values": [[1, 2, 3], [4, 5, 6]] },
//!               { "name": "w", "shape": [4, 3], "role": "param", "fill": 0.5 } ],
//!   "nodes":  [ { "id": "y", "op": "linear", "inputs": ["x", "w"] },
//!               { "id": "loss", "op": "sum", "inputs": ["y"] } ],
//!   "loss": "loss" }
//! ```
//!
//! The A/B/C problem, the per-op tests and the nine seed models are programs too.

mod check;
mod ops;

use serde::{Deserialize, Serialize};

use crate::host::HostTensor;

pub use check::{check, check_input_value, infer, labels_of, pooled_len, reduced_dims, resolve_inputs, values_json, values_to_tensor, Checked};
pub use ops::{GeluApproximate, Op, Reduction};

/// The `format` string every program file carries.
pub const FORMAT: &str = "backprop-parity/program";
/// The format version this build reads and writes.
pub const VERSION: u32 = 1;

/// What an input is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Data: given each run, differentiated only when `requires_grad` says so.
    #[default]
    Input,
    /// A trained parameter: differentiated, and updated by the optimiser.
    Param,
    /// A buffer the ops read and training-mode ops update (batch norm's running
    /// statistics), or a dropout mask. Never differentiated.
    State,
}

/// The element type of an input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// Floating point in the run's dtype.
    #[default]
    Float,
    /// Non-negative integers (class labels).
    Index,
}

/// A named input of a program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputDecl {
    pub name: String,
    pub shape: Vec<usize>,
    #[serde(default)]
    pub role: Role,
    #[serde(default, rename = "dtype")]
    pub value_type: ValueType,
    /// Defaults to true for parameters and false otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_grad: Option<bool>,
    /// Row-major values: a flat list or nested lists matching `shape`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<serde_json::Value>,
    /// Every entry this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill: Option<f64>,
    /// NaN and infinity in given values are refused unless this says they are meant.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_non_finite: bool,
}

impl InputDecl {
    pub fn new(name: &str, shape: &[usize], role: Role) -> Self {
        InputDecl {
            name: name.to_string(),
            shape: shape.to_vec(),
            role,
            value_type: ValueType::Float,
            requires_grad: None,
            values: None,
            fill: None,
            allow_non_finite: false,
        }
    }

    /// Whether backends compute a gradient for this input.
    pub fn needs_grad(&self) -> bool {
        self.value_type == ValueType::Float && self.role != Role::State && self.requires_grad.unwrap_or(self.role == Role::Param)
    }
}

/// One op applied to earlier values (inputs or nodes), by name. An optional input of
/// an op (a bias, batch norm's affine weights or running statistics) may be `null`.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub id: String,
    pub op: Op,
    pub inputs: Vec<Option<String>>,
}

/// A value the program reports; with a cotangent, its backward contributes
/// `Σ value ⊙ cotangent` to the differentiated scalar.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cotangent: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Program {
    pub format: String,
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub inputs: Vec<InputDecl>,
    pub nodes: Vec<Node>,
    /// The scalar node whose gradient is taken. Without it, the outputs' cotangents
    /// define the backward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<Output>,
    /// Optional training: after the gradient, `steps` updates of every parameter (each
    /// after a new forward and backward), so an optimiser's rule is compared too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<Train>,
}

/// SGD as PyTorch's `torch.optim.SGD`: `p -= lr·g` without momentum, `v = m·v + g;
/// p -= lr·v` with it (no dampening, no Nesterov, no weight decay).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Train {
    pub steps: usize,
    pub lr: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
}

/// Training steps a program may ask for.
pub const MAX_TRAIN_STEPS: usize = 1000;

impl Default for Program {
    fn default() -> Self {
        Program { format: FORMAT.into(), version: VERSION, description: None, inputs: vec![], nodes: vec![], loss: None, outputs: vec![], train: None }
    }
}

/// A value of a program while it is being built: its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ValueId(pub String);

impl Program {
    /// Declares a float input.
    pub fn input(&mut self, name: &str, shape: &[usize]) -> ValueId {
        self.declare(InputDecl::new(name, shape, Role::Input))
    }

    /// Declares a trained parameter.
    pub fn param(&mut self, name: &str, shape: &[usize]) -> ValueId {
        self.declare(InputDecl::new(name, shape, Role::Param))
    }

    /// Declares a state input (running statistics, a dropout mask).
    pub fn state(&mut self, name: &str, shape: &[usize]) -> ValueId {
        self.declare(InputDecl::new(name, shape, Role::State))
    }

    /// Declares class labels.
    pub fn labels(&mut self, name: &str, n: usize) -> ValueId {
        let mut d = InputDecl::new(name, &[n], Role::Input);
        d.value_type = ValueType::Index;
        self.declare(d)
    }

    pub fn declare(&mut self, decl: InputDecl) -> ValueId {
        let id = ValueId(decl.name.clone());
        self.inputs.push(decl);
        id
    }

    /// Appends `op(args)` under a generated id (`n<index>`) and returns its value.
    pub fn op(&mut self, op: Op, args: &[&ValueId]) -> ValueId {
        let id = format!("n{}", self.nodes.len());
        self.node(&id, op, &args.iter().map(|a| Some(*a)).collect::<Vec<_>>())
    }

    /// Appends `op(args)` as `id`; `None` leaves an optional input out.
    pub fn node(&mut self, id: &str, op: Op, args: &[Option<&ValueId>]) -> ValueId {
        self.nodes.push(Node { id: id.to_string(), op, inputs: args.iter().map(|a| a.map(|v| v.0.clone())).collect() });
        ValueId(id.to_string())
    }

    /// Makes `v` the differentiated scalar.
    pub fn set_loss(&mut self, v: &ValueId) {
        self.loss = Some(v.0.clone());
    }

    pub fn add_output(&mut self, v: &ValueId) {
        self.outputs.push(Output { value: v.0.clone(), cotangent: None });
    }

    /// Indices of the inputs that receive gradients.
    pub fn grad_inputs(&self) -> impl Iterator<Item = (usize, &InputDecl)> {
        self.inputs.iter().enumerate().filter(|(_, d)| d.needs_grad())
    }

    /// Indices of the trained parameters.
    pub fn params(&self) -> impl Iterator<Item = (usize, &InputDecl)> {
        self.inputs.iter().enumerate().filter(|(_, d)| d.role == Role::Param)
    }

    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|d| d.name == name)
    }

    /// The same computation in evaluation mode: dropout off, batch norm on running
    /// statistics.
    pub fn in_eval_mode(&self) -> Program {
        let mut p = self.clone();
        for n in &mut p.nodes {
            n.op = n.op.in_eval_mode();
        }
        p
    }

    /// One op applied to trainable inputs `a`, `b`, `c` of the given shapes (`None`
    /// leaves an optional input out), reduced to a scalar: the per-op test harness.
    /// Batch norm's outputs always sum to 0 and softmax's rows to 1, so a plain sum
    /// would have a zero gradient: those are bent through tanh first.
    pub fn single(op: Op, shapes: &[Option<Vec<usize>>]) -> Program {
        let mut p = Program::default();
        let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let mut args = Vec::new();
        for (i, s) in shapes.iter().enumerate() {
            args.push(s.as_ref().map(|s| {
                if op.takes_index(i) {
                    let mut d = InputDecl::new(names[i], s, Role::Input);
                    d.value_type = ValueType::Index;
                    p.declare(d)
                } else if op.takes_state(i) {
                    p.state(names[i], s)
                } else {
                    p.param(names[i], s)
                }
            }));
        }
        let refs: Vec<Option<&ValueId>> = args.iter().map(Option::as_ref).collect();
        let op_for_shapes = op.clone();
        let bend = matches!(op, Op::BatchNorm { .. } | Op::Softmax { .. });
        let reduces = match &op {
            Op::Sum {} | Op::Mean {} => true,
            Op::NllLoss { reduction } | Op::CrossEntropy { reduction, .. } | Op::MseLoss { reduction } => *reduction != Reduction::None,
            _ => false,
        };
        // A sum is blind to where each value went, so the ops that move values around are
        // scored by `Σ yᵢ·yᵢ₊₁ + Σ yᵢ` over the flattened output: neighbours matter.
        let moves = matches!(
            op,
            Op::Permute { .. } | Op::Transpose { .. } | Op::Concat { .. } | Op::Narrow { .. } | Op::IndexSelect { .. } | Op::Embedding { .. } | Op::Where {} | Op::MaskedFill { .. }
        );
        let out_len: Option<usize> = {
            let shape_refs: Vec<Option<&[usize]>> = shapes.iter().map(|s| s.as_deref()).collect();
            infer(&op_for_shapes, &shape_refs).ok().map(|s| s.iter().product())
        };
        let mut out = p.node("y", op, &refs);
        if bend {
            out = p.node("bent", Op::Tanh {}, &[Some(&out)]);
        }
        if let (true, Some(n)) = (moves, out_len) {
            let flat = p.node("flat", Op::Reshape { shape: vec![-1] }, &[Some(&out)]);
            let total = p.node("total", Op::Sum {}, &[Some(&flat)]);
            out = if n >= 2 {
                let lo = p.node("lo", Op::Narrow { dim: 0, start: 0, length: n - 1 }, &[Some(&flat)]);
                let hi = p.node("hi", Op::Narrow { dim: 0, start: 1, length: n - 1 }, &[Some(&flat)]);
                let prod = p.node("prod", Op::Mul {}, &[Some(&lo), Some(&hi)]);
                let pairs = p.node("pairs", Op::Sum {}, &[Some(&prod)]);
                p.node("loss", Op::Add {}, &[Some(&pairs), Some(&total)])
            } else {
                total
            };
        } else if !reduces {
            out = p.node("loss", Op::Sum {}, &[Some(&out)]);
        }
        p.set_loss(&out);
        p
    }

    /// Per input: whether some node that the loss (or an output with a cotangent)
    /// depends on reads it, so that a gradient flows to it. Unchecked programs: false.
    pub fn reaches_root(&self) -> Vec<bool> {
        let Ok(c) = check(self) else { return vec![false; self.inputs.len()] };
        let n = self.inputs.len();
        let mut live = vec![false; n + self.nodes.len()];
        for v in c.loss.into_iter().chain(c.outputs.iter().filter(|(_, cot)| cot.is_some()).map(|(v, _)| *v)) {
            live[v] = true;
        }
        for k in (0..self.nodes.len()).rev() {
            if live[n + k] {
                for v in c.args[k].iter().flatten() {
                    live[*v] = true;
                }
            }
        }
        live.truncate(n);
        live
    }

    /// `op` alone with a pseudo-random cotangent: the loss is `Σ op(inputs) ⊙ w`, where `w`
    /// is the last input (data, no gradient; `cotangent(shape)` gives its values), or
    /// the op's output itself when that is a scalar. Unlike a plain sum, a weighted sum
    /// tells every output entry apart, so a backward that permutes, drops or mixes
    /// entries cannot hide behind equal weights. Returns the program and `w`'s shape.
    pub fn weighted(op: Op, shapes: &[Option<Vec<usize>>]) -> std::result::Result<(Program, Option<Vec<usize>>), String> {
        let given: Vec<Option<&[usize]>> = shapes.iter().map(|s| s.as_deref()).collect();
        let out_shape = infer(&op, &given)?;
        let mut p = Program::default();
        let mut args = Vec::new();
        for (i, s) in shapes.iter().enumerate() {
            let name = format!("x{i}");
            args.push(s.as_ref().map(|s| {
                if op.takes_index(i) {
                    let mut d = InputDecl::new(&name, s, Role::Input);
                    d.value_type = ValueType::Index;
                    p.declare(d)
                } else if op.takes_state(i) {
                    p.state(&name, s)
                } else {
                    p.param(&name, s)
                }
            }));
        }
        let refs: Vec<Option<&ValueId>> = args.iter().map(Option::as_ref).collect();
        let y = p.node("y", op, &refs);
        if out_shape.is_empty() {
            p.set_loss(&y);
            return Ok((p, None));
        }
        let w = p.input("w", &out_shape);
        let weighted = p.node("weighted", Op::Mul {}, &[Some(&y), Some(&w)]);
        let loss = p.node("loss", Op::Sum {}, &[Some(&weighted)]);
        p.set_loss(&loss);
        Ok((p, Some(out_shape)))
    }

    /// The cotangent `weighted` programs use: a fixed function of the shape, entries
    /// in ±[0.5, 1.5), all different in magnitude for small outputs.
    pub fn cotangent(shape: &[usize]) -> HostTensor {
        let mut rng = super::rng::SplitMix64::new(0xC07A_1637 ^ shape.iter().fold(17u64, |h, &d| h.wrapping_mul(31).wrapping_add(d as u64)));
        let n: usize = shape.iter().product();
        let data = (0..n).map(|_| {
            let m = rng.uniform(0.5, 1.5);
            if rng.next_u64() % 2 == 0 { m } else { -m }
        }).collect();
        HostTensor { shape: shape.to_vec(), data }
    }

    /// Reads a program file; every problem is one line naming the file and the place.
    pub fn from_json(text: &str) -> std::result::Result<Program, String> {
        let p: Program = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if p.format != FORMAT {
            return Err(format!("\"format\" is '{}'; expected '{FORMAT}'", p.format));
        }
        if p.version != VERSION {
            return Err(format!("\"version\" is {}; this build reads version {VERSION}", p.version));
        }
        Ok(p)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a program serialises")
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    op: String,
    inputs: Vec<Option<String>>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    attrs: serde_json::Map<String, serde_json::Value>,
}

impl Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut attrs = match serde_json::to_value(&self.op).map_err(serde::ser::Error::custom)? {
            serde_json::Value::Object(m) => m,
            _ => unreachable!("ops serialise as objects"),
        };
        attrs.remove("op");
        RawNode { id: self.id.clone(), op: self.op.name().to_string(), inputs: self.inputs.clone(), attrs }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw = RawNode::deserialize(d)?;
        if !Op::NAMES.contains(&raw.op.as_str()) {
            return Err(D::Error::custom(format!("node '{}': unknown op '{}': expected one of {}", raw.id, raw.op, Op::NAMES.join(", "))));
        }
        let mut obj = raw.attrs;
        obj.insert("op".into(), serde_json::Value::String(raw.op.clone()));
        let op: Op = serde_json::from_value(serde_json::Value::Object(obj))
            .map_err(|e| D::Error::custom(format!("node '{}' ({}): attributes: {e}", raw.id, raw.op)))?;
        Ok(Node { id: raw.id, op, inputs: raw.inputs })
    }
}
