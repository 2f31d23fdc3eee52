//! Timing of `gemm` on the models' shapes: best and
//! median of many calls (`cargo run --release --example gemm_speed`). The layouts are
//! the ones the models use (`nt`: `x·wᵀ`, `tn`: `xᵀ·g`) and the bench's plain `nn`.

use std::time::Instant;

use backprop_parity::engine::ops::gemm::gemm;
use ndarray::Array2;

fn main() {
    // `THREADS=1` measures one core.
    if let Some(t) = std::env::var("THREADS").ok().and_then(|t| t.parse().ok()) {
        backprop_parity::engine::parallel::set_threads(t);
    }
    for &(label, m, k, n, ta, tb) in &[
        ("mlp_fc1_fwd", 25, 784, 120, false, true),
        ("mlp_fc1_fwd_nn", 25, 784, 120, false, false),
        ("mlp_fc1_dw", 120, 25, 784, true, false),
        ("mlp_fc1_dw_nn", 120, 25, 784, false, false),
        ("cnn_fc1_dx", 25, 120, 1568, false, false),
        ("conv1_fwd", 16, 25, 784, false, false),
        ("conv2_fwd", 32, 400, 196, false, false),
        ("conv2_dw", 32, 196, 400, false, true),
        ("cnn_fc1_fwd_nn", 25, 1568, 120, false, false),
        // Per image inside the convolution's backward (one thread each): Wᵀ·G, cols·Gᵀ.
        ("conv2_dx_image", 400, 32, 196, false, false),
        ("conv2_dw_image", 400, 196, 32, false, true),
        ("conv1_dw_image", 25, 784, 16, false, true),
    ] {
        if std::env::args().nth(1).is_some_and(|only| only != label) {
            continue;
        }
        let a = Array2::<f32>::from_shape_fn(if ta { (k, m) } else { (m, k) }, |(i, j)| (i * 7 + j) as f32 * 1e-3);
        let b = Array2::<f32>::from_shape_fn(if tb { (n, k) } else { (k, n) }, |(i, j)| (i + 3 * j) as f32 * 1e-3);
        let mut samples: Vec<f64> = (0..3000)
            .map(|_| {
                let t = Instant::now();
                let c = gemm(if ta { a.t() } else { a.view() }, if tb { b.t() } else { b.view() });
                std::hint::black_box(c);
                t.elapsed().as_secs_f64()
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        let gf = |s: f64| 2.0 * (m * k * n) as f64 / s / 1e9;
        let (best, med) = (samples[0], samples[samples.len() / 2]);
        println!(
            "{label:15} {m}x{k}x{n}: best {:6.1} µs {:6.1} GFLOP/s, median {:6.1} µs {:6.1} GFLOP/s",
            best * 1e6,
            gf(best),
            med * 1e6,
            gf(med)
        );
    }
}
