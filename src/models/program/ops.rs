//! The ops a program may use, each with its real attributes. Names are stable: they are
//! the `op` strings of the JSON format and the names reports use.

use serde::{Deserialize, Serialize};

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn bn_momentum() -> f64 {
    0.1
}
fn bn_eps() -> f64 {
    1e-5
}
fn dim_one() -> i64 {
    1
}
fn minus_one() -> i64 {
    -1
}
fn alpha_one() -> f64 {
    1.0
}
fn leaky_slope() -> f64 {
    0.01
}
fn softplus_threshold() -> f64 {
    20.0
}

/// Which form of GELU: the exact one (`erf`) or PyTorch's tanh approximation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeluApproximate {
    /// `x · Φ(x)`, with Φ through erf.
    #[default]
    None,
    /// `0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))`.
    Tanh,
}

impl GeluApproximate {
    pub fn name(self) -> &'static str {
        match self {
            GeluApproximate::None => "none",
            GeluApproximate::Tanh => "tanh",
        }
    }
}
fn is_zero(v: &f64) -> bool {
    *v == 0.0
}
fn is_false(v: &bool) -> bool {
    !*v
}
fn is_one(v: &usize) -> bool {
    *v == 1
}
fn is_zero_usize(v: &usize) -> bool {
    *v == 0
}

/// How a loss reduces over the batch (PyTorch's `reduction`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reduction {
    #[default]
    Mean,
    Sum,
    /// One loss per sample (per element for `mse_loss`).
    None,
}

