//! The from-scratch engine: `ndarray` tensors, a recorded graph, and a backward pass
//! that visits the graph once in reverse topological order.
//!
//! ```
//! use backprop_parity::engine::Graph;
//! use ndarray::{arr1, arr2};
//!
//! let mut g = Graph::<f64>::new();
//! let x = g.constant(arr1(&[1.0, 2.0]).into_dyn());
//! let a = g.param(arr2(&[[1.0, 0.0], [0.0, 3.0]]).into_dyn());
//! let y = g.matmul(x, a).unwrap();      // [1, 6]
//! let loss = g.sum(y);                  // 7
//! let grads = g.backward(loss).unwrap();
//! // d loss / dA = outer(x, 1): every column receives x.
//! assert_eq!(grads.get(a).unwrap(), &arr2(&[[1.0, 1.0], [2.0, 2.0]]).into_dyn());
//! ```
//!
//! Every op lives in `ops/`, one file per family, with its forward and its handwritten
//! backward side by side. `graph.rs` holds the tape and the one backward loop.

pub mod faults;
pub mod memory;
mod float;
mod graph;
pub mod ops;
pub mod optim;
pub mod parallel;

pub use float::Float;
pub use graph::{Gradients, Graph, Op, Var};
pub use ops::norm::RunningStats;

/// The engine's tensor: a dynamic-rank `ndarray` array.
pub type Tensor<F> = ndarray::ArrayD<F>;
