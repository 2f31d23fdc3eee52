//! The program interpreter of candle: each node is the candle-core (or candle-nn) op a
//! candle user would write, differentiated by candle's autograd.

use candle_core::{Device, Tensor, Var, D};

use super::maxpool::exact_max_pool2d;
use super::{err, to_candle, to_host, MaxPoolMode};
use crate::backends::executor::{Executor, Outcome, Request};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::program::{check, labels_of, reduced_dims, Checked, GeluApproximate, Reduction};
use crate::models::{Op, Program, Role, ValueType};

enum Slot {
    Empty,
    /// An input that needs a gradient.
    Var(Var),
    /// Data, state, or labels (as u32).
    Tensor(Tensor),
}

pub struct CandleExecutor {
    program: Program,
    checked: Checked,
    dtype: DType,
    maxpool: MaxPoolMode,
    slots: Vec<Slot>,
    grads: Vec<Option<Tensor>>,
    velocity: Vec<Option<Tensor>>,
    /// Another implementation of candle's to use for its op (`alternatives.rs`).
    pub alternative: Option<crate::backends::Implementation>,
    /// Per input: whether the program's dataflow carries it to the differentiated scalar
    /// (a gradient candle does not produce for such an input is missing, not zero).
    reaches_root: Vec<bool>,
}

impl CandleExecutor {
    pub fn new(program: &Program, inputs: &[HostTensor], dtype: DType, maxpool: MaxPoolMode) -> Result<Self> {
        let checked = check(program)?;
        let n = program.inputs.len();
        let mut e = CandleExecutor {
            program: program.clone(),
            checked,
            dtype,
            maxpool,
            slots: (0..n).map(|_| Slot::Empty).collect(),
            grads: vec![None; n],
            velocity: vec![None; n],
            alternative: None,
            reaches_root: program.reaches_root(),
        };
        for (i, t) in inputs.iter().enumerate() {
            e.set_input(i, t)?;
        }
        Ok(e)
    }

    fn tensor(&self, i: usize, backward: bool) -> Result<Tensor> {
        match &self.slots[i] {
            // Without a backward pass, parameters enter detached, so candle records nothing.
            Slot::Var(v) => Ok(if backward { v.as_tensor().clone() } else { v.as_detached_tensor() }),
            Slot::Tensor(t) => Ok(t.clone()),
            Slot::Empty => Err(Error::Invalid(format!("input '{}' has no value", self.program.inputs[i].name))),
        }
    }

