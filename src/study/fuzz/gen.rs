//! Random well-typed programs: a DAG built op by op from the values made so far (so values
//! fan out, and a binary op may take one value twice), small shapes with odd, non-square
//! and size-one dimensions, attributes over their valid domain, every shape checked by
//! the program format's own inference. Values come from one of several regimes, among
//! them exact ties and zeros at kinks, where frameworks' backward rules differ most.

use serde::Serialize;

use crate::host::HostTensor;
use crate::models::program::infer;
use crate::models::rng::SplitMix64;
use crate::models::program::Reduction;
use crate::models::{InputDecl, Op, Program, Role, ValueType};

/// How the input values are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Regime {
    /// Uniform in (-1, 1).
    Ordinary,
    /// Small integers in {-1, 0, 1, 2}: equal values in one pooling window, exact zeros
    /// at ReLU's kink.
    Ties,
    /// Uniform in (-100, 100).
    Large,
}

impl Regime {
    pub const ALL: [Regime; 3] = [Regime::Ordinary, Regime::Ties, Regime::Large];

    pub fn draw(self, rng: &mut SplitMix64) -> f64 {
        match self {
            Regime::Ordinary => rng.uniform(-1.0, 1.0),
            Regime::Ties => (rng.next_u64() % 4) as f64 - 1.0,
            Regime::Large => rng.uniform(-100.0, 100.0),
        }
    }
}

/// The ops the generator draws from. `cross_entropy` and `nll_loss` end a program (on a
/// `[N, C]` value, with labels) instead of the sum; `dropout` draws its own 0/1 mask and
/// `batch_norm` its running statistics when it has them.
pub const OPS: [&str; 29] = [
    "add", "sub", "mul", "neg", "square", "relu", "sigmoid", "tanh", "matmul", "linear", "max_pool2d", "conv2d", "batch_norm", "softmax",
    "log_softmax", "flatten", "mean", "dropout", "cross_entropy", "nll_loss", "gelu", "silu", "elu", "leaky_relu", "softplus", "abs", "clamp",
    "pow", "maximum",
];

/// What an input of a generated program holds, by the generator's names for them: the
/// shrinker draws simpler values by the same rule, so labels stay class indices, masks
/// 0 or 1 and variances positive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    Values,
    /// Class indices below `classes`.
    Labels { classes: usize },
    /// A dropout mask: 0 or 1.
    Mask,
    /// A running variance: positive.
    Variance,
}

/// The kind of every input of `program` (one of the generator's).
pub fn input_kinds(program: &Program) -> Vec<InputKind> {
    let checked = crate::models::program::check(program).ok();
    program
        .inputs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if d.value_type == ValueType::Index {
                // The class count is the width of the scores the labels are read with.
                let classes = checked
                    .as_ref()
                    .and_then(|c| c.args.iter().find(|a| a.get(1).copied().flatten() == Some(i)).and_then(|a| a[0]).map(|x| c.shapes[x][1]))
                    .unwrap_or(1);
                InputKind::Labels { classes }
            } else if d.name.starts_with("mask") {
                InputKind::Mask
            } else if d.name.starts_with("running_var") {
                InputKind::Variance
            } else {
                InputKind::Values
            }
        })
        .collect()
}

impl InputKind {
    /// Entry `e` of an input of this kind, from `regime`.
    pub fn draw(self, regime: Regime, rng: &mut SplitMix64) -> f64 {
        match self {
            InputKind::Values => regime.draw(rng),
            InputKind::Labels { classes } => (rng.next_u64() % classes.max(1) as u64) as f64,
            InputKind::Mask => (rng.next_u64() % 2) as f64,
            InputKind::Variance => regime.draw(rng).abs() + 0.5,
        }
    }

    /// `v` made valid for this kind (a simplified value the shrinker proposes).
    pub fn clamp(self, v: f64) -> f64 {
        match self {
            InputKind::Values => v,
            InputKind::Labels { classes } => (v.abs() as usize % classes.max(1)) as f64,
            InputKind::Mask => (v != 0.0) as u8 as f64,
            InputKind::Variance => v.abs() + 0.5,
        }
    }
}

/// One generated case: the program (values inline, so `parity-report run` replays it)
/// and its inputs.
#[derive(Clone, Debug)]
pub struct Case {
    pub program: Program,
    pub inputs: Vec<HostTensor>,
    pub regime: Regime,
}