/// One op and its attributes (PyTorch's names and defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// `torch.matmul`: 1-D and 2-D operands as matrix/vector products, ranks >= 3 as
    /// batched products with broadcast batch dimensions.
    #[serde(rename = "matmul")]
    MatMul {},
    /// Element-wise with NumPy broadcasting.
    Add {},
    Sub {},
    Mul {},
    /// `a / b` (true division).
    Div {},
    /// Element-wise maximum; NaN propagates; at a tie each operand gets half the gradient.
    Maximum {},
    Neg {},
    Sigmoid {},
    Square {},
    /// ATen's `clamp_min(x, 0)`: NaN and -0.0 pass through.
    Relu {},
    Tanh {},
    Exp {},
    Log {},
    /// `gelu(x, approximate)`: `"none"` (erf) or `"tanh"`.
    Gelu {
        #[serde(default)]
        approximate: GeluApproximate,
    },
    /// `x · sigmoid(x)`.
    Silu {},
    /// `x` for `x > 0`, else `alpha · (exp(x) - 1)`.
    Elu {
        #[serde(default = "alpha_one")]
        alpha: f64,
    },
    /// `x` for `x > 0`, else `negative_slope · x`.
    LeakyRelu {
        #[serde(default = "leaky_slope")]
        negative_slope: f64,
    },
    /// `log1p(exp(beta · x)) / beta`, and `x` where `beta · x > threshold`.
    Softplus {
        #[serde(default = "alpha_one")]
        beta: f64,
        #[serde(default = "softplus_threshold")]
        threshold: f64,
    },
    Sqrt {},
    /// `|x|`; its gradient is `sign(x)`, 0 at 0.
    Abs {},
    /// `min(max(x, min), max)`, either bound optional (not both); the gradient passes
    /// where `min <= x <= max`, bounds included.
    Clamp {
        #[serde(default)]
        min: Option<f64>,
        #[serde(default)]
        max: Option<f64>,
    },
    /// `x ** exponent` for a constant exponent.
    Pow { exponent: f64 },
    /// Sum of every entry: a 0-d result.
    Sum {},
    Mean {},
    /// `x.sum(dim, keepdim)` over the listed dimensions (negative count from the back; an
    /// empty list reduces every dimension, as in PyTorch).
    SumDim {
        dim: Vec<i64>,
        #[serde(default, skip_serializing_if = "is_false")]
        keepdim: bool,
    },
    MeanDim {
        dim: Vec<i64>,
        #[serde(default, skip_serializing_if = "is_false")]
        keepdim: bool,
    },
    /// `torch.amax(x, dim, keepdim)`: the gradient is shared evenly among tied maxima.
    Amax {
        dim: Vec<i64>,
        #[serde(default, skip_serializing_if = "is_false")]
        keepdim: bool,
    },
    /// Over `[N, C, H, W]`: square `kernel`, `stride` (PyTorch's default: the kernel), zero
    /// `padding` with -inf (at most half the kernel), floor mode or `ceil_mode` (a last
    /// window that starts inside the image or its left padding is kept).
    MaxPool2d {
        kernel: usize,
        #[serde(default)]
        stride: Option<usize>,
        #[serde(default)]
        padding: usize,
        #[serde(default, skip_serializing_if = "is_false")]
        ceil_mode: bool,
    },
    /// `conv2d(x, w[, b], stride, padding, dilation, groups)`: x `[N, C, H, W]`, w
    /// `[O, C/groups, kh, kw]`, b `[O]`; groups divide C and O.
    Conv2d {
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: usize,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        dilation: usize,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        groups: usize,
    },
    /// `conv_transpose2d(x, w[, b], stride, padding, output_padding, groups, dilation)`:
    /// x `[N, C, H, W]`, w `[C, O/groups, kh, kw]`, b `[O]`; output
    /// `(H - 1)·stride - 2·padding + dilation·(kh - 1) + output_padding + 1` high;
    /// `output_padding` below stride or dilation.
    #[serde(rename = "conv_transpose2d")]
    ConvTranspose2d {
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: usize,
        #[serde(default, skip_serializing_if = "is_zero_usize")]
        output_padding: usize,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        dilation: usize,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        groups: usize,
    },
    /// `avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad)` over
    /// `[N, C, H, W]`, square windows; the divisor is the window's size clipped to the
    /// padded image with `count_include_pad`, else the real entries it covers (PyTorch's).
    AvgPool2d {
        kernel: usize,
        #[serde(default)]
        stride: Option<usize>,
        #[serde(default)]
        padding: usize,
        #[serde(default)]
        ceil_mode: bool,
        #[serde(default = "yes")]
        count_include_pad: bool,
    },
    /// `adaptive_avg_pool2d(x, output_size)`: output row i averages input rows
    /// `floor(i·H/oh) .. ceil((i+1)·H/oh)`, and the same for columns.
    AdaptiveAvgPool2d {
        output_size: [usize; 2],
    },
    /// `upsample_nearest2d(x, scale_factor)` with an integer factor: each entry repeated
    /// `scale_factor` times along H and along W.
    UpsampleNearest2d {
        scale_factor: usize,
    },
    /// `x · wᵀ (+ b)` for x `[N, in]`, w `[out, in]`, b `[out]`.
    Linear {},
    /// `batch_norm(x[, weight, bias][, running_mean, running_var])` over `[N, C(, H, W)]`:
    /// training mode normalises with batch statistics (biased variance) and, when given,
    /// updates the running statistics (unbiased variance) with `momentum`; eval mode uses
    /// the running statistics.
    BatchNorm {
        #[serde(default = "yes")]
        training: bool,
        #[serde(default = "bn_momentum")]
        momentum: f64,
        #[serde(default = "bn_eps")]
        eps: f64,
    },
    /// `layer_norm(x, normalized_shape[, weight][, bias], eps)`: each slice over the
    /// trailing `normalized_shape` dims normalised with its mean and biased variance;
    /// weight and bias (each optional) have shape `normalized_shape`.
    LayerNorm {
        normalized_shape: Vec<usize>,
        #[serde(default = "bn_eps")]
        eps: f64,
    },
    /// `rms_norm(x, normalized_shape[, weight], eps)`: `x / sqrt(mean(x²) + eps)` over the
    /// trailing dims. `eps` absent (`None`) is PyTorch's default: the machine epsilon of
    /// the input's dtype (`torch.finfo(dtype).eps`).
    RmsNorm {
        normalized_shape: Vec<usize>,
        #[serde(default)]
        eps: Option<f64>,
    },
    /// `group_norm(x [N, C, *], num_groups[, weight][, bias], eps)`: the channels split
    /// into `num_groups` groups, each sample's group normalised with its mean and biased
    /// variance; weight and bias `[C]`.
    GroupNorm {
        num_groups: usize,
        #[serde(default = "bn_eps")]
        eps: f64,
    },
    /// Over any `dim` of an input of rank >= 1.
    Softmax {
        #[serde(default = "dim_one")]
        dim: i64,
    },
    LogSoftmax {
        #[serde(default = "dim_one")]
        dim: i64,
    },
    /// `nll_loss(log_probs [N, C], labels [N])`.
    NllLoss {
        #[serde(default)]
        reduction: Reduction,
    },
    /// `cross_entropy(logits [N, C], labels [N])` = nll_loss(log_softmax(logits)), with
    /// PyTorch's label smoothing: `(1 - ls) · nll + ls / C · Σ_c -log_softmax`.
    CrossEntropy {
        #[serde(default)]
        reduction: Reduction,
        #[serde(default, skip_serializing_if = "is_zero")]
        label_smoothing: f64,
    },
    /// `mse_loss(input, target)`: both float, of one shape, both differentiable.
    MseLoss {
        #[serde(default)]
        reduction: Reduction,
    },
    /// `dropout(x, mask)`: `x · (mask / (1 - p))` in training mode, the identity in eval
    /// mode. The 0/1 mask is an input, so every backend drops the same entries.
    Dropout {
        p: f64,
        #[serde(default = "yes")]
        training: bool,
    },
    /// `x.permute(dims)`: output dimension i is input dimension `dims[i]`.
    Permute {
        dims: Vec<i64>,
    },
    /// `x.transpose(dim0, dim1)`.
    Transpose {
        dim0: i64,
        dim1: i64,
    },
    /// `torch.cat([x0, x1, ...], dim)` of 2 to 8 inputs.
    Concat {
        #[serde(default)]
        dim: i64,
    },
    /// `x.narrow(dim, start, length)`; a negative `start` counts from the back.
    Narrow {
        dim: i64,
        start: i64,
        length: usize,
    },
    /// `x.index_select(dim, index)` for a 1-D index input (`"dtype": "index"`).
    IndexSelect {
        dim: i64,
    },
    /// `embedding(weight [V, D], indices)` in ATen's argument order (`torch.embedding`;
    /// `F.embedding` takes the indices first): indices of any shape, output
    /// `indices.shape + [D]`; the row `padding_idx` receives no gradient.
    Embedding {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        padding_idx: Option<i64>,
    },
    /// `torch.where(cond, a, b)`: cond a 0/1 state input (non-zero is true), all three
    /// broadcast.
    Where {},
    /// `x.masked_fill(mask, value)`: mask a 0/1 state input broadcasting with x.
    MaskedFill {
        value: f64,
    },
    /// To `shape`; one entry may be -1.
    Reshape { shape: Vec<i64> },
    /// Merges dimensions `start_dim..=end_dim`.
    Flatten {
        #[serde(default = "dim_one")]
        start_dim: i64,
        #[serde(default = "minus_one")]
        end_dim: i64,
    },
}