    fn forward(&mut self, req: Request) -> candle_core::Result<(Vec<Tensor>, Option<Tensor>)> {
        let n_inputs = self.program.inputs.len();
        let mut values: Vec<Option<Tensor>> = Vec::with_capacity(n_inputs + self.program.nodes.len());
        for i in 0..n_inputs {
            values.push(self.tensor(i, req.backward).ok());
        }
        let nodes = self.program.nodes.clone();
        for (k, node) in nodes.iter().enumerate() {
            let args = self.checked.args[k].clone();
            let op = if req.eval { node.op.in_eval_mode() } else { node.op.clone() };
            let a = |i: usize| args.get(i).copied().flatten().map(|v| values[v].clone().expect("computed"));
            let x = a(0).expect("checked");
            let mut other = match self.alternative {
                Some(which) if which.op == op.name() => super::alternatives::apply(which.name, &op, &x, &[a(1), a(2)])?,
                _ => None,
            };
            let y = match op {
                _ if other.is_some() => other.take().expect("just checked"),
                Op::MatMul {} => matmul(&x, &a(1).expect("checked"))?,
                Op::Add {} => x.broadcast_add(&a(1).expect("checked"))?,
                Op::Sub {} => x.broadcast_sub(&a(1).expect("checked"))?,
                Op::Mul {} => x.broadcast_mul(&a(1).expect("checked"))?,
                Op::Div {} => x.broadcast_div(&a(1).expect("checked"))?,
                Op::Maximum {} => x.broadcast_maximum(&a(1).expect("checked"))?,
                Op::Neg {} => x.neg()?,
                Op::Sigmoid {} => candle_nn::ops::sigmoid(&x)?,
                Op::Square {} => x.sqr()?,
                Op::Relu {} => x.relu()?,
                Op::Tanh {} => x.tanh()?,
                Op::Exp {} => x.exp()?,
                Op::Log {} => x.log()?,
                Op::Gelu { approximate: GeluApproximate::None } => x.gelu_erf()?,
                Op::Gelu { approximate: GeluApproximate::Tanh } => x.gelu()?,
                Op::Silu {} => x.silu()?,
                Op::Elu { alpha } => x.elu(alpha)?,
                Op::LeakyRelu { negative_slope } => candle_nn::ops::leaky_relu(&x, negative_slope)?,
                // Neither candle-core nor candle-nn 0.11.1 has a softplus: a refusal.
                Op::Softplus { .. } => candle_core::bail!("softplus: candle 0.11.1 has no softplus op (neither candle-core nor candle-nn)"),
                Op::Sqrt {} => x.sqrt()?,
                Op::Abs {} => x.abs()?,
                Op::Clamp { min, max } => match (min, max) {
                    (Some(lo), Some(hi)) => x.clamp(lo, hi)?,
                    (Some(lo), None) => x.maximum(lo)?,
                    (None, Some(hi)) => x.minimum(hi)?,
                    (None, None) => candle_core::bail!("clamp: neither min nor max given"),
                },
                Op::Pow { exponent } => x.powf(exponent)?,
                Op::Sum {} => x.sum_all()?,
                Op::Mean {} => x.mean_all()?,
                Op::SumDim { ref dim, keepdim } | Op::MeanDim { ref dim, keepdim } => {
                    let axes = reduced_dims(dim, x.rank()).map_err(candle_core::Error::msg)?;
                    match (matches!(op, Op::SumDim { .. }), keepdim) {
                        (true, true) => x.sum_keepdim(axes)?,
                        (true, false) => x.sum(axes)?,
                        (false, true) => x.mean_keepdim(axes)?,
                        (false, false) => x.mean(axes)?,
                    }
                }
                // candle's max reduces one dimension at a time; its backward gives every
                // tied maximum the whole gradient (ATen's amax shares it evenly).
                Op::Amax { ref dim, keepdim } => {
                    let axes = reduced_dims(dim, x.rank()).map_err(candle_core::Error::msg)?;
                    let mut y = x.clone();
                    for &d in &axes {
                        y = y.max_keepdim(d)?;
                    }
                    if keepdim {
                        y
                    } else {
                        let kept: Vec<usize> =
                            (0..x.rank()).filter(|d| !axes.contains(d)).map(|d| x.dims()[d]).collect();
                        y.reshape(kept)?
                    }
                }
                Op::MaxPool2d { kernel, stride, padding, ceil_mode } => {
                    let stride = stride.unwrap_or(kernel);
                    if padding > 0 {
                        candle_core::bail!("max_pool2d: candle's max-pooling has no padding (padding {padding} asked for)");
                    }
                    // ceil_mode only matters where it adds a window; there candle has none.
                    if ceil_mode && ceil_adds_windows(&x, kernel, stride, padding)? {
                        candle_core::bail!("max_pool2d: candle's max-pooling has no ceil_mode (it adds a window here)");
                    }
                    match self.maxpool {
                        MaxPoolMode::Builtin => x.max_pool2d_with_stride(kernel, stride)?,
                        MaxPoolMode::Exact if stride == kernel => exact_max_pool2d(&x, kernel)?,
                        MaxPoolMode::Exact => candle_core::bail!("max_pool2d: the exact max-pool covers stride = kernel only (kernel {kernel}, stride {stride})"),
                    }
                }
                Op::Conv2d { stride, padding, dilation, groups } => {
                    let y = x.conv2d(&a(1).expect("checked"), padding, stride, dilation, groups)?;
                    add_channel_bias(y, a(2))?
                }
                Op::ConvTranspose2d { stride, padding, output_padding, dilation, groups } => {
                    if groups != 1 {
                        candle_core::bail!("conv_transpose2d: candle's conv_transpose2d has no groups ({groups} asked for)");
                    }
                    let y = x.conv_transpose2d(&a(1).expect("checked"), padding, output_padding, stride, dilation)?;
                    add_channel_bias(y, a(2))?
                }
                Op::AvgPool2d { kernel, stride, padding, ceil_mode, .. } => {
                    let stride = stride.unwrap_or(kernel);
                    // Without padding count_include_pad changes nothing.
                    if padding > 0 {
                        candle_core::bail!("avg_pool2d: candle's avg-pooling has no padding (padding {padding} asked for)");
                    }
                    if ceil_mode && ceil_adds_windows(&x, kernel, stride, padding)? {
                        candle_core::bail!("avg_pool2d: candle's avg-pooling has no ceil_mode (it adds a window here)");
                    }
                    x.avg_pool2d_with_stride(kernel, stride)?
                }
                // candle has no adaptive pooling: where the output size divides the image,
                // the windows are avg_pool2d's with kernel = stride = H/oh (what a candle
                // user writes); other sizes are refused.
                Op::AdaptiveAvgPool2d { output_size: [oh, ow] } => {
                    let (_, _, h, w) = x.dims4()?;
                    if h % oh != 0 || w % ow != 0 {
                        candle_core::bail!("adaptive_avg_pool2d: candle has no adaptive pooling, and output {oh}x{ow} does not divide the image {h}x{w} for an avg_pool2d");
                    }
                    x.avg_pool2d_with_stride((h / oh, w / ow), (h / oh, w / ow))?
                }
                Op::UpsampleNearest2d { scale_factor } => {
                    let (_, _, h, w) = x.dims4()?;
                    x.upsample_nearest2d(h * scale_factor, w * scale_factor)?
                }
                Op::Linear {} => {
                    let y = x.matmul(&a(1).expect("checked").t()?)?;
                    match a(2) {
                        Some(b) => y.broadcast_add(&b)?,
                        None => y,
                    }
                }
                Op::BatchNorm { training, momentum, eps } => {
                    let stats = match (args.get(3).copied().flatten(), args.get(4).copied().flatten()) {
                        (Some(rm), Some(rv)) => Some((rm, rv)),
                        _ => None,
                    };
                    self.batch_norm(&x, a(1), a(2), stats, training, momentum, eps)?
                }
                // candle-nn's LayerNorm / RmsNorm normalise the last dimension: over several
                // trailing dimensions the input is viewed as rows of their product.
                Op::LayerNorm { ref normalized_shape, eps } => norm_composition(&x, normalized_shape.iter().product(), a(1), a(2), eps, true)?,
                Op::RmsNorm { ref normalized_shape, eps } => {
                    let eps = eps.unwrap_or_else(|| default_eps(&x));
                    norm_composition(&x, normalized_shape.iter().product(), a(1), None, eps, false)?
                }
                Op::GroupNorm { num_groups, eps } => group_norm(&x, a(1), a(2), num_groups, eps)?,
                Op::Softmax { dim } => candle_nn::ops::softmax(&x, axis(dim, x.rank()))?,
                Op::LogSoftmax { dim } => candle_nn::ops::log_softmax(&x, axis(dim, x.rank()))?,
                // candle-nn's losses are means only, without label smoothing: anything else is refused.
                Op::NllLoss { reduction } => {
                    mean_only("nll_loss", reduction)?;
                    candle_nn::loss::nll(&x, &a(1).expect("checked"))?
                }
                Op::CrossEntropy { reduction, label_smoothing } => {
                    mean_only("cross_entropy", reduction)?;
                    if label_smoothing != 0.0 {
                        candle_core::bail!("cross_entropy: candle-nn's cross_entropy has no label smoothing (label_smoothing {label_smoothing} asked for)");
                    }
                    candle_nn::loss::cross_entropy(&x, &a(1).expect("checked"))?
                }
                Op::MseLoss { reduction } => {
                    mean_only("mse_loss", reduction)?;
                    candle_nn::loss::mse(&x, &a(1).expect("checked"))?
                }
                Op::Dropout { p, training } => {
                    if training {
                        // torch: input * (mask / (1 - p))
                        x.broadcast_mul(&a(1).expect("checked").affine(1.0 / (1.0 - p), 0.0)?)?
                    } else {
                        x
                    }
                }
                Op::Permute { ref dims } => x.permute(dims.iter().map(|&d| axis(d, x.rank())).collect::<Vec<_>>())?,
                Op::Transpose { dim0, dim1 } => x.transpose(axis(dim0, x.rank()), axis(dim1, x.rank()))?,
                Op::Concat { dim } => {
                    let xs: Vec<Tensor> = (0..args.len()).map(|i| a(i).expect("checked")).collect();
                    Tensor::cat(&xs, axis(dim, x.rank()))?
                }
                Op::Narrow { dim, start, length } => {
                    let d = axis(dim, x.rank());
                    let n = x.dim(d)? as i64;
                    x.narrow(d, (if start < 0 { start + n } else { start }) as usize, length)?
                }
                Op::IndexSelect { dim } => x.index_select(&a(1).expect("checked"), axis(dim, x.rank()))?,
                // candle-nn's Embedding: the weight's rows at the indices, no padding_idx.
                Op::Embedding { padding_idx } => {
                    if let Some(p) = padding_idx {
                        candle_core::bail!(
                            "embedding: candle-nn's Embedding has no padding_idx (padding_idx {p} asked for)"
                        );
                    }
                    let d = x.dim(1)?;
                    candle_nn::Module::forward(&candle_nn::Embedding::new(x.clone(), d), &a(1).expect("checked"))?
                }
                // candle's where_cond takes a u8 condition and operands of one shape.
                Op::Where {} => {
                    let (t, f) = (a(1).expect("checked"), a(2).expect("checked"));
                    let shape = x
                        .shape()
                        .broadcast_shape_binary_op(t.shape(), "where")?
                        .broadcast_shape_binary_op(f.shape(), "where")?;
                    let cond = x.ne(&x.zeros_like()?)?.broadcast_as(&shape)?;
                    cond.where_cond(&t.broadcast_as(&shape)?, &f.broadcast_as(&shape)?)?
                }
                // candle has no masked_fill: where_cond(mask, value, x), as PyTorch decomposes it.
                Op::MaskedFill { value } => {
                    let m = a(1).expect("checked");
                    let shape = x.shape().broadcast_shape_binary_op(m.shape(), "masked_fill")?;
                    let mask = m.ne(&m.zeros_like()?)?.broadcast_as(&shape)?;
                    let fill = Tensor::full(value, &shape, x.device())?.to_dtype(x.dtype())?;
                    mask.where_cond(&fill, &x.broadcast_as(&shape)?)?
                }
                Op::Reshape { .. } | Op::Flatten { .. } => {
                    let shape = crate::models::program::infer(&op, &[Some(x.dims())]).map_err(candle_core::Error::msg)?;
                    x.reshape(shape)?
                }
            };
            values.push(Some(y));
        }
        let out: Vec<Tensor> = if req.all_values {
            values[n_inputs..].iter().map(|v| v.clone().expect("computed")).collect()
        } else {
            self.checked.outputs.iter().map(|(v, _)| values[*v].clone().expect("computed")).collect()
        };
        let root = match self.checked.loss {
            Some(l) => values[l].clone(),
            None => {
                let mut total: Option<Tensor> = None;
                for (v, cot) in &self.checked.outputs {
                    let Some(cot) = cot else { continue };
                    let s = values[*v].as_ref().expect("computed").mul(&to_candle(cot, self.dtype)?)?.sum_all()?;
                    total = Some(match total {
                        None => s,
                        Some(t) => (t + s)?,
                    });
                }
                total
            }
        };
        Ok((out, root))
    }

