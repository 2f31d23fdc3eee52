//! One file per op family. Each file adds its forward ops to `Graph` and, next to them,
//! the handwritten backward rules that `Graph::backward` dispatches to.

pub mod elementwise;
pub mod gemm;
pub mod matmul;
pub mod reduce;
