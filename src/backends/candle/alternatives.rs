//! candle's other implementations of ops: candle-nn's fused kernels next to the
//! compositions of candle-core ops the interpreter uses by default, and the reverse.
//! Each is run where its op occurs when the backend is made `with_implementation`.

use candle_core::Tensor;

use crate::backends::Implementation;
use crate::models::Op;

pub const IMPLEMENTATIONS: [Implementation; 5] = [
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
    Implementation {
        op: "layer_norm",
        name: "fused",
        about: "candle-nn's fused ops::layer_norm over rows of the trailing elements, eps as f32 (no backward in 0.11.1: candle issues #2168, #3011); the default is LayerNorm::forward's composition of candle-core ops",
    },
    Implementation {
        op: "rms_norm",
        name: "fused",
        about: "candle-nn's fused ops::rms_norm over rows of the trailing elements, eps as f32 (no backward in 0.11.1: candle issues #3752, #3569); the default is RmsNorm::forward_diff's composition of candle-core ops",
    },
];

/// The op computed by implementation `name`, or None when `name` is not `op`'s.
/// `rest` are the op's other inputs (a normalisation's weight and bias).
pub fn apply(name: &str, op: &Op, x: &Tensor, rest: &[Option<Tensor>]) -> candle_core::Result<Option<Tensor>> {
    let arg = |i: usize| rest.get(i).cloned().flatten();
    // The fused kernels take a weight (and a bias): absent ones are ones and zeros.
    let ones = |len: usize| Tensor::ones(len, x.dtype(), x.device());
    let zeros = |len: usize| Tensor::zeros(len, x.dtype(), x.device());
    let last = |dim: i64| dim == -1 || dim == x.rank() as i64 - 1;
    Ok(Some(match (name, op) {
        ("composition", Op::Sigmoid {}) => (x.neg()?.exp()? + 1.0)?.recip()?,
        ("softmax_last_dim", Op::Softmax { dim }) if last(*dim) => candle_nn::ops::softmax_last_dim(x)?,
        ("softmax_last_dim", Op::Softmax { dim }) => candle_core::bail!("softmax: softmax_last_dim covers the last dimension only (dim {dim} asked for)"),
        ("composition", Op::LogSoftmax { dim }) => {
            let d = if *dim < 0 { x.rank() as i64 + dim } else { *dim };
            candle_nn::ops::softmax(x, d as usize)?.log()?
        }
        ("fused", Op::LayerNorm { normalized_shape, eps }) => {
            let len = normalized_shape.iter().product();
            let (rows, w, b) = super::interp::as_rows(x, len, arg(0), arg(1))?;
            let (w, b) = (w.map_or_else(|| ones(len), Ok)?, b.map_or_else(|| zeros(len), Ok)?);
            candle_nn::ops::layer_norm(&rows, &w, &b, *eps as f32)?.reshape(x.dims())?
        }
        ("fused", Op::RmsNorm { normalized_shape, eps }) => {
            let len = normalized_shape.iter().product();
            let (rows, w, _) = super::interp::as_rows(x, len, arg(0), None)?;
            let w = w.map_or_else(|| ones(len), Ok)?;
            let eps = eps.unwrap_or_else(|| super::interp::default_eps(x));
            candle_nn::ops::rms_norm(&rows, &w, eps as f32)?.reshape(x.dims())?
        }
        _ => return Ok(None),
    }))
}
