//! Random cases for every op of the program format: attributes drawn over their valid
//! domain (strides, paddings, bias or not, affine or not, training or eval, masks,
//! dims) and inputs to match, with shapes including odd, non-square and size-one
//! dimensions, and values away from kinks so that finite differences can judge them.
//! One arm per op in `case_for`. `tests/ops.rs` draws them through proptest and
//! `parity-report ops` from a seed (`cases`).

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use crate::host::HostTensor;
use crate::models::program::{GeluApproximate, Reduction};
use crate::models::Op;

/// Where an op's values are drawn from: away from kinks and outside domains.
#[derive(Clone, Copy, Debug)]
pub enum Domain {
    Any,
    Positive,
    AwayFromZero,
    /// |x| in [0.25, 2): divisors and bases of negative powers.
    Nonzero,
}

fn values(n: usize, domain: Domain) -> BoxedStrategy<Vec<f64>> {
    let v = match domain {
        Domain::Positive => (0.2..3.0f64).boxed(),
        // A kink at 0 (ReLU) has no derivative; finite differences need |x| > h.
        Domain::AwayFromZero => (0.01..2.0f64).prop_flat_map(|m| prop_oneof![Just(m), Just(-m)]).boxed(),
        Domain::Nonzero => (0.25..2.0f64).prop_flat_map(|m| prop_oneof![Just(m), Just(-m)]).boxed(),
        _ => (-2.0..2.0f64).boxed(),
    };
    proptest::collection::vec(v, n).boxed()
}

fn tensor(shape: Vec<usize>, domain: Domain) -> BoxedStrategy<HostTensor> {
    let n = shape.iter().product();
    values(n, domain).prop_map(move |data| HostTensor { shape: shape.clone(), data }).boxed()
}

fn shape() -> BoxedStrategy<Vec<usize>> {
    proptest::collection::vec(1usize..5, 0..4).boxed()
}

/// A shape that broadcasts against `s`: leading axes dropped, some axes set to 1.
fn broadcastable(s: Vec<usize>) -> BoxedStrategy<Vec<usize>> {
    let rank = s.len();
    (0..=rank, proptest::collection::vec(any::<bool>(), rank))
        .prop_map(move |(drop, ones)| s[drop..].iter().zip(&ones[drop..]).map(|(&d, &one)| if one { 1 } else { d }).collect())
        .boxed()
}

/// 1-D and 2-D operands, and batched ones: batch axes (up to three) that broadcast
/// (dropped or size 1 on either side), with a vector on one side now and then.
fn matmul_shapes() -> BoxedStrategy<(Vec<usize>, Vec<usize>)> {
    let plain = (1usize..6, 1usize..6, 1usize..6, 0..4usize)
        .prop_map(|(m, k, n, case)| match case {
            0 => (vec![m, k], vec![k, n]),
            1 => (vec![k], vec![k, n]),
            2 => (vec![m, k], vec![k]),
            _ => (vec![k], vec![k]),
        })
        .boxed();
    let batched = (proptest::collection::vec(1usize..4, 1..4), 1usize..5, 1usize..5, 1usize..5, 0..3usize)
        .prop_flat_map(|(batch, m, k, n, case)| {
            (broadcastable(batch.clone()), broadcastable(batch), Just((m, k, n, case)))
        })
        .prop_filter_map("an operand of rank >= 3", |(ba, bb, (m, k, n, case))| {
            let mat = |b: &[usize], r: usize, c: usize| b.iter().copied().chain([r, c]).collect::<Vec<usize>>();
            let (a, b) = match case {
                0 => (mat(&ba, m, k), mat(&bb, k, n)),
                1 => (vec![k], mat(&bb, k, n)),
                _ => (mat(&ba, m, k), vec![k]),
            };
            (a.len().max(b.len()) >= 3).then_some((a, b))
        })
        .boxed();
    prop_oneof![plain, batched].boxed()
}