/// The case `index` of campaign `seed`: a function of the two alone.
pub fn generate(seed: u64, index: u64, max_nodes: usize, ops: &[&str]) -> Case {
    let mut rng = SplitMix64::new(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let regime = Regime::ALL[(rng.next_u64() % 3) as usize];
    let mut b = Builder { program: Program::default(), shapes: vec![], names: vec![], rng, fixed: vec![] };
    let x = match b.rng.next_u64() % 5 {
        0 | 1 => {
            let dims = [b.dim(1, 2), b.dim(1, 3), b.dim(1, 6), b.dim(1, 6)];
            b.param(&dims)
        }
        2 => {
            // A vector: the seed's `x·B` with a vector x.
            let dims = [b.dim(1, 6)];
            b.param(&dims)
        }
        _ => {
            let dims = [b.dim(1, 4), b.dim(1, 6)];
            b.param(&dims)
        }
    };
    let mut last = x;
    let nodes = 1 + (b.rng.next_u64() as usize) % max_nodes.max(1);
    let losses: Vec<&str> = ops.iter().copied().filter(|o| LOSSES.contains(o)).collect();
    let inner: Vec<&str> = ops.iter().copied().filter(|o| !LOSSES.contains(o)).collect();
    for _ in 0..nodes {
        for _attempt in 0..20 {
            let Some(&op) = inner.get((b.rng.next_u64() as usize) % inner.len().max(1)) else { break };
            if let Some(v) = b.try_op(op, last) {
                last = v;
                break;
            }
        }
    }
    // The differentiated scalar: a loss with labels where one is wanted and the last
    // value is `[N, C]` (always when the loss is the only op asked for), else the sum of
    // the last value (which may already be one).
    let labelled = !losses.is_empty() && b.shapes[last].len() == 2 && (inner.is_empty() || b.rng.next_u64() % 3 == 0);
    let loss = match labelled.then(|| losses[(b.rng.next_u64() as usize) % losses.len()]) {
        Some(name) => b.loss(name, last),
        None if b.shapes[last].is_empty() => last,
        None => b.push(Op::Sum {}, &[Some(last)]).expect("sum takes any shape"),
    };
    b.program.loss = Some(b.name(loss));
    // A quarter of the cases also train: two SGD steps with momentum, so the update rule
    // (and the second step's gradient, from updated parameters and running statistics)
    // is compared too.
    if b.rng.next_u64() % 4 == 0 {
        b.program.train = Some(crate::models::program::Train { steps: 2, lr: 0.1, momentum: Some(0.9) });
    }
    let inputs = b.program.inputs.iter().map(|d| HostTensor::filled(&d.shape, 0.0)).collect::<Vec<_>>();
    let mut case = Case { program: b.program, inputs, regime };
    fill(&mut case, &mut b.rng);
    case
}

/// Ops that end a program instead of the sum.
const LOSSES: [&str; 2] = ["cross_entropy", "nll_loss"];

/// Draws every input's values from the case's regime (labels, masks and variances by
/// their kind) and writes them into the program.
pub fn fill(case: &mut Case, rng: &mut SplitMix64) {
    let kinds = input_kinds(&case.program);
    for ((d, t), kind) in case.program.inputs.iter_mut().zip(case.inputs.iter_mut()).zip(kinds) {
        t.shape = d.shape.clone();
        t.data = (0..d.shape.iter().product::<usize>()).map(|_| kind.draw(case.regime, rng)).collect();
        d.values = Some(serde_json::json!(t.data));
    }
}

/// The values made so far, inputs and nodes, in creation order: (name, shape).
struct Builder {
    program: Program,
    shapes: Vec<Vec<usize>>,
    names: Vec<String>,
    rng: SplitMix64,
    /// Values that only their own op may read (labels, masks, running statistics).
    fixed: Vec<usize>,
}

impl Builder {
    fn dim(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.rng.next_u64() as usize) % (hi - lo + 1)
    }

    fn coin(&mut self) -> bool {
        self.rng.next_u64() % 2 == 0
    }

    fn name(&self, v: usize) -> String {
        self.names[v].clone()
    }

    /// A new input that receives a gradient (`x` first, then `p1`, `p2`, ...).
    fn param(&mut self, shape: &[usize]) -> usize {
        let name = if self.program.inputs.is_empty() { "x".to_string() } else { format!("p{}", self.program.inputs.len()) };
        self.program.inputs.push(InputDecl::new(&name, shape, Role::Param));
        self.names.push(name);
        self.shapes.push(shape.to_vec());
        self.names.len() - 1
    }

    /// An input that is not differentiated: labels or state (masks, running statistics).
    fn fixed(&mut self, prefix: &str, shape: &[usize], role: Role, value_type: ValueType) -> usize {
        let name = format!("{prefix}{}", self.program.inputs.len());
        let mut d = InputDecl::new(&name, shape, role);
        d.value_type = value_type;
        self.program.inputs.push(d);
        self.names.push(name);
        self.shapes.push(shape.to_vec());
        self.fixed.push(self.names.len() - 1);
        self.names.len() - 1
    }

    /// A loss over `[N, C]` scores `last` with labels.
    fn loss(&mut self, name: &str, last: usize) -> usize {
        let labels = self.fixed("labels", &[self.shapes[last][0]], Role::Input, ValueType::Index);
        let reduction = Reduction::default();
        let op = if name == "nll_loss" { Op::NllLoss { reduction } } else { Op::CrossEntropy { reduction, label_smoothing: 0.0 } };
        self.push(op, &[Some(last), Some(labels)]).expect("a loss takes [N, C] scores")
    }

    /// `op(args)` when its shapes check; None otherwise (nothing is added).
    fn push(&mut self, op: Op, args: &[Option<usize>]) -> Option<usize> {
        let shapes: Vec<Option<&[usize]>> = args.iter().map(|a| a.map(|v| self.shapes[v].as_slice())).collect();
        let shape = infer(&op, &shapes).ok()?;
        let id = format!("n{}", self.program.nodes.len());
        self.program.nodes.push(crate::models::program::Node { id: id.clone(), op, inputs: args.iter().map(|a| a.map(|v| self.names[v].clone())).collect() });
        self.names.push(id);
        self.shapes.push(shape);
        Some(self.names.len() - 1)
    }

    /// A value made so far with `shape`, or a new parameter of it.
    fn partner(&mut self, shape: &[usize]) -> usize {
        let same: Vec<usize> = (0..self.shapes.len()).filter(|&v| self.shapes[v] == shape && !self.fixed.contains(&v)).collect();
        if !same.is_empty() && self.coin() {
            same[(self.rng.next_u64() as usize) % same.len()]
        } else {
            self.param(shape)
        }
    }

    /// Applies `op` to `last` (and partners it needs), if `last`'s shape allows it.
    fn try_op(&mut self, op: &str, last: usize) -> Option<usize> {
        let shape = self.shapes[last].clone();
        let rank = shape.len();
        match op {
            "add" | "sub" | "mul" => {
                let other = self.partner(&shape);
                let op = match op {
                    "add" => Op::Add {},
                    "sub" => Op::Sub {},
                    _ => Op::Mul {},
                };
                self.push(op, &[Some(last), Some(other)])
            }
            "neg" => self.push(Op::Neg {}, &[Some(last)]),
            "maximum" => {
                let other = self.partner(&shape);
                self.push(Op::Maximum {}, &[Some(last), Some(other)])
            }
            "gelu" => {
                let approximate = if self.coin() { crate::models::program::GeluApproximate::None } else { crate::models::program::GeluApproximate::Tanh };
                self.push(Op::Gelu { approximate }, &[Some(last)])
            }
            "silu" => self.push(Op::Silu {}, &[Some(last)]),
            // Default attributes: tch 0.26 binds these three without them.
            "elu" => self.push(Op::Elu { alpha: 1.0 }, &[Some(last)]),
            "leaky_relu" => self.push(Op::LeakyRelu { negative_slope: 0.01 }, &[Some(last)]),
            "softplus" => self.push(Op::Softplus { beta: 1.0, threshold: 20.0 }, &[Some(last)]),
            "abs" => self.push(Op::Abs {}, &[Some(last)]),
            "clamp" => {
                let (min, max) = match self.rng.next_u64() % 3 {
                    0 => (Some(-0.5), Some(0.5)),
                    1 => (Some(0.0), None),
                    _ => (None, Some(1.0)),
                };
                self.push(Op::Clamp { min, max }, &[Some(last)])
            }
            // Integer exponents: any sign of the base is in the domain.
            "pow" => {
                let exponent = [2.0, 3.0][(self.rng.next_u64() % 2) as usize];
                self.push(Op::Pow { exponent }, &[Some(last)])
            }

            "square" => self.push(Op::Square {}, &[Some(last)]),
            "relu" => self.push(Op::Relu {}, &[Some(last)]),
            "sigmoid" => self.push(Op::Sigmoid {}, &[Some(last)]),
            "tanh" => self.push(Op::Tanh {}, &[Some(last)]),
            "mean" if rank > 0 => self.push(Op::Mean {}, &[Some(last)]),
            // Matrix or vector times matrix, and matrix times vector.
            "matmul" if rank == 1 || rank == 2 => {
                let w = if rank == 2 && self.rng.next_u64() % 4 == 0 {
                    self.param(&[shape[1]])
                } else {
                    let n = self.dim(1, 4);
                    self.param(&[shape[rank - 1], n])
                };
                self.push(Op::MatMul {}, &[Some(last), Some(w)])
            }
            "dropout" if rank > 0 => {
                let p = [0.2, 0.5, 0.75][(self.rng.next_u64() % 3) as usize];
                let mask = self.fixed("mask", &shape, Role::State, ValueType::Float);
                self.push(Op::Dropout { p, training: true }, &[Some(last), Some(mask)])
            }
            "linear" if rank == 2 => {
                let out = self.dim(1, 4);
                let w = self.param(&[out, shape[1]]);
                let b = if self.coin() { Some(self.param(&[out])) } else { None };
                self.push(Op::Linear {}, &[Some(last), Some(w), b])
            }
            "max_pool2d" if rank == 4 => {
                let kernel = self.dim(1, 3);
                let stride = if self.coin() { None } else { Some(self.dim(1, 3)) };
                let padding = self.dim(0, kernel / 2);
                self.push(Op::MaxPool2d { kernel, stride, padding, ceil_mode: false }, &[Some(last)])
            }
            "conv2d" if rank == 4 => {
                let (o, k) = (self.dim(1, 3), self.dim(1, 3));
                let (stride, padding) = (self.dim(1, 2), self.dim(0, 1));
                let w = self.param(&[o, shape[1], k, k]);
                let b = if self.coin() { Some(self.param(&[o])) } else { None };
                self.push(Op::Conv2d { stride, padding, dilation: 1, groups: 1 }, &[Some(last), Some(w), b])
            }
            "batch_norm" if rank == 2 || rank == 4 => {
                let c = shape[1];
                let affine = self.coin();
                let (w, b) = if affine { (Some(self.param(&[c])), Some(self.param(&[c]))) } else { (None, None) };
                // Running statistics in a third of the cases: updated in training, read in
                // evaluation.
                let (stats, training) = match self.rng.next_u64() % 6 {
                    0 => (true, true),
                    1 => (true, false),
                    _ => (false, true),
                };
                let (rm, rv) = if stats {
                    (Some(self.fixed("running_mean", &[c], Role::State, ValueType::Float)), Some(self.fixed("running_var", &[c], Role::State, ValueType::Float)))
                } else {
                    (None, None)
                };
                let momentum = [0.1, 0.5][(self.rng.next_u64() % 2) as usize];
                self.push(Op::BatchNorm { training, momentum, eps: 1e-5 }, &[Some(last), w, b, rm, rv])
            }
            "softmax" if rank == 2 => {
                let dim = if self.coin() { 1 } else { -1 };
                self.push(Op::Softmax { dim }, &[Some(last)])
            }
            "log_softmax" if rank == 2 => {
                let dim = if self.coin() { 1 } else { -1 };
                self.push(Op::LogSoftmax { dim }, &[Some(last)])
            }
            "flatten" if rank == 4 => self.push(Op::Flatten { start_dim: 1, end_dim: -1 }, &[Some(last)]),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_program_checks_and_the_same_seed_gives_the_same_case() {
        for i in 0..300 {
            let c = generate(7, i, 5, &OPS);
            crate::models::program::check(&c.program).unwrap_or_else(|e| panic!("case {i}: {e}\n{}", c.program.to_json()));
            assert_eq!(generate(7, i, 5, &OPS).program, c.program);
        }
        assert_ne!(generate(7, 1, 5, &OPS).program, generate(8, 1, 5, &OPS).program);
    }
}