/// Which inputs of an op may be absent (`null` in the JSON).
#[derive(Clone, Copy, Debug)]
pub struct Arity {
    pub min: usize,
    pub max: usize,
}

impl Op {
    /// Every op name, in the order the README lists them.
    pub const NAMES: [&'static str; 54] = [
        "matmul",
        "add",
        "sub",
        "mul",
        "div",
        "maximum",
        "neg",
        "sigmoid",
        "square",
        "relu",
        "tanh",
        "exp",
        "log",
        "gelu",
        "silu",
        "elu",
        "leaky_relu",
        "softplus",
        "sqrt",
        "abs",
        "clamp",
        "pow",
        "sum",
        "mean",
        "sum_dim",
        "mean_dim",
        "amax",
        "max_pool2d",
        "conv2d",
        "conv_transpose2d",
        "avg_pool2d",
        "adaptive_avg_pool2d",
        "upsample_nearest2d",
        "linear",
        "batch_norm",
        "layer_norm",
        "rms_norm",
        "group_norm",
        "softmax",
        "log_softmax",
        "nll_loss",
        "cross_entropy",
        "mse_loss",
        "dropout",
        "reshape",
        "flatten",
        "permute",
        "transpose",
        "concat",
        "narrow",
        "index_select",
        "embedding",
        "where",
        "masked_fill",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Op::MatMul {} => "matmul",
            Op::Add {} => "add",
            Op::Sub {} => "sub",
            Op::Mul {} => "mul",
            Op::Div {} => "div",
            Op::Maximum {} => "maximum",
            Op::Neg {} => "neg",
            Op::Sigmoid {} => "sigmoid",
            Op::Square {} => "square",
            Op::Relu {} => "relu",
            Op::Tanh {} => "tanh",
            Op::Exp {} => "exp",
            Op::Log {} => "log",
            Op::Gelu { .. } => "gelu",
            Op::Silu {} => "silu",
            Op::Elu { .. } => "elu",
            Op::LeakyRelu { .. } => "leaky_relu",
            Op::Softplus { .. } => "softplus",
            Op::Sqrt {} => "sqrt",
            Op::Abs {} => "abs",
            Op::Clamp { .. } => "clamp",
            Op::Pow { .. } => "pow",
            Op::Sum {} => "sum",
            Op::Mean {} => "mean",
            Op::SumDim { .. } => "sum_dim",
            Op::MeanDim { .. } => "mean_dim",
            Op::Amax { .. } => "amax",
            Op::MaxPool2d { .. } => "max_pool2d",
            Op::Conv2d { .. } => "conv2d",
            Op::ConvTranspose2d { .. } => "conv_transpose2d",
            Op::AvgPool2d { .. } => "avg_pool2d",
            Op::AdaptiveAvgPool2d { .. } => "adaptive_avg_pool2d",
            Op::UpsampleNearest2d { .. } => "upsample_nearest2d",
            Op::Linear {} => "linear",
            Op::BatchNorm { .. } => "batch_norm",
            Op::LayerNorm { .. } => "layer_norm",
            Op::RmsNorm { .. } => "rms_norm",
            Op::GroupNorm { .. } => "group_norm",
            Op::Softmax { .. } => "softmax",
            Op::LogSoftmax { .. } => "log_softmax",
            Op::NllLoss { .. } => "nll_loss",
            Op::CrossEntropy { .. } => "cross_entropy",
            Op::MseLoss { .. } => "mse_loss",
            Op::Dropout { .. } => "dropout",
            Op::Reshape { .. } => "reshape",
            Op::Flatten { .. } => "flatten",
            Op::Permute { .. } => "permute",
            Op::Transpose { .. } => "transpose",
            Op::Concat { .. } => "concat",
            Op::Narrow { .. } => "narrow",
            Op::IndexSelect { .. } => "index_select",
            Op::Embedding { .. } => "embedding",
            Op::Where {} => "where",
            Op::MaskedFill { .. } => "masked_fill",
        }
    }

    /// The op with its default attributes, for names that need none or have defaults.
    pub fn parse_name(name: &str) -> Option<Op> {
        let v = serde_json::json!({ "op": name });
        serde_json::from_value(v).ok().or_else(|| match name {
            "max_pool2d" => Some(Op::MaxPool2d { kernel: 2, stride: None, padding: 0, ceil_mode: false }),
            "avg_pool2d" => Some(Op::AvgPool2d { kernel: 2, stride: None, padding: 0, ceil_mode: false, count_include_pad: true }),
            "adaptive_avg_pool2d" => Some(Op::AdaptiveAvgPool2d { output_size: [1, 1] }),
            "upsample_nearest2d" => Some(Op::UpsampleNearest2d { scale_factor: 2 }),
            "dropout" => Some(Op::Dropout { p: 0.5, training: true }),
            "clamp" => Some(Op::Clamp { min: Some(-0.5), max: Some(0.5) }),
            "pow" => Some(Op::Pow { exponent: 2.0 }),
            "sum_dim" => Some(Op::SumDim { dim: vec![-1], keepdim: false }),
            "mean_dim" => Some(Op::MeanDim { dim: vec![-1], keepdim: false }),
            "amax" => Some(Op::Amax { dim: vec![-1], keepdim: false }),
            "group_norm" => Some(Op::GroupNorm { num_groups: 1, eps: 1e-5 }),
            _ => None,
        })
    }

    pub fn arity(&self) -> Arity {
        let (min, max) = match self {
            Op::MatMul {} | Op::Add {} | Op::Sub {} | Op::Mul {} | Op::Div {} | Op::Maximum {} => (2, 2),
            Op::NllLoss { .. } | Op::CrossEntropy { .. } | Op::MseLoss { .. } | Op::Dropout { .. } => (2, 2),
            Op::Conv2d { .. } | Op::ConvTranspose2d { .. } | Op::Linear {} => (2, 3),
            Op::BatchNorm { .. } => (1, 5),
            Op::Concat { .. } => (2, 8),
            Op::IndexSelect { .. } | Op::Embedding { .. } | Op::MaskedFill { .. } => (2, 2),
            Op::Where {} => (3, 3),
            Op::LayerNorm { .. } | Op::GroupNorm { .. } => (1, 3),
            Op::RmsNorm { .. } => (1, 2),
            _ => (1, 1),
        };
        Arity { min, max }
    }

    /// Inputs that must be given (not `null`) when present at all.
    pub fn required(&self, position: usize) -> bool {
        match self {
            Op::Conv2d { .. } | Op::ConvTranspose2d { .. } | Op::Linear {} => position < 2,
            Op::BatchNorm { .. } | Op::LayerNorm { .. } | Op::RmsNorm { .. } | Op::GroupNorm { .. } => position == 0,
            _ => true,
        }
    }

    /// Inputs read as indices (class labels, rows to select) rather than floats.
    pub fn takes_index(&self, position: usize) -> bool {
        matches!(self, Op::NllLoss { .. } | Op::CrossEntropy { .. } | Op::IndexSelect { .. } | Op::Embedding { .. })
            && position == 1
    }

    /// Inputs the op reads as state and never differentiates (running statistics, masks).
    pub fn takes_state(&self, position: usize) -> bool {
        match self {
            Op::BatchNorm { .. } => position >= 3,
            Op::Dropout { .. } | Op::MaskedFill { .. } => position == 1,
            Op::Where {} => position == 0,
            _ => false,
        }
    }

    /// The same op in evaluation mode (dropout off, batch norm on running statistics).
    pub fn in_eval_mode(&self) -> Op {
        match self.clone() {
            Op::BatchNorm { momentum, eps, .. } => Op::BatchNorm { training: false, momentum, eps },
            Op::Dropout { p, .. } => Op::Dropout { p, training: false },
            other => other,
        }
    }

    /// Ops whose gradient is not smooth everywhere (ties, kinks): finite differences
    /// are only meaningful away from those points. Softplus jumps by
    /// `log1p(exp(-threshold)) / beta` where `beta · x` crosses the threshold; pow is
    /// smooth inside its domain.
    pub fn has_kinks(&self) -> bool {
        matches!(
            self,
            Op::Relu {}
                | Op::MaxPool2d { .. }
                | Op::Amax { .. }
                | Op::Maximum {}
                | Op::Elu { .. }
                | Op::LeakyRelu { .. }
                | Op::Softplus { .. }
                | Op::Abs {}
                | Op::Clamp { .. }
        )
    }
}
