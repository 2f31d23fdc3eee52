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
    /// Opt-in (`--nonfinite`): uniform in (-1, 1) with about one entry in six NaN, +inf
    /// or -inf. The program's inputs allow non-finite values, so `run` compares by
    /// non-finite pattern (NaN, +inf, -inf or finite must match entry by entry) and
    /// takes no finite differences where NaN or infinity is involved.
    NonFinite,
}

impl Regime {
    /// The regimes every campaign draws from (`NonFinite` only when asked for).
    pub const ALL: [Regime; 3] = [Regime::Ordinary, Regime::Ties, Regime::Large];

    pub fn draw(self, rng: &mut SplitMix64) -> f64 {
        match self {
            Regime::Ordinary => rng.uniform(-1.0, 1.0),
            Regime::Ties => (rng.next_u64() % 4) as f64 - 1.0,
            Regime::Large => rng.uniform(-100.0, 100.0),
            Regime::NonFinite => match rng.next_u64() % 18 {
                0 => f64::NAN,
                1 => f64::INFINITY,
                2 => f64::NEG_INFINITY,
                _ => rng.uniform(-1.0, 1.0),
            },
        }
    }

    /// The largest magnitude a finite drawn value has.
    fn bound(self) -> f64 {
        match self {
            Regime::Ordinary | Regime::NonFinite => 1.0,
            Regime::Ties => 2.0,
            Regime::Large => 100.0,
        }
    }
}

/// The ops the generator draws from. `cross_entropy` and `nll_loss` end a program (on a
/// `[N, C]` value, with labels) instead of the sum; `dropout` draws its own 0/1 mask and
/// `batch_norm` its running statistics when it has them.
pub const OPS: [&str; 54] = [
    "add", "sub", "mul", "neg", "square", "relu", "sigmoid", "tanh", "matmul", "linear", "max_pool2d", "conv2d", "batch_norm", "softmax",
    "log_softmax", "flatten", "mean", "dropout", "cross_entropy", "nll_loss", "gelu", "silu", "elu", "leaky_relu", "softplus", "abs", "clamp",
    "pow", "maximum", "div", "exp", "log", "sqrt", "sum", "sum_dim", "mean_dim", "amax", "layer_norm", "rms_norm", "group_norm", "mse_loss",
    "reshape", "permute", "transpose", "concat", "narrow", "index_select", "embedding", "where", "masked_fill", "avg_pool2d",
    "adaptive_avg_pool2d", "upsample_nearest2d", "conv_transpose2d",
];

/// The ops of the first generator (before the shape and normalisation ops joined): drawn
/// half the time, so that adding ops does not dilute the ones every campaign relies on
/// (the mutants' hunt finds its faults through them).
const CORE: usize = 29;

