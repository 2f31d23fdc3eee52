//! The neural-network ops (conv2d, max_pool2d, linear, batch_norm, dropout, softmax,
//! log_softmax, cross_entropy, reshape): each handwritten gradient against central finite
//! differences in f64 on random small shapes (256 cases per op), plus hand-computed
//! cases for the rules finite differences cannot see (ties, running statistics, SGD).

use backprop_parity::engine::optim::SgdMomentum;
use backprop_parity::engine::{Graph, RunningStats, Tensor, Var};
use ndarray::{arr1, ArrayD, IxDyn};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Builds the op under test from its input variables.
type Build<'a> = &'a dyn Fn(&mut Graph<f64>, &[Var]) -> Var;

fn tensor(shape: &[usize], data: Vec<f64>) -> Tensor<f64> {
    ArrayD::from_shape_vec(IxDyn(shape), data).unwrap()
}

/// A fixed pseudo-random weighting of the output, so that `sum(out * R)` has gradients
/// that differ per element (a plain sum hides errors, e.g. batch norm's is zero).
fn weights(shape: &[usize]) -> Tensor<f64> {
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    tensor(shape, data)
}

/// `sum(op(inputs) * R)` and, when asked, its gradient with respect to every input.
fn evaluate(inputs: &[Tensor<f64>], build: Build, grads: bool) -> (f64, Vec<Tensor<f64>>) {
    let mut g = Graph::<f64>::new();
    let vars: Vec<Var> = inputs.iter().map(|t| g.param(t.clone())).collect();
    let out = build(&mut g, &vars);
    let r = g.constant(weights(g.value(out).shape()));
    let weighted = g.mul(out, r).unwrap();
    let loss = g.sum(weighted);
    let value = *g.value(loss).iter().next().unwrap();
    if !grads {
        return (value, vec![]);
    }
    let gr = g.backward(loss).unwrap();
    (value, vars.iter().zip(inputs).map(|(&v, t)| gr.get_or_zeros(v, t)).collect())
}

fn describe(inputs: &[Tensor<f64>]) -> String {
    inputs.iter().map(|t| format!("shape {:?} values {:?}", t.shape(), t.iter().collect::<Vec<_>>())).collect::<Vec<_>>().join("; ")
}

/// Every input's handwritten gradient against central differences.
fn check(name: &str, inputs: &[Tensor<f64>], build: Build, context: &str) -> Result<(), TestCaseError> {
    let (_, analytic) = evaluate(inputs, build, true);
    let mut probe = inputs.to_vec();
    for (i, ana) in analytic.iter().enumerate() {
        for (j, &a) in ana.iter().enumerate() {
            let x = inputs[i].as_slice().unwrap()[j];
            let h = 1e-6 * x.abs().max(1.0);
            probe[i].as_slice_mut().unwrap()[j] = x + h;
            let up = evaluate(&probe, build, false).0;
            probe[i].as_slice_mut().unwrap()[j] = x - h;
            let down = evaluate(&probe, build, false).0;
            probe[i].as_slice_mut().unwrap()[j] = x;
            let n = (up - down) / (2.0 * h);
            prop_assert!(
                (a - n).abs() <= 1e-5 * (1.0 + n.abs()),
                "{name} ({context}): d/d input {i} [{j}]: handwritten {a} vs finite difference {n}; inputs: {}",
                describe(inputs)
            );
        }
    }
    Ok(())
}

fn values(shape: Vec<usize>, lo: f64, hi: f64) -> BoxedStrategy<Tensor<f64>> {
    let n: usize = shape.iter().product();
    proptest::collection::vec(lo..hi, n).prop_map(move |d| tensor(&shape, d)).boxed()
}

/// Values 0.01 apart in random order, so no window of a max-pool is within 1e-3 of a tie.
fn distinct(shape: Vec<usize>) -> BoxedStrategy<Tensor<f64>> {
    let n: usize = shape.iter().product();
    Just((0..n).collect::<Vec<_>>())
        .prop_shuffle()
        .prop_map(move |p| tensor(&shape, p.into_iter().map(|i| i as f64 * 0.01 - 1.0).collect()))
        .boxed()
}

