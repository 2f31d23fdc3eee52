//! The graph machinery itself: topological order, fan-out accumulation, and the
//! vector·matrix gradient the seed study got wrong.

use backprop_parity::engine::Graph;
use ndarray::{arr0, arr1, arr2};

#[test]
fn vector_matrix_gradient_is_an_outer_product() {
    let mut g = Graph::<f64>::new();
    let x = g.constant(arr1(&[1.0, 2.0, 3.0]).into_dyn());
    let a = g.param(arr2(&[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).into_dyn());
    let y = g.matmul(x, a).unwrap();
    let w = g.constant(arr1(&[10.0, 100.0]).into_dyn());
    let yw = g.mul(y, w).unwrap();
    let loss = g.sum(yw);
    let grads = g.backward(loss).unwrap();
    // dL/dA[i][j] = x[i] * w[j]: distinct per entry, not one shared number.
    assert_eq!(grads.get(a).unwrap(), &arr2(&[[10.0, 100.0], [20.0, 200.0], [30.0, 300.0]]).into_dyn());
}

#[test]
fn fan_out_accumulates_every_consumer() {
    // loss = sum(x*x + x) = Σ x² + x  =>  dL/dx = 2x + 1
    let mut g = Graph::<f64>::new();
    let x = g.param(arr1(&[1.0, -2.0]).into_dyn());
    let xx = g.mul(x, x).unwrap();
    let s = g.add(xx, x).unwrap();
    let loss = g.sum(s);
    let grads = g.backward(loss).unwrap();
    assert_eq!(grads.get(x).unwrap(), &arr1(&[3.0, -3.0]).into_dyn());
}

#[test]
fn a_node_passes_its_gradient_on_only_after_all_consumers() {
    // A chain with a long and a short path to the loss: a breadth-first walk reaches `h`
    // from the short path before the long one has delivered, and would propagate a
    // partial gradient. d/dx of (sig(x)·2 + sig(sig(x))) at x = 0.3.
    let mut g = Graph::<f64>::new();
    let x = g.param(arr0(0.3).into_dyn());
    let h = g.sigmoid(x);
    let two = g.constant(arr0(2.0).into_dyn());
    let short = g.mul(h, two).unwrap();
    let long1 = g.sigmoid(h);
    let long2 = g.exp(long1);
    let long3 = g.log(long2);
    let s = g.add(short, long3).unwrap();
    let loss = g.sum(s);
    let grads = g.backward(loss).unwrap();
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let (hv, dh) = (sig(0.3), sig(0.3) * (1.0 - sig(0.3)));
    let want = dh * (2.0 + sig(hv) * (1.0 - sig(hv)));
    let got = grads.get(x).unwrap().iter().next().copied().unwrap();
    assert!((got - want).abs() < 1e-15, "{got} vs {want}");
    let order = g.topological_order(loss);
    let pos = |v| order.iter().position(|&o| o == v).unwrap();
    assert!(pos(h) < pos(short) && pos(h) < pos(long1) && pos(long3) < pos(s));
}

#[test]
fn backward_needs_a_scalar_root() {
    let mut g = Graph::<f32>::new();
    let x = g.param(arr1(&[1.0f32, 2.0]).into_dyn());
    let y = g.square(x);
    let err = g.backward(y).err().expect("a vector root is refused");
    assert!(err.to_string().contains("scalar"), "{err}");
}

#[test]
fn constants_receive_no_gradient() {
    let mut g = Graph::<f64>::new();
    let c = g.constant(arr1(&[1.0, 2.0]).into_dyn());
    let p = g.param(arr1(&[3.0, 4.0]).into_dyn());
    let y = g.mul(c, p).unwrap();
    let loss = g.sum(y);
    let grads = g.backward(loss).unwrap();
    assert!(grads.get(c).is_none());
    assert_eq!(grads.get(p).unwrap(), &arr1(&[1.0, 2.0]).into_dyn());
}
