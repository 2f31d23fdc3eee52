//! One file per op family. Each file adds its forward ops to `Graph` and, next to them,
//! the handwritten backward rules that `Graph::backward` dispatches to.

pub mod activation;
pub mod avg_pool;
pub mod conv;
pub mod dropout;
pub mod elementwise;
pub mod gemm;
pub mod index;
pub mod layer_norm;
pub mod linear;
pub mod matmul;
pub mod norm;
pub mod pool;
pub mod reduce;
pub mod shape;
pub mod softmax;