    #[allow(clippy::too_many_arguments)]
    fn batch_norm(&mut self, x: &Tensor, w: Option<Tensor>, b: Option<Tensor>, stats: Option<(usize, usize)>, training: bool, momentum: f64, eps: f64) -> candle_core::Result<Tensor> {
        let c = x.dim(1)?;
        let bshape: Vec<usize> = (0..x.rank()).map(|i| if i == 1 { c } else { 1 }).collect();
        let (mean, var) = if training {
            let (mean, var, m) = batch_stats(x)?;
            if let Some((rm_i, rv_i)) = stats {
                let unbiased = var.affine(m as f64 / (m as f64 - 1.0), 0.0)?;
                let (Slot::Tensor(rm), Slot::Tensor(rv)) = (&self.slots[rm_i], &self.slots[rv_i]) else { candle_core::bail!("running statistics are state") };
                let new_rm = (mean.detach().affine(momentum, 0.0)? + rm.affine(1.0 - momentum, 0.0)?)?;
                let new_rv = (unbiased.detach().affine(momentum, 0.0)? + rv.affine(1.0 - momentum, 0.0)?)?;
                self.slots[rm_i] = Slot::Tensor(new_rm);
                self.slots[rv_i] = Slot::Tensor(new_rv);
            }
            (mean, var)
        } else {
            let (rm_i, rv_i) = stats.expect("checked: eval mode has running statistics");
            let (Slot::Tensor(rm), Slot::Tensor(rv)) = (&self.slots[rm_i], &self.slots[rv_i]) else { candle_core::bail!("running statistics are state") };
            (rm.clone(), rv.clone())
        };
        let mean = mean.reshape(bshape.as_slice())?;
        let inv_std = (var + eps)?.sqrt()?.recip()?.reshape(bshape.as_slice())?;
        let y = x.broadcast_sub(&mean)?.broadcast_mul(&inv_std)?;
        match (w, b) {
            (Some(w), Some(b)) => y.broadcast_mul(&w.reshape(bshape.as_slice())?)?.broadcast_add(&b.reshape(bshape.as_slice())?),
            _ => Ok(y),
        }
    }
}

