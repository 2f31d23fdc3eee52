//! Bit-exactness guard for the engine's speed work: every kernel may be reorganised,
//! but no output or gradient may change by a single bit.
//!
//! - `gemm` is compared entry by entry against a textbook triple loop that accumulates
//!   each output with a sequential chain of fused multiply-adds over k, starting from 0.
//! - conv2d, batch norm and linear on odd geometries, and two training steps of each of
//!   the nine models in f32 and f64, are compared against FNV-1a hashes of every output
//!   bit, recorded from the engine before any optimisation (commit 1c7cc61).
//!
//! Set `BITEXACT_PRINT=1` to print the current hashes instead of only failing.

use std::sync::OnceLock;

use backprop_parity::backends::BackendKind;
use backprop_parity::data::{self, Dataset, DatasetKind};
use backprop_parity::engine::ops::gemm::{gemm, gemm_each_isa, gemm_into};
use backprop_parity::engine::ops::{conv, linear, norm};
use backprop_parity::engine::{Float, RunningStats, Tensor};
use backprop_parity::models::mnist::{ModelSpec, ParamSet, SEED_MODELS};
use backprop_parity::models::rng::SplitMix64;
use backprop_parity::study::lockstep::{instantiate, make_batch, step_masks, BackendOptions};
use backprop_parity::DType;
use ndarray::{Array2, ArrayView2, IxDyn};

