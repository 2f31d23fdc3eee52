//! libtorch's other implementations of ops: the compositions PyTorch users commonly
//! write next to ATen's native op the interpreter uses by default. Each is run where its
//! op occurs when the backend is made `with_implementation`.

use tch::{Kind, TchError, Tensor};

use crate::backends::Implementation;
use crate::models::{Op, Reduction};

pub const IMPLEMENTATIONS: [Implementation; 5] = [
    Implementation { op: "sigmoid", name: "composition", about: "1 / (1 + exp(-x)) (the default is ATen's sigmoid)" },
    Implementation { op: "softmax", name: "composition", about: "exp(x - max) / sum(exp(x - max)) over dim (the default is ATen's softmax)" },
    Implementation { op: "log_softmax", name: "composition", about: "log(softmax(x)) (the default is ATen's log_softmax)" },
    Implementation { op: "cross_entropy", name: "composition", about: "nll_loss(log_softmax(x), labels) (the default is ATen's cross_entropy_loss)" },
    Implementation {
        op: "layer_norm",
        name: "composition",
        about: "(x - mean) / sqrt(var + eps) * weight + bias over the trailing dims, var biased (the default is ATen's layer_norm)",
    },
];

/// The op computed by implementation `name`, or None when `name` is not `op`'s.
pub fn apply(name: &str, op: &Op, x: &Tensor, second: Option<&Tensor>, third: Option<&Tensor>) -> Result<Option<Tensor>, TchError> {
    let softmax = |dim: i64| -> Result<Tensor, TchError> {
        let shifted = x.f_sub(&x.f_amax([dim], true)?.f_detach()?)?.f_exp()?;
        shifted.f_div(&shifted.f_sum_dim_intlist(&[dim][..], true, None::<Kind>)?)
    };
    Ok(Some(match (name, op) {
        ("composition", Op::Sigmoid {}) => x.f_neg()?.f_exp()?.f_add_scalar(1.0)?.f_reciprocal()?,
        ("composition", Op::Softmax { dim }) => softmax(*dim)?,
        ("composition", Op::LogSoftmax { dim }) => x.f_softmax(*dim, None::<Kind>)?.f_log()?,
        ("composition", Op::CrossEntropy { label_smoothing, .. }) if *label_smoothing != 0.0 => {
            return Err(TchError::Kind(format!("cross_entropy: the composition nll_loss(log_softmax(x)) has no label smoothing ({label_smoothing} asked for)")))
        }
        ("composition", Op::CrossEntropy { reduction, .. }) => {
            let labels = second.ok_or_else(|| TchError::Kind("cross_entropy: labels missing".into()))?;
            let reduction = match reduction {
                Reduction::Mean => tch::Reduction::Mean,
                Reduction::Sum => tch::Reduction::Sum,
                Reduction::None => tch::Reduction::None,
            };
            x.f_log_softmax(1, None::<Kind>)?.f_nll_loss(labels, None::<Tensor>, reduction, -100)?
        }
        ("composition", Op::LayerNorm { normalized_shape, eps }) => {
            let dims: Vec<i64> = (x.dim() - normalized_shape.len()..x.dim()).map(|d| d as i64).collect();
            let mean = x.f_mean_dim(dims.as_slice(), true, None::<Kind>)?;
            let var = x.f_var_correction(dims.as_slice(), 0, true)?;
            let y = x.f_sub(&mean)?.f_div(&var.f_add_scalar(*eps)?.f_sqrt()?)?;
            let y = match second {
                Some(w) => y.f_mul(w)?,
                None => y,
            };
            match third {
                Some(b) => y.f_add(b)?,
                None => y,
            }
        }
        _ => return Ok(None),
    }))
}