/// PyTorch's default eps of rms_norm: the machine epsilon of the input's dtype.
pub(super) fn default_eps(x: &Tensor) -> f64 {
    match x.dtype() {
        candle_core::DType::F32 => f32::EPSILON as f64,
        _ => f64::EPSILON,
    }
}

/// `x` viewed as rows of its trailing `len` elements, and `w`/`b` (of `len` entries) as
/// vectors: what candle-nn's row kernels take.
pub(super) fn as_rows(x: &Tensor, len: usize, w: Option<Tensor>, b: Option<Tensor>) -> candle_core::Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
    let rows = x.elem_count() / len.max(1);
    Ok((x.reshape((rows, len))?, w.map(|w| w.reshape(len)).transpose()?, b.map(|b| b.reshape(len)).transpose()?))
}

/// candle-nn 0.11.1's `LayerNorm::forward` (and `RmsNorm::forward_diff`, `remove_mean`
/// false) as written there in candle-core ops, over the trailing `len` elements: the
/// mean subtracted, divided by `sqrt(mean(x²) + eps)`, then the weight and bias, each
/// when given. (Its fused `ops::layer_norm` / `ops::rms_norm` are the alternatives.)
fn norm_composition(x: &Tensor, len: usize, w: Option<Tensor>, b: Option<Tensor>, eps: f64, remove_mean: bool) -> candle_core::Result<Tensor> {
    let (rows, w, b) = as_rows(x, len, w, b)?;
    let rows = if remove_mean {
        let mean = (rows.sum_keepdim(D::Minus1)? / len as f64)?;
        rows.broadcast_sub(&mean)?
    } else {
        rows
    };
    let norm = (rows.sqr()?.sum_keepdim(D::Minus1)? / len as f64)?;
    let y = rows.broadcast_div(&(norm + eps)?.sqrt()?)?;
    let y = match w {
        Some(w) => y.broadcast_mul(&w)?,
        None => y,
    };
    let y = match b {
        Some(b) => y.broadcast_add(&b)?,
        None => y,
    };
    y.reshape(x.dims())
}