/// Values that are all distinct within the tensor (no ties in a pool window), spaced
/// far wider than the finite-difference step.
fn distinct(shape: Vec<usize>) -> BoxedStrategy<HostTensor> {
    let len: usize = shape.iter().product();
    Just((0..len).collect::<Vec<usize>>())
        .prop_shuffle()
        .prop_map(move |perm| {
            let n = perm.len() as f64;
            HostTensor { data: perm.iter().map(|&k| 4.0 * (k as f64 + 0.5) / n - 2.0).collect(), shape: shape.clone() }
        })
        .boxed()
}

/// Distinct values (as `distinct`) scaled by `scale` and shifted by `shift`: no row of
/// a normalisation is constant (a constant row's variance is 0, its gradient all
/// rounding), and any two values are at least `4 · scale / len` apart.
fn spread(shape: Vec<usize>, scale: f64, shift: f64) -> BoxedStrategy<HostTensor> {
    distinct(shape)
        .prop_map(move |mut t| {
            t.data.iter_mut().for_each(|v| *v = *v * scale + shift);
            t
        })
        .boxed()
}

fn mask(shape: Vec<usize>) -> BoxedStrategy<HostTensor> {
    let n: usize = shape.iter().product();
    proptest::collection::vec(any::<bool>(), n)
        .prop_map(move |m| HostTensor { shape: shape.clone(), data: m.into_iter().map(|b| b as u8 as f64).collect() })
        .boxed()
}

fn labels(n: usize, classes: usize) -> BoxedStrategy<HostTensor> {
    proptest::collection::vec(0..classes, n)
        .prop_map(move |l| HostTensor { shape: vec![n], data: l.into_iter().map(|v| v as f64).collect() })
        .boxed()
}

/// An op with its attributes and its inputs (`None`: an optional input left out).
pub type Case = (Op, Vec<Option<HostTensor>>);

/// An index input of `shape` with values in `0..bound`.
fn indices(shape: Vec<usize>, bound: usize) -> BoxedStrategy<HostTensor> {
    let n: usize = shape.iter().product();
    proptest::collection::vec(0..bound, n)
        .prop_map(move |v| HostTensor { shape: shape.clone(), data: v.into_iter().map(|i| i as f64).collect() })
        .boxed()
}

/// A dimension of a rank-`r` tensor from a random byte, named from the back when `back`.
fn pick_dim(byte: u8, r: usize, back: bool) -> (usize, i64) {
    let d = byte as usize % r;
    (d, if back { d as i64 - r as i64 } else { d as i64 })
}

fn reduction() -> BoxedStrategy<Reduction> {
    prop_oneof![Just(Reduction::Mean), Just(Reduction::Sum), Just(Reduction::None)].boxed()
}

fn some(ts: Vec<HostTensor>) -> Vec<Option<HostTensor>> {
    ts.into_iter().map(Some).collect()
}

fn unary(op: Op, domain: Domain) -> BoxedStrategy<Case> {
    shape().prop_flat_map(move |s| tensor(s, domain)).prop_map(move |t| (op.clone(), vec![Some(t)])).boxed()
}

fn broadcast_binary(op: Op) -> BoxedStrategy<Case> {
    broadcast_binary_in(op, Domain::Any)
}

/// A binary op whose second operand is drawn from `second` (a divisor away from 0).
fn broadcast_binary_in(op: Op, second: Domain) -> BoxedStrategy<Case> {
    shape()
        .prop_flat_map(|s| (Just(s.clone()), broadcastable(s), any::<bool>()))
        .prop_flat_map(move |(a, b, swap)| {
            let (a, b) = if swap { (b, a) } else { (a, b) };
            (tensor(a, Domain::Any), tensor(b, second))
        })
        .prop_map(move |(a, b)| (op.clone(), some(vec![a, b])))
        .boxed()
}

