//! Best-of-many timing of `gemm` on the models' shapes (robust to a busy machine, unlike
//! a median): `cargo run --release --example gemm_speed`.

use std::time::Instant;

use backprop_parity::engine::ops::gemm::gemm;
use ndarray::Array2;

fn main() {
    for &(label, m, k, n, ta, tb) in &[
        ("mlp_fc1_fwd", 25, 784, 120, false, true),
        ("mlp_fc1_dw", 120, 25, 784, true, false),
        ("cnn_fc1_dx", 25, 120, 1568, false, false),
        ("conv2_fwd", 32, 400, 196, false, false),
        ("conv2_dw", 32, 196, 400, false, true),
    ] {
        let a = Array2::<f32>::from_shape_fn(if ta { (k, m) } else { (m, k) }, |(i, j)| (i * 7 + j) as f32 * 1e-3);
        let b = Array2::<f32>::from_shape_fn(if tb { (n, k) } else { (k, n) }, |(i, j)| (i + 3 * j) as f32 * 1e-3);
        let mut best = f64::INFINITY;
        for _ in 0..3000 {
            let t = Instant::now();
            let c = gemm(if ta { a.t() } else { a.view() }, if tb { b.t() } else { b.view() });
            best = best.min(t.elapsed().as_secs_f64());
            std::hint::black_box(c);
        }
        println!("{label:12} {m}x{k}x{n}: best {:7.1} µs, {:6.1} GFLOP/s", best * 1e6, 2.0 * (m * k * n) as f64 / best / 1e9);
    }
}