/// candle-nn's `GroupNorm` module. It takes a weight and a bias: absent ones are ones
/// and zeros (constants, exact). It wants rank 3 or more, so `[N, C]` is viewed as
/// `[N, C, 1]`.
fn group_norm(x: &Tensor, w: Option<Tensor>, b: Option<Tensor>, groups: usize, eps: f64) -> candle_core::Result<Tensor> {
    use candle_nn::Module;
    let c = x.dim(1)?;
    let w = match w {
        Some(w) => w,
        None => Tensor::ones(c, x.dtype(), x.device())?,
    };
    let b = match b {
        Some(b) => b,
        None => Tensor::zeros(c, x.dtype(), x.device())?,
    };
    let module = candle_nn::GroupNorm::new(w, b, c, groups, eps)?;
    if x.rank() == 2 {
        module.forward(&x.unsqueeze(2)?)?.squeeze(2)
    } else {
        module.forward(x)
    }
}

impl Executor for CandleExecutor {
    fn set_input(&mut self, index: usize, value: &HostTensor) -> Result<()> {
        let d = self.program.inputs.get(index).ok_or_else(|| Error::Invalid(format!("no input {index}")))?;
        self.slots[index] = if d.value_type == ValueType::Index {
            let l: Vec<u32> = labels_of(value, u32::MAX as usize, &d.name)?.into_iter().map(|v| v as u32).collect();
            Slot::Tensor(Tensor::from_vec(l, value.shape.as_slice(), &Device::Cpu).map_err(err)?)
        } else {
            let t = to_candle(value, self.dtype).map_err(err)?;
            match &self.slots[index] {
                // In place, so the variable (and the optimiser's view of it) stays the same.
                Slot::Var(v) if v.dims() == t.dims() => {
                    v.set(&t).map_err(err)?;
                    return Ok(());
                }
                _ if d.needs_grad() => Slot::Var(Var::from_tensor(&t).map_err(err)?),
                _ => Slot::Tensor(t),
            }
        };
        Ok(())
    }