// ---------------------------------------------------------------------------------------
// Hashing

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn word(&mut self, w: u64) {
        for b in w.to_le_bytes() {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn f64s(&mut self, v: impl IntoIterator<Item = f64>) {
        for x in v {
            self.word(x.to_bits());
        }
    }
    fn tensor<F: Float>(&mut self, t: &Tensor<F>) {
        for &d in t.shape() {
            self.word(d as u64);
        }
        // f32 → f64 is exact, so this hashes every bit of the value.
        self.f64s(t.iter().map(|v| v.as_f64()));
    }
}

fn check(name: &str, got: u64, want: u64) {
    if std::env::var_os("BITEXACT_PRINT").is_some() {
        println!("(\"{name}\", 0x{got:016x}),");
        return;
    }
    assert_eq!(got, want, "{name}: hash 0x{got:016x}, recorded 0x{want:016x}: a result changed");
}

fn golden(table: &[(&str, u64)], name: &str) -> u64 {
    table.iter().find(|(n, _)| *n == name).map(|&(_, h)| h).unwrap_or(0)
}

fn random<F: Float>(rng: &mut SplitMix64, shape: &[usize]) -> Tensor<F> {
    let n = shape.iter().product();
    Tensor::from_shape_vec(IxDyn(shape), (0..n).map(|_| F::of(rng.uniform(-1.0, 1.0))).collect()).unwrap()
}

// ---------------------------------------------------------------------------------------
// gemm against the reference

/// The definition: `c[i][j] = fma(a[i][k-1], b[k-1][j], ... fma(a[i][0], b[0][j], 0))`.
fn reference<F: Float>(a: ArrayView2<F>, b: ArrayView2<F>) -> Array2<F> {
    let (m, k) = a.dim();
    let n = b.dim().1;
    Array2::from_shape_fn((m, n), |(i, j)| {
        let mut c = F::zero();
        for p in 0..k {
            c = a[[i, p]].mul_add(b[[p, j]], c);
        }
        c
    })
}

fn assert_same_bits<F: Float>(got: &Array2<F>, want: &Array2<F>, what: &str) {
    assert_eq!(got.dim(), want.dim(), "{what}: shape");
    for ((ij, g), w) in got.indexed_iter().zip(want.iter()) {
        assert!(
            g.as_f64().to_bits() == w.as_f64().to_bits(),
            "{what}: entry {ij:?}: {:e} != {:e}",
            g.as_f64(),
            w.as_f64()
        );
    }
}

/// Every layout `gemm` meets: plain, `a` transposed, `b` transposed, both.
fn gemm_case<F: Float>(rng: &mut SplitMix64, m: usize, k: usize, n: usize) {
    let a: Array2<F> = Array2::from_shape_fn((m, k), |_| F::of(rng.uniform(-1.0, 1.0)));
    let b: Array2<F> = Array2::from_shape_fn((k, n), |_| F::of(rng.uniform(-1.0, 1.0)));
    let at: Array2<F> = a.t().as_standard_layout().into_owned();
    let bt: Array2<F> = b.t().as_standard_layout().into_owned();
    let want = reference(a.view(), b.view());
    let what = |l: &str| format!("{} gemm {m}x{k}x{n} {l}", F::DTYPE);
    assert_same_bits(&gemm(a.view(), b.view()), &want, &what("nn"));
    assert_same_bits(&gemm(at.t(), b.view()), &want, &what("tn"));
    assert_same_bits(&gemm(a.view(), bt.t()), &want, &what("nt"));
    assert_same_bits(&gemm(at.t(), bt.t()), &want, &what("tt"));
    // Into an existing buffer (old contents overwritten), as the convolution uses it.
    let mut into = Array2::from_elem((m, n), F::of(7.0));
    gemm_into(a.view(), b.view(), into.view_mut());
    assert_same_bits(&into, &want, &what("into"));
    // The kernels the dispatch does not pick on this CPU (AVX2, portable) as well.
    for (isa, got) in gemm_each_isa(at.t(), b.view()) {
        assert_same_bits(&got, &want, &what(isa));
    }
}

/// The shapes of the nine models at batch 25 (forward and both backward products of
/// every linear layer and convolution), then every small odd shape.
const MODEL_SHAPES: [(usize, usize, usize); 16] = [
    (25, 784, 120),
    (25, 120, 784),
    (120, 25, 784),
    (784, 25, 120),
    (25, 120, 120),
    (120, 25, 120),
    (25, 120, 10),
    (10, 25, 120),
    (25, 10, 120),
    (25, 1568, 120),
    (120, 25, 1568),
    (25, 120, 1568),
    (16, 25, 784),
    (16, 784, 25),
    (32, 400, 196),
    (400, 32, 196),
];

fn gemm_all<F: Float>(seed: u64) {
    let mut rng = SplitMix64::new(seed);
    for &(m, k, n) in &MODEL_SHAPES {
        gemm_case::<F>(&mut rng, m, k, n);
    }
    gemm_case::<F>(&mut rng, 32, 196, 400);
    for m in 1..=17 {
        for k in [0, 1, 2, 3, 7, 8, 9, 16, 17] {
            for n in 1..=17 {
                gemm_case::<F>(&mut rng, m, k, n);
            }
        }
    }
    for &(m, k, n) in &[(33, 5, 65), (64, 64, 64), (97, 31, 129), (1, 300, 1), (300, 1, 300), (5, 1000, 3)] {
        gemm_case::<F>(&mut rng, m, k, n);
    }
}

#[test]
fn gemm_is_a_sequential_fma_chain_in_f32() {
    gemm_all::<f32>(1);
}

#[test]
fn gemm_is_a_sequential_fma_chain_in_f64() {
    gemm_all::<f64>(2);
}

#[test]
fn gemm_of_empty_and_degenerate_shapes() {
    for &(m, k, n) in &[(0, 3, 4), (3, 0, 4), (3, 4, 0), (0, 0, 0)] {
        let a = Array2::<f64>::from_elem((m, k), 1.5);
        let b = Array2::<f64>::from_elem((k, n), 2.0);
        assert_same_bits(&gemm(a.view(), b.view()), &reference(a.view(), b.view()), "degenerate");
    }
}

// ---------------------------------------------------------------------------------------
// conv2d, batch norm, linear on odd geometries

const OPS_GOLDEN: &[(&str, u64)] = &[
    ("f32 conv0", 0x5228948eec44ae53),
    ("f32 conv1", 0x8dec6be63937c21f),
    ("f32 conv2", 0x570e500daaad35ae),
    ("f32 conv3", 0xb6c7ae0efa06c413),
    ("f32 conv4", 0x77cf49f1969941c1),
    ("f32 batch_norm0", 0xd2a43c05f8c5439d),
    ("f32 batch_norm1", 0xb7776358776e694f),
    ("f32 batch_norm2", 0xd3fdd3b74cab485d),
    ("f32 batch_norm3", 0x7c2b58c03b2a7c4f),
    ("f32 linear0", 0x5f4a70dba50c3469),
    ("f32 linear1", 0xc90872e167296936),
    ("f32 linear2", 0x89b4b92d0a109661),
    ("f32 linear3", 0xfeb151ec34875937),
    ("f64 conv0", 0xd16b736bcc5a7b82),
    ("f64 conv1", 0x0b2a80324f382f36),
    ("f64 conv2", 0x5115b77c49ce34a1),
    ("f64 conv3", 0x8c4c7bc9911b492f),
    ("f64 conv4", 0x839cabceb3b90acc),
    ("f64 batch_norm0", 0x2127be2f8680f22d),
    ("f64 batch_norm1", 0xea09a8b1f66bfa29),
    ("f64 batch_norm2", 0x6cb8399d71d6e8bb),
    ("f64 batch_norm3", 0xd4530255637f1454),
    ("f64 linear0", 0xb47ab4fe73277760),
    ("f64 linear1", 0x18c8766936cf39c2),
    ("f64 linear2", 0xf73ea38ead956f5b),
    ("f64 linear3", 0x5f632950feb58804),
];

fn ops_hash<F: Float>(seed: u64) -> Vec<(String, u64)> {
    let mut rng = SplitMix64::new(seed);
    let mut out = vec![];
    // (n, c, h, w, o, k, stride, padding)
    let convs = [
        (3, 1, 28, 28, 16, 5, 1, 2),
        (2, 16, 14, 14, 32, 5, 1, 2),
        (2, 3, 9, 11, 4, 3, 2, 1),
        (1, 2, 7, 5, 3, 3, 1, 0),
        (2, 5, 6, 6, 7, 2, 3, 2),
    ];
    for (i, &(n, c, h, w, o, k, stride, padding)) in convs.iter().enumerate() {
        let x = random::<F>(&mut rng, &[n, c, h, w]);
        let wt = random::<F>(&mut rng, &[o, c, k, k]);
        let b = random::<F>(&mut rng, &[o]);
        let geo = conv::Geometry::new(x.shape(), wt.shape(), Some(b.shape()), stride, padding).unwrap();
        let y = conv::forward(&x, &wt, Some(&b), &geo);
        let g = random::<F>(&mut rng, y.shape());
        let (gx, gw, gb) = conv::backward(&x, &wt, &g, stride, padding, true, true, true);
        let mut h = Fnv::new();
        for t in [&y, &gx.unwrap(), &gw.unwrap(), &gb.unwrap()] {
            h.tensor(t);
        }
        out.push((format!("{} conv{i}", F::DTYPE), h.0));
    }
    for (i, shape) in [vec![25, 120], vec![25, 16, 28, 28], vec![3, 5, 3, 7], vec![7, 3]].into_iter().enumerate() {
        let c = shape[1];
        let x = random::<F>(&mut rng, &shape);
        let gamma = random::<F>(&mut rng, &[c]);
        let beta = random::<F>(&mut rng, &[c]);
        let mut h = Fnv::new();
        for training in [true, false] {
            let mut stats = RunningStats::<F>::new(c);
            stats.mean = random::<F>(&mut rng, &[c]);
            let (y, saved) = norm::forward(&x, &gamma, &beta, &mut stats, training, 0.1, 1e-5).unwrap();
            let g = random::<F>(&mut rng, &shape);
            let (mean, invstd) = (saved.mean.clone().into(), saved.invstd.clone().into());
            let (gx, gg, gbeta) = norm::backward(&x, &gamma, &mean, &invstd, training, &g, true, true, true);
            for t in [&y, &gx.unwrap(), &gg.unwrap(), &gbeta.unwrap(), &stats.mean, &stats.var] {
                h.tensor(t);
            }
        }
        out.push((format!("{} batch_norm{i}", F::DTYPE), h.0));
    }
    for (i, &(n, inf, outf)) in [(25, 784, 120), (25, 120, 10), (3, 17, 5), (40, 33, 2)].iter().enumerate() {
        let x = random::<F>(&mut rng, &[n, inf]);
        let w = random::<F>(&mut rng, &[outf, inf]);
        let b = random::<F>(&mut rng, &[outf]);
        let y = linear::forward(&x, &w, Some(&b)).unwrap();
        let g = random::<F>(&mut rng, y.shape());
        let (gx, gw, gb) = linear::backward(&x, &w, &g, true, true, true);
        let mut h = Fnv::new();
        for t in [&y, &gx.unwrap(), &gw.unwrap(), &gb.unwrap()] {
            h.tensor(t);
        }
        out.push((format!("{} linear{i}", F::DTYPE), h.0));
    }
    out
}

#[test]
fn conv_batch_norm_and_linear_are_bit_identical_to_the_recorded_results() {
    let mut all = ops_hash::<f32>(3);
    all.extend(ops_hash::<f64>(4));
    for (name, h) in all {
        check(&name, h, golden(OPS_GOLDEN, &name));
    }
}

// ---------------------------------------------------------------------------------------
// The nine models

const MODEL_GOLDEN: &[(&str, u64)] = &[
    ("f32 CNN", 0xd24cc766ec8f2b9f),
    ("f32 CNN_Dropout", 0x074bc22afafb8755),
    ("f32 CNN_BatchNorm", 0xcfb53743fe78a5b5),
    ("f32 MLP", 0xb9421bc9ed3e1690),
    ("f32 MLP_Dropout", 0x9cd9c743454e3655),
    ("f32 MLP_BatchNorm", 0x445422e672ae84c1),
    ("f32 Softmax", 0x5d5721fcecbab1e4),
    ("f32 Softmax_Dropout", 0xbcf3a7aac52a4298),
    ("f32 Softmax_BatchNorm", 0x6b5d15cb06b3a329),
    ("f64 CNN", 0x9bb91018f66d4ab5),
    ("f64 CNN_Dropout", 0xcce1a1e2b33d590e),
    ("f64 CNN_BatchNorm", 0x29c5a5a7f07c61a5),
    ("f64 MLP", 0x9a555b8059d0627b),
    ("f64 MLP_Dropout", 0x5f0fdf511d58beb8),
    ("f64 MLP_BatchNorm", 0x1bbd988a9cd8c36c),
    ("f64 Softmax", 0x0573a4dcc73cb182),
    ("f64 Softmax_Dropout", 0xf6571252962d4e8c),
    ("f64 Softmax_BatchNorm", 0xb3db4132ffda614d),
];

fn mnist() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| {
        data::load(DatasetKind::Mnist, &data::default_dir(DatasetKind::Mnist)).expect("shipped MNIST loads")
    })
}

