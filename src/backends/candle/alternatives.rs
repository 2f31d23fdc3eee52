//! candle's other implementations of ops: candle-nn's fused kernels next to the
//! compositions of candle-core ops the interpreter uses by default, and the reverse.
//! Each is run where its op occurs when the backend is made `with_implementation`.

use candle_core::Tensor;

use crate::backends::Implementation;
use crate::models::Op;

pub const IMPLEMENTATIONS: [Implementation; 3] = [
    Implementation {
        op: "sigmoid",
        name: "composition",
        about: "1 / (1 + exp(-x)) in candle-core ops (the default is candle-nn's fused ops::sigmoid)",
    },
    Implementation {
        op: "softmax",
        name: "softmax_last_dim",
        about: "candle-nn's fused ops::softmax_last_dim (the default is candle-nn's ops::softmax, a composition of candle-core ops)",
    },
    Implementation {
        op: "log_softmax",
        name: "composition",
        about: "log(softmax(x)) with candle-nn's ops::softmax, as users write it (the default is candle-nn's ops::log_softmax)",
    },
];

/// The op computed by implementation `name`, or None when `name` is not `op`'s.
pub fn apply(name: &str, op: &Op, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let last = |dim: i64| dim == -1 || dim == x.rank() as i64 - 1;
    Ok(Some(match (name, op) {
        ("composition", Op::Sigmoid {}) => (x.neg()?.exp()? + 1.0)?.recip()?,
        ("softmax_last_dim", Op::Softmax { dim }) if last(*dim) => candle_nn::ops::softmax_last_dim(x)?,
        ("softmax_last_dim", Op::Softmax { dim }) => candle_core::bail!("softmax: softmax_last_dim covers the last dimension only (dim {dim} asked for)"),
        ("composition", Op::LogSoftmax { dim }) => {
            let d = if *dim < 0 { x.rank() as i64 + dim } else { *dim };
            candle_nn::ops::softmax(x, d as usize)?.log()?
        }
        _ => return Ok(None),
    }))
}