    fn input(&self, index: usize) -> Result<HostTensor> {
        match &self.slots[index] {
            Slot::Var(v) => to_host(v.as_tensor()).map_err(err),
            Slot::Tensor(t) => to_host(t).map_err(err),
            Slot::Empty => Err(Error::Invalid(format!("input '{}' has no value", self.program.inputs[index].name))),
        }
    }

    fn run(&mut self, req: Request) -> Result<Outcome> {
        crate::backends::guarded("candle", || self.run_unguarded(req))
    }

    fn sgd_step(&mut self, lr: f64, momentum: Option<f64>) -> Result<()> {
        crate::backends::guarded("candle", || self.sgd_unguarded(lr, momentum))
    }

    fn velocity(&self, index: usize) -> Result<Option<HostTensor>> {
        self.velocity.get(index).and_then(|v| v.as_ref()).map(|v| to_host(v).map_err(err)).transpose()
    }

    fn set_velocity(&mut self, index: usize, value: &HostTensor) -> Result<()> {
        let t = to_candle(value, self.dtype).map_err(err)?;
        let slot = self.velocity.get_mut(index).ok_or_else(|| Error::Invalid(format!("no input {index}")))?;
        *slot = Some(t);
        Ok(())
    }
}

impl CandleExecutor {
    fn run_unguarded(&mut self, req: Request) -> Result<Outcome> {
        let n = self.program.inputs.len();
        let (values, root) = self.forward(req).map_err(err)?;
        let mut out = Outcome { loss: None, values: values.iter().map(to_host).collect::<candle_core::Result<_>>().map_err(err)?, grads: vec![None; n] };
        if let (Some(l), Some(root)) = (self.checked.loss, root.as_ref()) {
            let _ = l;
            out.loss = Some(to_host(root).map_err(err)?.data[0]);
        }
        if let (true, Some(root)) = (req.backward, root) {
            let store = root.backward().map_err(err)?;
            for i in 0..n {
                if let Slot::Var(v) = &self.slots[i] {
                    // Detached: a gradient keeps the backward graph (and every activation)
                    // alive, and the momentum buffer would chain one step's graph to the next.
                    let g = match store.get(v.as_tensor()) {
                        Some(g) => g.detach(),
                        // candle leaves out what its backward never reached: for an input
                        // the program carries to the loss, some op on the way recorded no
                        // backward (a gradient missing, not a zero one).
                        None if self.reaches_root[i] => {
                            return Err(Error::backend(
                                "candle",
                                format!("gradient missing: no gradient reached input '{}' (an op on its path to the loss has no backward)", self.program.inputs[i].name),
                            ))
                        }
                        None => v.as_tensor().zeros_like().map_err(err)?,
                    };
                    if req.host_grads {
                        out.grads[i] = Some(to_host(&g).map_err(err)?);
                    }
                    self.grads[i] = Some(g);
                }
            }
        }
        Ok(out)
    }

    fn sgd_unguarded(&mut self, lr: f64, momentum: Option<f64>) -> Result<()> {
        let step = |slot: &Slot, g: &Tensor, velocity: &mut Option<Tensor>| -> candle_core::Result<()> {
            let Slot::Var(var) = slot else { return Ok(()) };
            match momentum {
                // p - lr * g: candle's scalar multiply rounds lr to the dtype first, like torch.
                None => var.set(&var.as_tensor().sub(&(g * lr)?)?),
                Some(m) => {
                    // PyTorch's rule: the first step's buffer is the gradient itself.
                    let v = match velocity.as_ref() {
                        None => g.clone(),
                        Some(v) => (v.affine(m, 0.0)? + g)?,
                    };
                    var.set(&(var.as_tensor() - v.affine(lr, 0.0)?)?)?;
                    *velocity = Some(v);
                    Ok(())
                }
            }
        };
        for i in 0..self.slots.len() {
            if self.program.inputs[i].role != Role::Param {
                continue;
            }
            if let Some(g) = &self.grads[i] {
                step(&self.slots[i], g, &mut self.velocity[i]).map_err(err)?;
            }
        }
        Ok(())
    }
}