/// (x, w, optional b, stride, padding) with the kernel never larger than the padded input.
fn conv_case() -> BoxedStrategy<(Vec<Tensor<f64>>, usize, usize)> {
    (1usize..=3, 1usize..=3, 1usize..=3, 1usize..=6, 1usize..=6, 1usize..=3, 1usize..=3, 1usize..=2, 0usize..=2, any::<bool>())
        .prop_flat_map(|(n, c, o, h, w, kh, kw, stride, padding, bias)| {
            let (h, w) = (h.max(kh.saturating_sub(2 * padding)), w.max(kw.saturating_sub(2 * padding)));
            let b = if bias { values(vec![o], -1.0, 1.0).prop_map(Some).boxed() } else { Just(None).boxed() };
            (values(vec![n, c, h, w], -2.0, 2.0), values(vec![o, c, kh, kw], -1.0, 1.0), b).prop_map(move |(x, wt, b)| {
                let mut inputs = vec![x, wt];
                inputs.extend(b);
                (inputs, stride, padding)
            })
        })
        .boxed()
}

fn pool_case() -> BoxedStrategy<(Tensor<f64>, usize)> {
    (1usize..=3, 1usize..=3, 1usize..=3)
        .prop_flat_map(|(n, c, k)| (Just(n), Just(c), Just(k), k..=6, k..=6))
        .prop_flat_map(|(n, c, k, h, w)| distinct(vec![n, c, h, w]).prop_map(move |x| (x, k)))
        .boxed()
}

fn linear_case() -> BoxedStrategy<Vec<Tensor<f64>>> {
    (1usize..=3, 1usize..=5, 1usize..=5, any::<bool>())
        .prop_flat_map(|(n, i, o, bias)| {
            let b = if bias { values(vec![o], -1.0, 1.0).prop_map(Some).boxed() } else { Just(None).boxed() };
            (values(vec![n, i], -2.0, 2.0), values(vec![o, i], -1.0, 1.0), b).prop_map(|(x, w, b)| {
                let mut v = vec![x, w];
                v.extend(b);
                v
            })
        })
        .boxed()
}

/// [N,C] or [N,C,H,W] input, gamma, beta, running mean and running variance.
fn norm_case() -> BoxedStrategy<(Tensor<f64>, Tensor<f64>, Tensor<f64>, RunningStats<f64>)> {
    (1usize..=3, 1usize..=3, prop_oneof![Just(vec![]), (1usize..=3, 1usize..=3).prop_map(|(h, w)| vec![h, w])])
        .prop_flat_map(|(n, c, hw)| {
            let mut shape = vec![n, c];
            shape.extend(hw);
            (
                values(shape, -2.0, 2.0),
                values(vec![c], 0.5, 1.5),
                values(vec![c], -1.0, 1.0),
                values(vec![c], -1.0, 1.0),
                values(vec![c], 0.5, 2.0),
            )
        })
        .prop_map(|(x, gamma, beta, mean, var)| (x, gamma, beta, RunningStats { mean, var }))
        .boxed()
}

