//! Median times of the CNN's convolutions (forward, backward) at batch 25 on the engine:
//! `cargo run --release --example conv_speed`.
use backprop_parity::engine::ops::conv;
use backprop_parity::engine::Tensor;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    backprop_parity::engine::memory::keep_freed_pages();
    // `THREADS=1` measures one core.
    if let Some(t) = std::env::var("THREADS").ok().and_then(|t| t.parse().ok()) {
        backprop_parity::engine::parallel::set_threads(t);
    }
    for (label, c, hw, o) in [("conv1", 1, 28, 16), ("conv2", 16, 14, 32)] {
        let x = Tensor::<f32>::from_shape_fn(vec![25, c, hw, hw], |d| ((d[1] * 7 + d[2] * 3 + d[3]) % 13) as f32 * 0.1 - 0.6);
        let w = Tensor::<f32>::from_shape_fn(vec![o, c, 5, 5], |d| ((d[0] + d[1] * 5 + d[2] * 3 + d[3]) % 7) as f32 * 0.05 - 0.15);
        let b = Tensor::<f32>::from_shape_fn(vec![o], |d| d[0] as f32 * 0.01);
        let geo = conv::Geometry::new(x.shape(), w.shape(), Some(b.shape()), 1, 2).unwrap();
        let (mut tf, mut tb, mut tx, mut tw) = (vec![], vec![], vec![], vec![]);
        for _ in 0..300 {
            let t = Instant::now();
            let y = conv::forward(&x, &w, Some(&b), &geo);
            tf.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let r = conv::backward(&x, &w, &y, 1, 2, c > 1, true, true);
            tb.push(t.elapsed().as_secs_f64());
            std::hint::black_box(r);
            // The input and the weight gradient alone.
            let t = Instant::now();
            std::hint::black_box(conv::backward(&x, &w, &y, 1, 2, true, false, false));
            tx.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            std::hint::black_box(conv::backward(&x, &w, &y, 1, 2, false, true, false));
            tw.push(t.elapsed().as_secs_f64());
        }
        println!(
            "{label}: forward {:.0} µs, backward {:.0} µs (input gradient alone {:.0} µs, weight gradient alone {:.0} µs)",
            median(tf) * 1e6,
            median(tb) * 1e6,
            median(tx) * 1e6,
            median(tw) * 1e6
        );
    }
}