/// Per-channel batch mean and biased variance over every axis but 1, with the number of
/// values per channel. Built from candle ops, so candle's autograd differentiates them.
fn batch_stats(x: &Tensor) -> candle_core::Result<(Tensor, Tensor, usize)> {
    let per_channel = x.transpose(0, 1)?.flatten_from(1)?;
    let m = per_channel.dim(1)?;
    let mean = per_channel.mean_keepdim(D::Minus1)?;
    let var = per_channel.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?;
    Ok((mean.flatten_all()?, var.flatten_all()?, m))
}

/// candle's matmul takes matrices only: a vector operand becomes a one-row (left) or
/// one-column (right) matrix and the added axis is dropped again, as torch.matmul does.
fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (va, vb) = (a.rank() == 1, b.rank() == 1);
    let a2 = if va { a.unsqueeze(0)? } else { a.clone() };
    let b2 = if vb { b.unsqueeze(1)? } else { b.clone() };
    let mut y = if a2.rank().max(b2.rank()) >= 3 {
        // Batched: both operands broadcast over the batch axes (candle's matmul needs
        // them equal and its kernels contiguous batches), then one batched matmul.
        let (ra, rb) = (a2.rank(), b2.rank());
        let batch = candle_core::Shape::from(&a2.dims()[..ra - 2])
            .broadcast_shape_binary_op(&candle_core::Shape::from(&b2.dims()[..rb - 2]), "matmul")?;
        let full = |t: &Tensor, r: usize| -> candle_core::Result<Tensor> {
            let mut d = batch.dims().to_vec();
            d.extend_from_slice(&t.dims()[r - 2..]);
            t.broadcast_as(d)?.contiguous()
        };
        // candle-core 0.11.1's CPU matmul takes at most two batch dimensions: with more it
        // stops with `MatMulUnexpectedStriding` ("non-contiguous lhs") even for contiguous
        // operands. That refusal is candle's; it is only labelled with the op here.
        full(&a2, ra)?.matmul(&full(&b2, rb)?).map_err(|e| candle_core::Error::msg(format!("matmul: {e}")))?
    } else {
        a2.matmul(&b2)?
    };
    if vb {
        y = y.squeeze(y.rank() - 1)?;
    }
    if va {
        y = y.squeeze(y.rank() - if vb { 1 } else { 2 })?;
    }
    Ok(y)
}

/// A PyTorch `dim` (negative counts from the back) as candle's axis.
fn axis(dim: i64, rank: usize) -> usize {
    if dim < 0 {
        (dim + rank as i64) as usize
    } else {
        dim as usize
    }
}

/// candle-nn's losses (`nll`, `cross_entropy`, `mse`) only average.
fn mean_only(op: &str, reduction: Reduction) -> candle_core::Result<()> {
    if reduction != Reduction::Mean {
        candle_core::bail!("{op}: candle-nn's loss averages only (reduction {reduction:?} asked for)");
    }
    Ok(())
}

/// `y + b` with b `[C]` over the channels of `y` `[N, C, H, W]`.
fn add_channel_bias(y: Tensor, b: Option<Tensor>) -> candle_core::Result<Tensor> {
    match b {
        Some(b) => {
            let o = b.dim(0)?;
            y.broadcast_add(&b.reshape((1, o, 1, 1))?)
        }
        None => Ok(y),
    }
}

/// Whether PyTorch's ceil mode gives this pooling more windows than floor mode.
fn ceil_adds_windows(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> candle_core::Result<bool> {
    let (_, _, h, w) = x.dims4()?;
    let len = |l, ceil| crate::models::program::pooled_len(l, kernel, stride, padding, ceil);
    Ok(len(h, true) != len(h, false) || len(w, true) != len(w, false))
}