/// Smallest biased variance over the channels of `x`.
fn min_channel_variance(x: &Tensor<f64>) -> f64 {
    let c = x.shape()[1];
    (0..c)
        .map(|ch| {
            let v: Vec<f64> = x.index_axis(ndarray::Axis(1), ch).iter().copied().collect();
            let m = v.iter().sum::<f64>() / v.len() as f64;
            v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn rows_case() -> BoxedStrategy<Tensor<f64>> {
    (1usize..=3, 1usize..=5).prop_flat_map(|(n, c)| values(vec![n, c], -3.0, 3.0)).boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn conv2d_gradient((inputs, stride, padding) in conv_case()) {
        let build = move |g: &mut Graph<f64>, v: &[Var]| g.conv2d(v[0], v[1], v.get(2).copied(), stride, padding).unwrap();
        check("conv2d", &inputs, &build, &format!("stride {stride}, padding {padding}"))?;
    }

    #[test]
    fn max_pool2d_gradient((x, kernel) in pool_case()) {
        let build = move |g: &mut Graph<f64>, v: &[Var]| g.max_pool2d(v[0], kernel).unwrap();
        check("max_pool2d", &[x], &build, &format!("kernel {kernel}"))?;
    }

    #[test]
    fn linear_gradient(inputs in linear_case()) {
        let build = |g: &mut Graph<f64>, v: &[Var]| g.linear(v[0], v[1], v.get(2).copied()).unwrap();
        check("linear", &inputs, &build, "")?;
    }

    #[test]
    fn batch_norm_training_gradient((x, gamma, beta, stats) in norm_case()) {
        let per_channel = x.len() / x.shape()[1];
        prop_assume!(per_channel >= 2 && min_channel_variance(&x) > 0.05);
        let build = move |g: &mut Graph<f64>, v: &[Var]| {
            let mut s = stats.clone();
            g.batch_norm(v[0], v[1], v[2], &mut s, true, 0.1, 1e-5).unwrap()
        };
        check("batch_norm (training)", &[x, gamma, beta], &build, "")?;
    }

    #[test]
    fn batch_norm_eval_gradient((x, gamma, beta, stats) in norm_case()) {
        let context = format!("running mean {:?} var {:?}", stats.mean, stats.var);
        let build = move |g: &mut Graph<f64>, v: &[Var]| {
            let mut s = stats.clone();
            let y = g.batch_norm(v[0], v[1], v[2], &mut s, false, 0.1, 1e-5).unwrap();
            assert_eq!(s, stats, "eval mode leaves the running statistics alone");
            y
        };
        check("batch_norm (eval)", &[x, gamma, beta], &build, &context)?;
    }

    #[test]
    fn dropout_gradient(
        (x, mask) in proptest::collection::vec(1usize..=4, 1..=3).prop_flat_map(|s| {
            let n: usize = s.iter().product();
            (values(s.clone(), -2.0, 2.0), proptest::collection::vec(any::<bool>(), n).prop_map(move |m| {
                tensor(&s, m.into_iter().map(|k| if k { 1.0 } else { 0.0 }).collect())
            }))
        }),
        p in prop_oneof![Just(0.25), Just(0.5)],
    ) {
        let context = format!("p {p}, mask {:?}", mask.iter().collect::<Vec<_>>());
        let build = move |g: &mut Graph<f64>, v: &[Var]| g.dropout(v[0], &mask, p).unwrap();
        check("dropout", &[x], &build, &context)?;
    }

    #[test]
    fn softmax_gradient(x in rows_case()) {
        check("softmax", &[x], &|g: &mut Graph<f64>, v: &[Var]| g.softmax(v[0]).unwrap(), "")?;
    }

    #[test]
    fn log_softmax_gradient(x in rows_case()) {
        check("log_softmax", &[x], &|g: &mut Graph<f64>, v: &[Var]| g.log_softmax(v[0]).unwrap(), "")?;
    }

    #[test]
    fn cross_entropy_gradient(
        (x, targets) in rows_case().prop_flat_map(|x| {
            let (n, c) = (x.shape()[0], x.shape()[1]);
            (Just(x), proptest::collection::vec(0..c, n))
        })
    ) {
        let context = format!("targets {targets:?}");
        let build = move |g: &mut Graph<f64>, v: &[Var]| g.cross_entropy(v[0], &targets).unwrap();
        check("cross_entropy", &[x], &build, &context)?;
    }

    #[test]
    fn reshape_gradient(
        (x, shape) in (1usize..=3, 1usize..=3, 1usize..=4).prop_flat_map(|(a, b, c)| {
            let shapes = vec![vec![a * b * c], vec![a, b * c], vec![a * b, c], vec![c, a, b], vec![1, a * b * c, 1]];
            (values(vec![a, b, c], -2.0, 2.0), proptest::sample::select(shapes))
        })
    ) {
        let context = format!("to {shape:?}");
        let build = move |g: &mut Graph<f64>, v: &[Var]| g.reshape(v[0], &shape).unwrap();
        check("reshape", &[x], &build, &context)?;
    }
}

#[test]
fn batch_norm_running_statistics_follow_pytorch() {
    // One channel, M = 4: mean 2.5, biased variance 1.25, unbiased 5/3.
    let x = tensor(&[4, 1], vec![1.0, 2.0, 3.0, 4.0]);
    let (momentum, eps) = (0.1, 1e-5);
    let mut stats = RunningStats { mean: arr1(&[0.5]).into_dyn(), var: arr1(&[2.0]).into_dyn() };
    let mut g = Graph::<f64>::new();
    let xv = g.constant(x.clone());
    let gamma = g.param(arr1(&[1.5]).into_dyn());
    let beta = g.param(arr1(&[-0.25]).into_dyn());
    let y = g.batch_norm(xv, gamma, beta, &mut stats, true, momentum, eps).unwrap();

    let (mean, biased, unbiased) = (2.5, 1.25, 5.0 / 3.0);
    assert_eq!(stats.mean[[0]], momentum * mean + (1.0 - momentum) * 0.5);
    assert_eq!(stats.var[[0]], momentum * unbiased + (1.0 - momentum) * 2.0);
    for (&yv, &xv) in g.value(y).iter().zip(x.iter()) {
        let want = (xv - mean) / (biased + eps).sqrt() * 1.5 - 0.25;
        assert!((yv - want).abs() < 1e-12, "normalised with the biased variance: {yv} vs {want}");
    }

    // Eval mode normalises with the running statistics and leaves them alone.
    let before = stats.clone();
    let y = g.batch_norm(xv, gamma, beta, &mut stats, false, momentum, eps).unwrap();
    assert_eq!(stats, before);
    for (&yv, &xv) in g.value(y).iter().zip(x.iter()) {
        let want = (xv - before.mean[[0]]) / (before.var[[0]] + eps).sqrt() * 1.5 - 0.25;
        assert!((yv - want).abs() < 1e-12, "{yv} vs {want}");
    }
}

#[test]
fn batch_norm_runs_in_f32_on_images() {
    let mut g = Graph::<f32>::new();
    let x = g.param(ArrayD::from_shape_fn(IxDyn(&[2, 3, 2, 2]), |i| (i[0] * 7 + i[1] * 3 + i[2] * 2 + i[3]) as f32 * 0.1));
    let gamma = g.param(arr1(&[1.0f32, 2.0, 0.5]).into_dyn());
    let beta = g.param(arr1(&[0.0f32, 1.0, -1.0]).into_dyn());
    let mut stats = RunningStats::<f32>::new(3);
    let y = g.batch_norm(x, gamma, beta, &mut stats, true, 0.1, 1e-5).unwrap();
    let loss = g.sum(y);
    let grads = g.backward(loss).unwrap();
    // A plain sum of a normalised channel is constant in x; the betas get M = 8 each.
    assert!(grads.get(x).unwrap().iter().all(|v| v.abs() < 1e-5));
    assert_eq!(grads.get(beta).unwrap(), &arr1(&[8.0f32, 8.0, 8.0]).into_dyn());
    assert!(stats.mean.iter().zip(stats.var.iter()).all(|(m, v)| m.is_finite() && *v > 0.0));
}

#[test]
fn max_pool_ties_go_to_the_first_position() {
    let mut g = Graph::<f64>::new();
    // Window 1 all equal; window 2 ties between its second and fourth entries.
    let x = g.param(tensor(&[1, 1, 2, 4], vec![1.0, 1.0, 0.0, 5.0, 1.0, 1.0, -1.0, 5.0]));
    let y = g.max_pool2d(x, 2).unwrap();
    assert_eq!(g.value(y).iter().copied().collect::<Vec<_>>(), vec![1.0, 5.0]);
    let r = g.constant(tensor(&[1, 1, 1, 2], vec![3.0, 7.0]));
    let yr = g.mul(y, r).unwrap();
    let loss = g.sum(yr);
    let grads = g.backward(loss).unwrap();
    assert_eq!(grads.get(x).unwrap(), &tensor(&[1, 1, 2, 4], vec![3.0, 0.0, 0.0, 7.0, 0.0, 0.0, 0.0, 0.0]));
}

#[test]
fn max_pool_drops_the_remainder_and_lets_nan_win() {
    let mut g = Graph::<f64>::new();
    let x = g.param(tensor(&[1, 1, 3, 3], vec![1.0, f64::NAN, 9.0, 2.0, 3.0, 9.0, 9.0, 9.0, 9.0]));
    let y = g.max_pool2d(x, 2).unwrap();
    assert_eq!(g.value(y).shape(), &[1, 1, 1, 1]);
    assert!(g.value(y).iter().next().unwrap().is_nan());
    let loss = g.sum(y);
    let grads = g.backward(loss).unwrap();
    assert_eq!(grads.get(x).unwrap().iter().position(|&v| v == 1.0), Some(1));
}

#[test]
fn conv2d_matches_hand_computed_values() {
    let mut g = Graph::<f64>::new();
    let x = g.constant(tensor(&[1, 1, 3, 3], (1..=9).map(f64::from).collect()));
    // y[i][j] = x[i][j] - x[i+1][j+1] + 0.5 (cross-correlation, not flipped).
    let w = g.param(tensor(&[1, 1, 2, 2], vec![1.0, 0.0, 0.0, -1.0]));
    let b = g.param(arr1(&[0.5]).into_dyn());
    let y = g.conv2d(x, w, Some(b), 1, 0).unwrap();
    assert_eq!(g.value(y), &tensor(&[1, 1, 2, 2], vec![-3.5; 4]));
    // Padding 1, stride 2: windows at padded (0,0), (0,2), (2,0), (2,2).
    let y = g.conv2d(x, w, Some(b), 2, 1).unwrap();
    assert_eq!(g.value(y), &tensor(&[1, 1, 2, 2], vec![-0.5, -2.5, -6.5, -3.5]));
    let loss = g.sum(y);
    let grads = g.backward(loss).unwrap();
    assert_eq!(grads.get(b).unwrap(), &arr1(&[4.0]).into_dyn());
    // dL/dw[i][j] = sum of the inputs each tap saw: tap (0,0) saw 0,0,0,5; tap (1,0) saw 0,2,0,8; tap (1,1) saw 1,3,7,9.
    assert_eq!(grads.get(w).unwrap(), &tensor(&[1, 1, 2, 2], vec![5.0, 10.0, 10.0, 20.0]));
}

#[test]
fn conv2d_matches_a_direct_loop_with_channels() {
    let (n, c, h, wd, o, k, stride, pad) = (2, 3, 5, 4, 2, 3, 2, 1);
    let xv = ArrayD::from_shape_fn(IxDyn(&[n, c, h, wd]), |i| ((i[0] * 31 + i[1] * 17 + i[2] * 5 + i[3] * 3) % 11) as f64 - 5.0);
    let wv = ArrayD::from_shape_fn(IxDyn(&[o, c, k, k]), |i| ((i[0] * 7 + i[1] * 5 + i[2] * 3 + i[3]) % 5) as f64 - 2.0);
    let mut g = Graph::<f64>::new();
    let (x, w) = (g.constant(xv.clone()), g.constant(wv.clone()));
    let y = g.conv2d(x, w, None, stride, pad).unwrap();
    let (oh, ow) = ((h + 2 * pad - k) / stride + 1, (wd + 2 * pad - k) / stride + 1);
    assert_eq!(g.value(y).shape(), &[n, o, oh, ow]);
    for ((b, oc, oy, ox), _) in ndarray::Array4::<f64>::zeros((n, o, oh, ow)).indexed_iter() {
        let mut want = 0.0;
        for ci in 0..c {
            for i in 0..k {
                for j in 0..k {
                    let (yy, xx) = ((oy * stride + i) as isize - pad as isize, (ox * stride + j) as isize - pad as isize);
                    if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < wd {
                        want += xv[[b, ci, yy as usize, xx as usize]] * wv[[oc, ci, i, j]];
                    }
                }
            }
        }
        assert_eq!(g.value(y)[[b, oc, oy, ox]], want, "at {:?}", (b, oc, oy, ox));
    }
}

#[test]
fn cross_entropy_is_the_mean_negative_log_probability() {
    let mut g = Graph::<f64>::new();
    let logits = g.param(tensor(&[2, 3], vec![1.0, 2.0, 3.0, 0.5, -0.5, 0.0]));
    let loss = g.cross_entropy(logits, &[2, 0]).unwrap();
    let lse = |r: [f64; 3]| r.iter().map(|v| v.exp()).sum::<f64>().ln();
    let want = ((lse([1.0, 2.0, 3.0]) - 3.0) + (lse([0.5, -0.5, 0.0]) - 0.5)) / 2.0;
    let got = *g.value(loss).iter().next().unwrap();
    assert!((got - want).abs() < 1e-14, "{got} vs {want}");
    assert_eq!(g.value(loss).ndim(), 0);
}

#[test]
fn sgd_momentum_two_steps() {
    let opt = SgdMomentum { lr: 0.1, momentum: 0.9 };
    let mut p = arr1(&[1.0f64, -2.0]).into_dyn();
    let mut v = None;
    opt.step(&mut p, &arr1(&[0.5, 0.25]).into_dyn(), &mut v);
    // First step: the velocity is the gradient itself.
    assert_eq!(v.as_ref().unwrap(), &arr1(&[0.5, 0.25]).into_dyn());
    assert!((p[[0]] - 0.95).abs() < 1e-15 && (p[[1]] + 2.025).abs() < 1e-15, "{p}");
    opt.step(&mut p, &arr1(&[1.0, -1.0]).into_dyn(), &mut v);
    // v = 0.9·v + g = [1.45, -0.775]; p = p - 0.1·v = [0.805, -1.9475].
    let vv = v.as_ref().unwrap();
    assert!((vv[[0]] - 1.45).abs() < 1e-15 && (vv[[1]] + 0.775).abs() < 1e-15, "{vv}");
    assert!((p[[0]] - 0.805).abs() < 1e-15 && (p[[1]] + 1.9475).abs() < 1e-15, "{p}");
    // And bit for bit: two roundings for v, one fused rounding for p.
    let v0 = 0.5f64 * 0.9 + 1.0;
    assert_eq!(vv[[0]], v0);
    assert_eq!(p[[0]], (-0.1f64).mul_add(v0, (-0.1f64).mul_add(0.5, 1.0)));

    let mut p32 = arr1(&[1.0f32]).into_dyn();
    let mut v32 = None;
    opt.step(&mut p32, &arr1(&[0.5f32]).into_dyn(), &mut v32);
    opt.step(&mut p32, &arr1(&[1.0f32]).into_dyn(), &mut v32);
    assert!((p32[[0]] - 0.805).abs() < 1e-6);
}

#[test]
fn bad_shapes_are_errors() {
    let mut g = Graph::<f64>::new();
    let z = |g: &mut Graph<f64>, s: &[usize]| g.param(ArrayD::zeros(IxDyn(s)));
    let x4 = z(&mut g, &[1, 2, 4, 4]);
    let w_bad_c = z(&mut g, &[3, 1, 2, 2]);
    let w_big = z(&mut g, &[3, 2, 5, 5]);
    let w_ok = z(&mut g, &[3, 2, 2, 2]);
    let b_bad = z(&mut g, &[2]);
    let x2 = z(&mut g, &[2, 3]);
    let x3 = z(&mut g, &[2, 3, 4]);
    assert!(g.conv2d(x4, w_bad_c, None, 1, 0).is_err());
    assert!(g.conv2d(x4, w_big, None, 1, 0).is_err());
    assert!(g.conv2d(x4, w_big, None, 1, 1).is_ok(), "padding makes room for the kernel");
    assert!(g.conv2d(x4, w_ok, Some(b_bad), 1, 0).is_err());
    assert!(g.conv2d(x4, w_ok, None, 0, 0).is_err());
    assert!(g.conv2d(x2, w_ok, None, 1, 0).is_err());
    assert!(g.max_pool2d(x4, 5).is_err());
    assert!(g.max_pool2d(x4, 0).is_err());
    assert!(g.max_pool2d(x2, 1).is_err());
    let w_lin = z(&mut g, &[4, 2]);
    assert!(g.linear(x2, w_lin, None).is_err());
    let w_lin = z(&mut g, &[4, 3]);
    assert!(g.linear(x2, w_lin, Some(b_bad)).is_err());
    assert!(g.linear(x3, w_lin, None).is_err());
    let (gamma, beta) = (z(&mut g, &[3]), z(&mut g, &[3]));
    let mut stats = RunningStats::<f64>::new(3);
    assert!(g.batch_norm(x3, gamma, beta, &mut stats, true, 0.1, 1e-5).is_err());
    assert!(g.batch_norm(x4, gamma, beta, &mut stats, true, 0.1, 1e-5).is_err());
    let one_row = z(&mut g, &[1, 3]);
    assert!(g.batch_norm(one_row, gamma, beta, &mut stats, true, 0.1, 1e-5).is_err(), "one value per channel");
    assert!(g.batch_norm(one_row, gamma, beta, &mut stats, false, 0.1, 1e-5).is_ok());
    assert_eq!(stats, RunningStats::new(3), "failed calls leave the statistics alone");
    let mask = ArrayD::zeros(IxDyn(&[3, 2]));
    assert!(g.dropout(x2, &mask, 0.5).is_err());
    assert!(g.dropout(x2, &ArrayD::zeros(IxDyn(&[2, 3])), 1.5).is_err());
    assert!(g.softmax(x3).is_err());
    assert!(g.log_softmax(x4).is_err());
    assert!(g.cross_entropy(x2, &[0, 3]).is_err(), "target out of range");
    assert!(g.cross_entropy(x2, &[0]).is_err(), "one target per row");
    assert!(g.cross_entropy(x2, &[0, 2]).is_ok());
    assert!(g.reshape(x2, &[4]).is_err());
    assert!(g.reshape(x2, &[3, 2]).is_ok());
    let msg = g.conv2d(x4, w_bad_c, None, 1, 0).unwrap_err().to_string();
    assert!(msg.contains("conv2d") && msg.contains("[1, 2, 4, 4]"), "{msg}");
}

#[test]
fn dropout_scales_kept_elements_and_p_zero_is_identity() {
    let mut g = Graph::<f32>::new();
    let x = g.param(arr1(&[1.0f32, 2.0, 3.0, 4.0]).into_dyn());
    let mask = arr1(&[1.0f32, 0.0, 1.0, 1.0]).into_dyn();
    assert_eq!(g.dropout(x, &mask, 0.0).unwrap(), x);
    let y = g.dropout(x, &mask, 0.25).unwrap();
    let scale = 1.0f32 / 0.75f32;
    assert_eq!(g.value(y), &arr1(&[scale, 0.0, 3.0 * scale, 4.0 * scale]).into_dyn());
    let y1 = g.dropout(x, &mask, 1.0).unwrap();
    assert!(g.value(y1).iter().all(|&v| v == 0.0));
}
