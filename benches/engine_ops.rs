//! Speed of the engine's kernels and of whole training steps.
//!
//!     cargo bench --bench engine_ops                 # everything
//!     cargo bench --bench engine_ops -- train_step   # one group
//!
//! gemm throughput is reported as elements/s where one element is one floating-point
//! operation (2·m·k·n per product), i.e. FLOP/s.

use std::hint::black_box;
use std::time::Duration;

use backprop_parity::backends::BackendKind;
use backprop_parity::data::{self, DatasetKind};
use backprop_parity::engine::ops::{conv, gemm::gemm, norm};
use backprop_parity::engine::{Float, RunningStats, Tensor};
use backprop_parity::models::mnist::{ModelSpec, ParamSet};
use backprop_parity::models::rng::SplitMix64;
use backprop_parity::study::lockstep::{instantiate, make_batch, step_masks, BackendOptions};
use backprop_parity::DType;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array2, IxDyn};

fn random<F: Float>(rng: &mut SplitMix64, shape: &[usize]) -> Tensor<F> {
    let n = shape.iter().product();
    Tensor::from_shape_vec(IxDyn(shape), (0..n).map(|_| F::of(rng.uniform(-1.0, 1.0))).collect()).unwrap()
}

/// (label, m, k, n, a transposed, b transposed): the products the models issue at batch 25.
const GEMMS: [(&str, usize, usize, usize, bool, bool); 6] = [
    ("mlp_fc1_fwd", 25, 784, 120, false, true),
    ("mlp_fc1_dw", 120, 25, 784, true, false),
    ("cnn_fc1_dx", 25, 120, 1568, false, false),
    ("conv1_fwd", 16, 25, 784, false, false),
    ("conv2_fwd", 32, 400, 196, false, false),
    ("conv2_dcols", 400, 32, 196, true, false),
];

fn gemm_group<F: Float>(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("gemm_{}", F::DTYPE));
    group.sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let mut rng = SplitMix64::new(1);
    for &(label, m, k, n, ta, tb) in &GEMMS {
        // Store the operands the way the models hand them over (weights transposed, ...).
        let a: Array2<F> = random::<F>(&mut rng, &if ta { [k, m] } else { [m, k] }).into_dimensionality().unwrap();
        let b: Array2<F> = random::<F>(&mut rng, &if tb { [n, k] } else { [k, n] }).into_dimensionality().unwrap();
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        group.bench_function(BenchmarkId::new(label, format!("{m}x{k}x{n}")), |bench| {
            bench.iter(|| {
                let av = if ta { a.t() } else { a.view() };
                let bv = if tb { b.t() } else { b.view() };
                black_box(gemm(av, bv))
            })
        });
    }
    group.finish();
}

fn conv_group<F: Float>(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("conv2d_{}", F::DTYPE));
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    let mut rng = SplitMix64::new(2);
    // (label, input, out channels): CNN conv1 and conv2 at batch 25.
    for (label, xs, o) in [("conv1", [25, 1, 28, 28], 16), ("conv2", [25, 16, 14, 14], 32)] {
        let x = random::<F>(&mut rng, &xs);
        let w = random::<F>(&mut rng, &[o, xs[1], 5, 5]);
        let b = random::<F>(&mut rng, &[o]);
        let geo = conv::Geometry::new(x.shape(), w.shape(), Some(b.shape()), 1, 2).unwrap();
        let y = conv::forward(&x, &w, Some(&b), &geo);
        let g = random::<F>(&mut rng, y.shape());
        group.bench_function(format!("{label}_forward"), |bench| bench.iter(|| black_box(conv::forward(&x, &w, Some(&b), &geo))));
        // conv1's input is the image batch, which needs no gradient.
        let need_x = label != "conv1";
        group.bench_function(format!("{label}_backward"), |bench| {
            bench.iter(|| black_box(conv::backward(&x, &w, &g, 1, 2, need_x, true, true)))
        });
    }
    group.finish();
}

fn batch_norm_group<F: Float>(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("batch_norm_{}", F::DTYPE));
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let mut rng = SplitMix64::new(3);
    for shape in [vec![25, 16, 28, 28], vec![25, 120]] {
        let ch = shape[1];
        let x = random::<F>(&mut rng, &shape);
        let gamma = random::<F>(&mut rng, &[ch]);
        let beta = random::<F>(&mut rng, &[ch]);
        let g = random::<F>(&mut rng, &shape);
        let mut stats = RunningStats::<F>::new(ch);
        group.bench_function(format!("fwd_bwd_{shape:?}"), |bench| {
            bench.iter(|| {
                let (y, saved) = norm::forward(&x, &gamma, &beta, &mut stats, true, 0.1, 1e-5).unwrap();
                let (mean, invstd) = (saved.mean.into(), saved.invstd.into());
                black_box((y, norm::backward(&x, &gamma, &mean, &invstd, true, &g, true, true, true)))
            })
        });
    }
    group.finish();
}

/// One training step as the lockstep study runs it: forward, backward, SGD with momentum.
fn train_step_group(c: &mut Criterion) {
    let data = data::load(DatasetKind::Mnist, &data::default_dir(DatasetKind::Mnist)).expect("MNIST in data/mnist");
    let mut group = c.benchmark_group("train_step");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    let batch = make_batch(&data.train, &(0..25).collect::<Vec<_>>());
    for name in ["CNN", "CNN_BatchNorm", "MLP", "MLP_Dropout", "Softmax"] {
        for dtype in [DType::F32, DType::F64] {
            let spec: ModelSpec = name.parse().unwrap();
            let params = ParamSet::init(&spec, 7);
            let masks = step_masks(&spec, 25, 5, 0);
            let mut model = instantiate(BackendKind::ENGINE, &BackendOptions::default(), &spec, &params, dtype).unwrap();
            group.bench_function(format!("{name}_{dtype}"), |bench| {
                bench.iter(|| {
                    let out = model.forward_backward(&batch, &masks, false).unwrap();
                    model.sgd_step(1e-6, 0.9).unwrap();
                    black_box(out.loss)
                })
            });
        }
    }
    group.finish();
}

fn kernels(c: &mut Criterion) {
    gemm_group::<f32>(c);
    gemm_group::<f64>(c);
    conv_group::<f32>(c);
    conv_group::<f64>(c);
    batch_norm_group::<f32>(c);
    batch_norm_group::<f64>(c);
}

criterion_group!(benches, kernels, train_step_group);
criterion_main!(benches);
