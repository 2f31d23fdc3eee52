//! Median times of ReLU, 2×2 max-pool and their backward on the CNN's conv1 output
//! ([25, 16, 28, 28], f32): `cargo run --release --example relu_speed`.
use backprop_parity::engine::Graph;
use std::time::Instant;
fn main() {
    backprop_parity::engine::memory::keep_freed_pages();
    let x = ndarray::ArrayD::<f32>::from_shape_fn(vec![25, 16, 28, 28], |d| (d[3] as f32 - 14.0) * 0.1);
    let (mut tr, mut tp, mut tb) = (vec![], vec![], vec![]);
    for _ in 0..200 {
        let mut g = Graph::<f32>::new();
        let v = g.param(x.clone());
        let t = Instant::now();
        let y = g.relu(v);
        tr.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let p = g.max_pool2d(y, 2).unwrap();
        tp.push(t.elapsed().as_secs_f64());
        let s = g.sum(p);
        let t = Instant::now();
        let _ = g.backward(s).unwrap();
        tb.push(t.elapsed().as_secs_f64());
    }
    for (n, mut v) in [("relu", tr), ("pool", tp), ("bwd", tb)] {
        v.sort_by(f64::total_cmp);
        println!("{n}: median {:.1} µs best {:.1}", v[v.len() / 2] * 1e6, v[0] * 1e6);
    }
}