/// What an input of a generated program holds, by the generator's names for them: the
/// shrinker draws simpler values by the same rule, so labels stay class indices, masks
/// 0 or 1 and variances positive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    Values,
    /// Class indices (or `index_select`/`embedding` indices) below `classes`.
    Labels { classes: usize },
    /// A dropout mask, a `where` condition or a `masked_fill` mask: 0 or 1.
    Mask,
    /// A running variance: positive.
    Variance,
    /// A divisor: |v| + 0.5 (NaN and infinities of the NaN/infinity regime stay).
    Positive,
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
                // The class count is the width of the scores the labels are read with;
                // an index of `index_select` is below the size of its dim, one of
                // `embedding` below the rows of the weight.
                let classes = checked
                    .as_ref()
                    .and_then(|c| {
                        let k = c.args.iter().position(|a| a.get(1).copied().flatten() == Some(i))?;
                        let x = &c.shapes[c.args[k][0]?];
                        Some(match &program.nodes[k].op {
                            Op::IndexSelect { dim } => x[if *dim < 0 { (*dim + x.len() as i64) as usize } else { *dim as usize }],
                            Op::Embedding { .. } => x[0],
                            _ => x[1],
                        })
                    })
                    .unwrap_or(1);
                InputKind::Labels { classes }
            } else if d.name.starts_with("mask") {
                InputKind::Mask
            } else if d.name.starts_with("running_var") {
                InputKind::Variance
            } else if d.name.starts_with("pos") {
                InputKind::Positive
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
            // Running statistics stay valid in the NaN/infinity regime too.
            InputKind::Variance if regime == Regime::NonFinite => Regime::Ordinary.draw(rng).abs() + 0.5,
            InputKind::Variance | InputKind::Positive => regime.draw(rng).abs() + 0.5,
        }
    }

    /// `v` made valid for this kind (a simplified value the shrinker proposes).
    pub fn clamp(self, v: f64) -> f64 {
        match self {
            InputKind::Values => v,
            InputKind::Labels { classes } => (v.abs() as usize % classes.max(1)) as f64,
            InputKind::Mask => (v != 0.0) as u8 as f64,
            InputKind::Variance | InputKind::Positive => v.abs() + 0.5,
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

/// The case `index` of campaign `seed`: a function of the two alone (and of
/// `nonfinite`, which turns a quarter of the cases into the NaN/infinity regime and
/// leaves every other case as it is without it).
pub fn generate(seed: u64, index: u64, max_nodes: usize, ops: &[&str], nonfinite: bool) -> Case {
    let mut rng = SplitMix64::new(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut regime = Regime::ALL[(rng.next_u64() % 3) as usize];
    // Its own stream: the case's program is the same with and without `nonfinite`.
    if nonfinite && SplitMix64::new(!(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03))).next_u64() % 4 == 0 {
        regime = Regime::NonFinite;
    }
    let mut b = Builder { program: Program::default(), shapes: vec![], names: vec![], rng, fixed: vec![], bound: vec![], lower: vec![], regime };
    let x = match b.rng.next_u64() % 6 {
        0 | 1 => {
            let dims = [b.dim(1, 2), b.dim(1, 3), b.dim(1, 6), b.dim(1, 6)];
            b.param(&dims)
        }
        2 => {
            // A vector: the seed's `x·B` with a vector x.
            let dims = [b.dim(1, 6)];
            b.param(&dims)
        }
        3 => {
            // Rank 3: batched matmul, normalisations over trailing dims, permutations.
            let dims = [b.dim(1, 3), b.dim(1, 4), b.dim(1, 5)];
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
    // Half the draws from the first generator's ops, half from the others (when both
    // are asked for).
    let core: Vec<&str> = inner.iter().copied().filter(|o| OPS[..CORE].contains(o)).collect();
    let added: Vec<&str> = inner.iter().copied().filter(|o| !OPS[..CORE].contains(o)).collect();
    for _ in 0..nodes {
        for _attempt in 0..20 {
            let r = b.rng.next_u64();
            let from = if core.is_empty() || (!added.is_empty() && r % 2 == 1) { &added } else { &core };
            let Some(&op) = from.get(((r / 2) as usize) % from.len().max(1)) else { break };
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
    // Not with exp: the value bounds hold at the drawn parameters, not after the steps, and
    // an exp of a trained parameter can overflow alike on every backend.
    let trains = b.rng.next_u64() % 4 == 0;
    if trains && !b.program.nodes.iter().any(|n| matches!(n.op, Op::Exp {})) {
        b.program.train = Some(crate::models::program::Train { steps: 2, lr: 0.1, momentum: Some(0.9) });
    }
    if regime == Regime::NonFinite {
        for d in &mut b.program.inputs {
            d.allow_non_finite = true;
        }
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
        d.values = Some(crate::models::program::values_json(&t.data));
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
    /// Per value: a bound on its finite entries' magnitude, and a lower bound on them
    /// (-inf when unknown), so that exp does not overflow, log and sqrt see positive
    /// values and divisors stay away from 0 (in every regime but `NonFinite`, where
    /// anything goes and patterns are compared).
    bound: Vec<f64>,
    lower: Vec<f64>,
    regime: Regime,
}

impl Builder {
    fn dim(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.rng.next_u64() as usize) % (hi - lo + 1)
    }

    fn coin(&mut self) -> bool {
        self.rng.next_u64() % 2 == 0
    }

    /// A dim of a rank-`rank` value, named from the front or from the back.
    fn any_dim(&mut self, rank: usize) -> i64 {
        let d = self.dim(0, rank - 1) as i64;
        if self.coin() {
            d - rank as i64
        } else {
            d
        }
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
        self.bound.push(self.regime.bound());
        self.lower.push(-self.regime.bound());
        self.names.len() - 1
    }

    /// A new differentiated input of positive values (|v| + 0.5): a divisor.
    fn positive(&mut self, shape: &[usize]) -> usize {
        let name = format!("pos{}", self.program.inputs.len());
        self.program.inputs.push(InputDecl::new(&name, shape, Role::Param));
        self.names.push(name);
        self.shapes.push(shape.to_vec());
        self.bound.push(self.regime.bound() + 0.5);
        self.lower.push(0.5);
        self.names.len() - 1
    }

    /// Anything goes: the NaN/infinity regime compares patterns, so no domain care.
    fn wild(&self) -> bool {
        self.regime == Regime::NonFinite
    }

    /// An input that is not differentiated: labels or state (masks, running statistics).
    fn fixed(&mut self, prefix: &str, shape: &[usize], role: Role, value_type: ValueType) -> usize {
        let name = format!("{prefix}{}", self.program.inputs.len());
        let mut d = InputDecl::new(&name, shape, role);
        d.value_type = value_type;
        self.program.inputs.push(d);
        self.names.push(name);
        self.shapes.push(shape.to_vec());
        let (hi, lo) = match prefix {
            "mask" => (1.0, 0.0),
            "running_var" => (self.regime.bound() + 0.5, 0.5),
            _ => (self.regime.bound(), -self.regime.bound()),
        };
        self.bound.push(hi);
        self.lower.push(lo);
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
        let (hi, lo) = self.bounds(&op, args, &shape);
        // No overflow in the ordinary regimes: NaN or infinity there is never agreement.
        if !self.wild() && !(hi <= 1e100) && !matches!(op, Op::Sum {} | Op::CrossEntropy { .. } | Op::NllLoss { .. }) {
            return None;
        }
        self.bound.push(hi);
        self.lower.push(lo);
        let id = format!("n{}", self.program.nodes.len());
        self.program.nodes.push(crate::models::program::Node { id: id.clone(), op, inputs: args.iter().map(|a| a.map(|v| self.names[v].clone())).collect() });
        self.names.push(id);
        self.shapes.push(shape);
        Some(self.names.len() - 1)
    }

    /// (bound on |value|, lower bound on value) of `op(args)` with output `shape`, from
    /// its inputs' bounds: coarse, but never too small.
    fn bounds(&self, op: &Op, args: &[Option<usize>], shape: &[usize]) -> (f64, f64) {
        let b = |i: usize| args.get(i).copied().flatten().map_or(0.0, |v| self.bound[v]);
        let l = |i: usize| args.get(i).copied().flatten().map_or(f64::NEG_INFINITY, |v| self.lower[v]);
        let w = |i: usize| args.get(i).copied().flatten().map_or(1.0, |v| self.bound[v]);
        let input = |i: usize| args.get(i).copied().flatten().map_or(&[][..], |v| self.shapes[v].as_slice());
        let count = |i: usize| input(i).iter().product::<usize>().max(1) as f64;
        let out = shape.iter().product::<usize>().max(1) as f64;
        let sym = |h: f64| (h, -h);
        match op {
            Op::Add {} => (b(0) + b(1), l(0) + l(1)),
            Op::Sub {} => sym(b(0) + b(1)),
            Op::Mul {} => {
                let h = b(0) * b(1);
                (h, if l(0) >= 0.0 && l(1) >= 0.0 { l(0) * l(1) } else { -h })
            }
            Op::Div {} if l(1) > 0.0 => {
                let h = b(0) / l(1);
                (h, if l(0) >= 0.0 { l(0) / b(1) } else { -h })
            }
            Op::Maximum {} => (b(0).max(b(1)), l(0).max(l(1))),
            Op::Neg {} => sym(b(0)),
            Op::Square {} => (b(0) * b(0), 0.0),
            Op::Pow { exponent } => (b(0).max(1.0).powf(*exponent), if exponent % 2.0 == 0.0 { 0.0 } else { -b(0).max(1.0).powf(*exponent) }),
            Op::Abs {} | Op::Relu {} => (b(0), 0.0),
            Op::LeakyRelu { .. } | Op::Elu { .. } | Op::Gelu { .. } | Op::Silu {} => (b(0) + 1.0, -b(0) - 1.0),
            Op::Softplus { .. } => (b(0) + 1.0, 0.0),
            Op::Sigmoid {} => (1.0, 1.0 / (1.0 + b(0).exp())),
            Op::Tanh {} => sym(1.0),
            Op::Exp {} => (b(0).exp(), (-b(0)).exp()),
            Op::Log {} if l(0) > 0.0 => sym(b(0).ln().abs().max(l(0).ln().abs())),
            Op::Sqrt {} if l(0) >= 0.0 => (b(0).sqrt(), l(0).sqrt()),
            Op::Clamp { min, max } => {
                let h = b(0).max(min.unwrap_or(0.0).abs()).max(max.unwrap_or(0.0).abs());
                (h, l(0).max(min.unwrap_or(f64::NEG_INFINITY)).min(max.unwrap_or(f64::INFINITY)))
            }
            Op::Softmax { .. } => (1.0, (-2.0 * b(0)).exp() / count(0)),
            Op::LogSoftmax { .. } => sym(2.0 * b(0) + count(0).ln()),
            Op::Sum {} | Op::SumDim { .. } => {
                let n = count(0) / out;
                (n * b(0), if l(0) >= 0.0 { 0.0 } else { -n * b(0) })
            }
            Op::Mean {} | Op::MeanDim { .. } | Op::Amax { .. } => (b(0), l(0)),
            Op::MatMul {} => {
                let k = *input(1).first().unwrap_or(&1) as f64;
                let k = if input(1).len() >= 2 { input(1)[input(1).len() - 2] as f64 } else { k };
                sym(k * b(0) * b(1))
            }
            Op::Linear {} => sym(input(1).get(1).copied().unwrap_or(1) as f64 * b(0) * b(1) + b(2)),
            Op::Conv2d { .. } => sym(input(1).iter().skip(1).product::<usize>() as f64 * b(0) * b(1) + b(2)),
            Op::ConvTranspose2d { .. } => {
                let w = input(1);
                let fan = w.iter().product::<usize>() / w.get(1).copied().unwrap_or(1).max(1);
                sym(fan as f64 * b(0) * b(1) + b(2))
            }
            Op::AvgPool2d { .. } | Op::AdaptiveAvgPool2d { .. } | Op::UpsampleNearest2d { .. } => (b(0), l(0).min(0.0)),
            Op::MaxPool2d { .. } | Op::Flatten { .. } | Op::Reshape { .. } | Op::Permute { .. } | Op::Transpose { .. } | Op::Narrow { .. } | Op::IndexSelect { .. } => (b(0), l(0)),
            Op::Embedding { .. } => (b(0), l(0)),
            Op::Concat { .. } => (b(0).max(b(1)), l(0).min(l(1))),
            Op::Where {} => (b(1).max(b(2)), l(1).min(l(2))),
            Op::MaskedFill { value } => (b(0).max(value.abs()), l(0).min(*value)),
            Op::Dropout { p, training } => {
                let s = if *training { 1.0 / (1.0 - p) } else { 1.0 };
                (b(0) * s, if l(0) >= 0.0 { 0.0 } else { -b(0) * s })
            }
            // A normalised entry is at most sqrt(n) in magnitude over n entries (eval-mode
            // batch norm: (x - mean) / sqrt(var) with var >= 0.5); then weight and bias.
            Op::BatchNorm { training, .. } => {
                let n = count(0) / input(0).get(1).copied().unwrap_or(1) as f64;
                let z = if *training { n.sqrt() } else { (b(0) + b(3)) / 0.5f64.sqrt() };
                sym(z * w(1) + b(2))
            }
            Op::LayerNorm { normalized_shape, .. } | Op::RmsNorm { normalized_shape, .. } => {
                sym((normalized_shape.iter().product::<usize>() as f64).sqrt() * w(1) + b(2))
            }
            Op::GroupNorm { num_groups, .. } => sym((count(0) / input(0)[0] as f64 / *num_groups as f64).sqrt() * w(1) + b(2)),
            Op::MseLoss { .. } => ((b(0) + b(1)).powi(2), 0.0),
            Op::CrossEntropy { .. } => (2.0 * b(0) + count(0).ln(), 0.0),
            Op::NllLoss { .. } => sym(b(0)),
            _ => (f64::INFINITY, f64::NEG_INFINITY),
        }
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
            "avg_pool2d" if rank == 4 => {
                let kernel = self.dim(1, 3);
                let stride = if self.coin() { None } else { Some(self.dim(1, 3)) };
                let padding = self.dim(0, kernel / 2);
                let (ceil_mode, count_include_pad) = (self.coin(), self.coin());
                self.push(Op::AvgPool2d { kernel, stride, padding, ceil_mode, count_include_pad }, &[Some(last)])
            }
            "adaptive_avg_pool2d" if rank == 4 => {
                let output_size = [self.dim(1, 3), self.dim(1, 3)];
                self.push(Op::AdaptiveAvgPool2d { output_size }, &[Some(last)])
            }
            "upsample_nearest2d" if rank == 4 => {
                let scale_factor = self.dim(1, 2);
                self.push(Op::UpsampleNearest2d { scale_factor }, &[Some(last)])
            }
            "conv_transpose2d" if rank == 4 => {
                let (o, k) = (self.dim(1, 3), self.dim(1, 3));
                let (stride, padding) = (self.dim(1, 2), self.dim(0, 1));
                let output_padding = self.dim(0, stride - 1);
                let w = self.param(&[shape[1], o, k, k]);
                let b = if self.coin() { Some(self.param(&[o])) } else { None };
                self.push(Op::ConvTranspose2d { stride, padding, output_padding, dilation: 1, groups: 1 }, &[Some(last), Some(w), b])
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
            "flatten" if rank == 4 && self.coin() => self.push(Op::Flatten { start_dim: 1, end_dim: -1 }, &[Some(last)]),
            // Any span of dims, the end named from either side.
            "flatten" if rank >= 2 => {
                let (a, b) = (self.dim(0, rank - 1), self.dim(0, rank - 1));
                let (start, end) = (a.min(b) as i64, a.max(b) as i64);
                let end = if self.coin() { end - rank as i64 } else { end };
                self.push(Op::Flatten { start_dim: start, end_dim: end }, &[Some(last)])
            }
            // Softmax over any dim of any rank (rank 2 as before, dim 1 or -1).
            "softmax" | "log_softmax" if rank >= 1 => {
                let dim = self.any_dim(rank);
                self.push(if op == "softmax" { Op::Softmax { dim } } else { Op::LogSoftmax { dim } }, &[Some(last)])
            }
            "div" => {
                // The divisor away from 0: a positive value made so far, or a new one.
                let positive: Vec<usize> = (0..self.shapes.len()).filter(|&v| self.shapes[v] == shape && self.lower[v] >= 0.25 && !self.fixed.contains(&v)).collect();
                let d = if !positive.is_empty() && self.coin() { positive[(self.rng.next_u64() as usize) % positive.len()] } else { self.positive(&shape) };
                self.push(Op::Div {}, &[Some(last), Some(d)])
            }
            "exp" if self.wild() || self.bound[last] <= 200.0 => self.push(Op::Exp {}, &[Some(last)]),
            // log and sqrt of positive values: of a positive value made so far, else of its
            // exp (then log(exp(x)) and sqrt(exp(x)), smooth everywhere).
            "log" | "sqrt" => {
                let x = if self.wild() || self.lower[last] >= 1e-3 {
                    last
                } else if self.bound[last] <= 6.0 {
                    self.push(Op::Exp {}, &[Some(last)])?
                } else {
                    return None;
                };
                self.push(if op == "log" { Op::Log {} } else { Op::Sqrt {} }, &[Some(x)])
            }
            "sum" if rank > 0 => self.push(Op::Sum {}, &[Some(last)]),
            // Any subset of the dims (the empty list: all of them), named from either side.
            "sum_dim" | "mean_dim" | "amax" if rank >= 1 => {
                let mut dim: Vec<i64> = (0..rank).filter(|_| self.coin()).map(|d| d as i64).collect();
                for d in dim.iter_mut() {
                    if self.coin() {
                        *d -= rank as i64;
                    }
                }
                let keepdim = self.coin();
                let op = match op {
                    "sum_dim" => Op::SumDim { dim, keepdim },
                    "mean_dim" => Op::MeanDim { dim, keepdim },
                    _ => Op::Amax { dim, keepdim },
                };
                self.push(op, &[Some(last)])
            }
            // Over 1..=rank trailing dims, weight and bias each given or not; rows of three
            // or more entries (layer_norm), two or more (rms_norm): shorter rows are ±1
            // or 0 whatever the values, their gradients all cancellation.
            "layer_norm" | "rms_norm" if rank >= 1 => {
                let k = self.dim(1, rank);
                let ns: Vec<usize> = shape[rank - k..].to_vec();
                let least = if op == "layer_norm" { 3 } else { 2 };
                if ns.iter().product::<usize>() < least {
                    return None;
                }
                let w = if self.coin() { Some(self.param(&ns)) } else { None };
                if op == "layer_norm" {
                    let b = if self.coin() { Some(self.param(&ns)) } else { None };
                    self.push(Op::LayerNorm { normalized_shape: ns, eps: 1e-5 }, &[Some(last), w, b])
                } else {
                    let eps = if self.coin() { None } else { Some(1e-5) };
                    self.push(Op::RmsNorm { normalized_shape: ns, eps }, &[Some(last), w])
                }
            }
            // x [N, C, *], groups dividing C, three or more entries per group and sample.
            "group_norm" if rank >= 2 => {
                let c = shape[1];
                let divisors: Vec<usize> = (1..=c).filter(|g| c % g == 0).collect();
                let num_groups = divisors[(self.rng.next_u64() as usize) % divisors.len()];
                if c / num_groups * shape[2..].iter().product::<usize>() < 3 {
                    return None;
                }
                let w = if self.coin() { Some(self.param(&[c])) } else { None };
                let b = if self.coin() { Some(self.param(&[c])) } else { None };
                self.push(Op::GroupNorm { num_groups, eps: 1e-5 }, &[Some(last), w, b])
            }
            // A differentiable target of the same shape; averaging mostly (candle-nn's
            // mse averages only), else sum or one loss per entry.
            "mse_loss" => {
                let target = self.partner(&shape);
                let reduction = match self.rng.next_u64() % 4 {
                    0 => Reduction::Sum,
                    1 => Reduction::None,
                    _ => Reduction::Mean,
                };
                self.push(Op::MseLoss { reduction }, &[Some(last), Some(target)])
            }
            "reshape" if rank >= 1 => {
                let n: usize = shape.iter().product();
                let target: Vec<i64> = match self.rng.next_u64() % 4 {
                    0 => vec![-1],
                    1 if rank >= 2 => vec![shape[0] as i64, -1],
                    2 if n % 2 == 0 => vec![2, -1],
                    _ => vec![n as i64, 1],
                };
                self.push(Op::Reshape { shape: target }, &[Some(last)])
            }
            // A random permutation, some dims named from the back.
            "permute" if rank >= 2 => {
                let mut dims: Vec<i64> = (0..rank as i64).collect();
                for i in (1..rank).rev() {
                    let j = (self.rng.next_u64() as usize) % (i + 1);
                    dims.swap(i, j);
                }
                for d in dims.iter_mut() {
                    if self.coin() {
                        *d -= rank as i64;
                    }
                }
                self.push(Op::Permute { dims }, &[Some(last)])
            }
            "transpose" if rank >= 2 => {
                let (dim0, dim1) = (self.any_dim(rank), self.any_dim(rank));
                self.push(Op::Transpose { dim0, dim1 }, &[Some(last)])
            }
            // Fan-in of two values: a value made so far that matches but at `dim`, or a
            // new one of its own size there.
            "concat" if rank >= 1 => {
                let dim = self.any_dim(rank);
                let axis = if dim < 0 { (dim + rank as i64) as usize } else { dim as usize };
                let fits: Vec<usize> = (0..self.shapes.len())
                    .filter(|&v| !self.fixed.contains(&v) && self.shapes[v].len() == rank && (0..rank).all(|d| d == axis || self.shapes[v][d] == shape[d]))
                    .collect();
                let other = if !fits.is_empty() && self.coin() {
                    fits[(self.rng.next_u64() as usize) % fits.len()]
                } else {
                    let mut s = shape.clone();
                    s[axis] = self.dim(1, 3);
                    self.param(&s)
                };
                let args = if self.coin() { [Some(last), Some(other)] } else { [Some(other), Some(last)] };
                self.push(Op::Concat { dim }, &args)
            }
            "narrow" if rank >= 1 => {
                let dim = self.any_dim(rank);
                let axis = if dim < 0 { (dim + rank as i64) as usize } else { dim as usize };
                let n = shape[axis];
                let start = self.dim(0, n - 1);
                let length = self.dim(1, n - start);
                let start = if self.coin() { start as i64 - n as i64 } else { start as i64 };
                self.push(Op::Narrow { dim, start, length }, &[Some(last)])
            }
            // Indices repeat (their gradients add up) and may leave entries out.
            "index_select" if rank >= 1 => {
                let dim = self.any_dim(rank);
                let k = self.dim(1, 5);
                let index = self.fixed("index", &[k], Role::Input, ValueType::Index);
                self.push(Op::IndexSelect { dim }, &[Some(last), Some(index)])
            }
            // `last` as the table [V, D]; indices of rank 0 to 2; padding_idx now and then
            // (candle-nn's Embedding has none).
            "embedding" if rank == 2 => {
                let ishape: Vec<usize> = (0..self.dim(0, 2)).map(|_| self.dim(1, 3)).collect();
                let padding_idx = (self.rng.next_u64() % 4 == 0).then(|| self.dim(0, shape[0] - 1) as i64);
                let index = self.fixed("index", &ishape, Role::Input, ValueType::Index);
                self.push(Op::Embedding { padding_idx }, &[Some(last), Some(index)])
            }
            // A 0/1 condition (some dims broadcast), `last` on either side.
            "where" => {
                let cshape: Vec<usize> = shape.iter().map(|&d| if self.rng.next_u64() % 3 == 0 { 1 } else { d }).collect();
                let cond = self.fixed("mask", &cshape, Role::State, ValueType::Float);
                let other = self.partner(&shape);
                let (a, b) = if self.coin() { (last, other) } else { (other, last) };
                self.push(Op::Where {}, &[Some(cond), Some(a), Some(b)])
            }
            "masked_fill" => {
                let mshape: Vec<usize> = shape.iter().map(|&d| if self.rng.next_u64() % 3 == 0 { 1 } else { d }).collect();
                let mask = self.fixed("mask", &mshape, Role::State, ValueType::Float);
                let value = [0.0, -1.5, 2.0][(self.rng.next_u64() % 3) as usize];
                self.push(Op::MaskedFill { value }, &[Some(last), Some(mask)])
            }
            // Batched: [.., m, k] @ [k, n], or with batch dims of its own (some 1).
            "matmul" if rank >= 3 => {
                let n = self.dim(1, 4);
                let k = shape[rank - 1];
                let w = match self.rng.next_u64() % 3 {
                    0 => self.param(&[k, n]),
                    1 => self.param(&[k]),
                    _ => {
                        let mut s: Vec<usize> = shape[..rank - 2].iter().map(|&d| if self.coin() { 1 } else { d }).collect();
                        s.extend([k, n]);
                        self.param(&s)
                    }
                };
                self.push(Op::MatMul {}, &[Some(last), Some(w)])
            }
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
            let c = generate(7, i, 5, &OPS, false);
            crate::models::program::check(&c.program).unwrap_or_else(|e| panic!("case {i}: {e}\n{}", c.program.to_json()));
            assert_eq!(generate(7, i, 5, &OPS, false).program, c.program);
        }
        assert_ne!(generate(7, 1, 5, &OPS, false).program, generate(8, 1, 5, &OPS, false).program);
    }

    #[test]
    fn every_op_is_drawn_and_every_value_is_finite_outside_the_nonfinite_regime() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..3000 {
            let c = generate(3, i, 4, &OPS, false);
            assert_ne!(c.regime, Regime::NonFinite);
            assert!(c.inputs.iter().all(|t| t.all_finite()));
            seen.extend(c.program.nodes.iter().map(|n| n.op.name()));
        }
        let missing: Vec<&str> = OPS.iter().copied().filter(|o| !seen.contains(o)).collect();
        assert!(missing.is_empty(), "never drawn: {missing:?}");
    }

    #[test]
    fn the_nonfinite_regime_is_opt_in_and_leaves_the_other_cases_alone() {
        let mut wild = 0;
        for i in 0..400 {
            let (a, b) = (generate(5, i, 4, &OPS, false), generate(5, i, 4, &OPS, true));
            if b.regime == Regime::NonFinite {
                wild += 1;
                assert!(b.program.inputs.iter().all(|d| d.allow_non_finite));
                // The values survive the JSON (as strings) and check.
                crate::models::program::check(&b.program).unwrap_or_else(|e| panic!("case {i}: {e}"));
            } else {
                assert_eq!(a.program, b.program);
            }
        }
        assert!((60..140).contains(&wild), "{wild} of 400 cases in the NaN/infinity regime");
    }
}