/// Two training steps (forward, backward, SGD with momentum, again on the next batch):
/// the losses, every gradient of both steps and the parameters after the second update.
fn model_hash(name: &str, dtype: DType) -> u64 {
    let data = mnist();
    let spec: ModelSpec = name.parse().unwrap();
    let params = ParamSet::init(&spec, 7);
    let mut model = instantiate(BackendKind::ENGINE, &BackendOptions::default(), &spec, &params, dtype).unwrap();
    let mut h = Fnv::new();
    for step in 0..2 {
        let indices: Vec<usize> = (step * 25..step * 25 + 25).collect();
        let batch = make_batch(&data.train, &indices);
        let masks = step_masks(&spec, 25, 5, step);
        let out = model.forward_backward(&batch, &masks, true).unwrap();
        h.f64s([out.loss]);
        for (n, t) in &out.grads.unwrap().tensors {
            h.word(n.len() as u64);
            h.f64s(t.data.iter().copied());
        }
        model.sgd_step(0.001, 0.9).unwrap();
    }
    for (_, t) in &model.params().unwrap().tensors {
        h.f64s(t.data.iter().copied());
    }
    h.0
}

fn models_in(dtype: DType) {
    for name in SEED_MODELS {
        let key = format!("{dtype} {name}");
        check(&key, model_hash(name, dtype), golden(MODEL_GOLDEN, &key));
    }
}

#[test]
fn nine_models_are_bit_identical_to_the_recorded_steps_in_f32() {
    models_in(DType::F32);
}

#[test]
fn nine_models_are_bit_identical_to_the_recorded_steps_in_f64() {
    models_in(DType::F64);
}