/// Every op with its attributes drawn over their valid domain, and inputs to match
/// (optional inputs present or not). One arm per op.
pub fn case_for(name: &str) -> BoxedStrategy<Case> {
    // `r#where` is the test module of `where`.
    let name = name.trim_start_matches("r#");
    match name {
        "matmul" => matmul_shapes()
            .prop_flat_map(|(a, b)| (tensor(a, Domain::Any), tensor(b, Domain::Any)))
            .prop_map(|(a, b)| (Op::MatMul {}, some(vec![a, b])))
            .boxed(),
        "add" => broadcast_binary(Op::Add {}),
        "sub" => broadcast_binary(Op::Sub {}),
        "mul" => broadcast_binary(Op::Mul {}),
        "div" => broadcast_binary_in(Op::Div {}, Domain::Nonzero),
        // Distinct random values: no ties (where the gradient splits) within the step.
        "maximum" => broadcast_binary(Op::Maximum {}),
        "neg" => unary(Op::Neg {}, Domain::Any),
        "sigmoid" => unary(Op::Sigmoid {}, Domain::Any),
        "square" => unary(Op::Square {}, Domain::Any),
        "relu" => unary(Op::Relu {}, Domain::AwayFromZero),
        "tanh" => unary(Op::Tanh {}, Domain::Any),
        "exp" => unary(Op::Exp {}, Domain::Any),
        "log" => unary(Op::Log {}, Domain::Positive),
        "gelu" => prop_oneof![Just(GeluApproximate::None), Just(GeluApproximate::Tanh)]
            .prop_flat_map(|approximate| unary(Op::Gelu { approximate }, Domain::Any))
            .boxed(),
        "silu" => unary(Op::Silu {}, Domain::Any),
        // The default half the time, else any positive alpha; values away from the kink.
        "elu" => prop_oneof![Just(1.0), 0.1..3.0f64].prop_flat_map(|alpha| unary(Op::Elu { alpha }, Domain::AwayFromZero)).boxed(),
        // Slopes below 0 and above 1 are allowed too.
        "leaky_relu" => prop_oneof![Just(0.01), -0.5..2.0f64]
            .prop_flat_map(|negative_slope| unary(Op::LeakyRelu { negative_slope }, Domain::AwayFromZero))
            .boxed(),
        // Thresholds low enough that both sides occur on [-2, 2].
        "softplus" => (prop_oneof![Just(1.0), 0.25..4.0f64], prop_oneof![Just(20.0), 0.5..6.0f64])
            .prop_flat_map(|(beta, threshold)| unary(Op::Softplus { beta, threshold }, Domain::Any))
            .boxed(),
        "sqrt" => unary(Op::Sqrt {}, Domain::Positive),
        "abs" => unary(Op::Abs {}, Domain::AwayFromZero),
        // Both bounds, min only or max only; now and then min > max (the value is max).
        "clamp" => (-1.5..0.5f64, 0.1..2.0f64, 0usize..3, 0usize..8)
            .prop_flat_map(|(lo, width, which, crossed)| {
                let hi = if crossed == 0 { lo - width } else { lo + width };
                let (min, max) = match which {
                    0 => (Some(lo), Some(hi)),
                    1 => (Some(lo), None),
                    _ => (None, Some(hi)),
                };
                unary(Op::Clamp { min, max }, Domain::Any)
            })
            .boxed(),
        // Integer exponents (ATen's special cases among them) on bases of either sign,
        // ±0.5 and other real exponents on positive bases.
        "pow" => prop_oneof![
            (-2i32..5).prop_map(|e| (e as f64, Domain::Nonzero)),
            prop_oneof![Just(0.5), Just(-0.5), -2.5..3.5f64].prop_map(|e| (e, Domain::Positive))
        ]
        .prop_flat_map(|(exponent, domain)| unary(Op::Pow { exponent }, domain))
        .boxed(),
        "sum" => unary(Op::Sum {}, Domain::Any),
        "mean" => unary(Op::Mean {}, Domain::Any),
        // Ranks 1 to 4, any subset of the dimensions (empty: all of them), each named
        // positively or from the back, keepdim or not. amax's values are distinct, so the
        // maximum is unique (ties: `amax_shares_the_gradient_evenly_among_ties`).
        "sum_dim" | "mean_dim" | "amax" => {
            let name = name.to_string();
            (proptest::collection::vec(1usize..5, 1..5), any::<u8>(), any::<u8>(), any::<bool>())
                .prop_flat_map(move |(s, pick, neg, keepdim)| {
                    let r = s.len();
                    let dim: Vec<i64> = (0..r)
                        .filter(|i| pick & (1 << i) != 0)
                        .map(|i| if neg & (1 << i) != 0 { i as i64 - r as i64 } else { i as i64 })
                        .collect();
                    let op = match name.as_str() {
                        "sum_dim" => Op::SumDim { dim, keepdim },
                        "mean_dim" => Op::MeanDim { dim, keepdim },
                        _ => Op::Amax { dim, keepdim },
                    };
                    let x = if matches!(op, Op::Amax { .. }) { distinct(s) } else { tensor(s, Domain::Any) };
                    x.prop_map(move |x| (op.clone(), vec![Some(x)]))
                })
                .boxed()
        }
        // Kernel 1 to 3, stride 1 to 3 or the default (the kernel), padding up to half the
        // kernel, floor or ceil mode, images the kernel does not divide, non-square.
        "max_pool2d" => (1usize..3, 1usize..3, 1usize..4, 0usize..3, 0usize..5, 0usize..5, any::<bool>(), any::<bool>())
            .prop_flat_map(|(n, c, k, s, h, w, default_stride, ceil_mode)| {
                let stride = if default_stride { None } else { Some(s + 1) };
                (0..=k / 2).prop_flat_map(move |p| {
                    let (h, w) = ((h + k).saturating_sub(2 * p).max(1), (w + k).saturating_sub(2 * p).max(1));
                    distinct(vec![n, c, h, w]).prop_map(move |x| (Op::MaxPool2d { kernel: k, stride, padding: p, ceil_mode }, vec![Some(x)]))
                })
            })
            .boxed(),
        // Stride 1 to 3, padding 0 to 2, dilation 1 or 2, 1 to 3 groups, non-square
        // kernels and images, bias or not.
        "conv2d" => (
            (1usize..3, 1usize..4, 1usize..3, 1usize..3, 1usize..6, 1usize..6),
            (1usize..4, 1usize..4, 1usize..4, 0usize..3, prop_oneof![3 => Just(1usize), 2 => Just(2usize)], any::<bool>()),
        )
            .prop_flat_map(|((n, groups, cg, og, h, w), (kh, kw, stride, padding, dilation, bias))| {
                let span = |k: usize| dilation * (k - 1) + 1;
                let (h, w) = (h.max(span(kh).saturating_sub(2 * padding)), w.max(span(kw).saturating_sub(2 * padding)));
                let (c, o) = (groups * cg, groups * og);
                (tensor(vec![n, c, h, w], Domain::Any), tensor(vec![o, cg, kh, kw], Domain::Any), tensor(vec![o], Domain::Any)).prop_map(
                    move |(x, wt, b)| (Op::Conv2d { stride, padding, dilation, groups }, vec![Some(x), Some(wt), bias.then_some(b)]),
                )
            })
            .boxed(),
        // Stride 1 to 3, dilation 1 or 2, output_padding below either, padding up to
        // what leaves a non-empty output, 1 or 2 groups, non-square, bias or not.
        "conv_transpose2d" => (
            (1usize..3, 1usize..3, 1usize..3, 1usize..3, 1usize..5, 1usize..5),
            (1usize..4, 1usize..4, 1usize..4, 0usize..3, prop_oneof![3 => Just(1usize), 2 => Just(2usize)], any::<bool>(), 0usize..3),
        )
            .prop_flat_map(|((n, groups, cg, og, h, w), (kh, kw, stride, padding, dilation, bias, op))| {
                let output_padding = op % stride.max(dilation);
                let full = |len: usize, k: usize| (len - 1) * stride + dilation * (k - 1) + output_padding + 1;
                let padding = padding.min((full(h, kh).min(full(w, kw)) - 1) / 2);
                let c = groups * cg;
                (tensor(vec![n, c, h, w], Domain::Any), tensor(vec![c, og, kh, kw], Domain::Any), tensor(vec![groups * og], Domain::Any)).prop_map(
                    move |(x, wt, b)| {
                        let op = Op::ConvTranspose2d { stride, padding, output_padding, dilation, groups };
                        (op, vec![Some(x), Some(wt), bias.then_some(b)])
                    },
                )
            })
            .boxed(),
        // Kernel 1 to 3, stride 1 to 3 or the default, padding up to half the kernel,
        // ceil mode or not, padding counted or not, images the kernel does not divide.
        "avg_pool2d" => (1usize..3, 1usize..3, 1usize..4, 0usize..3, 0usize..5, 0usize..5, any::<bool>(), any::<bool>(), any::<bool>())
            .prop_flat_map(|(n, c, k, s, h, w, default_stride, ceil_mode, count_include_pad)| {
                let stride = if default_stride { None } else { Some(s + 1) };
                (0..=k / 2).prop_flat_map(move |p| {
                    let (h, w) = ((h + k).saturating_sub(2 * p).max(1), (w + k).saturating_sub(2 * p).max(1));
                    let op = Op::AvgPool2d { kernel: k, stride, padding: p, ceil_mode, count_include_pad };
                    tensor(vec![n, c, h, w], Domain::Any).prop_map(move |x| (op.clone(), vec![Some(x)]))
                })
            })
            .boxed(),
        // 1x1 half the time, else any output size up to 4 (larger than the image too:
        // windows then overlap or repeat), non-square images.
        "adaptive_avg_pool2d" => (1usize..3, 1usize..3, 1usize..7, 1usize..7, any::<bool>(), 1usize..5, 1usize..5)
            .prop_flat_map(|(n, c, h, w, global, oh, ow)| {
                let output_size = if global { [1, 1] } else { [oh, ow] };
                tensor(vec![n, c, h, w], Domain::Any).prop_map(move |x| (Op::AdaptiveAvgPool2d { output_size }, vec![Some(x)]))
            })
            .boxed(),
        // Integer scale factors 1 to 3, non-square images.
        "upsample_nearest2d" => (1usize..3, 1usize..3, 1usize..5, 1usize..5, 1usize..4)
            .prop_flat_map(|(n, c, h, w, scale_factor)| {
                tensor(vec![n, c, h, w], Domain::Any).prop_map(move |x| (Op::UpsampleNearest2d { scale_factor }, vec![Some(x)]))
            })
            .boxed(),
        "linear" => (1usize..5, 1usize..6, 1usize..5, any::<bool>())
            .prop_flat_map(|(n, i, o, bias)| {
                (tensor(vec![n, i], Domain::Any), tensor(vec![o, i], Domain::Any), tensor(vec![o], Domain::Any))
                    .prop_map(move |(x, w, b)| (Op::Linear {}, vec![Some(x), Some(w), bias.then_some(b)]))
            })
            .boxed(),
        // Affine or not, training or eval, with running statistics or without (training
        // only), momentum and eps over their range.
        "batch_norm" => (
            prop_oneof![
                (4usize..8, 1usize..4).prop_map(|(n, c)| vec![n, c]),
                (1usize..3, 1usize..3, 2usize..4, 2usize..4).prop_map(|(n, c, h, w)| vec![n, c, h, w])
            ],
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            0.0..1.0f64,
            prop_oneof![Just(1e-5), 1e-3..1e-1f64],
        )
            .prop_flat_map(|(s, affine, training, stats, momentum, eps)| {
                let c = s[1];
                let stats = stats || !training;
                let vec_c = || tensor(vec![c], Domain::Any);
                (tensor(s, Domain::Any), vec_c(), vec_c(), vec_c(), tensor(vec![c], Domain::Positive)).prop_map(move |(x, w, b, rm, rv)| {
                    let op = Op::BatchNorm { training, momentum, eps };
                    (op, vec![Some(x), affine.then_some(w), affine.then_some(b), stats.then_some(rm), stats.then_some(rv)])
                })
            })
            .boxed(),
        // Ranks 1 to 4 with odd and size-one dimensions, normalized_shape of 1..=rank-1
        // trailing dims (the whole of a 1-D input), weight and bias each given or not,
        // eps the default (rms_norm: None, the dtype's machine epsilon) or drawn.
        "layer_norm" | "rms_norm" => {
            let rms = name == "rms_norm";
            (proptest::collection::vec(1usize..5, 1..5), 0usize..4, any::<bool>(), any::<bool>(), prop_oneof![Just(None), (1e-6..1e-1f64).prop_map(Some)], 0.5..3.0f64, -1.0..1.0f64)
                .prop_flat_map(move |(s, k, weight, bias, eps, scale, shift)| {
                    let (mut s, r) = (s.clone(), s.len());
                    let k = if r == 1 { 1 } else { 1 + k % (r - 1) };
                    // A layer-norm row of one element is constant and one of two is ±1
                    // whatever the values: ill-conditioned (the exact gradient is 0 or
                    // nearly, libtorch's f32 one rounding noise of the cancelled terms).
                    // Three or more, as batch_norm's cases have four or more per channel.
                    // An RMS-norm row of one element is ±1 up to eps (its gradient
                    // eps/|x|³ all cancellation): two or more.
                    let least = if rms { 2 } else { 3 };
                    if s[r - k..].iter().product::<usize>() < least {
                        s[r - 1] = least;
                    }
                    let ns = s[r - k..].to_vec();
                    (spread(s, scale, shift), tensor(ns.clone(), Domain::Any), tensor(ns.clone(), Domain::Any)).prop_map(move |(x, w, b)| {
                        let normalized_shape = ns.clone();
                        if rms {
                            (Op::RmsNorm { normalized_shape, eps }, vec![Some(x), weight.then_some(w)])
                        } else {
                            (Op::LayerNorm { normalized_shape, eps: eps.unwrap_or(1e-5) }, vec![Some(x), weight.then_some(w), bias.then_some(b)])
                        }
                    })
                })
                .boxed()
        }
        // x [N, C, *] of rank 2 to 4, num_groups dividing C (1 and C among them), weight
        // and bias each given or not.
        "group_norm" => (1usize..4, 1usize..4, 1usize..4, proptest::collection::vec(1usize..4, 0..3), any::<bool>(), any::<bool>(), prop_oneof![Just(1e-5), 1e-4..1e-1f64], 0.5..3.0f64, -1.0..1.0f64)
            .prop_flat_map(|(n, groups, per_group, spatial, weight, bias, eps, scale, shift)| {
                // Three or more values per group and sample (as layer_norm's rows).
                let per_group = if per_group * spatial.iter().product::<usize>() < 3 { 3 } else { per_group };
                let c = groups * per_group;
                let mut s = vec![n, c];
                s.extend(spatial);
                (spread(s, scale, shift), tensor(vec![c], Domain::Any), tensor(vec![c], Domain::Any))
                    .prop_map(move |(x, w, b)| (Op::GroupNorm { num_groups: groups, eps }, vec![Some(x), weight.then_some(w), bias.then_some(b)]))
            })
            .boxed(),
        // Ranks 1 to 4 over any dimension, named positively or from the back.
        "softmax" | "log_softmax" => {
            let log = name == "log_softmax";
            (proptest::collection::vec(1usize..5, 1..5), any::<u8>(), any::<bool>())
                .prop_flat_map(move |(s, d, from_back)| {
                    let r = s.len() as i64;
                    let d = (d as i64) % r;
                    let dim = if from_back { d - r } else { d };
                    let op = if log { Op::LogSoftmax { dim } } else { Op::Softmax { dim } };
                    tensor(s, Domain::Any).prop_map(move |x| (op.clone(), vec![Some(x)]))
                })
                .boxed()
        }
        // Every reduction; cross-entropy with label smoothing 0 half the time, else within [0, 1].
        "nll_loss" | "cross_entropy" => {
            let nll = name == "nll_loss";
            (1usize..5, 1usize..6, reduction(), prop_oneof![Just(0.0), 0.0..=1.0f64])
                .prop_flat_map(|(n, c, r, ls)| (tensor(vec![n, c], Domain::Any), labels(n, c), Just(r), Just(ls)))
                .prop_map(move |(x, l, reduction, label_smoothing)| {
                    let op =
                        if nll { Op::NllLoss { reduction } } else { Op::CrossEntropy { reduction, label_smoothing } };
                    (op, some(vec![x, l]))
                })
                .boxed()
        }
        "mse_loss" => (shape(), reduction())
            .prop_flat_map(|(s, reduction)| {
                (tensor(s.clone(), Domain::Any), tensor(s, Domain::Any))
                    .prop_map(move |(x, t)| (Op::MseLoss { reduction }, some(vec![x, t])))
            })
            .boxed(),
        "dropout" => (shape(), 0.0..0.9f64, any::<bool>())
            .prop_flat_map(|(s, p, training)| (tensor(s.clone(), Domain::Any), mask(s)).prop_map(move |(x, m)| (Op::Dropout { p, training }, some(vec![x, m]))))
            .boxed(),
        "reshape" => (proptest::collection::vec(1usize..4, 1..4), 0usize..3)
            .prop_flat_map(|(s, free)| {
                let n: usize = s.iter().product();
                let target: Vec<i64> = match free {
                    1 => vec![-1],
                    2 if n % 2 == 0 => vec![2, -1],
                    _ => vec![n as i64, 1],
                };
                tensor(s, Domain::Any).prop_map(move |x| (Op::Reshape { shape: target.clone() }, vec![Some(x)]))
            })
            .boxed(),
        "flatten" => (proptest::collection::vec(1usize..4, 1..5), any::<(u8, u8)>())
            .prop_flat_map(|(s, (a, b))| {
                let r = s.len() as i64;
                let (a, b) = ((a as i64) % r, (b as i64) % r);
                let (start, end) = (a.min(b), a.max(b));
                // A negative end_dim half the time: PyTorch counts it from the back.
                let end = if end % 2 == 1 { end - r } else { end };
                tensor(s, Domain::Any).prop_map(move |x| (Op::Flatten { start_dim: start, end_dim: end }, vec![Some(x)]))
            })
            .boxed(),
        // Ranks 1 to 4, every permutation reachable.
        "permute" => (proptest::collection::vec(1usize..5, 1..5), any::<u64>())
            .prop_flat_map(|(s, seed)| {
                let mut dims: Vec<i64> = (0..s.len() as i64).collect();
                let mut r = seed;
                for i in (1..dims.len()).rev() {
                    dims.swap(i, (r % (i as u64 + 1)) as usize);
                    r /= i as u64 + 1;
                }
                let dims: Vec<i64> = dims
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| if (seed >> (40 + i)) & 1 == 1 { d - s.len() as i64 } else { d })
                    .collect();
                tensor(s, Domain::Any).prop_map(move |x| (Op::Permute { dims: dims.clone() }, vec![Some(x)]))
            })
            .boxed(),
        "transpose" => (proptest::collection::vec(1usize..5, 1..5), any::<(u8, u8, bool, bool)>())
            .prop_flat_map(|(s, (a, b, na, nb))| {
                let r = s.len();
                let op = Op::Transpose { dim0: pick_dim(a, r, na).1, dim1: pick_dim(b, r, nb).1 };
                tensor(s, Domain::Any).prop_map(move |x| (op.clone(), vec![Some(x)]))
            })
            .boxed(),
        // 2 to 8 inputs of ranks 1 to 3, each its own size along the joined dimension.
        "concat" => (
            proptest::collection::vec(1usize..4, 1..4),
            any::<(u8, bool)>(),
            proptest::collection::vec(1usize..4, 2..=8),
        )
            .prop_flat_map(|(s, (d, back), sizes)| {
                let (axis, dim) = pick_dim(d, s.len(), back);
                let parts: Vec<BoxedStrategy<HostTensor>> = sizes
                    .iter()
                    .map(|&n| {
                        let mut t = s.clone();
                        t[axis] = n;
                        tensor(t, Domain::Any)
                    })
                    .collect();
                parts.prop_map(move |xs| (Op::Concat { dim }, some(xs)))
            })
            .boxed(),
        "narrow" => (proptest::collection::vec(1usize..5, 1..5), any::<(u8, bool, u8, u8, bool)>())
            .prop_flat_map(|(s, (d, back, a, b, from_end))| {
                let (axis, dim) = pick_dim(d, s.len(), back);
                let n = s[axis];
                let start = a as usize % n;
                let length = 1 + b as usize % (n - start);
                let start = if from_end { start as i64 - n as i64 } else { start as i64 };
                tensor(s, Domain::Any).prop_map(move |x| (Op::Narrow { dim, start, length }, vec![Some(x)]))
            })
            .boxed(),
        // Indices repeat (their gradients add up) and may leave rows out.
        "index_select" => (proptest::collection::vec(1usize..5, 1..4), any::<(u8, bool)>(), 1usize..7)
            .prop_flat_map(|(s, (d, back), k)| {
                let (axis, dim) = pick_dim(d, s.len(), back);
                (tensor(s.clone(), Domain::Any), indices(vec![k], s[axis]))
                    .prop_map(move |(x, i)| (Op::IndexSelect { dim }, some(vec![x, i])))
            })
            .boxed(),
        // Indices of rank 0 to 3, repeated rows; padding_idx half the time (either sign).
        "embedding" => (1usize..6, 1usize..5, proptest::collection::vec(1usize..4, 0..4), any::<(bool, u8, bool)>())
            .prop_flat_map(|(v, d, s, (pad, p, neg))| {
                let padding_idx = pad.then(|| pick_dim(p, v, neg).1);
                (tensor(vec![v, d], Domain::Any), indices(s, v))
                    .prop_map(move |(w, i)| (Op::Embedding { padding_idx }, some(vec![w, i])))
            })
            .boxed(),
        // Condition, a and b each broadcasting against the others.
        "where" => shape()
            .prop_flat_map(|s| (broadcastable(s.clone()), broadcastable(s.clone()), broadcastable(s)))
            .prop_flat_map(|(c, a, b)| (mask(c), tensor(a, Domain::Any), tensor(b, Domain::Any)))
            .prop_map(|(c, a, b)| (Op::Where {}, some(vec![c, a, b])))
            .boxed(),
        "masked_fill" => (shape(), any::<bool>(), -3.0..3.0f64)
            .prop_flat_map(|(s, swap, value)| (Just(s.clone()), broadcastable(s), Just(swap), Just(value)))
            .prop_flat_map(|(s, b, swap, value)| {
                let (x, m) = if swap { (b, s) } else { (s, b) };
                (tensor(x, Domain::Any), mask(m)).prop_map(move |(x, m)| (Op::MaskedFill { value }, some(vec![x, m])))
            })
            .boxed(),
        other => panic!("no case generator for op '{other}': add an arm to study::ops::cases::case_for"),
    }
}


/// `count` cases of `name`, a function of `seed` alone.
pub fn cases(name: &str, count: usize, seed: u64) -> Vec<Case> {
    let strategy = case_for(name);
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(name.len() as u64).to_le_bytes());
    for (i, b) in name.bytes().enumerate() {
        key[16 + i % 16] ^= b;
    }
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    (0..count).map(|_| strategy.new_tree(&mut runner).expect("case strategies never reject").current()).collect()
}
